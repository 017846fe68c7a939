"""The decoding rules (transformers' logits processors), each a small object with one job:

    rule(input_ids [B, S], logits [B, V]) -> new logits [B, V]      (the input is never changed)

`input_ids` is every token so far (prompt and generated); generation pads rows on the left with -1, which no
rule counts as a token. Removed tokens get -inf. Each rule checks its argument when it is made, with a
SettingsError that names the setting. npgpt.sampling chains them and chooses a token.
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from .errors import SettingsError

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


def check_eos(eos_token_id) -> tuple[int, ...]:
    """End-of-text as transformers takes it: an id, a list of ids, or None (never end)."""
    if eos_token_id is None:
        return ()
    ids = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else eos_token_id
    if not isinstance(ids, (list, tuple)):
        raise SettingsError(f"eos_token_id must be a token id, a list of them, or None, got {eos_token_id!r}")
    return tuple(check_integer("eos_token_id", i) for i in ids)


class MinLength(Rule):
    """Suppress end-of-text while the whole sequence (prompt included, padding too, as transformers counts it)
    is shorter than min_length."""

    def __init__(self, min_length: int, eos_token_id):
        self.min_length = check_integer("min_length", min_length)
        self.eos = check_eos(eos_token_id)

    def __call__(self, input_ids, logits):
        if input_ids.shape[1] >= self.min_length:
            return logits
        return suppress(logits, self.eos)


class MinNewTokens(Rule):
    """Suppress end-of-text until min_new_tokens tokens have been generated after the prompt."""

    def __init__(self, min_new_tokens: int, prompt_length: int, eos_token_id):
        self.min_new_tokens = check_integer("min_new_tokens", min_new_tokens)
        self.prompt_length = check_integer("prompt_length", prompt_length)
        self.eos = check_eos(eos_token_id)

    def __call__(self, input_ids, logits):
        if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens:
            return logits
        return suppress(logits, self.eos)


def suppress(logits, ids) -> np.ndarray:
    """A copy of logits with the given ids (those within the vocabulary) removed."""
    ids = [i for i in ids if i < logits.shape[-1]]
    if not ids:
        return logits
    logits = logits.copy()
    logits[:, ids] = NEG_INF
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

    CANDIDATES = (64, 512, 4096)  # how many of the most likely tokens are sorted first, then the whole row

    def __init__(self, p: float):
        self.p = check_number("top_p", p, 0.0, 1.0, low_open=True, allowed="in (0, 1]")

    def __call__(self, input_ids, logits):
        out = np.full_like(logits, NEG_INF)  # [B, V]
        for row, kept in zip(logits, out):
            nucleus = self.nucleus(row)
            kept[nucleus] = row[nucleus]
        return out

    def nucleus(self, row: np.ndarray) -> np.ndarray:
        """The tokens one row of logits [V] keeps. Only the most likely candidates are sorted: 64 of them (with
        any tied with the 64th), 512 or 4096 if they do not hold p, else the whole row. A trained model's
        distribution holds p within a few thousand tokens: a row of 50257 logits took 0.4-1.1 ms, against 6.7
        for sorting them all; a flat one (random weights) goes to the whole row as soon as the candidates sorted
        show that fewer could not hold p."""
        top = row.max()
        if not np.isfinite(top):
            return np.arange(len(row))  # nothing to rank (every token removed already): left as it is
        weights = np.exp(row.astype(np.float64) - top)  # [V] probabilities times the sum of weights
        total, finite = weights.sum(), row > NEG_INF
        held, least, sorted_ = 0.0, 1.0, 0  # what the candidates sorted so far hold, the least of them, how many
        for k in self.CANDIDATES + (len(row),):
            if k < len(row) and held + (k - sorted_) * least < self.p:
                continue  # k could not hold p, none after those sorted being more likely (a flat distribution)
            kth = np.partition(row, len(row) - k)[len(row) - k] if k < len(row) else NEG_INF  # k-th largest
            candidates = np.flatnonzero((row >= kth) & finite)  # by id, so the stable sort puts lower ids first
            order = candidates[np.argsort(-row[candidates], kind="stable")]  # most likely first
            probs = weights[order] / total
            reached = np.cumsum(probs)  # probability of each token and those ranked above it
            if reached[-1] >= self.p or len(candidates) == finite.sum():  # the tokens left out are all removed
                return order[reached - probs < self.p]  # kept: less than p ranked above
            held, least, sorted_ = reached[-1], probs[-1], len(order)


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
    keep the closest ones until their probabilities add up to `mass`.

    Only the closest candidates are ranked, as in TopP: 64 of them, 512 or 4096 if they do not hold the mass,
    else the whole row; a row of 50257 logits took 6.9 ms to sort whole. Sizes that the most likely token's
    probability shows cannot hold the mass (a flat distribution) are skipped. Candidates are ranked as the
    whole row would be (ties by the lower id), so that their probabilities are summed in the same order."""

    CANDIDATES = TopP.CANDIDATES

    def __init__(self, mass: float):
        self.mass = check_number("typical_p", mass, 0.0, 1.0, low_open=True, allowed="in (0, 1]")

    def __call__(self, input_ids, logits):
        with np.errstate(invalid="ignore"):  # a row with every token removed is NaN here, and left as it is
            logp = ops.log_softmax(logits)  # [B, V]
            p = np.exp(logp)
            entropy = -(p * np.where(p > 0, logp, 0)).sum(axis=-1, keepdims=True)  # removed tokens (p = 0) count 0
            distance = np.abs(-logp - entropy)  # [B, V]
        farthest = np.array([self.farthest_kept(d, q) for d, q in zip(distance, p)], np.float32)  # [B]
        return np.where(distance > farthest[:, None], NEG_INF, logits)

    def farthest_kept(self, distance: np.ndarray, probs: np.ndarray) -> float:
        """The largest distance one row keeps: that of the token whose probability, added to those of the tokens
        ranked before it, first reaches the mass (the last token if none does, as transformers)."""
        mass = np.float32(self.mass)
        if not np.isfinite(distance).any():  # every token removed (NaN): nothing to rank, left as it is
            return np.inf
        for k in self.CANDIDATES + (len(distance),):
            if k < len(distance) and k * probs.max() < mass:
                continue  # k tokens could not hold the mass, however they are chosen
            kth = np.partition(distance, k - 1)[k - 1] if k < len(distance) else np.inf  # the k-th closest
            order = np.flatnonzero(distance <= kth) if k < len(distance) else np.arange(len(distance))  # by id
            order = order[np.argsort(distance[order], kind="stable")]  # closest first, ties by the lower id
            # summed in float64, as PyTorch's cumsum accumulates float32 on the CPU: over 50k small terms a
            # float32 sum drifts by 1e-4, enough to move the cut-off
            reached = np.cumsum(probs[order], dtype=np.float64).astype(np.float32)
            if reached[-1] >= mass or len(order) == len(distance):
                return distance[order[min((reached < mass).sum(), len(order) - 1)]]


class SuppressTokens(Rule):
    """Never choose the given ids (used for ids a model has but its tokenizer cannot decode)."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, dtype=np.int64)

    def __call__(self, input_ids, logits):
        return suppress(logits, self.ids)


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


def usable(logits: np.ndarray) -> bool:
    """Whether every row can be sampled from: no NaN nor +inf, and at least one token not removed (-inf)."""
    return bool(np.isfinite(logits.max(axis=-1)).all())  # a NaN anywhere makes its row's max NaN
