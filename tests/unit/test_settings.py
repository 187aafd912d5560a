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


GOOD_SECRET = "q8Vd2LrT0xYb7NwKf3HsJm9ZcPe1UaGi5RnWo4Ek6Bt"
PROD = {
    "token": TokenSettings(secret=GOOD_SECRET),
    "kafka": {"bootstrap_servers": "kafka-0.kafka:9092", **REPLICATED},
    "database": {"url": "postgresql+psycopg://rlhf@postgres/rlhf"},
    "redis": {"url": "redis://redis:6379/0"},
}


def test_demo_secret_refused_outside_demo() -> None:
    with pytest.raises(ValidationError, match="RLHF_TOKEN__SECRET"):
        Settings(env="prod", **{**PROD, "token": TokenSettings()})
    assert Settings(env="prod", **PROD).env == "prod"


@pytest.mark.parametrize(
    "secret, why",
    [
        ("s3cret", "is shorter than 32"),
        ("ab" * 20, "has fewer than 12 distinct"),
        ("replace-with-32-random-bytes-base64", "contains the placeholder word 'replace'"),
        ("my-production-secret-0123456789abcdefgh", "contains the placeholder word 'secret'"),
    ],
)
def test_weak_or_placeholder_secrets_are_refused_outside_demo(secret: str, why: str) -> None:
    for env in ("dev", "prod"):
        with pytest.raises(ValidationError, match=f"RLHF_TOKEN__SECRET {why}"):
            Settings(env=env, **{**PROD, "token": TokenSettings(secret=secret)})
    with pytest.raises(ValidationError, match=r"RLHF_TOKEN__PREVIOUS\[k0\]"):
        Settings(env="prod", **{**PROD, "token": TokenSettings(secret=GOOD_SECRET, previous={"k0": secret})})
    assert Settings(env="demo", token=TokenSettings(secret=secret)).env == "demo"


@pytest.mark.parametrize(
    "override, setting",
    [
        ({"kafka": {"bootstrap_servers": ""}}, "RLHF_KAFKA__BOOTSTRAP_SERVERS"),
        ({"database": {"url": "sqlite:///var/rlhf.sqlite3"}}, "RLHF_DATABASE__URL"),
        ({"redis": {"url": "redis://127.0.0.1:6379/0"}}, "RLHF_REDIS__URL"),
        ({"redis": {"url": "redis://localhost:6379/0"}}, "RLHF_REDIS__URL"),
        ({"redis": {"url": "redis://[::1]:6379/0"}}, "RLHF_REDIS__URL"),
        ({"promotion": {"auto_approve": True}}, "RLHF_PROMOTION__AUTO_APPROVE"),
    ],
)
def test_settings_that_fail_open_are_refused_outside_demo(override: dict, setting: str) -> None:
    with pytest.raises(ValidationError, match=setting):
        Settings(env="prod", **{**PROD, **override})
    if setting != "RLHF_PROMOTION__AUTO_APPROVE":  # dev may auto-approve; the rest fail open there too
        with pytest.raises(ValidationError, match=setting):
            Settings(env="dev", **{**PROD, **override})


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(env="prod")
    for setting in ("RLHF_TOKEN__SECRET", "RLHF_KAFKA__BOOTSTRAP_SERVERS", "RLHF_DATABASE__URL", "RLHF_REDIS__URL"):
        assert setting in str(refused.value)


def test_prod_needs_two_approvers_unless_set() -> None:
    assert Settings(env="prod", **PROD).promotion.required_approvals == 2
    assert Settings(env="prod", **PROD, promotion={"required_approvals": 1}).promotion.required_approvals == 1
    assert Settings(env="dev", **PROD).promotion.required_approvals == 1
    assert Settings(_env_file=None).promotion.required_approvals == 1  # demo


def test_the_default_env_is_demo_so_every_deploy_config_sets_env_explicitly() -> None:
    """The quick start needs no environment, so the deploy configs must say prod themselves."""
    import yaml

    assert Settings(_env_file=None).env == "demo"
    deploy = README.parent / "deploy"
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    rlhf_services = [
        n for n, svc in compose["services"].items() if "RLHF_DATABASE__URL" in (svc.get("environment") or {})
    ]
    assert rlhf_services and all(compose["services"][n]["environment"]["RLHF_ENV"] == "prod" for n in rlhf_services)
    kustomization = yaml.safe_load((deploy / "k8s" / "kustomization.yaml").read_text())
    literals = [lit for gen in kustomization["configMapGenerator"] for lit in gen.get("literals", [])]
    assert "RLHF_ENV=prod" in literals
    for manifest in (deploy / "k8s").glob("*.yaml"):  # whatever reads the secrets also reads RLHF_ENV
        text = manifest.read_text()
        assert "rlhf-secrets" not in text or "rlhf-config" in text or manifest.name == "kustomization.yaml", manifest


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
    broker = {"bootstrap_servers": "kafka-0.kafka:9092"}
    with pytest.raises(ValidationError, match="RLHF_KAFKA__REPLICATION_FACTOR"):
        Settings(env="prod", **{**PROD, "kafka": broker})
    with pytest.raises(ValidationError, match="RLHF_KAFKA__MIN_INSYNC_REPLICAS"):
        Settings(env="dev", **{**PROD, "kafka": {**broker, "replication_factor": 3, "min_insync_replicas": 1}})
    with pytest.raises(ValidationError, match="must not exceed RLHF_KAFKA__REPLICATION_FACTOR"):
        Settings(kafka={"replication_factor": 2, "min_insync_replicas": 3})
    assert Settings(env="prod", **PROD).kafka.replication_factor == 3
    # topics the operator creates: the service never creates one with a single replica
    assert not Settings(env="prod", **{**PROD, "kafka": {**broker, "create_topics": False}}).kafka.create_topics
    assert Settings().kafka.replication_factor == 1  # demo: one embedded broker


def test_topics_are_created_with_the_replication_settings() -> None:
    from rlhf_loop.bus.admin import new_topics

    specs = new_topics(["b", "a", "a"], partitions=6, replication_factor=3, min_insync_replicas=2)
    assert [(t.name, t.num_partitions, t.replication_factor) for t in specs] == [("a", 6, 3), ("b", 6, 3)]
    assert all(t.topic_configs == {"min.insync.replicas": "2"} for t in specs)
    assert [t.topic_configs for t in new_topics(["a"], 1)] == [{}]  # single replica: the broker's default


def test_training_hyperparameters_are_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_TRAINING__HYPERPARAMETERS", '{"ppo": {"episodes": 1024, "lam": 1.0}}')
    assert Settings().training.hyperparameters == {"ppo": {"episodes": 1024, "lam": 1.0}}
