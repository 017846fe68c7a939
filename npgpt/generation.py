"""Autoregressive generation: prefill the prompts once, then one position per new token, using the cache.

    prompts -> left-padded ids [B, T] -> forward (fills the cache) -> logits of the last position [B, V]
    repeat: decoding rules -> select a token per row -> stop? -> forward the new tokens [B, 1] (reads the cache)

Rows of a batch are independent: padding is masked and positions count real tokens, so each row gives what its
prompt gives alone. Finished rows leave the batch. Beam search keeps num_beams rows per prompt instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np

from . import ops
from .errors import ContextLengthError, SettingsError
from .sampling import Sampler, apply, resolve_logit_bias
from .tokenizer import StreamDecoder

# Why generation ended, on every result.
EOS = "eos"  # the model produced <|endoftext|> (not part of the result)
LENGTH = "length"  # max_new_tokens were generated
STOP = "stop"  # a stop string appeared (the text ends before it)
CONTEXT = "context"  # the sequence filled the model's context window (n_positions tokens)

_BEAM_NEG = -1.0e9  # transformers' "never" score in beam search bookkeeping


# --------------------------------------------------------------------------------------------------------- results


@dataclass
class Alternative:
    token: str
    id: int
    logprob: float


@dataclass
class TokenLogprob:
    """A generated token with its log-probability under the model and the most likely alternatives
    (OpenAI's logprobs / top_logprobs). Log-probabilities are the model's own (log-softmax of its logits),
    before any decoding rule, so they do not depend on the sampling settings."""

    token: str
    id: int
    logprob: float
    top_logprobs: list[Alternative] = field(default_factory=list)


class _Details:
    ids: list[int]  # the new token ids (without a final <|endoftext|>)
    text: str
    finish_reason: str  # "eos", "length", "stop" or "context"
    logprobs: list[TokenLogprob] | None  # with logprobs=True
    score: float | None  # beam search: the beam's length-normalised log-probability, as transformers'


class Completion(str, _Details):
    """The generated text (a str), carrying ids, finish_reason, logprobs and score."""

    def __new__(cls, text: str, ids, finish_reason, logprobs=None, score=None):
        self = super().__new__(cls, text)
        self.text, self.ids, self.finish_reason, self.logprobs, self.score = text, ids, finish_reason, logprobs, score
        return self


class TokenCompletion(list, _Details):
    """The generated token ids (a list), carrying text, finish_reason, logprobs and score."""

    def __init__(self, ids, finish_reason, text="", logprobs=None, score=None):
        super().__init__(ids)
        self.ids, self.text, self.finish_reason, self.logprobs, self.score = list(ids), text, finish_reason, \
            logprobs, score


@dataclass
class Step:
    """One generated token, as streaming yields it."""

    token_id: int
    text: str  # the text it completes ("" while a character or a possible stop string is unfinished)
    finish_reason: str | None = None  # set on the last step
    logprob: TokenLogprob | None = None
    row: int = 0  # which row of the batch


# -------------------------------------------------------------------------------------------------------- settings


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
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise SettingsError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.top_logprobs > 20:
            raise SettingsError(f"top_logprobs must be at most 20, got {self.top_logprobs}")
        if self.seed is not None and (not isinstance(self.seed, (int, np.integer)) or self.seed < 0):
            raise SettingsError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.length_penalty, (int, float)) or not math.isfinite(self.length_penalty):
            raise SettingsError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise SettingsError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise SettingsError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        if self.num_beams > 1:
            if self.sampler.sampling:
                raise SettingsError("beam search with sampling is not supported; use temperature 0 with num_beams")
            if self.n > self.num_beams:
                raise SettingsError(f"num_return_sequences ({self.n}) must be <= num_beams ({self.num_beams})")
            if self.logprobs or self.top_logprobs:
                raise SettingsError("logprobs are not available with beam search; each beam has a score")
        elif self.n > 1 and not self.sampler.sampling:
            raise SettingsError("n > 1 needs sampling (temperature > 0) or beam search (num_beams >= n)")

    @classmethod
    def parse(cls, model, settings: dict) -> "Settings":
        """Split keyword settings (transformers' and OpenAI's names) into Settings and a Sampler."""
        settings = dict(settings)
        if "num_return_sequences" in settings:
            value = settings.pop("num_return_sequences")
            if settings.get("n", value) != value:
                raise SettingsError("n and num_return_sequences are the same setting; give one")
            settings["n"] = value
        own = {f.name for f in fields(cls)} - {"sampler"}
        rules = Sampler.names() - {"eos_token_id", "vocab_size", "suppress_ids"}
        unknown = sorted(set(settings) - own - rules)
        if unknown:
            raise SettingsError(f"unknown setting {unknown[0]!r}")
        tokenizer = model.tokenizer
        sampler_args = {k: settings.pop(k) for k in list(settings) if k in rules}
        if sampler_args.get("logit_bias"):
            sampler_args["logit_bias"] = resolve_logit_bias(sampler_args["logit_bias"], tokenizer)
        vocab = model.config.vocab_size
        sampler = Sampler(**sampler_args, eos_token_id=tokenizer.eot_id, vocab_size=vocab,
                          suppress_ids=tuple(range(tokenizer.vocab_size, vocab)))
        return cls(**settings, sampler=sampler)


# --------------------------------------------------------------------------------------------------------- prompts


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt given as text or ids; an empty prompt starts from <|endoftext|>."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        ids = [int(i) for i in np.asarray(prompt, dtype=np.int64).reshape(-1)]
    return ids or [tokenizer.eot_id]


def split_prompts(prompt) -> tuple[list, bool]:
    """(prompts, batched): a str or a sequence of ids is one prompt; a list of those is a batch."""
    if isinstance(prompt, str):
        return [prompt], False
    if isinstance(prompt, np.ndarray):
        return (list(prompt), True) if prompt.ndim == 2 else ([prompt], False)
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (str, list, tuple, np.ndarray))
                                                            for p in prompt):
        return list(prompt), True
    return [prompt], False


def fit_to_context(ids: list[int], s: Settings, n_positions: int) -> list[int]:
    if len(ids) <= n_positions:
        return ids
    if not s.truncate_prompt:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens; the model's context is {n_positions}; "
                                 "shorten it or pass truncate_prompt=True to keep its last tokens")
    keep = max(1, n_positions - s.max_new_tokens)  # room for the continuation
    return ids[-keep:]


def left_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths -> ids [B, T] padded on the left, attention mask [B, T] (1 = token)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def row_generators(seed: int | None, samples: int) -> list[np.random.Generator]:
    """One generator per sample index: sample j of a prompt draws the same numbers alone or in any batch."""
    entropy = np.random.SeedSequence().entropy if seed is None else seed
    return [np.random.default_rng([entropy, j]) for j in range(samples)]


# ------------------------------------------------------------------------------------------------------ public API


def generate(model, prompt, **settings):
    """Continue a prompt (text or ids) or a list of prompts.

    Text in gives a Completion (a str); ids in give a TokenCompletion (a list); both carry ids, text,
    finish_reason ("eos", "length", "stop", "context"), logprobs and score. With n (or num_return_sequences)
    > 1 a prompt gives a list of them; a list of prompts gives a list of results, in order.

    Settings follow transformers' generate (max_new_tokens, temperature, top_k, top_p, min_p, typical_p,
    repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, num_beams, length_penalty,
    early_stopping, num_return_sequences, do_sample) and OpenAI's (presence_penalty, frequency_penalty,
    logit_bias, stop, logprobs, top_logprobs, n); seed makes sampling reproducible; truncate_prompt keeps the
    last tokens of a prompt longer than the context. Decoding is greedy unless a sampling setting is given.
    """
    s = Settings.parse(model, settings)
    prompts, batched = split_prompts(prompt)
    rows = [fit_to_context(prompt_ids(model.tokenizer, p), s, model.config.n_positions) for p in prompts]
    if s.num_beams > 1:
        per_prompt = _beam_search(model, rows, s)
    else:
        per_prompt = _collect(model, rows, s)
    results = []
    for p, outputs in zip(prompts, per_prompt):
        made = [_result(model.tokenizer, o, as_text=isinstance(p, str)) for o in outputs]
        results.append(made if s.n > 1 else made[0])
    return results if batched else results[0]


def stream_steps(model, prompt, **settings) -> Iterator[Step]:
    """Generate from one prompt, yielding a Step per new token as soon as it is chosen.

    The prompt and settings are checked here, before the first step, so bad input fails at the call.
    """
    s = Settings.parse(model, settings)
    prompts, batched = split_prompts(prompt)
    if batched or s.n > 1 or s.num_beams > 1:
        raise SettingsError("streaming takes one prompt, n=1 and no beam search")
    rows = [fit_to_context(prompt_ids(model.tokenizer, prompts[0]), s, model.config.n_positions)]
    return (step for steps in _decode(model, rows, s) for step in steps)


def stream_text(model, prompt, **settings) -> Iterator[str]:
    """Generate from one prompt, yielding pieces of text as soon as they are whole characters."""
    return (step.text for step in stream_steps(model, prompt, **settings) if step.text)


# ------------------------------------------------------------------------------------------- sampling and greedy


class StopStrings:
    """Holds back text that may be the start of a stop string; reports a stop string once it is complete."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending = stops, ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that can be shown now, whether a stop string was found: the text is then cut before it)"""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            shown, self.pending = self.pending[:min(hits)], ""
            return shown, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        shown = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(shown):]
        return shown, False

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown


