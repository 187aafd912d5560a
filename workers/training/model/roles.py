"""One base model in memory, four roles: policy (LoRA adapter ``default``), reference (the same
model with the adapter disabled), value (a scalar head on the policy's last hidden state) and
reward (LoRA adapter ``reward`` plus its own scalar head, run with PEFT's per-row adapter names).

Sequences are packed as a left-padded prompt block of width P followed by a right-padded response
block of width R, so response token j sits at column P + j and is predicted from column P - 1 + j.
The model stays in eval mode throughout (no dropout: PPO's ratios must compare like with like).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel

REWARD = "reward"
POLICY = "default"


@dataclass
class Packed:
    ids: torch.Tensor  # (B, P+R)
    mask: torch.Tensor  # (B, P+R) attention mask
    positions: torch.Tensor  # (B, P+R)
    tokens: torch.Tensor  # (B, R) response tokens, pad after the end
    resp_mask: torch.Tensor  # (B, R) float, 1.0 on real response tokens
    width: int  # P

    @property
    def last(self) -> torch.Tensor:
        """(B,) column of each row's last real token."""
        return self.width - 1 + self.resp_mask.sum(1).long()


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device: str) -> Packed:
    """Pack token id lists (each response non-empty) into one batch on ``device``."""
    if any(not r for r in responses):
        raise ValueError("every response needs at least one token")
    width, resp_width = max(map(len, prompts)), max(map(len, responses))
    n = len(prompts)
    ids = torch.full((n, width + resp_width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width + resp_width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, width - len(p) : width] = torch.tensor(p)
        ids[i, width : width + len(r)] = torch.tensor(r)
        mask[i, width - len(p) : width + len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Packed(
        ids.to(device),
        mask.to(device),
        positions.to(device),
        ids[:, width:].to(device),
        mask[:, width:].float().to(device),
        width,
    )


class ScalarHead(nn.Module):
    """hidden (B, T, H) -> (B, T) scalar per position."""

    def __init__(self, hidden: int, init_std: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        nn.init.normal_(self.linear.weight, std=init_std) if init_std else nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


def autocast(device: str):  # noqa: ANN201 - a context manager
    """bf16 autocast on CUDA, nothing on CPU (CPU bf16 is slower than fp32 for models this small)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def forward(model: PeftModel, packed: Packed, adapter: str | None = POLICY) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass as one role: ``POLICY``, ``REWARD`` or ``None`` (the reference: adapters disabled).
    The active adapter runs as is (and can be trained); another one through per-row adapter names.
    Returns response logits (B, R, V) and last-layer hidden states (B, P+R, H)."""
    mixed = adapter is not None and adapter != model.active_adapter
    kwargs = {"adapter_names": [adapter] * len(packed.ids)} if mixed else {}
    context = model.disable_adapter() if adapter is None else nullcontext()
    with context, autocast(str(packed.ids.device)):
        out = model(
            input_ids=packed.ids,
            attention_mask=packed.mask,
            position_ids=packed.positions,
            output_hidden_states=True,
            use_cache=False,
            **kwargs,
        )
    logits = out.logits[:, packed.width - 1 : -1, :]  # (B, R, V): column P-1+j predicts token j
    return logits, out.hidden_states[-1]


def last_hidden(model: PeftModel, packed: Packed, adapter: str | None) -> torch.Tensor:
    """Last-layer hidden states (B, P+R, H) as one role, for roles that need no logits (the reward
    model). The active adapter, or none, runs through the transformer trunk alone: the LM head's
    vocabulary projection over every position is a large share of a small model's forward FLOPs. Another
    adapter needs PEFT's per-row adapter names, so it goes through :func:`forward`."""
    if adapter is not None and adapter != model.active_adapter:
        return forward(model, packed, adapter)[1]
    trunk = model.get_base_model().base_model  # GPT2Model, Qwen2Model, LlamaModel, ...: no LM head
    context = model.disable_adapter() if adapter is None else nullcontext()
    with context, autocast(str(packed.ids.device)):
        out = trunk(input_ids=packed.ids, attention_mask=packed.mask, position_ids=packed.positions, use_cache=False)
    return out.last_hidden_state


def response_values(head: ScalarHead, hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Value of the state before each response token: hidden (B, P+R, H) -> (B, R)."""
    return head(hidden[:, packed.width - 1 : -1, :])


def sequence_scores(head: ScalarHead, hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Scalar at each row's last real token: hidden (B, P+R, H) -> (B,)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, packed.last, :][:, None, :]).squeeze(-1)
