"""Decoding rules: from next-token logits to a choice.

Each rule is a small object with one job, `rule(input_ids [B, S], logits [B, V]) -> logits [B, V]`, usable on
its own. `input_ids` is every token so far (prompt and generated); generation pads rows on the left with -1,
which no rule counts as a token. Removed tokens get -inf. The rules compose in the order transformers' `generate`
applies them; `Sampler` builds that chain from settings named as in transformers and OpenAI, and
`next_token_distribution` returns the very distribution generation samples from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from . import ops
from .errors import DistributionError, SettingsError

NEG_INF = np.float32(-np.inf)


# ------------------------------------------------------------------------------------------------------- arguments


def check_number(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False,
                 allowed: str | None = None) -> float:
    """A finite number within [low, high] (or (low, high] with low_open), else a SettingsError naming it."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if allowed is None:
            bounds = [f"> {low:g}" if low_open else f">= {low:g}"] if low is not None else []
            bounds += [f"<= {high:g}"] if high is not None else []
            allowed = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
        raise SettingsError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_integer(name: str, value, low: int = 0, note: str = "") -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise SettingsError(f"{name} must be an integer >= {low}{note}, got {value!r}")
    return int(value)


def check_token_ids(name: str, ids, vocab_size: int) -> None:
    """Every id a rule was given must index the logits it is applied to."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise SettingsError(f"{name}: token id {bad} is outside the vocabulary (0..{vocab_size - 1})")


# ------------------------------------------------------------------------------------------------------ processors


class Rule:
    """A decoding rule: rule(input_ids [B, S], logits [B, V]) -> new logits [B, V]; the input is never changed.
    Shown by its arguments, e.g. TopP(p=0.9)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _short(value) -> str:
    if isinstance(value, np.ndarray):
        kind = "ids" if np.issubdtype(value.dtype, np.integer) else "values"
        return f"<{value.size} {kind}>" if value.size > 6 else str(value.tolist())
    return repr(value)


class LogitBias(Rule):
    """Add a fixed bias per token id (OpenAI's `logit_bias`): bias {id: value}. -inf forbids a token."""

    def __init__(self, bias: dict[int, float]):
        for token, value in bias.items():
            check_integer("logit_bias token id", token)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
                    or math.isnan(value) or value == math.inf:
                raise SettingsError(f"logit_bias: the bias for token {token} must be a number below +inf "
                                    f"(-inf forbids the token), got {value!r}")
        self.ids = np.array(list(bias), dtype=np.int64)
        self.values = np.array(list(bias.values()), dtype=np.float32)

    def __call__(self, input_ids, logits):
        check_token_ids("logit_bias", self.ids, logits.shape[-1])
        logits = logits.copy()
        logits[:, self.ids] += self.values
        return logits


