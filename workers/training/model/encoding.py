"""Texts to token ids the way the serving engine sees them: the prompt in the model's chat format,
the response followed by the end token, both fitted into the context window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_loop.models.generator import format_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Encoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
        self.tokenizer = tokenizer
        cfg = model.config
        self.max_positions = int(getattr(cfg, "n_positions", None) or cfg.max_position_embeddings)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)

    def prompt(self, text: str) -> list[int]:
        return self.tokenizer(format_prompt(self.tokenizer, text), add_special_tokens=False)["input_ids"]

    def response(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def fit(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
        """Both whole when they fit the window. Otherwise the response keeps what the prompt leaves of the
        window, and at least half of it, and the prompt its tail that still fits: a response cut when it
        need not be loses its end token, where the reward model reads its score."""
        window = self.max_positions
        response = response[: max(window - len(prompt), window // 2)]
        return prompt[-(window - len(response)) :], response

    def pair(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        return self.fit(self.prompt(prompt), self.response(response))
