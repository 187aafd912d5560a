"""Tensor math of batched sampling: small pure functions with shape comments."""

from __future__ import annotations

import torch


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists to one length: (ids (B, T), attention_mask (B, T))."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token: (B, T) -> (B, T)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's nucleus. logits (B, V), top_p (B,) -> (B, V).

    The most likely token always survives, so a row is never left with nothing to sample.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)  # (B, V)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p[:, None]  # mass before this token already >= p
    drop[:, 0] = False
    mask = torch.zeros_like(drop).scatter(-1, order, drop)  # back to vocabulary order
    return logits.masked_fill(mask, float("-inf"))


class RowNoise:
    """Uniform noise for Gumbel-max sampling from each row's own seeded generator, so a request's
    sample depends on its seed alone, not on the batch it shares. Generated in chunks of steps
    (bounded memory: about ``budget`` floats at once) to keep per-step Python work off the loop."""

    def __init__(self, seeds: list[int], vocab: int, steps: int, budget: int = 1 << 24) -> None:
        self._generators = [torch.Generator().manual_seed(s) for s in seeds]
        self._vocab = vocab
        self._chunk = max(1, min(steps, budget // max(1, len(seeds) * vocab)))
        self._buffer = torch.empty(0)
        self._i = self._chunk

    def next(self) -> torch.Tensor:
        """(B, V) uniform noise for the next step."""
        if self._i == self._chunk:
            self._buffer = torch.stack(
                [torch.rand(self._chunk, self._vocab, generator=g) for g in self._generators], dim=1
            )  # (chunk, B, V)
            self._i = 0
        self._i += 1
        return self._buffer[self._i - 1]


def sample_next(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """One token per row. logits (B, V), temperature (B,), top_p (B,), uniform (B, V) -> (B,).

    Temperature 0 is greedy; otherwise Gumbel-max over the temperature-scaled, nucleus-filtered logits.
    """
    logits = logits.float()
    greedy = logits.argmax(-1)  # (B,)
    scaled = logits / temperature.clamp(min=1e-5)[:, None]  # (B, V)
    if bool((top_p < 1.0).any()):
        scaled = top_p_filter(scaled, top_p)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))  # (B, V)
    sampled = (scaled + gumbel.to(scaled.device)).argmax(-1)  # (B,)
    return torch.where(temperature > 0, sampled, greedy)
