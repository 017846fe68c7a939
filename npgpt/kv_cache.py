"""The key/value cache: every position's keys and values, kept so that each new token costs one position."""

from __future__ import annotations

import math

import numpy as np

from .config import GPT2Config
from .memory import check_fits


class KVCache:
    """Keys and values of every position seen so far, preallocated for `capacity` positions (by default the
    model's context; a left-padded batch may need its padding on top).

    keys, values: [L, B, H, capacity, D]. A forward pass over T new positions writes them at
    [length, length + T) in each layer, attends over [0, length + T), then advances `length` by T.
    """

    def __init__(self, config: GPT2Config, batch_size: int, capacity: int | None = None):
        capacity = config.n_positions if capacity is None else capacity
        shape = (config.n_layer, batch_size, config.n_head, capacity, config.head_size)
        check_fits(2 * 4 * math.prod(shape), f"a key/value cache of {batch_size} rows x {capacity} positions",
                   "use fewer rows or positions")
        self.keys = np.zeros(shape, dtype=np.float32)  # zeroed lazily by the OS: memory is used as it fills
        self.values = np.zeros(shape, dtype=np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v [B, H, T, D] after the past ones; return all keys and values so far, [B, H, S, D]."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def select(self, rows) -> None:
        """Keep, reorder or repeat batch rows: new row i is old row rows[i]. Only the filled positions move."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == self.batch_size and (rows == np.arange(len(rows))).all():
            return
        if len(rows) == self.batch_size:  # a reordering (beam search): in place
            for cache in (self.keys, self.values):
                cache[:, :, :, :self.length] = cache[:, rows, :, :self.length]
            return
        check_fits(2 * self.keys[:, :1].nbytes * len(rows), f"a key/value cache of {len(rows)} rows",
                   "use fewer rows")
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = np.zeros((old.shape[0], len(rows)) + old.shape[2:], dtype=old.dtype)
            new[:, :, :, :self.length] = old[:, rows, :, :self.length]
            setattr(self, name, new)

    def join(self, other: "KVCache", starts: tuple[int, int], capacity: int) -> int:
        """Append other's rows after this cache's: each side's positions from starts[side] on, right-aligned on a
        common length (what one side lacks on the left stays zero, to be masked as padding), in a cache of
        `capacity` positions. Returns the common length."""
        sides = [(self.keys, self.values, starts[0], self.length),
                 (other.keys, other.values, starts[1], other.length)]
        length = max(end - start for _, _, start, end in sides)
        shape = (self.keys.shape[0], self.batch_size + other.batch_size) + self.keys.shape[2:3] + \
            (max(capacity, length),) + self.keys.shape[4:]
        check_fits(2 * 4 * math.prod(shape), f"a key/value cache of {shape[1]} rows x {shape[3]} positions",
                   "use fewer rows or positions")
        self.keys, self.values = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
        row = 0
        for keys, values, start, end in sides:  # [L, b, H, S, D] each, right-aligned
            rows, used = slice(row, row + keys.shape[1]), end - start
            self.keys[:, rows, :, length - used:length] = keys[:, :, :, start:end]
            self.values[:, rows, :, length - used:length] = values[:, :, :, start:end]
            row += keys.shape[1]
        self.length = length
        return length

    def compact(self, keep: np.ndarray, capacity: int) -> np.ndarray:
        """Keep only the positions where keep [B, length] is True, each row's moved to the end of the filled
        part (earlier places become padding), in a cache of `capacity` positions. Returns the new padding mask
        [B, new length] (True = a position). Speculative decoding leaves holes; this closes them."""
        counts = keep.sum(axis=1)
        n = int(counts.max())
        mask = np.arange(n)[None] >= (n - counts)[:, None]  # [B, n]: right-aligned
        shape = self.keys.shape[:3] + (max(capacity, n),) + self.keys.shape[4:]
        check_fits(2 * 4 * math.prod(shape), f"a key/value cache of {shape[1]} rows x {shape[3]} positions",
                   "use fewer rows or positions")
        for name in ("keys", "values"):
            old, new = getattr(self, name), np.zeros(shape, dtype=np.float32)
            for row in range(shape[1]):
                new[:, row, :, n - counts[row]:n] = old[:, row, :, np.nonzero(keep[row])[0]]
            setattr(self, name, new)
        self.length = n
        return mask
