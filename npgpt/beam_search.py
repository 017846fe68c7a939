"""Beam search as transformers' generate does it (num_beams, length_penalty, early_stopping, stop strings).

Per prompt, num_beams running sequences; each step scores every continuation of every beam (running
log-probability + the processed log-softmax), takes the best 2 * num_beams, moves those that finish (end-of-text,
a completed stop string, or the length limit) among the best num_beams to the finished set, scored
sum(log p) / new_length ** length_penalty, and continues with the best num_beams unfinished ones.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .memory import check_fits
from .results import CONTEXT, EOS, LENGTH, STOP, Row, StopStrings
from .sampling import apply
from .sequences import Sequences

NEVER = -1.0e9  # transformers' "never" score in beam search bookkeeping


def beam_search(model, prompts: list[list[int]], s) -> list[list[Row]]:
    """The s.n best finished beams of each prompt, best first, as finished Rows with their scores."""
    tokenizer, nb, n_prompts, eos = model.tokenizer, s.num_beams, len(prompts), list(s.eos_ids)
    limits = np.array([min(s.max_new_tokens, model.config.n_positions - len(p)) for p in prompts])  # [P]
    if limits.max() == 0:
        return [[_finished_row(tokenizer, [], 0.0, s, limit, False) for _ in range(s.n)] for limit in limits]
    vocab = model.config.vocab_size
    check_fits(n_prompts * nb * vocab * 4 * 8, f"beam search with {nb} beams over {n_prompts} prompts",
               "lower num_beams")  # the step's scores [P, nb * V] and their temporaries
    batch = Sequences(model, prompts, new_tokens=int(limits.max()), rows=n_prompts * nb)
    rules = s.sampler.processors(batch.prompt_length)
    batch.select(np.repeat(np.arange(n_prompts), nb))  # every beam starts as its prompt

    running_scores = np.full((n_prompts, nb), NEVER, np.float32)
    running_scores[:, 0] = 0.0  # only the first copy of the prompt may expand at the first step
    running = np.zeros((n_prompts, nb, 0), np.int64)  # generated tokens of the running beams
    finished = np.zeros((n_prompts, nb, 0), np.int64)
    finished_scores = np.full((n_prompts, nb), NEVER, np.float32)
    finished_done = np.zeros((n_prompts, nb), bool)
    finished_length = np.zeros((n_prompts, nb), np.int64)
    improvable = np.ones(n_prompts, bool)
    keep_k = 2 * nb
    in_top = np.arange(keep_k) < nb  # [2nb]: only candidates ranked in the best nb may finish
    cur = 0
    while True:
        logp = apply(rules, batch.history, ops.log_softmax(batch.logits))  # [P * nb, V]
        total = (logp.reshape(n_prompts, nb, vocab) + running_scores[:, :, None]).reshape(n_prompts, -1)
        best = _top(total, keep_k)  # [P, 2nb] candidate indices into nb * V, best first
        cand_scores = np.take_along_axis(total, best, axis=1)  # [P, 2nb]
        cand_beam, cand_token = best // vocab, best % vocab
        cand = np.concatenate([np.take_along_axis(running, cand_beam[:, :, None], axis=1),
                               cand_token[:, :, None]], axis=2)  # [P, 2nb, cur + 1]
        hits = np.isin(cand_token, eos) | (cur + 1 >= limits)[:, None] | _stopped(tokenizer, cand, s.stop)  # [P, 2nb]

        # the best nb candidates that did not finish run on
        unfinished_scores = cand_scores + hits * np.float32(NEVER)
        run = _top(unfinished_scores, nb)  # [P, nb]
        running = np.take_along_axis(cand, run[:, :, None], axis=1)
        running_scores = np.take_along_axis(unfinished_scores, run, axis=1)
        source = np.take_along_axis(cand_beam, run, axis=1)  # [P, nb]: which beam each continues

        # candidates among the best nb that finished compete with the finished set
        final = cand_scores / np.float32((cur + 1) ** s.length_penalty)
        full = finished_done.all(axis=1) & (s.early_stopping is True)
        final = final + (full | ~improvable)[:, None] * np.float32(NEVER)
        final = final + ~(hits & in_top) * np.float32(NEVER)
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
        best_length = limits if (s.early_stopping == "never" and s.length_penalty > 0) else np.full(n_prompts, cur)
        best_running = running_scores[:, 0] / (best_length.astype(np.float32) ** np.float32(s.length_penalty))
        worst_finished = np.where(finished_done, finished_scores.min(axis=1, keepdims=True), np.float32(NEVER))
        improvable &= (best_running[:, None] > worst_finished).any(axis=1)
        if not improvable.any() or (finished_done.all() and s.early_stopping is True) or hits.all():
            break
        batch.select((np.arange(n_prompts)[:, None] * nb + source).reshape(-1))  # [P * nb] rows continued
        batch.extend(running[:, :, -1].reshape(-1))

    results = []
    for p in range(n_prompts):
        beams = []
        for b in range(s.n):
            tokens = finished[p, b, :finished_length[p, b]].tolist()
            ended = bool(tokens) and tokens[-1] in eos
            beams.append(_finished_row(tokenizer, tokens[:-1] if ended else tokens, float(finished_scores[p, b]),
                                       s, int(limits[p]), ended))
        results.append(beams)
    return results


def _stopped(tokenizer, candidates: np.ndarray, stops: list[str]) -> np.ndarray:
    """[P, K] whether each candidate's continuation [P, K, L] contains a stop string (then it has finished:
    running beams never contain one, so it was completed by the candidate's last token)."""
    if not stops:
        return np.zeros(candidates.shape[:2], bool)
    texts = [[tokenizer.decode(c) for c in row] for row in candidates.tolist()]
    return np.array([[any(stop in text for stop in stops) for text in row] for row in texts])


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, largest first (ties: the lower index first)."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _finished_row(tokenizer, tokens: list[int], score: float, s, limit: int, ended: bool) -> Row:
    row = Row(limit, tokenizer.stream_decoder(), StopStrings(s.stop))
    text, stopped = row.stops.feed(tokenizer.decode(tokens))
    row.ids, row.pieces, row.score = tokens, [text if stopped else text + row.stops.flush()], score
    if stopped:
        row.finish_reason = STOP
    elif ended:
        row.finish_reason = EOS
    else:
        row.finish_reason = LENGTH if len(tokens) == s.max_new_tokens else CONTEXT
    return row
