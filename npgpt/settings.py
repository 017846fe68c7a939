"""Keyword settings -> Settings: the one path every caller takes (generate, stream, next_token_distribution,
npgpt.study, the CLI), so a setting means the same everywhere and a bad one fails before any work.

Settings hold what shapes a generation (how many tokens, stop strings, n, beams, seed, logprobs); the decoding
rules are the Sampler's (npgpt.sampling). Names follow transformers' generate and OpenAI's API.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import SettingsError
from .memory import check_fits
from .sampling import Sampler, check_integer, row_generators

MAX_TOP_LOGPROBS = 20  # as OpenAI's API
MAX_STOP_LENGTH = 1000  # characters of one stop string (a longer one is almost certainly a mistake)


@dataclass
class Settings:
    """Everything but the decoding rules (those are the Sampler's)."""

    max_new_tokens: int = 20
    stop: list[str] = field(default_factory=list)
    n: int = 1  # sequences per prompt (transformers' num_return_sequences)
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate_prompt: bool = False  # keep the last tokens of a prompt too long for the context
    sampler: Sampler = field(default_factory=Sampler)

    def __post_init__(self):
        for name, low in (("max_new_tokens", 0), ("n", 1), ("num_beams", 1), ("top_logprobs", 0)):
            check_integer(name, getattr(self, name), low)
        if self.top_logprobs > MAX_TOP_LOGPROBS:
            raise SettingsError(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        for name in ("logprobs", "truncate_prompt"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.seed is not None:
            check_integer("seed", self.seed)
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool) \
                or not math.isfinite(self.length_penalty):
            raise SettingsError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise SettingsError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        self.stop = self._check_stop(self.stop)
        if self.num_beams > 1:
            if self.sampler.sampling:
                raise SettingsError("beam search with sampling is not supported; use temperature 0 with num_beams")
            if self.n > self.num_beams:
                raise SettingsError(f"num_return_sequences ({self.n}) must be <= num_beams ({self.num_beams})")
            if self.logprobs or self.top_logprobs:
                raise SettingsError("logprobs are not available with beam search; each beam has a score")
        elif self.n > 1 and not self.sampler.sampling:
            raise SettingsError("n > 1 needs sampling (temperature > 0) or beam search (num_beams >= n)")

    @staticmethod
    def _check_stop(stop) -> list[str]:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise SettingsError(f"stop must be a non-empty string or a list of them, got {stop!r:.80}")
        long = next((s for s in stop if len(s) > MAX_STOP_LENGTH), None)
        if long is not None:
            raise SettingsError(f"a stop string is at most {MAX_STOP_LENGTH} characters, got one of {len(long)}")
        return list(stop)

    def generators(self, samples: int) -> list[np.random.Generator] | None:
        """One random generator per sample of a prompt, or None when decoding is greedy."""
        return row_generators(self.seed, samples) if self.sampler.sampling else None

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)} - {"sampler"} | Sampler.names() | {"num_return_sequences"}

    @classmethod
    def parse(cls, model, settings: dict) -> "Settings":
        """Split keyword settings (transformers' and OpenAI's names) into Settings and the model's Sampler."""
        settings = dict(settings)
        unknown = sorted(set(settings) - cls.names())
        if unknown:
            raise SettingsError(unknown_setting(unknown[0], cls.names()))
        if "num_return_sequences" in settings:
            value = settings.pop("num_return_sequences")
            if settings.get("n", value) != value:
                raise SettingsError("n and num_return_sequences are the same setting; give one")
            settings["n"] = value
        rules = {k: settings.pop(k) for k in list(settings) if k in Sampler.names()}
        tokenizer, vocab = model.tokenizer, model.config.vocab_size
        sampler = Sampler.from_settings(rules, tokenizer, vocab_size=vocab, eos_token_id=tokenizer.eot_id,
                                        suppress_ids=tuple(range(tokenizer.vocab_size, vocab)))
        made = cls(**settings, sampler=sampler)
        made._check_memory(model.config)
        return made

    def _check_memory(self, config) -> None:
        """Refuse at once an n or num_beams whose rows could never fit (before anything is allocated)."""
        rows = max(self.n, self.num_beams)
        positions = min(self.max_new_tokens + 1, config.n_positions)
        per_row = 2 * config.n_layer * positions * config.n_embd * 4 + 8 * config.vocab_size * 4  # cache, logits
        check_fits(rows * per_row, f"{rows} rows per prompt (n or num_beams)", "lower n or num_beams")


def unknown_setting(name, known) -> str:
    """'unknown setting X' with the closest known name, if one is close."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; known settings: {', '.join(sorted(known))}"
    return f"unknown setting {name!r}{hint}"
