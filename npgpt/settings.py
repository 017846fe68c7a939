"""Keyword settings -> Settings: the one path every caller takes (generate, stream, next_token_distribution,
npgpt.study, the CLI), so a setting means the same everywhere and a bad one fails before any work.

Settings hold what shapes a generation (how many tokens, stop strings, n, beams, seed, logprobs); the decoding
rules are the Sampler's (npgpt.sampling). Names follow transformers' generate and OpenAI's API, with
transformers' meanings where both exist: max_length and min_length count the prompt, eos_token_id is an id, a
list or None (never stop), do_sample=False is greedy whatever the temperature.

Defaults: plain keywords keep npgpt's (greedy; sampling, once asked for, with no top-k), while a
`GenerationConfig` starts from transformers' (top_k 50 when sampling).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .errors import SettingsError, did_you_mean, refuse_unknown_keywords
from .memory import check_fits
from .rules import check_eos, check_integer, check_token_ids
from .sampling import Sampler, row_generators

MAX_TOP_LOGPROBS = 20  # as OpenAI's API
MAX_DRAFT = 64  # drafted tokens per step (a verify step runs them all at once)
MAX_STOP_LENGTH = 1000  # characters of one stop string (a longer one is almost certainly a mistake)

# transformers' keywords that npgpt answers in its own way: a hint instead of "unknown setting"
NOT_NEEDED = {
    "output_scores": "results carry each token's log-probability with logprobs=True (top_logprobs=N for "
                     "alternatives)",
    "output_logits": "results carry each token's log-probability with logprobs=True",
    "return_dict_in_generate": "results always carry ids, text, finish_reason, logprobs and score",
    "use_cache": "npgpt always decodes with its key/value cache",
    "streamer": "use model.stream(prompt) or model.stream_steps(prompt)",
    "tokenizer": "npgpt uses the model's own tokenizer for stop strings",
}


@dataclass
class Settings:
    """Everything but the decoding rules (those are the Sampler's)."""

    max_new_tokens: int | None = None  # default 20, unless max_length says otherwise
    max_length: int | None = None  # prompt (padded width) + new tokens, as transformers
    stop: list[str] = field(default_factory=list)  # also stop_strings
    n: int = 1  # sequences per prompt (transformers' num_return_sequences)
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate_prompt: bool = False  # keep the last tokens of a prompt too long for the context
    sliding_window: bool = False  # generate past the context, keeping its last n_positions tokens
    pad_token_id: int | None = None  # accepted for transformers' sake: results are per row, nothing is padded
    attention_mask: object = None  # with a [B, T] array of ids: 1 for tokens, 0 for padding
    prompt_lookup_num_tokens: int | None = None  # speculative decoding: drafts copied from the text, up to this many
    max_matching_ngram_size: int = 2  # prompt lookup: the longest n-gram looked for
    assistant_model: object = None  # speculative decoding: a smaller GPT-2 with the same tokenizer drafts
    num_assistant_tokens: int = 16  # the most an assistant drafts at a time (it adapts from 5)
    sampler: Sampler = field(default_factory=Sampler)

    def __post_init__(self):
        for name, low in (("n", 1), ("num_beams", 1), ("top_logprobs", 0)):
            check_integer(name, getattr(self, name), low)
        for name in ("max_new_tokens", "max_length", "seed", "pad_token_id"):
            if getattr(self, name) is not None:
                check_integer(name, getattr(self, name))
        if self.top_logprobs > MAX_TOP_LOGPROBS:
            raise SettingsError(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        for name in ("logprobs", "truncate_prompt", "sliding_window"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool) \
                or not math.isfinite(self.length_penalty):
            raise SettingsError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise SettingsError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        self.stop = self._check_stop(self.stop)
        self._check_lengths()
        self._check_speculative()
        if self.num_beams > 1:
            if self.sampler.sampling:
                raise SettingsError("beam search with sampling is not supported; use temperature 0 with num_beams")
            if self.n > self.num_beams:
                raise SettingsError(f"num_return_sequences ({self.n}) must be <= num_beams ({self.num_beams})")
            if self.logprobs or self.top_logprobs:
                raise SettingsError("logprobs are not available with beam search; each beam has a score")
            if self.sliding_window:
                raise SettingsError("sliding_window works with greedy decoding and sampling, not beam search")
        elif self.n > 1 and not self.sampler.sampling:
            raise SettingsError("n > 1 needs sampling (temperature > 0) or beam search (num_beams >= n)")

    def _check_lengths(self) -> None:
        """A minimum above the maximum could not be met: say so rather than silently stop at the maximum."""
        least, most = self.sampler.min_new_tokens, self.max_new_tokens
        if self.max_length is None and least > (20 if most is None else most):
            limit = f"max_new_tokens ({most})" if most is not None else "the 20 new tokens generated by default"
            raise SettingsError(f"min_new_tokens ({least}) is more than {limit}; raise max_new_tokens or lower "
                                "min_new_tokens")
        if self.max_length is not None and self.sampler.min_length > self.max_length:
            raise SettingsError(f"min_length ({self.sampler.min_length}) is more than max_length "
                                f"({self.max_length}); raise max_length or lower min_length")

    def _check_speculative(self) -> None:
        if self.prompt_lookup_num_tokens is not None:
            check_integer("prompt_lookup_num_tokens", self.prompt_lookup_num_tokens, 1)
            if self.prompt_lookup_num_tokens > MAX_DRAFT:
                raise SettingsError(f"prompt_lookup_num_tokens must be at most {MAX_DRAFT}, "
                                    f"got {self.prompt_lookup_num_tokens}")
        check_integer("max_matching_ngram_size", self.max_matching_ngram_size, 1)
        check_integer("num_assistant_tokens", self.num_assistant_tokens, 1)
        if self.num_assistant_tokens > MAX_DRAFT:
            raise SettingsError(f"num_assistant_tokens must be at most {MAX_DRAFT}, got {self.num_assistant_tokens}")
        if self.assistant_model is not None and not hasattr(self.assistant_model, "forward"):
            raise SettingsError(f"assistant_model must be an npgpt model (npgpt.load(...)), "
                                f"got {type(self.assistant_model).__name__}")
        if self.speculative:
            if self.prompt_lookup_num_tokens and self.assistant_model is not None:
                raise SettingsError("prompt_lookup_num_tokens and assistant_model are two ways to draft; give one")
            if self.num_beams > 1 or self.sliding_window:
                raise SettingsError("speculative decoding (prompt_lookup_num_tokens, assistant_model) works with "
                                    "greedy decoding and sampling, not with beam search or sliding_window")

    @property
    def speculative(self) -> bool:
        return bool(self.prompt_lookup_num_tokens) or self.assistant_model is not None

    @property
    def draft_room(self) -> int:
        """Cache positions to keep beyond the tokens generated: a verify step runs the drafts too."""
        if not self.speculative:
            return 0
        return 1 + (self.prompt_lookup_num_tokens or self.num_assistant_tokens)

    @staticmethod
    def _check_stop(stop) -> list[str]:
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise SettingsError(f"stop must be a non-empty string or a list of them, got {stop!r:.80}")
        long = next((s for s in stop if len(s) > MAX_STOP_LENGTH), None)
        if long is not None:
            raise SettingsError(f"a stop string is at most {MAX_STOP_LENGTH} characters, got one of {len(long)}")
        return list(stop)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return check_eos(self.sampler.eos_token_id)

    def new_tokens(self, prompt_width: int) -> int:
        """How many tokens to generate after prompts `prompt_width` wide (max_length counts the prompt)."""
        if self.max_length is not None:
            return max(0, self.max_length - prompt_width)
        return 20 if self.max_new_tokens is None else self.max_new_tokens

    def fix_length(self, prompts: list[list[int]]) -> None:
        """Turn max_length (which counts the prompt) into max_new_tokens, now that the prompts are known."""
        self.max_new_tokens = self.new_tokens(max(len(p) for p in prompts))
        self.max_length = None

    def generators(self, samples: int) -> list[np.random.Generator] | None:
        """One random generator per sample of a prompt, or None when decoding is greedy."""
        return row_generators(self.seed, samples) if self.sampler.sampling else None

    @classmethod
    def names(cls) -> set[str]:
        own = {f.name for f in fields(cls)} - {"sampler"}
        return own | Sampler.names() | {"num_return_sequences", "stop_strings", "generation_config"}

    @classmethod
    def parse(cls, model, settings: dict) -> "Settings":
        """Split keyword settings (transformers' and OpenAI's names) into Settings and the model's Sampler."""
        settings = dict(settings)
        config = settings.pop("generation_config", None)
        if config is not None:
            if not isinstance(config, GenerationConfig):
                raise SettingsError(f"generation_config must be an npgpt.GenerationConfig, got "
                                    f"{type(config).__name__}; build one with GenerationConfig.from_dict(d)")
            settings = config.settings(overridden_by=settings)
        for name in settings:
            if name in NOT_NEEDED:
                raise SettingsError(f"{name} is not needed with npgpt: {NOT_NEEDED[name]}")
        unknown = sorted(set(settings) - cls.names())
        if unknown:
            raise SettingsError(unknown_setting(unknown[0], cls.names()))
        _merge_alias(settings, "num_return_sequences", "n")
        _merge_alias(settings, "stop_strings", "stop")
        if settings.get("max_length") is not None and settings.get("max_new_tokens") is not None:
            raise SettingsError("max_length and max_new_tokens both set how long to generate; give one "
                                "(max_length counts the prompt, max_new_tokens does not)")
        rules = {k: settings.pop(k) for k in list(settings) if k in Sampler.names()}
        tokenizer, vocab = model.tokenizer, model.config.vocab_size
        if "eos_token_id" in rules:  # an id the model cannot produce would never end anything
            check_token_ids("eos_token_id", check_eos(rules["eos_token_id"]), vocab)
        rules.setdefault("eos_token_id", tokenizer.eot_id)
        sampler = Sampler.from_settings(rules, tokenizer, vocab_size=vocab,
                                        suppress_ids=tuple(range(tokenizer.vocab_size, vocab)))
        made = cls(**settings, sampler=sampler)
        made._check_memory(model.config)
        return made

    def _check_memory(self, config) -> None:
        """Refuse at once an n or num_beams whose rows could never fit (before anything is allocated)."""
        rows = max(self.n, self.num_beams)
        positions = min(self.new_tokens(0) + 1, config.n_positions)
        per_row = 2 * config.n_layer * positions * config.n_embd * 4 + 8 * config.vocab_size * 4  # cache, logits
        check_fits(rows * per_row, f"{rows} rows per prompt (n or num_beams)", "lower n or num_beams")


def _merge_alias(settings: dict, alias: str, name: str) -> None:
    """Two names for one setting (num_return_sequences and n, stop_strings and stop): give one, or agree."""
    if alias in settings:
        value = settings.pop(alias)
        if name in settings and settings[name] != value:
            raise SettingsError(f"{name} and {alias} are the same setting and disagree; give one")
        settings[name] = value


def unknown_setting(name, known) -> str:
    """'unknown setting X' with the closest known name, if one is close."""
    return f"unknown setting {name!r}{did_you_mean(name, known)}"


# ------------------------------------------------------------------------------------------- GenerationConfig

# bookkeeping a generation_config.json may carry that changes nothing here
_IGNORED_KEYS = {"transformers_version", "_from_model_config", "bos_token_id", "decoder_start_token_id",
                 "output_attentions", "output_hidden_states", "output_scores", "output_logits",
                 "return_dict_in_generate", "use_cache"}


@refuse_unknown_keywords(SettingsError)
@dataclass
class GenerationConfig:
    """transformers' GenerationConfig, for the settings npgpt has, with transformers' defaults: greedy unless
    do_sample=True, and then top_k=50; 20 new tokens unless max_length (which counts the prompt) or
    max_new_tokens says otherwise. Pass it as
    `generate(prompt, generation_config=config)`; keywords given beside it override its values.
    `model.generation_config` is the one the model's generation_config.json holds, when it has one."""

    max_length: int | None = None  # unset: 20 new tokens (transformers 5); set: counts the prompt
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list | None = None
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int | list | None = None  # None here: the model's end-of-text (50256 for GPT-2)
    pad_token_id: int | None = None
    stop_strings: list | str | None = None

    def __post_init__(self):
        """Each value is checked when the config is made, the sampling rules' too: a greedy config ignores them,
        but a bad one is a mistake all the same. What depends on the model (token ids) is checked by generate."""
        if not isinstance(self.do_sample, bool):
            raise SettingsError(f"do_sample must be true or false, got {self.do_sample!r}")
        Sampler(temperature=self.temperature or None, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                typical_p=self.typical_p, repetition_penalty=self.repetition_penalty,
                no_repeat_ngram_size=self.no_repeat_ngram_size, bad_words_ids=self.bad_words_ids,
                min_length=self.min_length, min_new_tokens=self.min_new_tokens or 0, do_sample=True)
        for name in ("max_length", "max_new_tokens", "num_beams", "num_return_sequences"):
            if getattr(self, name) is not None:
                check_integer(name, getattr(self, name), 0 if name.startswith("max") else 1)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        if not isinstance(d, dict):
            raise SettingsError(f"a generation config is a dict of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - _IGNORED_KEYS)
        if unknown:
            raise SettingsError(unknown_setting(unknown[0], known).replace("unknown setting",
                                                                           "unknown generation config field"))
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "GenerationConfig | None":
        """The model's generation_config.json, or None when it has none."""
        path = os.path.join(model_dir, "generation_config.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SettingsError(f"{path}: not a readable generation config ({e})") from None

    def settings(self, overridden_by: dict) -> dict:
        """The keyword settings this config stands for, with `overridden_by`'s on top."""
        d = self.to_dict()
        if "max_new_tokens" in overridden_by or d["max_new_tokens"] is not None:  # it wins over max_length
            d.pop("max_length")
        if "max_length" in overridden_by:
            d.pop("max_new_tokens")
        if d["eos_token_id"] is None:
            d.pop("eos_token_id")
        if "stop" in overridden_by:
            d.pop("stop_strings")
        if "n" in overridden_by:
            d.pop("num_return_sequences")
        if not overridden_by.get("do_sample", d["do_sample"]) or overridden_by.get("temperature") == 0:
            for name in ("temperature", "top_k", "top_p", "min_p", "typical_p"):
                d.pop(name)  # greedy: transformers ignores them
            if "do_sample" not in overridden_by:
                d["do_sample"] = False  # temperature=0 given beside a config that samples: greedy, as asked
        d = {k: v for k, v in d.items() if v is not None}
        d.update(overridden_by)
        return d
