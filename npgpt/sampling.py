"""From next-token logits to a choice: the decoding rules (npgpt.rules) chained in the order transformers'
`generate` applies them, the checks that what they leave can be chosen from, and the choice itself.

`Sampler` builds the chain from settings named as in transformers and OpenAI, and `next_token_distribution`
returns the very distribution generation samples from. The rules are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from . import ops
from .errors import DistributionError, SettingsError
from .rules import check_eos, check_number, check_token_ids, usable
from .rules import (  # noqa: F401 (re-exported: npgpt.sampling.TopP and the others)
    BannedSequences, LogitBias, MinLength, MinNewTokens, MinP, NoRepeatNGram, PresenceFrequencyPenalty,
    RepetitionPenalty, Rule, SuppressTokens, Temperature, TopK, TopP, TypicalP)


def apply(rules, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Run the rules in order. The result can always be chosen from: a row that cannot (a NaN, +inf, or every
    token removed) is a DistributionError that names the rule, or the model's logits, that made it so."""
    processed = logits
    for rule in rules:
        processed = rule(input_ids, processed)
    if not usable(processed):
        raise DistributionError(diagnose(rules, input_ids, logits))
    return processed


def diagnose(rules, input_ids, logits) -> str:
    """Which step made a distribution unusable (run again one rule at a time: only on the way to an error)."""
    if not usable(logits):
        return ("the model's logits are not finite (NaN or infinite): a weight or an activation overflowed; "
                "check the checkpoint and the config's layer_norm_epsilon")
    for rule in rules:
        logits = rule(input_ids, logits)
        if not usable(logits):
            what = "removes every token" if np.isneginf(logits).all(axis=-1).any() else \
                "makes the logits NaN or infinite"
            return f"the decoding rule {rule!r} {what}: the next token cannot be chosen; change that setting"
    return "the next-token distribution cannot be sampled"


def probabilities(logits: np.ndarray) -> np.ndarray:
    """softmax in float64 of processed logits [..., V], refusing what cannot be a distribution."""
    if not usable(logits):
        raise DistributionError("the logits are NaN or infinite, or every token was removed: no distribution")
    return ops.softmax(logits.astype(np.float64))


