"""Speculative decoding: draft a few tokens cheaply, then check them all with one forward pass of the model.

    draft d_1..d_k       prompt lookup: copied from where the text's last n tokens occurred before;
                         or an assistant: a smaller GPT-2 with the same tokenizer, decoding ahead on its own cache
    verify               one forward pass of [last token, d_1..d_k] gives the model's p_1..p_{k+1}
    accept               d_i while it is what the model itself would choose: greedy, its argmax; sampling without a
                         draft distribution, its own draw; with the assistant's q, with probability
                         min(1, p(d_i) / q(d_i)), else a draw from max(0, p - q) normalised (Leviathan et al.
                         2023, Chen et al. 2023); then one token more from p at the first rejection, or p_{k+1}

Greedy output is the same as without drafts, token for token, and so is sampling with prompt lookup (each
emitted token is the model's own draw, one random number each, as without drafts); sampling with an assistant
has the same distribution. Each row of a batch accepts its own number of tokens.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .errors import SettingsError
from .sampling import apply, probabilities, sample
from .sequences import Sequences


def apply_rows(rules, histories: list[np.ndarray], logits: np.ndarray) -> np.ndarray:
    """The rules on rows whose histories may differ in length [n, V]: rows of one length go together (rules
    count generated tokens by the history's width, so rows cannot simply be padded to one width)."""
    if len({len(h) for h in histories}) == 1:
        return apply(rules, np.stack(histories), logits)
    out = np.empty_like(logits)
    groups = defaultdict(list)
    for j, h in enumerate(histories):
        groups[len(h)].append(j)
    for rows in groups.values():
        out[rows] = apply(rules, np.stack([histories[j] for j in rows]), logits[rows])
    return out


def verify(sampler, rules, histories: list[np.ndarray], logits: np.ndarray, drafts: list, rngs,
           draft_probs: list | None = None) -> list[list[int]]:
    """The tokens each row emits: its accepted drafts, then one token of the model's own.

    histories: each row's tokens so far; logits [A, T, V]: the model's after the last token and after each
    draft; drafts: each row's drafted tokens (T - 1 at most); draft_probs: per row [k, V] the assistant's
    distribution each draft was drawn from (None: no draft distribution). Without drafts this is one plain
    decoding step.
    """
    emitted = [[] for _ in drafts]
    open_rows = list(range(len(drafts)))
    position = 0
    while open_rows:
        here = [np.concatenate([histories[r], np.asarray(drafts[r][:position], np.int64)]) for r in open_rows]
        rows = slice(None) if len(open_rows) == len(drafts) else open_rows  # all rows: a view, not a copy
        processed = apply_rows(rules, here, logits[rows, position])  # [n, V]
        if draft_probs is None or not sampler.sampling:
            chosen = sampler.select(processed, [rngs[r] for r in open_rows] if rngs else None)
        else:
            chosen = [_speculative_sample(processed[j], drafts[r], draft_probs[r], position, rngs[r])
                      for j, r in enumerate(open_rows)]
        still = []
        for j, r in enumerate(open_rows):
            token = int(chosen[j])
            emitted[r].append(token)
            if position < len(drafts[r]) and token == drafts[r][position]:
                still.append(r)  # the draft is what the model chose: go on to the next one
        open_rows, position = still, position + 1
    return emitted


def _speculative_sample(processed, drafts, q, position, rng) -> int:
    """Accept the draft with probability min(1, p/q); else draw from max(0, p - q), normalised. Past the drafts
    (every one accepted), a plain draw from p."""
    if position == len(drafts):
        return int(sample(processed[None], [rng])[0])
    p = probabilities(processed)  # [V]
    d, qd = drafts[position], q[position]
    if rng.random() * qd[d] < p[d]:  # u < p(d) / q(d), without dividing by a q that may be tiny
        return int(d)
    residual = np.maximum(p - qd, 0.0)
    if residual.sum() <= 0:  # p <= q everywhere (p == q up to rounding): p itself
        residual = p
    cumulative = np.cumsum(residual)
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), len(p) - 1))


class DraftLength:
    """How many tokens to draft next: from `start`, +2 after a step in which every row accepted every draft,
    -1 after one in which some did not (transformers' schedule), within [1, maximum]."""

    def __init__(self, maximum: int, start: int = 5):
        self.maximum, self.k = maximum, max(1, min(start, maximum))

    def update(self, all_accepted: bool) -> None:
        self.k = min(self.maximum, self.k + 2) if all_accepted else max(1, self.k - 1)


