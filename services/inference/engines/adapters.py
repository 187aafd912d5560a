"""LoRA adapters in the serving model: validate on CPU, attach between batches, switch atomically.

A hot-swap never fails a request: the new adapter is read and checked on the caller's thread,
attached to the model on the batcher thread between two batches, and only then becomes the one
new requests are routed to. Requests already queued keep the adapter id they were routed with;
an adapter is detached only when it is neither active, canary, nor among the recent slots. An adapter
given with its recorded content hash (the deployment watcher gives every one the registry's) is verified
first (``rlhf_loop.artifacts.verify_adapter``: the hash, safetensors only) and refused when it differs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_loop.artifacts import AdapterRefused, verify_adapter
from rlhf_loop.generation import BASE

if TYPE_CHECKING:
    from rlhf_loop.models.generator import BatchGenerator
    from services.inference.engines.batching import MicroBatcher

COMPAT_KEYS = ("peft_type", "task_type", "r", "lora_alpha", "target_modules")


class AdapterLoadError(RuntimeError):
    """The adapter could not be read or attached."""


class AdapterIncompatible(AdapterLoadError):
    """The adapter does not fit the served base model or the adapters already served."""


class AdapterUnverified(AdapterLoadError):
    """The adapter's files are not the ones the registry recorded, or are not safetensors."""


def read_adapter_config(path: Path) -> dict:
    """The PEFT adapter_config.json of ``path``; raises AdapterLoadError when missing or unreadable."""
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterLoadError(f"cannot read adapter config under {path}: {e}") from e