@dataclass
class _Row:
    """The bookkeeping of one generated sequence."""

    limit: int  # tokens it may generate: max_new_tokens or what is left of the context
    decoder: StreamDecoder
    stops: StopStrings
    ids: list = field(default_factory=list)
    pieces: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    score: float | None = None


def _collect(model, rows: list[list[int]], s: Settings) -> list[list[_Row]]:
    """Run the loop to the end; group the finished rows by prompt."""
    done = {}
    for steps in _decode(model, rows, s, keep=done):
        pass
    ordered = [done[i] for i in range(len(rows) * s.n)]
    return [ordered[i * s.n:(i + 1) * s.n] for i in range(len(rows))]


def _decode(model, prompts: list[list[int]], s: Settings, keep: dict | None = None) -> Iterator[list[Step]]:
    """The token-by-token loop over a batch (n rows per prompt); yields each step's new tokens as Steps.

    Rows leave the batch (and the cache) as they finish; `keep` receives every finished row by index.
    """
    tokenizer, n_positions, sampler = model.tokenizer, model.config.n_positions, s.sampler
    prompt_rows = [p for p in prompts for _ in range(s.n)]
    rows = [_Row(min(s.max_new_tokens, n_positions - len(p)), tokenizer.stream_decoder(), StopStrings(s.stop))
            for p in prompt_rows]
    rngs = [rng for _ in prompts for rng in row_generators(s.seed, s.n)] if sampler.sampling else None
    keep = {} if keep is None else keep
    for i, row in enumerate(rows):
        if row.limit == 0:
            row.finish_reason = LENGTH if s.max_new_tokens == 0 else CONTEXT
            keep[i] = row
    active = np.array([i for i, row in enumerate(rows) if row.limit > 0], dtype=np.int64)
    if len(active) == 0:
        return
    ids, mask = left_pad(prompts, pad=0)  # any id: padding is masked out
    padded = not mask.all()
    history = np.where(mask == 1, ids, -1)  # [P, T]: what the decoding rules see (-1 = padding)
    prompt_length = ids.shape[1]
    rules = sampler.rules(prompt_length)
    cache = model.new_cache(len(prompts), capacity=prompt_length + max(r.limit for r in rows))
    logits = model.forward(ids, cache, attention_mask=mask if padded else None, last_only=True).logits[:, -1]
    if s.n > 1:  # each prompt was run once; its n rows share that prefill
        repeat = np.repeat(np.arange(len(prompts)), s.n)
        cache.select(repeat)
        logits, history, mask = logits[repeat], history[repeat], mask[repeat]
    logits, history, mask = logits[active], history[active], mask[active]
    if len(active) < len(prompt_rows):
        cache.select(active)
    step = 0
    while True:
        step += 1
        processed = apply(rules, history, logits)  # [A, V]
        chosen = sampler.select(processed, [rngs[i] for i in active] if rngs else None)  # [A]
        logprobs = _logprobs(tokenizer, logits, chosen, s.top_logprobs) if s.logprobs or s.top_logprobs else None
        steps, still = [], []
        for j, i in enumerate(active):
            row, token = rows[i], int(chosen[j])
            lp = logprobs[j] if logprobs else None
            text = _advance(row, token, lp, step, s.max_new_tokens, tokenizer.eot_id)
            steps.append(Step(token, text, row.finish_reason, lp, int(i)))
            if row.finish_reason:
                keep[int(i)] = row
            else:
                still.append(j)
        yield steps
        if not still:
            return
        if len(still) < len(active):
            cache.select(np.array(still))
        still = np.array(still)
        active, history, mask = active[still], history[still], mask[still]
        new = chosen[still][:, None]  # [A, 1]
        history = np.concatenate([history, new], axis=1)
        mask = np.concatenate([mask, np.ones_like(new)], axis=1)
        logits = model.forward(new, cache, attention_mask=mask if padded else None, last_only=True).logits[:, -1]


