"""The operations GPT-2 is made of, each a small pure NumPy function.

Shapes in the comments use B = batch, T = query positions, S = key positions (past + T), C = n_embd,
H = n_head, D = head size (C // H), V = vocabulary size. Everything is float32: the constants below are
Python floats on purpose, since a NumPy float64 scalar would silently promote float32 arrays to float64.
"""

from __future__ import annotations

import math

import numpy as np

from . import cores

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# Added to a masked attention score. Finite rather than -inf so that a row with every key masked (a padding
# query in a left-padded batch, whose output is never used) gives a uniform row instead of NaN, as PyTorch does.
MASKED = float(np.finfo(np.float32).min)


# NumPy evaluates a float32 tanh with SIMD instructions only on CPUs with AVX-512; elsewhere (AVX2: most AMD EPYCs)
# tanh took 1.7 ns an element against 0.8 for exp (Intel Xeon with NumPy's AVX-512 code turned off, 2026-12-06),
# and GELU is computed from exp (gelu_by_exp): a 512-token prefill's GELUs took 29 ms against 35 there. Deciding
# by the CPU, not by timing, keeps a machine's results the same from one run to the next.
TANH_IS_FAST = cores.numpy_has("AVX512_SKX")


@cores.by_rows
def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GELU, tanh approximation (GPT-2's "gelu_new"). [...] -> [...]

        gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2 / pi) (x + 0.044715 x^3)
                = x / (1 + exp(-2 u))                    since 0.5 (1 + tanh u) = 1 / (1 + exp(-2 u))

    by the first form where NumPy's tanh is fast (TANH_IS_FAST), the second elsewhere: the same function up to
    float32 rounding. Evaluated step by step in one array, `out` if given: the MLP's activations are the largest
    array of a prefill ([T, 4C]), and each extra temporary costs a pass over memory. Many rows are split across
    the cores, a cache-sized block at a time (cores.by_rows).
    """
    return gelu_by_tanh(x, out) if TANH_IS_FAST else gelu_by_exp(x, out)


def gelu_by_tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """0.5 x (1 + tanh(u)), in eight passes over one array."""
    y = np.multiply(x, x, out=out)
    y *= SQRT_2_OVER_PI * 0.044715
    y += SQRT_2_OVER_PI
    y *= x  # u = sqrt(2 / pi) (x + 0.044715 x^3)
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def gelu_by_exp(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x / (1 + exp(-2 u)), in seven passes over one array. exp overflows to inf for x below about -10, where
    the quotient is the right limit, -0."""
    y = np.multiply(x, x, out=out)
    y *= -2.0 * SQRT_2_OVER_PI * 0.044715
    y -= 2.0 * SQRT_2_OVER_PI
    y *= x  # -2 u
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += 1.0
    return np.divide(x, y, out=y)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Normalise the last axis to mean 0 and variance 1, then scale and shift. [..., C] -> [..., C]

    As PyTorch, it multiplies by 1 / sqrt(var + eps)."""
    centred, scale = centre_and_scale(x, eps)  # [..., C], [..., 1]
    centred *= 1.0 / scale
    centred *= weight
    centred += bias
    return centred


def centre_and_scale(x: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """LayerNorm's parts: x - mean(x) [..., C] and sqrt(var(x) + eps) [..., 1], the biased variance as
    PyTorch's. The sums are taken by einsum, without the temporary array that np.square(centred).sum() makes: the
    25 LayerNorms of a 512-token prefill took 17 ms against 24 (Intel Xeon)."""
    n = x.shape[-1]
    centred = x - np.einsum("...c->...", x)[..., None] / n  # [..., C]
    return centred, np.sqrt(np.einsum("...c,...c->...", centred, centred)[..., None] / n + eps)


def softmax(x: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax: subtracting the maximum changes nothing mathematically and keeps exp finite.

    out=x computes it in place (attention does, on its scores)."""
    out = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def softmax_terms(x: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """softmax along the last axis before its division: exp(x - max) and each row's sum, [..., S] and [..., 1].

    Attention without its probabilities divides the output [T, D] by the sums instead of the probabilities
    [T, S]: one pass over D = 64 numbers a query rather than over its S keys. The sums are taken by einsum,
    a third the time of .sum() on rows of a few hundred numbers."""
    out = np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    return out, np.einsum("...s->...", out)[..., None]


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) without underflow: x - max - log(sum(exp(x - max)))."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


ARGMAX_PASSES = 256  # 256 passes over 120 rows of 50257 took 150 ms, a stable argsort 730