def check_compatible(config: dict, module_names: set[str], reference: dict | None) -> None:
    """Raise AdapterIncompatible naming the first key that differs.

    ``module_names``: module names of the base model; each target module must match one as PEFT does (the
    whole name, or a suffix after a dot: "c_attn" and "transformer.h.0.attn.c_attn" both name one);
    ``reference``: the config of an adapter already served, whose shape-defining keys must match.
    """
    if config.get("peft_type") != "LORA":
        raise AdapterIncompatible(f"peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    missing = sorted(t for t in set(targets) if not any(n == t or n.endswith("." + t) for n in module_names))
    if missing:
        raise AdapterIncompatible(f"target_modules {missing} do not exist in the base model")
    if reference is not None:
        for key in COMPAT_KEYS:
            if _norm(config.get(key)) != _norm(reference.get(key)):
                raise AdapterIncompatible(f"{key} differs: {config.get(key)!r} != served {reference.get(key)!r}")


def _norm(value: object) -> object:
    return sorted(value) if isinstance(value, list | set | tuple) else value


def in_canary(user_ref: str, share: float, salt: str = "") -> bool:
    """Whether ``user_ref`` falls in the first ``share`` of users by a hash salted with ``salt`` (the same
    answer in every replica; a new salt draws a new, independent set of users)."""
    digest = hashlib.sha256(f"{salt}\x00{user_ref}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share  # bucket uniform in [0, 1)


@dataclass(frozen=True)
class Routing:
    """Which adapter serves whom: ``share`` of users (by a hash of user_ref) get ``canary``, the rest ``active``.

    The hash is salted with the canary's adapter id: an adapter is a canary at most once (the registry's
    states), so every deployment puts a fresh, independent share of users in the canary (no user is
    always the guinea pig, and one deployment's effects on its users do not carry into the next
    comparison), while every replica still routes a user the same way for the whole canary.
    """

    active: str
    canary: str | None = None
    share: float = 0.0

    def route(self, user_ref: str) -> str:
        if self.canary is not None and in_canary(user_ref, self.share, salt=self.canary):
            return self.canary
        return self.active


class AdapterManager:
    """Which adapters are attached to the engine's model, and which one new requests get."""

    def __init__(self, engine: BatchGenerator, batcher: MicroBatcher, slots: int = 4) -> None:
        self._engine = engine
        self._batcher = batcher
        self._slots = slots
        self._lock = threading.Lock()
        self._configs: OrderedDict[str, dict] = OrderedDict()  # attached adapters, least recent first
        self._routing = Routing(BASE)  # replaced whole, so a reader never sees half a deployment
        self.deployed = False  # a deploy() succeeded: the pointers' adapters are attached (readiness)
        self._module_names = {name for name, _ in engine.model.named_modules() if name}

    @property
    def active(self) -> str:
        return self._routing.active

    @property
    def routing(self) -> Routing:
        return self._routing

    def route(self, user_ref: str) -> str:
        """The adapter serving ``user_ref``: the canary for its share of users (stable per user), else active."""
        return self._routing.route(user_ref)

    def deploy(
        self,
        active: str,
        active_path: Path | None,
        canary: str | None = None,
        canary_path: Path | None = None,
        share: float = 0.0,
        timeout_s: float = 120.0,
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        """Serve ``active`` to everyone but ``share`` of users, who get ``canary``. Both are attached first (each
        verified against its recorded content hash in ``hashes``, by adapter id); on any error nothing changes
        (AdapterLoadError, AdapterIncompatible, AdapterUnverified)."""
        for adapter_id, path in ((active, active_path), (canary, canary_path)):
            if adapter_id is not None and adapter_id != BASE and adapter_id not in self._configs:
                if path is None:
                    raise AdapterLoadError(f"adapter {adapter_id!r} is not loaded and no path was given")
                self.attach(adapter_id, path, timeout_s, sha256=(hashes or {}).get(adapter_id))
        with self._lock:
            self._routing = Routing(active, canary, share if canary else 0.0)
            self.deployed = True
            for adapter_id in (canary, active):
                if adapter_id in self._configs:
                    self._configs.move_to_end(adapter_id)
        self._evict()

    @property
    def loaded(self) -> list[str]:
        return [BASE, *self._configs]

    def activate(self, adapter_id: str, path: Path | None = None, timeout_s: float = 120.0) -> None:
        """Make ``adapter_id`` the adapter new requests get, attaching it from ``path`` if needed.

        Raises AdapterIncompatible or AdapterLoadError and leaves the served adapter unchanged.
        """
        self.deploy(adapter_id, path, timeout_s=timeout_s)

    def attach(self, adapter_id: str, path: Path, timeout_s: float = 120.0, sha256: str | None = None) -> None:
        """Validate and attach an adapter without routing requests to it (canary, warm-up). With ``sha256`` (the
        registry's record) its files are verified first; raises AdapterUnverified when they differ."""
        if sha256 is not None:
            try:
                verify_adapter(Path(path), sha256, consumer="serving")
            except AdapterRefused as e:
                raise AdapterUnverified(f"adapter {adapter_id!r} refused: {e}") from e
        config = read_adapter_config(path)
        reference = next(iter(self._configs.values()), None)
        check_compatible(config, self._module_names, reference)
        try:
            self._batcher.call_between_batches(lambda: self._attach_now(adapter_id, Path(path))).result(timeout_s)
        except AdapterLoadError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise AdapterLoadError(f"attaching adapter {adapter_id!r} from {path} failed: {e}") from e
        with self._lock:
            self._configs[adapter_id] = config

    def _attach_now(self, adapter_id: str, path: Path) -> None:  # batcher thread only
        from peft import PeftModel

        model = self._engine.model
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=adapter_id)
        else:
            self._engine.model = PeftModel.from_pretrained(model, str(path), adapter_name=adapter_id).eval()

    def _evict(self) -> None:
        with self._lock:
            serving = {self._routing.active, self._routing.canary}
            victims = [a for a in self._configs if a not in serving][: max(0, len(self._configs) - self._slots)]
            for a in victims:
                del self._configs[a]
        for a in victims:
            self._batcher.call_between_batches(lambda a=a: self._engine.model.delete_adapter(a))
