"""How a (prompt, response) is fitted into the model's context window for the reward model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workers.training.model.encoding import Encoder

WINDOW = 96


@pytest.fixture
def enc() -> Encoder:
    tokenizer = SimpleNamespace(eos_token_id=0, pad_token_id=1)
    return Encoder(tokenizer, SimpleNamespace(config=SimpleNamespace(n_positions=WINDOW)))


def ids(n: int, start: int = 10) -> list[int]:
    return list(range(start, start + n))


def test_a_pair_that_fits_the_window_stays_whole_even_past_half_of_it(enc: Encoder) -> None:
    prompt, response = ids(24), ids(60, 100) + [0]  # 85 tokens: the response's end token is where it is scored
    assert enc.fit(prompt, response) == (prompt, response)


def test_a_long_response_keeps_what_the_prompt_leaves_and_the_whole_prompt(enc: Encoder) -> None:
    prompt, response = ids(20), ids(90, 100)
    fitted_prompt, fitted_response = enc.fit(prompt, response)
    assert fitted_prompt == prompt
    assert fitted_response == response[: WINDOW - 20]


def test_a_long_prompt_leaves_the_response_half_the_window_and_keeps_its_own_tail(enc: Encoder) -> None:
    prompt, response = ids(80), ids(70, 100)
    fitted_prompt, fitted_response = enc.fit(prompt, response)
    assert fitted_response == response[: WINDOW // 2]
    assert fitted_prompt == prompt[-(WINDOW - WINDOW // 2) :]
    assert len(fitted_prompt) + len(fitted_response) == WINDOW


def test_a_short_response_after_a_long_prompt_leaves_the_prompt_the_rest(enc: Encoder) -> None:
    prompt, response = ids(120), ids(10, 200)
    fitted_prompt, fitted_response = enc.fit(prompt, response)
    assert fitted_response == response
    assert fitted_prompt == prompt[-(WINDOW - 10) :]
