"""A batch of sequences being decoded together, shared by sampling, greedy decoding, beam search and
speculative decoding.

    prompts -> left-padded ids [B, T] -> one forward pass fills the cache -> logits of the last position [B, V]
    each step: select(rows) keeps, repeats or reorders rows; extend(tokens [B]) runs one position per row
    continuous batching: join(other) adds another batch's rows, prefilled apart, to this one
    speculative steps: run(new) runs a few positions per row (the last token and its drafts) -> logits
    [B, T, V]; keep(counts) keeps each row's accepted ones (the others become holes, masked like padding)

Rows are independent: padding and holes are masked out and positions count real tokens, so each row gives what
its prompt gives alone.
"""

from __future__ import annotations

import numpy as np

from .memory import check_fits
from .prompts import left_pad


class Sequences:
    """The key/value cache, each row's tokens so far (`tokens`: its left-padded prompt, -1 for padding, then
    what was generated: what the decoding rules see), the attention mask [B, S] over the cache's positions
    and the next-token logits [B, V] of a batch of sequences."""

    def __init__(self, model, prompts: list[list[int]], new_tokens: int, rows: int | None = None,
                 sliding_window: bool = False):
        """Prefill the prompts. new_tokens: how many positions to keep room for after the longest prompt.
        rows: how many rows the batch will grow to (n samples or beams per prompt), to check memory first.
        sliding_window: once the context is full, go on with its last n_positions tokens (see extend)."""
        ids, mask = left_pad(prompts, pad=0)  # any id: padding is masked out
        self.model, self.mask, self.sliding_window = model, mask.astype(bool), sliding_window
        self.tokens = list(np.where(mask == 1, ids, -1))  # per row [S]
        self.prompt_length = ids.shape[1]
        capacity = min(self.prompt_length + new_tokens, model.config.n_positions) if sliding_window \
            else self.prompt_length + new_tokens
        c = model.config
        per_row = 2 * c.n_layer * capacity * c.n_embd * 4 + 8 * c.vocab_size * 4  # cache + a step's logits
        check_fits(per_row * max(rows or 0, len(prompts)), f"generating {max(rows or 0, len(prompts))} rows of "
                   f"up to {capacity} tokens", "lower n, num_beams, the number of prompts or max_new_tokens")
        self.cache = model.new_cache(len(prompts), capacity=capacity)
        self.logits = model.forward(ids, self.cache, attention_mask=self._mask(), last_only=True).logits[:, -1]
        self._added = 0  # positions the last run() added

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def history(self) -> np.ndarray:
        """[B, S] every row's tokens (rows advancing together have the same length)."""
        return np.stack(self.tokens)

    def _mask(self):
        return None if self.mask.all() else self.mask

    def select(self, rows) -> None:
        """New row i is old row rows[i] (rows may drop, repeat or reorder)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and (rows == np.arange(len(rows))).all():
            return
        self.cache.select(rows)
        self.tokens = [self.tokens[r] for r in rows]
        self.mask, self.logits = self.mask[rows], self.logits[rows]

    def join(self, other: "Sequences") -> None:
        """Add the rows of another batch (prefilled on its own) after this one's: continuous batching. The two
        caches are right-aligned on a common length and the positions a row lacks are masked out like padding,
        so each row still gives what its prompt gives alone. Each row keeps its own tokens, so joined rows may
        differ in length (`history` then does not apply). Positions that no row uses any more are dropped."""
        starts = (_first_used(self.mask), _first_used(other.mask))
        room = max(self.cache.capacity - self.cache.length, other.cache.capacity - other.cache.length)
        widths = (self.mask.shape[1] - starts[0], other.mask.shape[1] - starts[1])
        length = self.cache.join(other.cache, starts, max(widths) + room)
        mask = np.zeros((len(self) + len(other), length), dtype=bool)
        mask[:len(self), length - widths[0]:] = self.mask[:, starts[0]:]
        mask[len(self):, length - widths[1]:] = other.mask[:, starts[1]:]
        self.mask, self.logits = mask, np.concatenate([self.logits, other.logits])
        self.tokens = self.tokens + other.tokens

    def extend(self, tokens: np.ndarray) -> None:
        """Append one token per row [B] and compute the next logits [B, V] (one position, read from the cache).

        With a sliding window, once a row's sequence no longer fits the context, every step runs the model over
        the last n_positions tokens of each row: positions are absolute (learned embeddings), so the cache
        cannot simply shift, and each such step costs a whole-window forward pass (a prefill of n_positions
        tokens) instead of one position."""
        new = np.asarray(tokens, dtype=np.int64)[:, None]  # [B, 1]
        self.tokens = [np.append(row, token) for row, token in zip(self.tokens, new[:, 0])]
        if self.sliding_window and self.cache.length + 1 > self.cache.capacity:
            self._slide()
            return
        self._make_room(1)
        self.mask = np.concatenate([self.mask, np.ones_like(new, dtype=bool)], axis=1)
        self.logits = self.model.forward(new, self.cache, attention_mask=self._mask(), last_only=True).logits[:, -1]

    def run(self, new: list) -> np.ndarray:
        """Run each row's new tokens (as many as each has; a row with fewer is padded at the end with holes)
        and return the logits after each of them, [B, T, V]. The tokens are not yet part of the rows: keep()
        says how many each row keeps."""
        width = max(len(n) for n in new)
        ids = np.zeros((len(new), width), dtype=np.int64)
        valid = np.zeros((len(new), width), dtype=bool)
        for i, row in enumerate(new):
            ids[i, :len(row)], valid[i, :len(row)] = row, True
        self._make_room(width)
        self.mask = np.concatenate([self.mask, valid], axis=1)
        self._new, self._added = new, width
        return self.model.forward(ids, self.cache, attention_mask=self._mask()).logits  # [B, T, V]

    def keep(self, counts) -> None:
        """Row i keeps the first counts[i] tokens the last run() gave it; the rest become holes, and positions no
        row keeps are rolled back out of the cache."""
        counts = np.asarray(counts, dtype=np.int64)
        drop = self._added - int(counts.max())
        if drop:
            self.cache.length -= drop
            self.mask = self.mask[:, :self.mask.shape[1] - drop]
        start = self.mask.shape[1] - int(counts.max())
        self.mask[:, start:] &= np.arange(int(counts.max()))[None] < counts[:, None]
        self.tokens = [np.concatenate([row, np.asarray(n[:c], dtype=np.int64)])
                       for row, n, c in zip(self.tokens, self._new, counts)]
        self._added = 0

    def forget(self, counts) -> None:
        """Row i forgets its last counts[i] tokens: they become holes, and positions no row uses any more are
        rolled back out of the cache. The logits are then stale until the next run()."""
        counts = np.asarray(counts, dtype=np.int64)
        if not counts.any():
            return
        for r, c in enumerate(counts):
            if c:
                self.mask[r, np.flatnonzero(self.mask[r])[-c:]] = False
                self.tokens[r] = self.tokens[r][:-c]
        used = int(np.flatnonzero(self.mask.any(axis=0))[-1]) + 1
        self.cache.length -= self.mask.shape[1] - used
        self.mask = self.mask[:, :used]

    def _make_room(self, width: int) -> None:
        """Close the holes (and grow the cache) when `width` more positions would not fit."""
        if self.cache is None or self.cache.length + width <= self.cache.capacity:
            return
        needed = int(self.mask.sum(axis=1).max()) + width
        self.mask = self.cache.compact(self.mask, capacity=max(self.cache.capacity, needed))

    def _slide(self) -> None:
        """Run each row's last n_positions tokens afresh (the rules still see the whole history)."""
        n = self.model.config.n_positions
        windows = [row[row >= 0][-n:] for row in self.tokens]
        ids, mask = left_pad(windows, pad=0)
        self.mask = mask.astype(bool)
        self.cache = self.model.new_cache(len(windows), capacity=ids.shape[1])  # full: the next step slides again
        self.logits = self.model.forward(ids, self.cache, attention_mask=self._mask(), last_only=True).logits[:, -1]


def _first_used(mask: np.ndarray) -> int:
    """The first position [S] of a mask [B, S] that some row uses."""
    return int(np.argmax(mask.any(axis=0)))
