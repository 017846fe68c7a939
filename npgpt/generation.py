"""Autoregressive generation: prefill the prompts once, then one position per new token, using the cache.

    prompts -> Sequences (left-padded, cache filled) -> logits of the last position [B, V]
    repeat: decoding rules -> select a token per row -> stop? -> extend by the new tokens [B] (reads the cache)

Finished rows leave the batch. Beam search (npgpt.beam_search) keeps num_beams rows per prompt instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

from . import ops
from .beam_search import beam_search
from .errors import PromptTruncatedWarning, SettingsError
from .prompts import fit_to_context, prompt_ids, split_prompts
from .results import CONTEXT, LENGTH, Alternative, Row, Step, StopStrings, TokenLogprob
from .speculative import Assistant, PromptLookup, verify
from .sequences import Sequences
from .settings import Settings


def generate(model, prompt, **settings):
    """Continue a prompt (text or ids) or a list of prompts.

    Text in gives a Completion (a str); ids in give a TokenCompletion (a list); both carry ids, text,
    finish_reason ("eos", "length", "stop", "context"), logprobs and score. With n (or num_return_sequences)
    > 1 a prompt gives a list of them; a list of prompts gives a list of results, in order.

    Settings follow transformers' generate (max_new_tokens, temperature, top_k, top_p, min_p, typical_p,
    repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, num_beams, length_penalty,
    early_stopping, num_return_sequences, do_sample) and OpenAI's (presence_penalty, frequency_penalty,
    logit_bias, stop, logprobs, top_logprobs, n); seed makes sampling reproducible; truncate_prompt keeps the
    last tokens of a prompt longer than the context (with a PromptTruncatedWarning saying what was kept).
    Decoding is greedy unless a sampling setting is given.

    Stop strings are looked for in the continuation only (not across the prompt); a result's ids and logprobs
    include the tokens that completed a stop string, its text ends before it (as transformers').
    """
    s = Settings.parse(model, settings)
    prompts, batched = split_prompts(prompt)
    rows = fit_prompts(model, prompts, s)
    per_prompt = beam_search(model, rows, s) if s.num_beams > 1 else _collect(model, rows, s)
    results = []
    for p, outputs in zip(prompts, per_prompt):
        made = [row.result(as_text=isinstance(p, str)) for row in outputs]
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
    ids = fit_prompts(model, prompts, s)
    rows = new_rows(model, ids, s)
    return (step for steps in _decode(model, ids, rows, s) for step in steps)


def stream_text(model, prompt, **settings) -> Iterator[str]:
    """Generate from one prompt, yielding pieces of text as soon as they are whole characters."""
    return (step.text for step in stream_steps(model, prompt, **settings) if step.text)


def fit_prompts(model, prompts: list, s: Settings) -> list[list[int]]:
    """The prompts' ids, fitted to the context; fixes max_new_tokens when max_length was given."""
    ids = [prompt_ids(model.tokenizer, p, model.config.vocab_size) for p in _unmask(prompts, s.attention_mask)]
    s.fix_length(ids)
    n = model.config.n_positions
    if s.sliding_window:  # as a sliding window would see them: the last n_positions tokens
        return [p[-n:] for p in ids]
    fitted = [fit_to_context(p, n, s.max_new_tokens, s.truncate_prompt) for p in ids]
    for _, note in fitted:
        if note:
            warnings.warn(note, PromptTruncatedWarning, stacklevel=4)
    return [p for p, _ in fitted]


def _unmask(prompts: list, attention_mask) -> list:
    """With an attention_mask [B, T] (transformers' way of padding a batch of ids), each row's tokens."""
    if attention_mask is None:
        return prompts
    mask = np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None]
    widths = {len(p) for p in prompts if not isinstance(p, str)}
    if any(isinstance(p, str) for p in prompts) or mask.shape != (len(prompts), *widths) or len(widths) != 1:
        raise SettingsError(f"attention_mask must match the prompt ids' shape [B, T]; got {list(mask.shape)} "
                            "for prompts that are not one [B, T] array of ids")
    if not np.isin(mask, (0, 1)).all():
        raise SettingsError("attention_mask holds 1 for tokens and 0 for padding, nothing else")
    return [np.asarray(p)[m == 1] for p, m in zip(prompts, mask)]


# ------------------------------------------------------------------------------------------- sampling and greedy


def new_rows(model, prompts: list[list[int]], s: Settings) -> list[Row]:
    """n rows per prompt, each allowed max_new_tokens or what is left of the context (no limit but
    max_new_tokens with a sliding window)."""
    rows = []
    for p in prompts:
        room = s.max_new_tokens if s.sliding_window else model.config.n_positions - len(p)
        for _ in range(s.n):
            row = Row(min(s.max_new_tokens, room), model.tokenizer.stream_decoder(), StopStrings(s.stop))
            if row.limit == 0:
                row.finish_reason = LENGTH if s.max_new_tokens == 0 else CONTEXT
            rows.append(row)
    return rows


