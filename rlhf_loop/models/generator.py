"""Batched generation with a KV cache over one base model and any number of LoRA adapters.

Rows of one batch may use different adapters (PEFT mixed-adapter batches, ``adapter_names``) and
different sampling parameters; each row stops at EOS or at its own ``max_new_tokens``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlhf_loop.generation import BASE, Generation, GenerationRequest
from rlhf_loop.models.sampling import RowNoise, left_pad, positions, sample_next

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in mixed batches


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The model's own chat format when it has one, else the prompt followed by a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


class BatchGenerator:
    """Runs one batch at a time; not thread-safe (the micro-batcher owns the only caller thread)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.max_positions = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids, left-truncated so at least one completion token fits the context window."""
        text = format_prompt(self.tokenizer, request.prompt)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-(self.max_positions - 1) :]

    def budget(self, prompt_ids: list[int], request: GenerationRequest) -> int:
        """Completion tokens this request may produce: its own limit, capped by the context window."""
        return max(1, min(request.max_new_tokens, self.max_positions - len(prompt_ids)))

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Generate one completion per request, in order."""
        rows = [self.encode(r) for r in requests]
        ids, mask = left_pad(rows, self.pad_id)  # (B, T)
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = positions(mask)
        temperature = torch.tensor([r.temperature for r in requests], device=self.device)  # (B,)
        top_p = torch.tensor([r.top_p for r in requests], device=self.device)  # (B,)
        limits = [self.budget(row, r) for row, r in zip(rows, requests, strict=True)]
        limit = torch.tensor(limits, device=self.device)  # (B,)
        noise = RowNoise([r.seed for r in requests], self.vocab_size, max(limits))
        extra = self._adapter_kwargs(requests)

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
        done = torch.zeros(len(requests), dtype=torch.bool, device=self.device)  # (B,)
        produced: list[torch.Tensor] = []
        for step in range(int(limit.max())):
            token = sample_next(out.logits[:, -1, :], temperature, top_p, noise.next())  # (B,)
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            produced.append(token)
            done |= (token == self.eos_id) | (limit <= step + 1)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, T+1)
            pos = (pos[:, -1:] + 1).clamp(max=self.max_positions - 1)  # (B, 1); finished rows may sit at the edge
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=pos,
                cache=out.cache,
                use_cache=True,
                **extra,
            )
        columns = torch.stack(produced, dim=1).tolist()  # (B, steps)
        return [self._decode(rows[i], columns[i], limits[i]) for i in range(len(requests))]

    def _decode(self, prompt_ids: list[int], tokens: list[int], limit: int) -> Generation:
        produced = tokens[:limit]
        if self.eos_id in produced:
            produced = produced[: produced.index(self.eos_id) + 1]
        completion = produced[:-1] if produced[-1:] == [self.eos_id] else produced
        text = self.tokenizer.decode(completion, skip_special_tokens=True).strip()
        return Generation(
            text=text, prompt_tokens=len(prompt_ids), completion_tokens=len(completion), token_ids=tuple(produced)
        )

    def _adapter_kwargs(self, requests: list[GenerationRequest]) -> dict[str, list[str]]:
        if not hasattr(self.model, "peft_config"):
            return {}
        return {"adapter_names": [_PEFT_BASE if r.adapter_id == BASE else r.adapter_id for r in requests]}