class RepetitionPenalty(Rule):
    """Make every token already in the sequence less likely, once per token (transformers' semantics, from
    CTRL): a positive logit is divided by the penalty, a negative one multiplied. penalty > 1 discourages."""

    def __init__(self, penalty: float):
        check_number("repetition_penalty", penalty, low=0.0, low_open=True)
        if not 0 < np.float32(penalty) < np.inf:  # the logits are float32: 1e-300 would be 0 there
            raise SettingsError(f"repetition_penalty must be between 1e-38 and 1e38, got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids, logits):
        seen = token_mask(input_ids, logits.shape[-1])  # [B, V]
        penalty = np.float32(self.penalty)
        with np.errstate(over="ignore"):  # an overflow is reported by apply(), naming this rule
            penalised = np.where(logits < 0, logits * penalty, logits / penalty)
        return np.where(seen, penalised, logits)


class PresenceFrequencyPenalty(Rule):
    """OpenAI's penalties on the generated tokens (not the prompt): logit -= count * frequency_penalty
    + (count > 0) * presence_penalty, where count is how often the token was generated so far."""

    def __init__(self, presence_penalty: float, frequency_penalty: float, prompt_length: int):
        self.presence = check_number("presence_penalty", presence_penalty, -2.0, 2.0, allowed="in [-2, 2]")
        self.frequency = check_number("frequency_penalty", frequency_penalty, -2.0, 2.0, allowed="in [-2, 2]")
        self.prompt_length = check_integer("prompt_length", prompt_length)

    def __call__(self, input_ids, logits):
        counts = token_counts(input_ids[:, self.prompt_length:], logits.shape[-1])  # [B, V]
        penalty = counts * np.float32(self.frequency) + (counts > 0) * np.float32(self.presence)
        return logits - penalty.astype(np.float32)


class NoRepeatNGram(Rule):
    """Forbid any token that would repeat an n-gram already in the sequence (prompt included)."""

    def __init__(self, size: int):
        self.size = check_integer("no_repeat_ngram_size", size, low=1, note=" (0 turns it off)")

    def __call__(self, input_ids, logits):
        n = self.size
        if input_ids.shape[1] < n:
            return logits
        logits = logits.copy()
        windows = np.lib.stride_tricks.sliding_window_view(input_ids, n, axis=1)  # [B, S - n + 1, n]
        prefix = input_ids[:, input_ids.shape[1] - n + 1:]  # [B, n - 1]: the n-gram the next token would end
        matches = (windows[:, :, :-1] == prefix[:, None, :]).all(axis=-1)  # [B, S - n + 1]
        matches &= (prefix >= 0).all(axis=-1, keepdims=True)  # a prefix reaching into the padding is no n-gram
        rows, starts = np.nonzero(matches)
        logits[rows, windows[rows, starts, -1]] = NEG_INF
        return logits


class BannedSequences(Rule):
    """Never complete one of the given token sequences (transformers' `bad_words_ids`): a one-token sequence is
    always banned; a longer one bans its last token whenever the sequence so far ends with the rest of it."""

    def __init__(self, sequences: list[list[int]]):
        for sequence in sequences:
            if not isinstance(sequence, (list, tuple)) or not sequence or not all(
                    isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 0 for t in sequence):
                raise SettingsError(f"bad_words_ids must be non-empty lists of token ids, got {sequence!r}")
        self.single = np.array([s[0] for s in sequences if len(s) == 1], dtype=np.int64)
        self.longer = [(np.array(s[:-1]), s[-1]) for s in sequences if len(s) > 1]

    def __call__(self, input_ids, logits):
        check_token_ids("bad_words_ids", np.concatenate([self.single] + [np.append(p, t) for p, t in self.longer]),
                        logits.shape[-1])
        logits = logits.copy()
        logits[:, self.single] = NEG_INF
        for prefix, last in self.longer:
            if len(prefix) <= input_ids.shape[1]:
                matching = (input_ids[:, input_ids.shape[1] - len(prefix):] == prefix).all(axis=-1)  # [B]
                logits[matching, last] = NEG_INF
        return logits


class MinNewTokens(Rule):
    """Suppress end-of-text until min_new_tokens tokens have been generated after the prompt."""

    def __init__(self, min_new_tokens: int, prompt_length: int, eos_token_id: int):
        self.min_new_tokens = check_integer("min_new_tokens", min_new_tokens)
        self.prompt_length = check_integer("prompt_length", prompt_length)
        self.eos = check_integer("eos_token_id", eos_token_id)

    def __call__(self, input_ids, logits):
        if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens or self.eos >= logits.shape[-1]:
            return logits
        logits = logits.copy()
        logits[:, self.eos] = NEG_INF
        return logits


class Temperature(Rule):
    """Divide logits by t: t < 1 sharpens the distribution, t > 1 flattens it."""

    def __init__(self, temperature: float):
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)

    def __call__(self, input_ids, logits):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            out = logits / np.float32(self.temperature)  # float32, as transformers
            if not usable(out) and usable(logits):
                # t is so small that the logits overflow float32 (or t itself is 0 there): divide their gaps to
                # the row's maximum instead, in float64. Softmax does not see the shift, and the limit t -> 0
                # stays what it is: greedy.
                gaps = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
                out = (gaps / self.temperature).astype(np.float32)
        return out


class TopK(Rule):
    """Keep the k highest logits (and any tied with the k-th, as transformers does); remove the rest."""

    def __init__(self, k: int):
        self.k = check_integer("top_k", k, low=1, note=" (0 turns it off)")

    def __call__(self, input_ids, logits):
        k = min(self.k, logits.shape[-1])
        kth = np.partition(logits, -k, axis=-1)[:, -k:].min(axis=-1, keepdims=True)  # [B, 1]
        return np.where(logits < kth, NEG_INF, logits)


class TopP(Rule):
    """Nucleus sampling: keep the smallest set of most likely tokens whose probabilities add up to at least p.

    A token is kept when the tokens ranked above it hold less than p (so the most likely is always kept).
    Tied logits are ranked by token id, lower first; transformers ranks them by PyTorch's unstable sort."""

    def __init__(self, p: float):
        self.p = check_number("top_p", p, 0.0, 1.0, low_open=True, allowed="in (0, 1]")

    def __call__(self, input_ids, logits):
        order = np.argsort(-logits, axis=-1, kind="stable")  # [B, V] most likely first
        probs = ops.softmax(np.take_along_axis(logits, order, axis=-1).astype(np.float64))
        above = np.cumsum(probs, axis=-1) - probs  # [B, V] probability of the tokens ranked above each
        return np.where(unsort(above >= self.p, order), NEG_INF, logits)


class MinP(Rule):
    """Keep tokens whose probability is at least min_p times that of the most likely token."""

    def __init__(self, min_p: float):
        self.min_p = check_number("min_p", min_p, 0.0, 1.0, allowed="in [0, 1]")

    def __call__(self, input_ids, logits):
        probs = ops.softmax(logits)
        remove = probs < self.min_p * probs.max(axis=-1, keepdims=True)
        remove[np.arange(len(logits)), probs.argmax(axis=-1)] = False
        return np.where(remove, NEG_INF, logits)