# ------------------------------------------------------------------------------------------------------- selection


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row (the first one on ties). [B, V] -> [B]"""
    return logits.argmax(axis=-1)


def sample(logits: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """One token per row drawn from softmax(logits), row i with its own generator. [B, V] -> [B]

    Inverse transform sampling: the first token whose cumulative probability exceeds a uniform draw.
    """
    cumulative = np.cumsum(probabilities(logits), axis=-1)  # [B, V]; float64 so that it reaches 1
    draws = np.array([rng.random() for rng in rngs]) * cumulative[:, -1]  # [B]
    chosen = (cumulative <= draws[:, None]).sum(axis=-1)  # [B]
    return np.minimum(chosen, logits.shape[-1] - 1)  # guards a draw landing exactly on the total


def row_generators(seed: int | None, samples: int) -> list[np.random.Generator]:
    """One generator per sample index: sample j of a prompt draws the same numbers alone or in any batch."""
    entropy = np.random.SeedSequence().entropy if seed is None else seed
    return [np.random.default_rng([entropy, j]) for j in range(samples)]


# -------------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sampler:
    """The decoding rules of one generation, named as in transformers' generate and OpenAI's API.

    Neutral values switch a rule off: top_k 0, top_p 1, min_p 0, typical_p 1, repetition_penalty 1,
    no_repeat_ngram_size 0, penalties 0. Sampling is on when temperature > 0 is given, when a sampling rule
    (top_k, top_p, min_p, typical_p) is set, or with do_sample=True; otherwise decoding is greedy, and
    do_sample=False is greedy whatever else is set (as transformers).
    logit_bias maps token ids to a bias (words are resolved to ids by `resolve_logit_bias`).
    Each rule checks its own argument; they are all built once here, so a bad value fails at the call.
    """

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    bad_words_ids: list[list[int]] | None = None
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    min_length: int = 0  # counting the prompt, as transformers
    do_sample: bool | None = None
    eos_token_id: int | tuple[int, ...] | None = 50256  # an id, several, or None: never end
    vocab_size: int = 50257
    suppress_ids: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if self.do_sample is not None and not isinstance(self.do_sample, bool):
            raise SettingsError(f"do_sample must be true or false, got {self.do_sample!r}")
        if self.temperature is not None:
            check_number("temperature", self.temperature, low=0.0)
        if self.do_sample and self.temperature == 0:
            raise SettingsError("do_sample=True asks for sampling and temperature=0 for greedy decoding; give one "
                                "(a temperature > 0 to sample)")
        if not self.sampling and self.do_sample is not False:  # do_sample=False: greedy, whatever else is set
            for name in ("top_k", "top_p", "min_p", "typical_p"):
                if self._active(name):
                    raise SettingsError(f"{name} applies only when sampling; set temperature > 0 "
                                        "(temperature 0 means greedy)")
        check_token_ids("logit_bias", [t for t in self.logit_bias or {} if isinstance(t, (int, np.integer))],
                        self.vocab_size)
        if self.bad_words_ids is not None and (not isinstance(self.bad_words_ids, (list, tuple)) or not all(
                isinstance(sequence, (list, tuple)) for sequence in self.bad_words_ids)):
            raise SettingsError(f"bad_words_ids must be a list of token-id lists, such as [[262], [1110, 318]], "
                                f"got {self.bad_words_ids!r:.80}")
        for sequence in self.bad_words_ids or []:
            if isinstance(sequence, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in sequence):
                check_token_ids("bad_words_ids", sequence, self.vocab_size)
        self.rules(prompt_length=0)  # every rule checks its argument

    def _active(self, name: str) -> bool:
        value = getattr(self, name)
        neutral = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repetition_penalty": 1.0}[name]
        return value is not None and not (type(value) in (int, float) and value == neutral)

    @property
    def sampling(self) -> bool:
        if self.temperature == 0 or self.do_sample is False:
            return False
        if self.do_sample or self.temperature:
            return True
        return any(self._active(name) for name in ("top_k", "top_p", "min_p", "typical_p"))

    def processors(self, prompt_length: int) -> list[Rule]:
        """The rules that change logits whatever the selection, in transformers' order."""
        rules = []
        if self.suppress_ids:
            rules.append(SuppressTokens(self.suppress_ids))
        if self.logit_bias:
            rules.append(LogitBias(self.logit_bias))
        if self._active("repetition_penalty"):
            rules.append(RepetitionPenalty(self.repetition_penalty))
        if self.presence_penalty or self.frequency_penalty:
            rules.append(PresenceFrequencyPenalty(self.presence_penalty, self.frequency_penalty, prompt_length))
        if self.no_repeat_ngram_size != 0:
            rules.append(NoRepeatNGram(self.no_repeat_ngram_size))
        if self.bad_words_ids:
            # as transformers, a ban of end-of-text alone is dropped: it would make the model unable to stop
            banned = [s for s in self.bad_words_ids if not (len(s) == 1 and s[0] in check_eos(self.eos_token_id))]
            if banned:
                rules.append(BannedSequences(banned))
        if self.min_length != 0:
            rules.append(MinLength(self.min_length, self.eos_token_id))
        if self.min_new_tokens != 0:
            rules.append(MinNewTokens(self.min_new_tokens, prompt_length, self.eos_token_id))
        return rules

    def warpers(self) -> list[Rule]:
        """The rules that shape the distribution to sample from (only when sampling), in transformers' order."""
        if not self.sampling:
            return []
        rules = []
        if self.temperature not in (None, 1.0):
            rules.append(Temperature(self.temperature))
        if self._active("top_k"):
            rules.append(TopK(self.top_k))
        if self._active("top_p"):
            rules.append(TopP(self.top_p))
        if self._active("min_p"):
            rules.append(MinP(self.min_p))
        if self._active("typical_p"):
            rules.append(TypicalP(self.typical_p))
        return rules

    def rules(self, prompt_length: int) -> list[Rule]:
        return self.processors(prompt_length) + self.warpers()

    def select(self, logits: np.ndarray, rngs) -> np.ndarray:
        """Pick a token per row from processed logits: greedy, or a draw with each row's generator."""
        return sample(logits, rngs) if self.sampling else greedy(logits)

    @classmethod
    def names(cls) -> set[str]:
        """The settings a user may give (the others are the model's)."""
        return {f.name for f in fields(cls)} - {"vocab_size", "suppress_ids"}

    @classmethod
    def from_settings(cls, settings: dict, tokenizer=None, vocab_size: int = 50257, **model_facts) -> "Sampler":
        """The one place keyword settings become rules: words in logit_bias are resolved with the tokenizer."""
        settings = dict(settings)
        if settings.get("logit_bias"):
            settings["logit_bias"] = resolve_logit_bias(settings["logit_bias"], tokenizer)
        return cls(**settings, vocab_size=vocab_size, **model_facts)


