"""Settings: embedded defaults need no environment; nested env vars; demo secrets refused in prod;
every knob is in the README's configuration table."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlhf_loop.settings import Settings, TokenSettings
from rlhf_loop.settings_doc import rows, to_markdown

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
    assert Settings(env="prod", token=TokenSettings(secret="s3cret")).env == "prod"


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(kafka={"linger_ms": -1})


def test_every_setting_is_documented_in_the_readme() -> None:
    undocumented = [env for env, _, doc in rows() if not doc]
    assert not undocumented, f"settings without a docstring: {undocumented}"
    readme = README.read_text()
    table = readme.split("<!-- config:start -->\n", 1)[1].split("<!-- config:end -->", 1)[0]
    assert table.strip() == to_markdown(), "README configuration table is stale: paste `rlhf-loop config --markdown`"
