"""Turning next-token logits into a choice.

A processor is a small object with one job: `processor(input_ids [B, S], logits [B, V]) -> logits [B, V]`.
They compose in a list; selection then picks one token per row, greedily or by sampling.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .errors import SettingsError


class Temperature:
    """Divide logits by t: t < 1 sharpens the distribution, t > 1 flattens it."""

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise SettingsError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return logits / np.float32(self.temperature)


def apply_processors(processors, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    for processor in processors:
        logits = processor(input_ids, logits)
    return logits


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row (the first one on ties). [B, V] -> [B]"""
    return logits.argmax(axis=-1)


def sample(logits: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """One token per row drawn from softmax(logits), row i with its own generator. [B, V] -> [B]

    Inverse transform sampling: the first token whose cumulative probability exceeds a uniform draw.
    """
    probs = ops.softmax(logits.astype(np.float64))  # [B, V]; float64 so the cumulative sum reaches 1
    cumulative = np.cumsum(probs, axis=-1)  # [B, V]
    draws = np.array([rng.random() for rng in rngs]) * cumulative[:, -1]  # [B]
    chosen = (cumulative <= draws[:, None]).sum(axis=-1)  # [B]
    # a token of probability 0 can never be chosen, even when a draw lands exactly on a boundary
    return np.minimum(chosen, probs.shape[-1] - 1)