def next_token_distribution(logits, input_ids=None, prompt_length: int | None = None, tokenizer=None,
                            **settings) -> np.ndarray:
    """The probabilities the next token is drawn from: softmax of the logits after every rule in `settings`.

    logits [V] or [B, V]; input_ids the tokens so far ([S] or [B, S], needed by the repetition rules);
    prompt_length: how many of them are the prompt (default: all, i.e. nothing generated yet).
    With greedy settings this is the distribution the argmax is taken of. Settings as in `Sampler`
    (and logit_bias may name words when a tokenizer is given). `GPT2.next_token_distribution` does the same
    from a prompt.
    """
    logits = np.asarray(logits, dtype=np.float32)
    single = logits.ndim == 1
    logits = logits[None] if single else logits
    ids = np.zeros((len(logits), 0), np.int64) if input_ids is None else np.asarray(input_ids, dtype=np.int64)
    ids = ids[None] if ids.ndim == 1 else ids
    facts = {k: settings.pop(k) for k in ("suppress_ids",) if k in settings}
    settings.pop("vocab_size", None)  # the logits say it
    unknown = sorted(set(settings) - Sampler.names())
    if unknown:
        raise SettingsError(f"{unknown[0]!r} is not a decoding rule; next_token_distribution takes "
                            f"{', '.join(sorted(Sampler.names()))}")
    sampler = Sampler.from_settings(settings, tokenizer, vocab_size=logits.shape[-1], **facts)
    processed = apply(sampler.rules(ids.shape[1] if prompt_length is None else prompt_length), ids, logits)
    probs = probabilities(processed).astype(np.float32)
    return probs[0] if single else probs


def resolve_logit_bias(bias: dict, tokenizer=None) -> dict[int, float]:
    """{token id or word: bias} -> {token id: bias}. A word means every token of it, written with and without a
    leading space ("gonna" biases the tokens of "gonna" and of " gonna"); biases on the same token add up."""
    if not isinstance(bias, dict):
        raise SettingsError(f"logit_bias must be a mapping of token ids or words to numbers, got {bias!r}")
    resolved: dict[int, float] = {}
    for key, value in bias.items():
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, str):
            if tokenizer is None:
                raise SettingsError(f"logit_bias: cannot bias the word {key!r} without a tokenizer")
            if not key.strip():
                raise SettingsError("logit_bias: cannot bias an empty word")
            word = key.strip()
            ids = set(tokenizer.encode(word)) | set(tokenizer.encode(" " + word))
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            ids = {int(key)}
        else:
            raise SettingsError(f"logit_bias: keys are token ids or words, got {key!r}")
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise SettingsError(f"logit_bias: the bias for {key!r} must be a number, got {value!r}")
        for token in ids:
            resolved[token] = resolved.get(token, 0.0) + float(value)
    return resolved
