"""The operations GPT-2 is made of, each a small pure NumPy function.

Shapes in the comments use B = batch, T = query positions, S = key positions (past + T), C = n_embd,
H = n_head, D = head size (C // H), V = vocabulary size. Everything is float32: the constants below are
Python floats on purpose, since a NumPy float64 scalar would silently promote float32 arrays to float64.
"""

from __future__ import annotations

import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# Added to a masked attention score. Finite rather than -inf so that a row with every key masked (a padding
# query in a left-padded batch, whose output is never used) gives a uniform row instead of NaN, as PyTorch does.
MASKED = float(np.finfo(np.float32).min)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (GPT-2's "gelu_new"). [...] -> [...]"""
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Normalise the last axis to mean 0 and variance 1, then scale and shift. [..., C] -> [..., C]"""
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    var = x.var(axis=-1, keepdims=True)  # [..., 1] (biased, as PyTorch's LayerNorm)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtracting the maximum changes nothing mathematically and keeps exp finite."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) without underflow: x - max - log(sum(exp(x - max)))."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ W + b with W stored [in, out], as GPT-2's Conv1D stores it. [..., in] -> [..., out]"""
    y = x @ weight
    if bias is not None:
        y += bias
    return y


def causal_mask(n: int, past: int = 0) -> np.ndarray:
    """Additive causal mask: 0 where query i may look at key j (j <= past + i), -inf above. [n, past + n]"""
    allowed = causal_allowed(n, past)
    return np.where(allowed, np.float32(0.0), np.float32(-np.inf))


def causal_allowed(n: int, past: int = 0) -> np.ndarray:
    """Boolean form of the causal mask: True where query i may attend to key j. [n, past + n]"""
    return np.tri(n, past + n, k=past, dtype=bool)


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[B, T, C] -> [B, H, T, D]"""
    b, t, c = x.shape
    return x.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, H, T, D] -> [B, T, C]"""
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
              allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention over all heads and the whole batch at once.

    q [B, H, T, D], k and v [B, H, S, D], allowed broadcastable to [B, H, T, S] (None: every key is visible).
    Returns (output [B, H, T, D], probabilities [B, H, T, S]).
    """
    scores = q @ k.swapaxes(-1, -2)  # [B, H, T, S]
    scores *= 1.0 / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = np.where(allowed, scores, MASKED)
    probs = softmax(scores)  # [B, H, T, S], each row sums to 1
    return probs @ v, probs  # [B, H, T, D]
