"""Adapter hot-swap in the serving runtime: validated before use, swapped between batches, and no
request fails while adapters change under continuous load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rlhf_loop.generation import GenerationRequest
from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.models.loading import load_base, load_with_adapter
from services.inference.engines.adapters import AdapterIncompatible, AdapterManager
from services.inference.engines.batching import MicroBatcher

pytestmark = pytest.mark.integration
PROMPT = "My order #4821 never arrived, can you help?"


def make_adapter(base: Path, out: Path, seed: int, r: int = 4, targets: tuple[str, ...] = ("c_attn",)) -> Path:
    model, _ = load_base(base)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    with torch.no_grad():  # LoRA B starts at zero; give it weights so the adapter changes outputs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a1": make_adapter(demo_model_dir, root / "a1", seed=1),
        "a2": make_adapter(demo_model_dir, root / "a2", seed=2),
        "wide": make_adapter(demo_model_dir, root / "wide", seed=3, r=8),
    }


@pytest.fixture
def runtime(demo_model_dir: Path):  # noqa: ANN201
    model, tokenizer = load_base(demo_model_dir)
    engine = BatchGenerator(model, tokenizer)
    batcher = MicroBatcher(engine.generate, max_batch_size=8, max_wait_ms=5)
    batcher.start()
    yield engine, batcher, AdapterManager(engine, batcher, slots=3)
    batcher.stop()


def test_activated_adapter_serves_what_peft_would(runtime, adapters, demo_model_dir: Path) -> None:  # noqa: ANN001
    engine, batcher, manager = runtime
    base_text = batcher.submit(GenerationRequest(PROMPT, temperature=0.0, max_new_tokens=24)).result(60).text
    manager.activate("a1", adapters["a1"])
    served = batcher.submit(GenerationRequest(PROMPT, adapter_id="a1", temperature=0.0, max_new_tokens=24)).result(60)
    reference_model, tokenizer = load_with_adapter(demo_model_dir, adapters["a1"])
    reference = BatchGenerator(reference_model, tokenizer).generate(
        [GenerationRequest(PROMPT, adapter_id="default", temperature=0.0, max_new_tokens=24)]
    )[0]
    assert served.text == reference.text != base_text
    still_base = batcher.submit(GenerationRequest(PROMPT, temperature=0.0, max_new_tokens=24)).result(60).text
    assert still_base == base_text  # mixed batches: the base rows are untouched by the adapter


def test_incompatible_adapter_is_refused_and_nothing_changes(runtime, adapters) -> None:  # noqa: ANN001
    _, _, manager = runtime
    manager.activate("a1", adapters["a1"])
    with pytest.raises(AdapterIncompatible, match="r differs"):
        manager.activate("wide", adapters["wide"])
    assert manager.active == "a1" and "wide" not in manager.loaded


def test_no_request_fails_while_adapters_swap_under_load(runtime, adapters) -> None:  # noqa: ANN001
    _, batcher, manager = runtime
    failures: list[BaseException] = []
    served: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            adapter = manager.active  # routed like the API does: whatever is active right now
            future = batcher.submit(GenerationRequest(PROMPT, adapter_id=adapter, max_new_tokens=16, seed=i * 1000 + n))
            try:
                future.result(60)
                served.append(adapter)
            except BaseException as e:  # noqa: BLE001 - collected and asserted on below
                failures.append(e)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for adapter in ("a1", "a2", "base", "a2", "a1"):
        manager.activate(adapter, adapters.get(adapter))
        time.sleep(0.3)  # let each adapter serve a while
    stop.set()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    assert {"a1", "a2", "base"} <= set(served)