def top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's k largest values, largest first, ties by the lower index (what a stable
    descending argsort gives). x [N, V] -> [N, k]

    Up to ARGMAX_PASSES values, k passes of argmax over a copy, each hiding the value it found: for the few
    alternatives that logprobs or the logit lens report (OpenAI allows 20), much faster than partitioning or
    sorting the vocabulary (120 rows of GPT-2's logits: 2.4 ms for 2 alternatives against 23 for argpartition,
    17 ms for 20 against 730 for a stable argsort). Rows holding -inf or NaN, where a hidden value could be
    found again, are sorted instead."""
    if k > ARGMAX_PASSES or not np.isfinite(x).all():
        return np.argsort(-x, axis=-1, kind="stable")[:, :k]
    rest, rows = x.copy(), np.arange(len(x))
    best = np.empty((len(x), k), dtype=np.int64)  # [N, k]
    for j in range(k):
        best[:, j] = rest.argmax(axis=-1)
        rest[rows, best[:, j]] = -np.inf
    return best


# Up to this many rows, linear() multiplies by slices (see few_rows); from 7-8 rows on, one sgemm is as fast or
# faster: measured crossing points (tools/bench_products.py) were 6-7 rows on an AMD EPYC, 8-9 on an Intel Xeon.
FEW_ROWS = 7
SLICE = 256  # rows of the weight matrix per slice: 768 KB of a 768-wide matrix, well within a core's L2 cache


COLUMNS = 64  # a split product gives each core whole blocks of this many of the weight matrix's columns


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ W + b with W stored [in, out], as GPT-2's Conv1D stores it. [..., in] -> [..., out]

    All rows are multiplied at once: NumPy would multiply a stack [B, T, in] as B separate products, each
    reading the whole weight matrix. Many rows (a prompt) are multiplied by each core's share of the columns
    (cores.split): a share of the rows would have each core copy the whole matrix into OpenBLAS's layout, which
    made the products of 64-512 rows 1.1-1.5x slower on an AMD EPYC."""
    rows = x.reshape(-1, x.shape[-1])  # [N, in]
    if len(rows) >= cores.MANY_ROWS:
        y = np.empty((len(rows), weight.shape[1]), np.result_type(rows, weight))  # [N, out]

        def columns(lo, hi):
            lo, hi = lo * COLUMNS, min(hi * COLUMNS, weight.shape[1])
            np.matmul(rows, weight[:, lo:hi], out=y[:, lo:hi])
            if bias is not None:
                y[:, lo:hi] += bias[lo:hi]
        cores.split(columns, -(-weight.shape[1] // COLUMNS))
        return y.reshape(*x.shape[:-1], weight.shape[1])
    y = few_rows(rows, weight) if 1 < len(rows) <= FEW_ROWS else rows @ weight  # [N, out]
    y = y.reshape(*x.shape[:-1], weight.shape[-1])
    if bias is not None:
        y += bias
    return y


def few_rows(rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """rows @ weight for a few rows [N, in], as one-row products (GEMV) on slices of the weight matrix, so that
    each slice comes from memory once and from the cache for the other rows. [N, out]

    A one-row product streams the weights once, but the general product (sgemm) of OpenBLAS, NumPy's BLAS, first
    copies the whole matrix into its own layout, which costs two to three one-row products however few the rows;
    for 2-7 rows this way made decoding 1.05-1.4x faster on an Intel Xeon (AVX-512) and an AMD EPYC;
    tools/bench_products.py measures every way on the machine at hand."""
    out = np.zeros((len(rows), 1, weight.shape[1]), np.result_type(rows, weight))  # [N, 1, out]
    part = np.empty_like(out)
    stacked = rows[:, None, :]  # [N, 1, in]: matmul runs one GEMV per row, on the same slice
    for start in range(0, weight.shape[0], SLICE):
        np.matmul(stacked[:, :, start:start + SLICE], weight[start:start + SLICE], out=part)
        out += part
    return out[:, 0]


HEAD_ROWS_SLICED = 32  # from 2 up to this many rows, head_product() goes by slices of the vocabulary
VOCAB_SLICE = 2048  # rows of wte per slice: 6 MB of a 768-wide head


def head_product(rows: np.ndarray, head: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """rows @ head.T for the output head stored [V, C] (wte's layout): [N, C] -> [N, V].

    One row is a GEMV (no copy). For 2-32 rows: with `columns`, the same head transposed [C, V] and contiguous
    (GPT2.unembed keeps one for decoding), one sgemm on it, 1.4-1.7x faster than on the head as stored on an
    Intel Xeon with either of OpenBLAS's kernels (16 rows: 13 against 20 ms); without, one product per slice of
    2048 vocabulary rows: sgemm copies the weights it multiplies into its own layout, and a slice's copy stays in
    cache where the whole head's (154 MB) does not; on an AMD EPYC this made 2-16 rows 15-25% faster than one
    sgemm (tools/bench_products.py). More rows (every position of a text), where the copy is shared by enough
    work, are split across the cores by slices (cores.split), one product per core: as fast as OpenBLAS's own
    threads, whose workers would then spin on the cores that the next text's split needs (model(ids) on
    200-token texts one after another: 412 against 458 ms a text on an AMD EPYC)."""
    if len(rows) == 1:
        return rows @ head.T
    if columns is not None and len(rows) <= HEAD_ROWS_SLICED:
        return rows @ columns
    out = np.empty((len(rows), len(head)), np.result_type(rows, head))  # [N, V]
    if len(rows) <= HEAD_ROWS_SLICED:
        for start in range(0, len(head), VOCAB_SLICE):
            np.matmul(rows, head[start:start + VOCAB_SLICE].T, out=out[:, start:start + VOCAB_SLICE])
        return out

    def share(lo, hi):  # slices [lo, hi) in one product
        lo, hi = lo * VOCAB_SLICE, min(hi * VOCAB_SLICE, len(head))
        np.matmul(rows, head[lo:hi].T, out=out[:, lo:hi])
    cores.split(share, -(-len(head) // VOCAB_SLICE))
    return out


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


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray | None = None,
              need_probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Scaled dot-product attention over all heads and the whole batch at once.

        softmax(q k^T / sqrt(D) + mask) v

    q [B, H, T, D], k and v [B, H, S, D], allowed broadcastable to [B, H, T, S'] for the last S' <= S keys, the
    ones before being visible to every query (None: every key is visible). Returns (output [B, H, T, D],
    probabilities [B, H, T, S], or None without need_probs: the output is then divided by the softmax's sums,
    see softmax_terms).
    """
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)  # [B, H, T, S]; scaling q is cheaper
    if allowed is not None:
        np.copyto(scores[..., scores.shape[-1] - allowed.shape[-1]:], MASKED, where=~allowed)
    if need_probs:
        probs = softmax(scores, out=scores)  # [B, H, T, S], each row sums to 1
        return probs @ v, probs  # [B, H, T, D]
    weights, sums = softmax_terms(scores, out=scores)  # [B, H, T, S], [B, H, T, 1]
    out = weights @ v  # [B, H, T, D]
    out /= sums
    return out, None


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, keys_allowed: np.ndarray | None = None,
                     need_probs: bool = True, block: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Causal self-attention of the last T of S positions: query i sees keys 0 .. S - T + i, and of those only
    the ones `keys_allowed` [B, 1, 1, S] keeps (None: all; left padding is not).

    Many queries (a prompt) have their heads split across the cores (cores.split), each part taken by
    blocked_attention. q [B, H, T, D], k and v [B, H, S, D] -> output [B, H, T, D] and, if need_probs, the
    probabilities [B, H, T, S] (zero above the diagonal).
    """
    if q.shape[2] < cores.MANY_ROWS:
        return blocked_attention(q, k, v, keys_allowed, need_probs, block)
    out = np.empty(q.shape, dtype=np.float32)  # [B, H, T, D]
    probs = np.empty(q.shape[:3] + k.shape[2:3], dtype=np.float32) if need_probs else None  # [B, H, T, S]

    def heads(lo, hi):
        out[:, lo:hi], p = blocked_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], keys_allowed, need_probs, block)
        if need_probs:
            probs[:, lo:hi] = p
    cores.split(heads, q.shape[1])
    return out, probs


def blocked_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, keys_allowed: np.ndarray | None = None,
                      need_probs: bool = True, block: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """causal_attention on the calling thread. A long input is taken in blocks of `block` queries, and each
    block is given only the keys its last query can see: the keys no query of the block may see are never
    multiplied nor exponentiated (for a 512-token prompt, 7/16 of the work). Without padding, only the block's
    own keys (the square on the diagonal) are masked: every query sees the keys before. Blocks of 64 were
    20-30% faster than 128 on a 2-core AMD EPYC. Shapes as causal_attention's.
    """
    t, s = q.shape[2], k.shape[2]
    past = s - t
    if t <= block:
        return attention(q, k, v, block_mask(t, past, keys_allowed), need_probs)
    out = np.empty(q.shape, dtype=np.float32)  # [B, H, T, D]
    probs = np.zeros(q.shape[:3] + (s,), dtype=np.float32) if need_probs else None  # [B, H, T, S]
    for start in range(0, t, block):
        stop = min(start + block, t)
        seen = past + stop  # the block's last query sees keys [0, seen)
        out[:, :, start:stop], p = attention(q[:, :, start:stop], k[:, :, :seen], v[:, :, :seen],
                                             block_mask(stop - start, past + start, keys_allowed), need_probs)
        if need_probs:
            probs[:, :, start:stop, :seen] = p
    return out, probs


def block_mask(n: int, past: int, keys_allowed: np.ndarray | None) -> np.ndarray | None:
    """visible(), narrowed to the last keys when there is no padding: the n queries' own positions [n, n], all
    keys before being visible to each of them (attention() masks the last keys its mask covers)."""
    if keys_allowed is None:
        return None if n == 1 else causal_allowed(n)
    return visible(n, past, keys_allowed)


def visible(n: int, past: int, keys_allowed: np.ndarray | None) -> np.ndarray | None:
    """Which of the past + n keys each of n consecutive queries may see: [..., n, past + n], None for all."""
    mask = None if n == 1 else causal_allowed(n, past)  # a single query sees all of its past
    if keys_allowed is None:
        return mask
    keys = keys_allowed[..., :past + n]
    return keys if mask is None else mask & keys