def _advance(row: _Row, token: int, logprob, step: int, max_new_tokens: int, eot_id: int) -> str:
    """Record a row's new token; set its finish reason when it is done. Returns the text to show now."""
    if token == eot_id:
        row.finish_reason = EOS
        text = row.stops.feed(row.decoder.flush())[0] + row.stops.flush()
    else:
        row.ids.append(token)
        if logprob is not None:
            row.logprobs.append(logprob)
        text, stopped = row.stops.feed(row.decoder.feed(token))
        if stopped:
            row.finish_reason = STOP
        elif step == row.limit:
            row.finish_reason = LENGTH if step == max_new_tokens else CONTEXT
            tail, stopped = row.stops.feed(row.decoder.flush())
            text += tail if stopped else tail + row.stops.flush()
            if stopped:
                row.finish_reason = STOP
    row.pieces.append(text)
    return text


def _logprobs(tokenizer, logits: np.ndarray, chosen: np.ndarray, top: int) -> list[TokenLogprob]:
    logp = ops.log_softmax(logits)  # [A, V], the model's own distribution
    out = []
    for j, token in enumerate(chosen):
        alternatives = []
        if top:
            best = np.argpartition(-logp[j], top - 1)[:top]
            best = best[np.argsort(-logp[j, best], kind="stable")]
            alternatives = [Alternative(tokenizer.token_text(int(t)), int(t), float(logp[j, t])) for t in best]
        out.append(TokenLogprob(tokenizer.token_text(int(token)), int(token), float(logp[j, token]), alternatives))
    return out


