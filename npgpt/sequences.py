"""A batch of sequences being decoded together, shared by sampling, greedy decoding and beam search.

    prompts -> left-padded ids [B, T] -> one forward pass fills the cache -> logits of the last position [B, V]
    each step: select(rows) keeps, repeats or reorders rows; extend(tokens [B]) runs one position per row

Rows are independent: padding is masked out and positions count real tokens, so each row gives what its prompt
gives alone.
"""

from __future__ import annotations

import numpy as np

from .memory import check_fits
from .prompts import left_pad


class Sequences:
    """The key/value cache, what the decoding rules see (`history` [B, S], -1 for padding), the attention mask
    [B, S] and the next-token logits [B, V] of a batch of sequences."""

    def __init__(self, model, prompts: list[list[int]], new_tokens: int, rows: int | None = None,
                 sliding_window: bool = False):
        """Prefill the prompts. new_tokens: how many positions to keep room for after the longest prompt.
        rows: how many rows the batch will grow to (n samples or beams per prompt), to check memory first.
        sliding_window: once the context is full, go on with its last n_positions tokens (see extend)."""
        ids, mask = left_pad(prompts, pad=0)  # any id: padding is masked out
        self.model, self.mask, self.padded, self.sliding_window = model, mask, not mask.all(), sliding_window
        self.history = np.where(mask == 1, ids, -1)  # [B, T]
        self.prompt_length = ids.shape[1]
        capacity = min(self.prompt_length + new_tokens, model.config.n_positions) if sliding_window \
            else self.prompt_length + new_tokens
        c = model.config
        per_row = 2 * c.n_layer * capacity * c.n_embd * 4 + 8 * c.vocab_size * 4  # cache + a step's logits
        check_fits(per_row * max(rows or 0, len(prompts)), f"generating {max(rows or 0, len(prompts))} rows of "
                   f"up to {capacity} tokens", "lower n, num_beams, the number of prompts or max_new_tokens")
        self.cache = model.new_cache(len(prompts), capacity=capacity)
        self.logits = model.forward(ids, self.cache, attention_mask=self._mask(), last_only=True).logits[:, -1]

    def __len__(self) -> int:
        return len(self.logits)

    def _mask(self):
        return self.mask if self.padded else None

    def select(self, rows) -> None:
        """New row i is old row rows[i] (rows may drop, repeat or reorder)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and (rows == np.arange(len(rows))).all():
            return
        self.cache.select(rows)
        self.history, self.mask, self.logits = self.history[rows], self.mask[rows], self.logits[rows]

    def extend(self, tokens: np.ndarray) -> None:
        """Append one token per row [B] and compute the next logits [B, V] (one position, read from the cache).

        With a sliding window, once a row's sequence no longer fits the context, every step runs the model over
        the last n_positions tokens of each row: positions are absolute (learned embeddings), so the cache
        cannot simply shift, and each such step costs a whole-window forward pass (a prefill of n_positions
        tokens) instead of one position."""
        new = np.asarray(tokens, dtype=np.int64)[:, None]  # [B, 1]
        self.history = np.concatenate([self.history, new], axis=1)
        if self.sliding_window and self.cache.length + 1 > self.cache.capacity:
            self._slide()
            return
        self.mask = np.concatenate([self.mask, np.ones_like(new)], axis=1)
        self.logits = self.model.forward(new, self.cache, attention_mask=self._mask(), last_only=True).logits[:, -1]

    def _slide(self) -> None:
        """Run each row's last n_positions tokens afresh (the rules still see the whole history)."""
        n = self.model.config.n_positions
        windows = [row[row >= 0][-n:] for row in self.history]
        ids, self.mask = left_pad(windows, pad=0)
        self.padded = not self.mask.all()
        self.cache = self.model.new_cache(len(windows), capacity=ids.shape[1])  # full: the next step slides again
        self.logits = self.model.forward(ids, self.cache, attention_mask=self._mask(), last_only=True).logits[:, -1]