class TypicalP(Rule):
    """Typical sampling (Meister et al.): rank tokens by how close their surprise -log p is to the entropy, and
    keep the closest ones until their probabilities add up to `mass`."""

    def __init__(self, mass: float):
        self.mass = check_number("typical_p", mass, 0.0, 1.0, low_open=True, allowed="in (0, 1]")

    def __call__(self, input_ids, logits):
        logp = ops.log_softmax(logits)  # [B, V]
        p = np.exp(logp)
        entropy = -(p * np.where(p > 0, logp, 0)).sum(axis=-1, keepdims=True)  # removed tokens (p = 0) count 0
        distance = np.abs(-logp - entropy)  # [B, V]
        order = np.argsort(distance, axis=-1, kind="stable")
        sorted_distance = np.take_along_axis(distance, order, axis=-1)
        sorted_probs = ops.softmax(np.take_along_axis(logits, order, axis=-1))  # float32, as transformers'
        # summed in float64, as PyTorch's cumsum accumulates float32 on the CPU: over 50k small terms a float32
        # sum drifts by 1e-4, enough to move the cut-off
        cumulative = np.cumsum(sorted_probs, axis=-1, dtype=np.float64).astype(np.float32)
        last = np.minimum((cumulative < np.float32(self.mass)).sum(axis=-1), logits.shape[-1] - 1)  # [B]
        remove_sorted = sorted_distance > sorted_distance[np.arange(len(logits)), last][:, None]
        remove_sorted[:, 0] = False
        return np.where(unsort(remove_sorted, order), NEG_INF, logits)


class SuppressTokens(Rule):
    """Never choose the given ids (used for ids a model has but its tokenizer cannot decode)."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, dtype=np.int64)

    def __call__(self, input_ids, logits):
        logits = logits.copy()
        logits[:, self.ids] = NEG_INF
        return logits


def token_mask(input_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """[B, S] ids (-1 = padding) -> [B, V] bool: which tokens occur in each row."""
    mask = np.zeros((len(input_ids), vocab_size), dtype=bool)
    rows, cols = np.nonzero(input_ids >= 0)
    mask[rows, input_ids[rows, cols]] = True
    return mask


def token_counts(input_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """[B, S] ids (-1 = padding) -> [B, V] counts of each token in each row."""
    rows, cols = np.nonzero(input_ids >= 0)
    flat = rows * vocab_size + input_ids[rows, cols]
    return np.bincount(flat, minlength=len(input_ids) * vocab_size).reshape(len(input_ids), vocab_size)


def unsort(sorted_values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Put values computed in sorted order back at their tokens' places."""
    out = np.empty_like(sorted_values)
    np.put_along_axis(out, order, sorted_values, axis=-1)
    return out


def apply(rules, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Run the rules in order. The result can always be chosen from: a row that cannot (a NaN, +inf, or every
    token removed) is a DistributionError that names the rule, or the model's logits, that made it so."""
    processed = logits
    for rule in rules:
        processed = rule(input_ids, processed)
    if not usable(processed):
        raise DistributionError(diagnose(rules, input_ids, logits))
    return processed


def usable(logits: np.ndarray) -> bool:
    """Whether every row can be sampled from: no NaN nor +inf, and at least one token not removed (-inf)."""
    return bool(np.isfinite(logits.max(axis=-1)).all())  # a NaN anywhere makes its row's max NaN


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
    (top_k, top_p, min_p, typical_p) is set, or with do_sample=True; otherwise decoding is greedy.
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
    do_sample: bool | None = None
    eos_token_id: int = 50256
    vocab_size: int = 50257
    suppress_ids: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if self.do_sample is not None and not isinstance(self.do_sample, bool):
            raise SettingsError(f"do_sample must be true or false, got {self.do_sample!r}")
        if self.temperature is not None:
            check_number("temperature", self.temperature, low=0.0)
        if self.do_sample is False and self.temperature:
            raise SettingsError("temperature > 0 samples; it contradicts do_sample=False")
        if not self.sampling:
            for name in ("top_k", "top_p", "min_p", "typical_p"):
                if self._active(name):
                    raise SettingsError(f"{name} applies only when sampling; set temperature > 0 "
                                        "(temperature 0 means greedy)")
        check_token_ids("logit_bias", [t for t in self.logit_bias or {} if isinstance(t, (int, np.integer))],
                        self.vocab_size)
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
            banned = [s for s in self.bad_words_ids if list(s) != [self.eos_token_id]]
            if banned:
                rules.append(BannedSequences(banned))
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
        return {f.name for f in fields(cls)} - {"eos_token_id", "vocab_size", "suppress_ids"}

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
    facts = {k: settings.pop(k) for k in ("eos_token_id", "suppress_ids") if k in settings}
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