class PromptLookup:
    """Drafts copied from the text itself: where the last n tokens (n = max_ngram .. 1) occurred before, the
    tokens that followed them then. Costs no model call; pays off when the output repeats its input (summaries,
    edits, questions about a given text).

    Of several occurrences, the most recent one followed by a whole draft of k tokens; if none is, the earliest
    (the longest draft there is). The most recent alone would cut drafts short where the text repeats itself:
    in "x x x x x", the last "x x" before the tail is followed by one token only, the first by three."""

    def __init__(self, max_tokens: int, max_ngram: int = 2):
        self.length, self.max_ngram = DraftLength(max_tokens, start=max_tokens), max_ngram

    def propose(self, histories: list[np.ndarray], budgets: list[int]) -> tuple[list[np.ndarray], None]:
        return [self._lookup(h[h >= 0], min(self.length.k, b)) for h, b in zip(histories, budgets)], None

    def _lookup(self, tokens: np.ndarray, k: int) -> np.ndarray:
        if k <= 0:
            return tokens[:0]
        for n in range(min(self.max_ngram, len(tokens) - 1), 0, -1):
            windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # [S - n, n]: not the tail itself
            starts = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
            if len(starts):
                whole = starts[starts + n + k <= len(tokens)]  # occurrences followed by k tokens
                follow = (whole[-1] if len(whole) else starts[0]) + n
                return tokens[follow:follow + k]
        return tokens[:0]

    def accepted(self, counts: list[int], drafted: list[int], finals: list[int]) -> None:
        self.length.update(all(c == d for c, d in zip(counts, drafted)))

    def select(self, rows) -> None:
        pass


class Assistant:
    """Drafts from a smaller GPT-2 with the same tokenizer, decoding ahead with the same rules on its own
    cache (which follows what the model accepts: rejected drafts are rolled back)."""

    def __init__(self, assistant, model, s, prompts: list[list[int]], rows: np.ndarray, max_tokens: int,
                 rules_for):
        if assistant.tokenizer.vocab_size != model.tokenizer.vocab_size or \
                assistant.tokenizer.eot_id != model.tokenizer.eot_id or \
                assistant.config.vocab_size != model.config.vocab_size:
            raise SettingsError("assistant_model must share the model's tokenizer and vocabulary size "
                                f"({model.config.vocab_size} tokens)")
        self.model, self.sampler, self.length = assistant, s.sampler, DraftLength(max_tokens)
        self.batch = Sequences(assistant, prompts, new_tokens=s.max_new_tokens + max_tokens + 1, rows=len(rows))
        self.batch.select(rows)
        self.rules = rules_for(self.batch.prompt_length)
        generators = [rng for _ in prompts for rng in _draft_generators(s.seed, s.n)]
        self.rngs = [generators[r] for r in rows] if self.sampler.sampling else None
        self.pending = [[] for _ in rows]  # tokens the model emitted that the assistant has not run yet
        self.drafts, self.ran = [], 0

    def propose(self, histories, budgets: list[int]) -> tuple[list[np.ndarray], list | None]:
        k = max(0, min(self.length.k, max(budgets)))
        logits = self._catch_up()  # [A, V]
        drafts, probs = np.zeros((len(budgets), k), np.int64), []
        for i in range(k):
            processed = apply_rows(self.rules, self.batch.tokens, logits)
            drafts[:, i] = self.sampler.select(processed, self.rngs)
            if self.sampler.sampling:
                probs.append(probabilities(processed))  # [A, V]: q, what the draft was drawn from
            if i < k - 1:
                self.batch.extend(drafts[:, i])
                logits = self.batch.logits
        self.drafts, self.ran = drafts, max(k - 1, 0)  # the assistant ran every draft but the last
        q = [np.stack([p[r] for p in probs]) for r in range(len(budgets))] if probs else None
        return [drafts[r, :min(k, b)] for r, b in enumerate(budgets)], q

    def _catch_up(self) -> np.ndarray:
        """Run what the model emitted since the last drafts; the assistant's next-token logits [A, V]."""
        if not any(self.pending):
            return self.batch.logits
        lengths = [len(p) for p in self.pending]
        logits = self.batch.run(self.pending)  # [A, T, V]
        self.batch.keep(lengths)
        self.pending = [[] for _ in self.pending]
        return logits[np.arange(len(lengths)), np.array(lengths) - 1]

    def accepted(self, counts: list[int], drafted: list[int], finals: list[int]) -> None:
        """Row r accepted counts[r] of its drafts and then emitted finals[r]: roll back the drafts it ran that
        were rejected; the accepted draft it did not run (the last) and the final token are run next time."""
        self.length.update(all(c == d for c, d in zip(counts, drafted)))
        self.batch.forget([self.ran - min(c, self.ran) for c in counts])
        self.pending = [([int(self.drafts[r, self.ran])] if c > self.ran else []) + [f]
                        for r, (c, f) in enumerate(zip(counts, finals))]

    def select(self, rows) -> None:
        self.batch.select(rows)
        self.pending = [self.pending[r] for r in rows]
        self.drafts = self.drafts[rows] if len(self.drafts) else self.drafts
        if self.rngs is not None:
            self.rngs = [self.rngs[r] for r in rows]


def _draft_generators(seed, samples: int) -> list[np.random.Generator]:
    """The assistant draws with generators of its own, derived from the seed (so a seed still fixes the text)."""
    entropy = np.random.SeedSequence().entropy if seed is None else seed
    return [np.random.default_rng([entropy, j, 1]) for j in range(samples)]
