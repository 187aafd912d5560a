"""Settings: embedded defaults need no environment; nested env vars; demo secrets refused in prod;
every knob is in the README's configuration table."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlhf_loop.settings import Settings, TokenSettings
from rlhf_loop.settings_doc import rows, to_markdown

REPLICATED = {"replication_factor": 3, "min_insync_replicas": 2}
README = Path(__file__).resolve().parents[2] / "README.md"


def test_embedded_defaults() -> None:
    s = Settings(_env_file=None)
    assert s.kafka.bootstrap_servers == ""  # embedded broker
    assert s.database.url.startswith("sqlite:///var/")
    assert s.model.base_model == ""  # demo model


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_KAFKA__LINGER_MS", "20")
    monkeypatch.setenv("RLHF_TOKEN__PREVIOUS", '{"k0": "old"}')
    s = Settings()
    assert s.kafka.linger_ms == 20
    assert s.token.previous == {"k0": "old"}


def test_demo_secret_refused_outside_demo() -> None:
    with pytest.raises(ValidationError, match="RLHF_TOKEN__SECRET"):
        Settings(env="prod")
    assert Settings(env="prod", token=TokenSettings(secret="s3cret"), kafka=REPLICATED).env == "prod"


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(kafka={"linger_ms": -1})


def test_every_setting_is_documented_in_the_readme() -> None:
    undocumented = [env for env, _, doc in rows() if not doc]
    assert not undocumented, f"settings without a docstring: {undocumented}"
    readme = README.read_text()
    table = readme.split("<!-- config:start -->\n", 1)[1].split("<!-- config:end -->", 1)[0]
    assert table.strip() == to_markdown(), "README configuration table is stale: paste `rlhf-loop config --markdown`"


def test_unreplicated_topics_refused_outside_demo() -> None:
    secret = TokenSettings(secret="s3cret")
    with pytest.raises(ValidationError, match="RLHF_KAFKA__REPLICATION_FACTOR"):
        Settings(env="prod", token=secret)
    with pytest.raises(ValidationError, match="RLHF_KAFKA__MIN_INSYNC_REPLICAS"):
        Settings(env="dev", token=secret, kafka={"replication_factor": 3, "min_insync_replicas": 1})
    with pytest.raises(ValidationError, match="must not exceed RLHF_KAFKA__REPLICATION_FACTOR"):
        Settings(kafka={"replication_factor": 2, "min_insync_replicas": 3})
    assert Settings(env="prod", token=secret, kafka=REPLICATED).kafka.replication_factor == 3
    # topics the operator creates: the service never creates one with a single replica
    assert not Settings(env="prod", token=secret, kafka={"create_topics": False}).kafka.create_topics
    assert Settings().kafka.replication_factor == 1  # demo: one embedded broker


def test_topics_are_created_with_the_replication_settings() -> None:
    from rlhf_loop.bus.admin import new_topics

    specs = new_topics(["b", "a", "a"], partitions=6, replication_factor=3, min_insync_replicas=2)
    assert [(t.name, t.num_partitions, t.replication_factor) for t in specs] == [("a", 6, 3), ("b", 6, 3)]
    assert all(t.topic_configs == {"min.insync.replicas": "2"} for t in specs)
    assert [t.topic_configs for t in new_topics(["a"], 1)] == [{}]  # single replica: the broker's default
