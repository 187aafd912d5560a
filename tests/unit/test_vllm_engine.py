"""The vLLM engine's pure parts: replica choice per adapter, token counts, settings, and the deployment order
against fake replicas (httpx MockTransport; the real servers are in tests/integration/test_vllm_engine.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from rlhf_loop.generation import BASE
from rlhf_loop.settings import Settings
from services.inference.engines.adapters import AdapterLoadError, Routing
from services.inference.engines.vllm import Replica, ReplicaSet, completion_tokens
from services.inference.engines.vllm_adapters import VllmAdapters


def test_requests_rotate_over_the_replicas_serving_the_adapter_only() -> None:
    replicas = ReplicaSet(["http://a", "http://b", "http://c"])
    a, b, c = replicas.replicas
    a.serving, b.serving, c.serving = frozenset({BASE, "x"}), frozenset({BASE}), frozenset({BASE, "x"})
    firsts = [replicas.serving("x")[0].url for _ in range(4)]  # none healthy yet: every one that has it
    assert firsts == ["http://a", "http://c", "http://a", "http://c"]
    assert {r.url for r in replicas.serving("x")} == {"http://a", "http://c"} and replicas.serving("y") == []
    assert not replicas.covers(["x"])  # nobody has answered yet
    a.healthy = True
    assert replicas.covers([BASE, "x"]) and not replicas.covers(["y"])
    assert [r.url for r in replicas.serving("x")] == ["http://a"]  # the healthy one only
    assert replicas.status(["x"])[1] == {"url": "http://b", "healthy": False, "missing": ["x"], "refused": {}}


def test_completion_tokens_leave_out_the_end_token_as_the_in_process_engine_does() -> None:
    assert completion_tokens({"completion_tokens": 9}, {"finish_reason": "stop", "stop_reason": None}) == 8
    assert completion_tokens({"completion_tokens": 9}, {"finish_reason": "length", "stop_reason": None}) == 9
    assert completion_tokens({"completion_tokens": 9}, {"finish_reason": "stop", "stop_reason": "###"}) == 9
    assert completion_tokens({}, {"finish_reason": "stop"}) == 0


def test_the_vllm_engine_needs_replica_urls() -> None:
    with pytest.raises(ValidationError, match="VLLM_URLS"):
        Settings(serving={"engine": "vllm"})
    s = Settings(serving={"engine": "vllm", "vllm_urls": " http://a:8000/, http://b:8000 ,"})
    assert s.serving.replica_urls == ["http://a:8000", "http://b:8000"]


class FakeReplicas:
    """vLLM's adapter endpoints as the servers answer them; ``refuse`` holds (host, adapter) pairs to refuse."""

    def __init__(self, hosts: list[str]) -> None:
        self.loaded: dict[str, set[str]] = {h: set() for h in hosts}
        self.refuse: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("down", request=request)
        if request.url.path == "/v1/models":
            data = [{"id": "/m", "parent": None}] + [{"id": a, "parent": "/m"} for a in sorted(self.loaded[host])]
            return httpx.Response(200, json={"data": data})
        name = json.loads(request.content)["lora_name"]
        self.calls.append((host, request.url.path, name))
        if request.url.path == "/v1/load_lora_adapter":
            if (host, name) in self.refuse:
                return httpx.Response(500, json={"error": {"message": "LoRA rank 16 is greater than max_lora_rank 8"}})
            self.loaded[host].add(name)
            return httpx.Response(200, text="Success")
        self.loaded[host].discard(name)
        return httpx.Response(200, text="Success")


def orchestration(grace_s: float = 0.0) -> tuple[FakeReplicas, ReplicaSet, VllmAdapters]:
    fake = FakeReplicas(["a", "b"])
    replicas = ReplicaSet(["http://a", "http://b"])
    return fake, replicas, VllmAdapters(replicas, 5, grace_s, transport=httpx.MockTransport(fake))


def test_an_adapter_is_on_every_replica_before_routing_and_retired_ones_are_unloaded() -> None:
    fake, replicas, adapters = orchestration()
    adapters.deploy(BASE, None)
    assert replicas.covers([BASE]) and replicas.replicas[0].base_name == "/m"
    adapters.deploy("one", Path("/art/one"))
    assert adapters.routing == Routing("one") and fake.loaded == {"a": {"one"}, "b": {"one"}}
    adapters.deploy("two", Path("/art/two"))
    assert fake.loaded == {"a": {"two"}, "b": {"two"}}  # grace 0: "one" is unloaded at once
    loads = [c for c in fake.calls if c[1] == "/v1/load_lora_adapter"]
    assert [c[2] for c in loads] == ["one", "one", "two", "two"]


def test_a_refusing_replica_gets_no_requests_for_that_adapter_and_none_refusing_changes_nothing() -> None:
    fake, replicas, adapters = orchestration(grace_s=3600)
    adapters.deploy("one", Path("/art/one"))
    fake.refuse.add(("b", "wide"))
    adapters.deploy("one", None, "wide", Path("/art/wide"), 0.5)
    a, b = replicas.replicas
    assert adapters.routing == Routing("one", "wide", 0.5)
    assert replicas.serving("wide") == [a] and {r.url for r in replicas.serving("one")} == {a.url, b.url}
    assert "max_lora_rank" in b.refused["wide"] and replicas.status(["one", "wide"])[1]["missing"] == ["wide"]
    adapters.reconcile()  # a refusal is not retried on every poll
    assert [c for c in fake.calls if c == ("b", "/v1/load_lora_adapter", "wide")] == [
        ("b", "/v1/load_lora_adapter", "wide")
    ]
    fake.refuse |= {("a", "bad"), ("b", "bad")}
    with pytest.raises(AdapterLoadError, match="no reachable vLLM replica"):
        adapters.deploy("bad", Path("/art/bad"))
    assert adapters.routing == Routing("one", "wide", 0.5)


def test_a_restarted_replica_gets_the_served_adapters_back_before_requests() -> None:
    fake, replicas, adapters = orchestration()
    adapters.deploy("one", Path("/art/one"))
    fake.down.add("b")
    adapters.reconcile()
    assert replicas.serving("one") == [replicas.replicas[0]] and not replicas.replicas[1].healthy
    fake.down.clear()
    fake.loaded["b"] = set()  # it came back empty
    adapters.reconcile()
    assert fake.loaded["b"] == {"one"} and len(replicas.serving("one")) == 2


@pytest.mark.allow_error_logs  # the refused reload is logged as an error, by design
def test_a_restarted_replica_does_not_get_files_altered_since_the_deployment(tmp_path: Path) -> None:
    from rlhf_loop import metrics as m
    from rlhf_loop.artifacts import dir_sha256

    adapter = tmp_path / "one"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    fake, replicas, adapters = orchestration()
    adapters.deploy("one", adapter, hashes={"one": dir_sha256(adapter)})
    (adapter / "adapter_model.safetensors").write_bytes(b"swapped")  # after the verified load
    refusals = m.ADAPTER_VERIFICATION_FAILURES.labels("serving", "hash_mismatch")
    before = refusals._value.get()
    fake.loaded["b"] = set()  # replica b restarted empty
    adapters.reconcile()
    assert fake.loaded == {"a": {"one"}, "b": set()}  # b does not load the altered files; a keeps its verified copy
    assert replicas.serving("one") == [replicas.replicas[0]] and refusals._value.get() == before + 1


def test_replica_serving_sets_are_replaced_not_mutated() -> None:
    r = Replica("http://a", serving=frozenset({BASE}))
    before = r.serving
    r.serving = r.serving | {"x"}
    assert before == frozenset({BASE})