def _collect(model, prompts: list[list[int]], s: Settings) -> list[list[Row]]:
    """Run the loop to the end; group the finished rows by prompt."""
    rows = new_rows(model, prompts, s)
    for _ in _decode(model, prompts, rows, s):
        pass
    return [rows[i * s.n:(i + 1) * s.n] for i in range(len(prompts))]


def _decode(model, prompts: list[list[int]], rows: list[Row], s: Settings) -> Iterator[list[Step]]:
    """The decoding loop over a batch (n rows per prompt, in `rows`); yields each step's new tokens.

    A step chooses one token per row, or, with drafts (speculative decoding), checks them all in one forward
    pass and emits each row's accepted drafts and one token more. Each row is finished in place (its
    finish_reason set); finished rows leave the batch and the cache.
    """
    active = [i for i, row in enumerate(rows) if row.finish_reason is None]
    if not active:
        return
    tokenizer, sampler = model.tokenizer, s.sampler
    batch = Sequences(model, prompts, new_tokens=max(row.limit for row in rows) + s.draft_room, rows=len(rows),
                      sliding_window=s.sliding_window)
    origin = np.repeat(np.arange(len(prompts)), s.n)[active]  # each prompt was prefilled once
    batch.select(origin)
    rngs = [rng for _ in prompts for rng in s.generators(s.n)] if sampler.sampling else None
    rngs = [rngs[i] for i in active] if rngs else None
    rules = sampler.rules(batch.prompt_length)
    drafter = drafter_for(model, s, prompts, origin, sampler.rules)
    logits, drafts, q = batch.logits[:, None], [[] for _ in active], None  # [A, 1 + k, V]
    histories, ran = batch.tokens, False  # ran: logits come from a run() whose tokens are yet to be kept
    while True:
        emitted = verify(sampler, rules, histories, logits, drafts, rngs, q)  # per row: its new tokens
        steps, still = record(tokenizer, rows, active, emitted, logits, s)
        yield steps
        if not still:
            return
        finals = [emitted[j][-1] for j in still]
        if drafter is None:  # plain decoding: one position per row
            batch.select(still)
            batch.extend(finals)
            logits, histories, drafts = batch.logits[:, None], batch.tokens, [[] for _ in still]
            active = [active[j] for j in still]
            continue
        accepted = [len(e) - 1 for e in emitted]
        if ran:  # the last run() held the last token and the drafts: keep what was accepted
            batch.keep([a + 1 for a in accepted])
        drafter.accepted(accepted, [len(d) for d in drafts], [e[-1] for e in emitted])
        batch.select(still)
        drafter.select(still)
        active = [active[j] for j in still]
        rngs = [rngs[j] for j in still] if rngs else None
        budgets = [rows[i].limit - len(rows[i].ids) - 1 for i in active]  # no drafts past a row's end
        histories = [np.append(tokens, f) for tokens, f in zip(batch.tokens, finals)]  # with the token to run
        drafts, q = drafter.propose(histories, budgets)
        logits, ran = batch.run([[f] + [int(d) for d in ds] for f, ds in zip(finals, drafts)]), True


def record(tokenizer, rows: list[Row], active: list[int], emitted: list[list[int]], logits: np.ndarray,
           s: Settings) -> tuple[list[Step], list[int]]:
    """Give row active[j] its emitted tokens emitted[j] (chosen after logits [A, T, V]) until it finishes;
    return the Steps, and the j of the rows still going."""
    steps, still = [], []
    for j, i in enumerate(active):
        for position, token in enumerate(emitted[j]):
            lp = token_logprob(tokenizer, logits[j, position], token, s.top_logprobs) if s.logprobs or \
                s.top_logprobs else None
            text = rows[i].advance(token, lp, s.max_new_tokens, s.eos_ids)
            steps.append(Step(token, text, rows[i].finish_reason, lp, i))
            if rows[i].finish_reason is not None:
                break
        if rows[i].finish_reason is None:
            still.append(j)
    return steps, still


def drafter_for(model, s: Settings, prompts, origin, rules_for):
    """The source of drafts for speculative decoding (None without it)."""
    if s.prompt_lookup_num_tokens:
        return PromptLookup(s.prompt_lookup_num_tokens, s.max_matching_ngram_size)
    if s.assistant_model is not None:
        return Assistant(s.assistant_model, model, s, prompts, origin, s.num_assistant_tokens, rules_for)
    return None


def token_logprob(tokenizer, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """A token's log-probability under the model's own distribution (logits [V]) and the top alternatives."""
    return token_logprobs(tokenizer, logits[None], [token], top)[0]


def token_logprobs(tokenizer, logits: np.ndarray, tokens, top: int) -> list[TokenLogprob]:
    """token_logprob for several positions at once: logits [N, V], tokens [N] (one log-softmax for all)."""
    logp = ops.log_softmax(logits)  # [N, V]
    chosen = logp[np.arange(len(tokens)), tokens]  # [N]
    best = ops.top_indices(logp, top)  # [N, top], most likely first
    text = tokenizer.token_text
    return [TokenLogprob(text(int(t)), int(t), float(c), [Alternative(text(int(a)), int(a), float(lp[a])) for a in b])
            for t, c, b, lp in zip(tokens, chosen, best, logp)]
