"""LIGHT (httpx, no torch): generation on vLLM replicas through their OpenAI-compatible API.

The API process holds no model when this engine serves: each request goes to one replica that has the
routed adapter loaded, with the adapter id as the model name (the bare base model under the name the
replica reports in ``/v1/models``), and the request's seed and sampling parameters. The chat endpoint is
used so that the replica applies the model's own chat template, exactly as the in-process engine does
with the tokenizer's (the API replica has no tokenizer to render it with).

Which replica may serve which adapter is :class:`ReplicaSet` state, written by the adapter orchestration
(``vllm_adapters``) and read here; a replica that could not load an adapter is never sent requests for it.
A replica that fails a request (connection error, timeout, 5xx) is passed over for the next one serving the
same adapter, so one replica going away fails no request while another serves that adapter.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import httpx

from rlhf_loop import metrics as m
from rlhf_loop.generation import BASE, Generation, GenerationRequest


class EngineUnavailable(RuntimeError):
    """No vLLM replica could serve the request (all down, or none has its adapter)."""


class ReplicaRefused(RuntimeError):
    """A replica answered a completion request with a 4xx: the request itself is at fault, not the replica."""


@dataclass
class Replica:
    """One vLLM server, as this API process knows it."""

    url: str
    base_name: str | None = None
    """The served base model's name (``/v1/models`` entry without a parent); None until first reached."""
    serving: frozenset[str] = frozenset()
    """Adapter ids requests may be sent here for (BASE included once reached); replaced whole, never mutated."""
    refused: dict[str, str] = field(default_factory=dict)
    """adapter id -> why this replica refused to load it (asked again at the next deployment change or after a
    restart); replaced whole, never mutated."""
    healthy: bool = False
    """The last call to this replica got an answer."""


class ReplicaSet:
    """The replicas and, per adapter, the ones that serve it."""

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("the vllm engine needs at least one replica URL")
        self.replicas = [Replica(u.rstrip("/")) for u in urls]
        self._turn = itertools.count()

    def serving(self, adapter_id: str) -> list[Replica]:
        """Healthy replicas that serve ``adapter_id``, rotated by one on every call (round robin); when none is
        healthy, every one that has it (health is only as fresh as the last call)."""
        having = [r for r in self.replicas if adapter_id in r.serving]
        able = [r for r in having if r.healthy] or having
        if not able:
            return []
        start = next(self._turn) % len(able)
        return able[start:] + able[:start]

    def covers(self, adapter_ids: list[str]) -> bool:
        """Every one of ``adapter_ids`` has at least one healthy replica serving it."""
        return all(any(a in r.serving and r.healthy for r in self.replicas) for a in adapter_ids)

    def status(self, adapter_ids: list[str]) -> list[dict]:
        """Per replica: reachable, and which of ``adapter_ids`` (the served adapters) it lacks and why."""
        return [
            {
                "url": r.url,
                "healthy": r.healthy,
                "missing": sorted(a for a in adapter_ids if a not in r.serving),
                "refused": dict(r.refused),
            }
            for r in self.replicas
        ]


def completion_tokens(usage: dict, choice: dict) -> int:
    """Completion tokens as the in-process engine counts them: without the end token.

    vLLM counts the EOS token it stopped on (finish_reason "stop" with no stop string), the in-process engine
    does not; a stop on a configured string or on the length limit has no end token to remove.
    """
    n = int(usage.get("completion_tokens", 0))
    ended_on_eos = choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
    return max(0, n - 1) if ended_on_eos and n else n


class VllmEngine:
    """``generate(request) -> Generation``, the interface the routes use for every engine."""

    def __init__(self, replicas: ReplicaSet, timeout_s: float, max_connections: int = 256) -> None:
        self.replicas = replicas
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def generate(self, request: GenerationRequest) -> Generation:
        """One completion from a replica serving ``request.adapter_id``; the next one on a replica failure.

        Raises EngineUnavailable when no replica serving the adapter answered, ReplicaRefused on a 4xx.
        """
        candidates = self.replicas.serving(request.adapter_id)
        if not candidates:
            raise EngineUnavailable(f"no vLLM replica serves adapter {request.adapter_id!r}")
        errors = []
        for replica in candidates:
            try:
                result = await self._complete(replica, request)
            except httpx.TransportError as e:  # unreachable: skip it until the next probe answers
                replica.healthy = False
                m.VLLM_REQUESTS.labels(replica.url, "error").inc()
                errors.append(f"{replica.url}: {e!r}")
                continue
            except (httpx.HTTPError, EngineUnavailable) as e:
                m.VLLM_REQUESTS.labels(replica.url, "error").inc()
                errors.append(f"{replica.url}: {e!r}")
                continue
            m.VLLM_REQUESTS.labels(replica.url, "ok").inc()
            m.VLLM_ADAPTER_REQUESTS.labels(replica.url, request.adapter_id).inc()
            return result
        raise EngineUnavailable("every vLLM replica serving the adapter failed: " + "; ".join(errors))

    async def _complete(self, replica: Replica, request: GenerationRequest) -> Generation:
        model = replica.base_name if request.adapter_id == BASE else request.adapter_id
        body = {
            "model": model,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        response = await self._client.post(f"{replica.url}/v1/chat/completions", json=body)
        if response.status_code == 404:  # the replica lost the adapter (a restart): the reconcile reloads it
            replica.serving = replica.serving - {request.adapter_id}
            raise EngineUnavailable(f"{model!r} is not loaded there: {response.text[:200]}")
        if response.status_code >= 500:
            raise EngineUnavailable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise ReplicaRefused(f"vLLM refused the request ({response.status_code}): {response.text[:300]}")
        out = response.json()
        choice, usage = out["choices"][0], out.get("usage") or {}
        text = (choice["message"].get("content") or "").strip()
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=completion_tokens(usage, choice),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
