"""LIGHT (httpx, no torch): hot-swap on vLLM replicas, behind the same interface as the in-process
AdapterManager (``route``, ``active``, ``routing``, ``deploy``, ``loaded``) so the routes and the
DeploymentWatcher do not know which engine serves.

Order of a deployment: load the adapter into every replica (``/v1/load_lora_adapter`` with the registry's
path, which the replicas see on the adapter volume, read-only), and only then switch routing. A replica
that refuses the adapter (its own limits: rank, target modules, memory) keeps serving what it served and
is never sent requests for that adapter (ReplicaSet.serving), asked again at the next deployment change
or after it restarts; it shows in ``rlhf_vllm_replica_missing_adapters``
and in /readyz. The deployment fails, and nothing changes, only when no replica could load an adapter.
A retired adapter is unloaded after ``unload_grace_s``, so requests routed to it just before the swap
still complete. ``reconcile`` (every poll) reloads what a restarted replica lost.

Each adapter's files are verified against the sha256 its registry row recorded (and safetensors only)
before the first load request: the replicas read the very files that check covers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.artifacts import AdapterRefused, verify_adapter
from rlhf_loop.generation import BASE
from rlhf_loop.settings import Settings
from services.inference.engines.adapters import AdapterLoadError, AdapterUnverified, Routing
from services.inference.engines.vllm import Replica, ReplicaSet, VllmEngine

log = logging.getLogger(__name__)


class VllmAdapters:
    """Which adapters each vLLM replica has loaded, and which one new requests get."""

    def __init__(
        self,
        replicas: ReplicaSet,
        load_timeout_s: float,
        unload_grace_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._replicas = replicas
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=load_timeout_s), transport=transport)
        self._grace_s = unload_grace_s
        self._lock = threading.Lock()  # one deployment or reconcile at a time
        self._routing = Routing(BASE)  # replaced whole, so a reader never sees half a deployment
        self._sources: dict[str, tuple[str, str | None]] = {}
        """Adapter id -> (artifact path, recorded sha256): to reload into a restarted replica, verified again."""
        self._retired: dict[str, float] = {}  # adapter id -> when it stopped being routed to (monotonic)
        self.deployed = False  # a deploy() succeeded: the pointers' adapters are on a replica (readiness)

    @property
    def active(self) -> str:
        return self._routing.active

    @property
    def routing(self) -> Routing:
        return self._routing

    def route(self, user_ref: str) -> str:
        """The adapter serving ``user_ref``: the canary for its share of users (stable per user), else active."""
        return self._routing.route(user_ref)

    @property
    def loaded(self) -> list[str]:
        """Adapters loaded on at least one replica (BASE first)."""
        names = set().union(*(r.serving for r in self._replicas.replicas)) - {BASE}
        return [BASE, *sorted(names)]

    def served(self) -> list[str]:
        """The adapters requests are routed to now (active, and the canary if any)."""
        return [a for a in (self._routing.active, self._routing.canary) if a is not None]

    def deploy(
        self,
        active: str,
        active_path: Path | None,
        canary: str | None = None,
        canary_path: Path | None = None,
        share: float = 0.0,
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        """Serve ``active`` to everyone but ``share`` of users, who get ``canary``, once every replica that can
        has loaded both, each first verified against its recorded content hash in ``hashes`` (by adapter id).
        Raises AdapterLoadError (AdapterUnverified), changing nothing, when some adapter is on no replica."""
        with self._lock:
            self._probe()
            for adapter_id, path in ((active, active_path), (canary, canary_path)):
                if adapter_id is None or adapter_id == BASE:
                    continue
                if path is not None:
                    self._sources[adapter_id] = (str(path), (hashes or {}).get(adapter_id))
                for replica in self._replicas.replicas:  # a new deployment asks refusing replicas once more
                    replica.refused = {a: why for a, why in replica.refused.items() if a != adapter_id}
                try:
                    self._load_everywhere(adapter_id, always_verify=path is not None)
                except AdapterRefused as e:
                    raise AdapterUnverified(f"adapter {adapter_id!r} refused: {e}") from e
            wanted = [a for a in (active, canary) if a is not None]
            if not self._replicas.covers(wanted):
                self._export()
                raise AdapterLoadError(f"no reachable vLLM replica serves {wanted}: {self._replicas.status(wanted)}")
            previous, self._routing = self._routing, Routing(active, canary, share if canary else 0.0)
            self.deployed = True
            now = time.monotonic()
            for adapter_id in {previous.active, previous.canary} - set(wanted) - {None, BASE}:
                self._retired[adapter_id] = now
            for adapter_id in wanted:
                self._retired.pop(adapter_id, None)
            self._unload_retired()
            self._export()

    def reconcile(self) -> None:
        """Re-read every replica; reload what a restarted one lost (its files verified again first: they may
        have changed since the deployment); unload adapters retired long enough."""
        with self._lock:
            self._probe()
            for adapter_id in self.served():
                if adapter_id == BASE:
                    continue
                try:
                    self._load_everywhere(adapter_id)
                except AdapterRefused as e:  # counted; the replicas that still hold the verified load keep it
                    log.error("not reloading adapter %s into the vLLM replicas that lost it: %s", adapter_id, e)
            self._unload_retired()
            self._export()

    def close(self) -> None:
        self._client.close()

    def _probe(self) -> None:
        """``/v1/models`` of every replica: reachable or not, its base model's name, the adapters it has."""
        for replica in self._replicas.replicas:
            try:
                response = self._client.get(f"{replica.url}/v1/models", timeout=2.0)
                response.raise_for_status()
                models = response.json()["data"]
            except (httpx.HTTPError, KeyError, ValueError) as e:
                if replica.healthy:
                    log.warning("vLLM replica %s unreachable: %s", replica.url, e)
                replica.healthy = False
                continue
            if not replica.healthy:
                replica.refused = {}  # back (maybe restarted, maybe with other limits): try its refusals again
            replica.healthy = True
            replica.base_name = next((d["id"] for d in models if not d.get("parent")), replica.base_name)
            replica.serving = frozenset({BASE} | {d["id"] for d in models if d.get("parent")})

    def _load_everywhere(self, adapter_id: str, always_verify: bool = False) -> None:
        """Load ``adapter_id`` into every reachable replica lacking it. Its files are checked against the
        recorded hash first (raises AdapterRefused) whenever some replica lacks it, or ``always_verify``."""
        if adapter_id not in self._sources:
            raise AdapterLoadError(f"adapter {adapter_id!r} is not loaded and no path was given")
        path, sha256 = self._sources[adapter_id]
        lacking = [
            r
            for r in self._replicas.replicas
            if r.healthy and adapter_id not in r.serving and adapter_id not in r.refused
        ]
        if sha256 is not None and (lacking or always_verify):
            verify_adapter(Path(path), sha256, consumer="serving")
        for replica in lacking:
            self._load(replica, adapter_id, path)

    def _load(self, replica: Replica, adapter_id: str, path: str) -> None:
        try:
            response = self._client.post(
                f"{replica.url}/v1/load_lora_adapter", json={"lora_name": adapter_id, "lora_path": path}
            )
        except httpx.HTTPError as e:
            log.warning("vLLM replica %s unreachable while loading %s: %s", replica.url, adapter_id, e)
            replica.healthy = False
            m.VLLM_ADAPTER_LOADS.labels(replica.url, "error").inc()
            return
        if response.status_code == 200 or "already been loaded" in response.text:
            replica.serving = replica.serving | {adapter_id}
            m.VLLM_ADAPTER_LOADS.labels(replica.url, "ok").inc()
            log.info("vLLM replica %s loaded adapter %s", replica.url, adapter_id)
            return
        why = f"HTTP {response.status_code}: {response.text[:300]}"
        replica.refused = {**replica.refused, adapter_id: why}  # replaced whole: /readyz reads it concurrently
        m.VLLM_ADAPTER_LOADS.labels(replica.url, "refused").inc()
        log.warning("vLLM replica %s refused adapter %s: %s", replica.url, adapter_id, why)

    def _unload_retired(self) -> None:
        now, served = time.monotonic(), set(self.served())
        for adapter_id, since in list(self._retired.items()):
            if adapter_id in served or now - since < self._grace_s:
                continue
            for replica in self._replicas.replicas:
                if adapter_id not in replica.serving:
                    continue
                replica.serving = replica.serving - {adapter_id}  # no new request goes there from now on
                try:
                    self._client.post(f"{replica.url}/v1/unload_lora_adapter", json={"lora_name": adapter_id})
                except httpx.HTTPError as e:  # the replica is away; it lost the adapter or gets it dropped later
                    log.warning("vLLM replica %s: unloading %s failed: %s", replica.url, adapter_id, e)
            del self._retired[adapter_id]
            log.info("unloaded retired adapter %s from the vLLM replicas", adapter_id)

    def _export(self) -> None:
        served = self.served()
        for replica in self._replicas.replicas:
            m.VLLM_REPLICA_UP.labels(replica.url).set(1 if replica.healthy else 0)
            m.VLLM_REPLICA_MISSING_ADAPTERS.labels(replica.url).set(sum(a not in replica.serving for a in served))


def build_vllm_engine(settings: Settings, sessions: sessionmaker[Session], closers: list) -> tuple:
    """The vLLM client, its adapter orchestration and the deployment watcher that drives it; their stop steps go
    to ``closers``. Returns (engine, adapters, base model name, replicas). Loads no model in this process."""
    from services.inference.deployment import DeploymentWatcher

    serving = settings.serving
    replicas = ReplicaSet(serving.replica_urls)
    engine = VllmEngine(replicas, serving.vllm_timeout_s)
    closers.append(engine.aclose)
    adapters = VllmAdapters(replicas, serving.vllm_load_timeout_s, serving.vllm_unload_grace_s)
    closers.append(adapters.close)
    watcher = DeploymentWatcher(sessions, adapters, settings.redis.url, settings.promotion.poll_interval_s).start()
    closers.append(watcher.stop)
    reported = next((r.base_name for r in replicas.replicas if r.base_name), None)
    base_model = settings.model.base_model or (Path(reported).name if reported else "vllm")
    log.info("serving through vLLM replicas %s with adapters %s", serving.replica_urls, adapters.routing)
    return engine, adapters, base_model, replicas