def _result(tokenizer, row: _Row, as_text: bool):
    text = "".join(row.pieces)
    logprobs = row.logprobs if row.logprobs else None
    if as_text:
        return Completion(text, row.ids, row.finish_reason, logprobs, row.score)
    return TokenCompletion(row.ids, row.finish_reason, text, logprobs, row.score)


# ----------------------------------------------------------------------------------------------------- beam search


def _beam_search(model, prompts: list[list[int]], s: Settings) -> list[list[_Row]]:
    """Beam search as transformers' generate does it (num_beams, length_penalty, early_stopping).

    Per prompt, num_beams running sequences; each step scores every continuation of every beam
    (running log-probability + the processed log-softmax), takes the best 2 * num_beams, moves those ending in
    <|endoftext|> (or at the length limit) among the best num_beams to the finished set, scored
    sum(log p) / new_length ** length_penalty, and continues with the best num_beams unfinished ones.
    """
    tokenizer, sampler = model.tokenizer, s.sampler
    nb, n_prompts, eos = s.num_beams, len(prompts), tokenizer.eot_id
    limits = np.array([min(s.max_new_tokens, model.config.n_positions - len(p)) for p in prompts])  # [P]
    if limits.max() == 0:
        return [[_beam_row(tokenizer, [], 0.0, s, limit, False) for _ in range(s.n)] for limit in limits]
    ids, mask = left_pad(prompts, pad=0)
    padded, prompt_length, keep_k = not mask.all(), ids.shape[1], 2 * nb
    rules = sampler.processors(prompt_length)
    cache = model.new_cache(n_prompts, capacity=prompt_length + int(limits.max()))
    logits = model.forward(ids, cache, attention_mask=mask if padded else None, last_only=True).logits[:, -1]
    flat = np.repeat(np.arange(n_prompts), nb)  # [P * nb]: every beam starts as its prompt
    cache.select(flat)
    logits, mask = logits[flat], mask[flat]
    history = np.where(mask == 1, ids[flat], -1)  # [P * nb, T]

    running_scores = np.full((n_prompts, nb), _BEAM_NEG, np.float32)
    running_scores[:, 0] = 0.0  # only the first copy of the prompt may expand at the first step
    running = np.zeros((n_prompts, nb, 0), np.int64)  # generated tokens of the running beams
    finished = np.zeros((n_prompts, nb, 0), np.int64)
    finished_scores = np.full((n_prompts, nb), _BEAM_NEG, np.float32)
    finished_done = np.zeros((n_prompts, nb), bool)
    finished_length = np.zeros((n_prompts, nb), np.int64)
    improvable = np.ones(n_prompts, bool)
    in_top = np.arange(keep_k) < nb  # [2nb]: only candidates ranked in the best nb may finish
    cur = 0
    while True:
        logp = apply(rules, history, ops.log_softmax(logits))  # [P * nb, V]
        vocab = logp.shape[-1]
        total = (logp.reshape(n_prompts, nb, vocab) + running_scores[:, :, None]).reshape(n_prompts, -1)
        best = _top(total, keep_k)  # [P, 2nb] candidate indices into nb * V, best first
        cand_scores = np.take_along_axis(total, best, axis=1)  # [P, 2nb]
        cand_beam, cand_token = best // vocab, best % vocab
        cand = np.concatenate([np.take_along_axis(running, cand_beam[:, :, None], axis=1),
                               cand_token[:, :, None]], axis=2)  # [P, 2nb, cur + 1]
        hits = (cand_token == eos) | (cur + 1 >= limits)[:, None]  # [P, 2nb]

        # the best nb candidates that did not finish run on
        run = _top(cand_scores + hits * np.float32(_BEAM_NEG), nb)  # [P, nb]
        running = np.take_along_axis(cand, run[:, :, None], axis=1)
        running_scores = np.take_along_axis(cand_scores + hits * np.float32(_BEAM_NEG), run, axis=1)
        source = np.take_along_axis(cand_beam, run, axis=1)  # [P, nb]: which beam each continues

        # candidates among the best nb that finished compete with the finished set
        final = cand_scores / np.float32((cur + 1) ** s.length_penalty)
        full = finished_done.all(axis=1) & (s.early_stopping is True)
        final = final + (full | ~improvable)[:, None] * np.float32(_BEAM_NEG)
        final = final + ~(hits & in_top) * np.float32(_BEAM_NEG)
        finished = np.concatenate([finished, np.zeros((n_prompts, nb, 1), np.int64)], axis=2)
        merged = np.concatenate([finished, cand], axis=1)  # [P, 3nb, cur + 1]
        merged_scores = np.concatenate([finished_scores, final], axis=1)
        merged_done = np.concatenate([finished_done, hits & in_top], axis=1)
        merged_length = np.concatenate([finished_length, np.full((n_prompts, keep_k), cur + 1)], axis=1)
        top = _top(merged_scores, nb)
        finished = np.take_along_axis(merged, top[:, :, None], axis=1)
        finished_scores = np.take_along_axis(merged_scores, top, axis=1)
        finished_done = np.take_along_axis(merged_done, top, axis=1)
        finished_length = np.take_along_axis(merged_length, top, axis=1)

        cur += 1
        best_length = (limits if (s.early_stopping == "never" and s.length_penalty > 0) else np.full(n_prompts, cur))
        best_running = running_scores[:, 0] / (best_length.astype(np.float32) ** np.float32(s.length_penalty))
        worst_finished = np.where(finished_done, finished_scores.min(axis=1, keepdims=True), np.float32(_BEAM_NEG))
        improvable &= (best_running[:, None] > worst_finished).any(axis=1)
        if (not improvable.any() or (finished_done.all() and s.early_stopping is True) or hits.all()):
            break
        rows = (np.arange(n_prompts)[:, None] * nb + source).reshape(-1)  # [P * nb] cache rows to continue
        cache.select(rows)
        new = running[:, :, -1].reshape(-1, 1)  # [P * nb, 1]
        history = np.concatenate([history[rows], new], axis=1)
        mask = np.concatenate([mask[rows], np.ones_like(new)], axis=1)
        logits = model.forward(new, cache, attention_mask=mask if padded else None, last_only=True).logits[:, -1]

    results = []
    for p in range(n_prompts):
        beams = []
        for b in range(s.n):
            tokens = finished[p, b, :finished_length[p, b]].tolist()
            ended = bool(tokens) and tokens[-1] == eos
            beams.append(_beam_row(tokenizer, tokens[:-1] if ended else tokens, float(finished_scores[p, b]), s,
                                   int(limits[p]), ended))
        results.append(beams)
    return results


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, largest first (ties: the lower index first)."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _beam_row(tokenizer, tokens: list[int], score: float, s: Settings, limit: int, ended: bool) -> _Row:
    row = _Row(limit, tokenizer.stream_decoder(), StopStrings(s.stop))
    text, stopped = row.stops.feed(tokenizer.decode(tokens))
    row.ids, row.pieces, row.score = tokens, [text if stopped else text + row.stops.flush()], score
    if stopped:
        row.finish_reason = STOP
    elif ended:
        row.finish_reason = EOS
    else:
        row.finish_reason = LENGTH if len(tokens) == s.max_new_tokens else CONTEXT
    return row
