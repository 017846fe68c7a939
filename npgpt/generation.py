"""Autoregressive generation: prefill the prompt once, then one position per new token, using the cache.

    prompt ids -> forward (fills the cache) -> logits of the last position
    repeat: process logits -> select a token -> stop? -> forward that one token (reads the cache)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ContextLengthError, SettingsError
from .sampling import Temperature, apply_processors, greedy, sample

# Why generation ended, on every result.
EOS = "eos"  # the model produced <|endoftext|>
LENGTH = "length"  # max_new_tokens were generated
CONTEXT = "context"  # the sequence filled the model's context window (n_positions tokens)


class Completion(str):
    """The generated text (a str), with the new token ids and why generation stopped."""

    ids: list[int]
    finish_reason: str

    def __new__(cls, text: str, ids: list[int], finish_reason: str):
        self = super().__new__(cls, text)
        self.ids, self.finish_reason = ids, finish_reason
        return self


class TokenCompletion(list):
    """The generated token ids (a list), with why generation stopped."""

    finish_reason: str

    def __init__(self, ids: list[int], finish_reason: str):
        super().__init__(ids)
        self.finish_reason = finish_reason


@dataclass
class Step:
    token_id: int
    text: str  # the text this token completes ("" while a UTF-8 character is unfinished, and for <|endoftext|>)
    finish_reason: str | None  # set on the last step


@dataclass
class Settings:
    max_new_tokens: int = 20
    temperature: float | None = None  # None or 0: greedy; > 0: sample
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, (int, np.integer)) or self.max_new_tokens < 0:
            raise SettingsError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if self.temperature is not None and not self.temperature >= 0:
            raise SettingsError(f"temperature must be >= 0, got {self.temperature!r}")

    @property
    def sampling(self) -> bool:
        return bool(self.temperature)

    def processors(self) -> list:
        return [Temperature(self.temperature)] if self.sampling and self.temperature != 1.0 else []


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt given as text or ids; an empty prompt starts from <|endoftext|>."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        ids = [int(i) for i in np.asarray(prompt, dtype=np.int64).reshape(-1)]
    return ids or [tokenizer.eot_id]


def stream_steps(model, prompt, **settings) -> Iterator[Step]:
    """Generate from one prompt, yielding a Step per new token as soon as it is chosen.

    Settings and the prompt are checked here, before the first step, so bad input fails at the call.
    """
    s = Settings(**settings)
    ids = prompt_ids(model.tokenizer, prompt)
    room = model.config.n_positions - len(ids)
    if room < 0:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens; the model's context is "
                                 f"{model.config.n_positions}; shorten the prompt")
    return _steps(model, ids, s, min(s.max_new_tokens, room))


def _steps(model, ids: list[int], s: Settings, steps: int) -> Iterator[Step]:
    if steps == 0:
        return
    decoder = model.tokenizer.stream_decoder()
    rngs = [np.random.default_rng(s.seed)]
    tokens = _decode_loop(model, np.array([ids]), steps, s.processors(), s.sampling, rngs)
    for n, token in enumerate(tokens, 1):
        token = int(token[0])
        if token == model.tokenizer.eot_id:
            yield Step(token, decoder.flush(), EOS)
            return
        text = decoder.feed(token)
        if n == steps:
            reason = LENGTH if steps == s.max_new_tokens else CONTEXT
            yield Step(token, text + decoder.flush(), reason)
            return
        yield Step(token, text, None)


def stream_text(model, prompt, **settings) -> Iterator[str]:
    """Generate from one prompt, yielding pieces of text as soon as they are whole characters."""
    for step in stream_steps(model, prompt, **settings):
        if step.text:
            yield step.text


def generate(model, prompt, **settings):
    """Continue `prompt`. Text in: the continuation as a Completion (a str). Ids in: a TokenCompletion (a list).

    Settings: max_new_tokens (20), temperature (None or 0 = greedy, > 0 = sample), seed (sampling is
    reproducible with the same seed). Generation stops at <|endoftext|> (not included), after max_new_tokens,
    or when the sequence fills the model's context; `finish_reason` says which ("eos", "length", "context").
    """
    ids, text, reason = [], [], LENGTH
    for step in stream_steps(model, prompt, **settings):
        if step.finish_reason != EOS:
            ids.append(step.token_id)
        text.append(step.text)
        reason = step.finish_reason or reason
    if isinstance(prompt, str):
        return Completion("".join(text), ids, reason)
    return TokenCompletion(ids, reason)


def _decode_loop(model, input_ids: np.ndarray, steps: int, processors, sampling: bool, rngs) -> Iterator[np.ndarray]:
    """The token-by-token loop over a batch. input_ids [B, T]; yields the chosen ids [B] for `steps` steps."""
    b, t = input_ids.shape
    cache = model.new_cache(b, capacity=t + steps)
    logits = model.forward(input_ids, cache, last_only=True).logits[:, -1]  # [B, V]
    history = input_ids
    for step in range(steps):
        logits = apply_processors(processors, history, logits)
        chosen = sample(logits, rngs) if sampling else greedy(logits)  # [B]
        yield chosen
        if step + 1 < steps:
            history = np.concatenate([history, chosen[:, None]], axis=1)  # [B, S + 1]
            logits = model.forward(chosen[:, None], cache, last_only=True).logits[:, -1]
