"""The demo kit's cache marker: a marker written before the ``arch`` field existed still means a GPT-2 build."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rlhf_loop.models.demo_kit import KIT_VERSION, MARKER, DemoKitConfig, demo_dir_for, is_built, llama_config


def test_a_marker_without_arch_is_a_gpt2_build_and_llama_has_its_own(tmp_path: Path) -> None:
    old = {k: v for k, v in asdict(DemoKitConfig()).items() if k != "arch"}
    (tmp_path / MARKER).write_text(json.dumps({"kit_version": KIT_VERSION, "config": old}))
    assert is_built(tmp_path, DemoKitConfig()) and not is_built(tmp_path, llama_config())
    (tmp_path / MARKER).write_text(json.dumps({"kit_version": KIT_VERSION, "config": asdict(llama_config())}))
    assert is_built(tmp_path, llama_config()) and not is_built(tmp_path, DemoKitConfig())
    assert demo_dir_for("gpt2", Path("var/models/demo")) == Path("var/models/demo")
    assert demo_dir_for("llama", Path("var/models/demo")) == Path("var/models/demo-llama")
