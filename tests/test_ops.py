"""The operations, checked against their definitions (loops and formulas written out)."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from npgpt import ops

rng = np.random.default_rng(0)
finite32 = st.floats(-50, 50, width=32)


@pytest.mark.parametrize("gelu", [ops.gelu, ops.gelu_by_tanh, ops.gelu_by_exp])
def test_gelu_is_the_tanh_approximation(gelu):
    x = np.concatenate([np.linspace(-6, 6, 101), [-200.0, -30.0, -9.6, 9.6, 30.0, 200.0]]).astype(np.float32)
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x.tolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(-2u) overflowing to inf far left is expected, not a warning
        got = gelu(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # float32, as PyTorch computes it
    assert got.dtype == np.float32
    assert gelu(np.zeros(3, np.float32)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("tanh_is_fast", [True, False])
def test_gelu_takes_the_form_this_cpu_computes_fastest(tanh_is_fast, monkeypatch):
    monkeypatch.setattr(ops, "TANH_IS_FAST", tanh_is_fast)
    x = rng.normal(size=(3, 40)).astype(np.float32)
    form = ops.gelu_by_tanh if tanh_is_fast else ops.gelu_by_exp
    np.testing.assert_array_equal(ops.gelu(x), form(x))
    np.testing.assert_allclose(ops.gelu_by_exp(x), ops.gelu_by_tanh(x), rtol=1e-6, atol=1e-7)


def test_layer_norm_normalises_the_last_axis():
    x = rng.normal(3.0, 5.0, size=(2, 7, 32)).astype(np.float32)
    y = ops.layer_norm(x, np.ones(32, np.float32), np.zeros(32, np.float32))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1, atol=1e-3)
    w, b = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(ops.layer_norm(x, w, b), want, rtol=1e-5, atol=1e-5)
    assert ops.layer_norm(x, w, b).dtype == np.float32


@settings(deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 30)), elements=finite32))
def test_softmax_rows_are_probabilities(x):
    p = ops.softmax(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-5)
    x64 = x.astype(np.float64)
    want = x64 - x64.max(-1, keepdims=True)
    want -= np.log(np.exp(want).sum(-1, keepdims=True))
    np.testing.assert_allclose(ops.log_softmax(x), want, atol=1e-4, rtol=1e-5)


def test_softmax_is_stable_for_huge_logits():
    p = ops.softmax(np.array([1e30, 1e30, -1e30], np.float32))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0])
    assert p.dtype == np.float32


def test_causal_mask_is_zero_on_and_below_the_diagonal_and_minus_infinity_above():
    m = ops.causal_mask(4)
    assert m.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            assert m[i, j] == (0.0 if j <= i else -np.inf)
    # with 2 positions already in the cache, the 3 new queries see all of the past
    m = ops.causal_mask(3, past=2)
    assert m.shape == (3, 5)
    assert (m[:, :2] == 0).all() and m[0, 3] == -np.inf and m[2, 4] == 0


def test_heads_split_and_merge_back():
    x = rng.normal(size=(2, 5, 12)).astype(np.float32)
    heads = ops.split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(heads[1, 2, 4], x[1, 4, 8:12])
    np.testing.assert_array_equal(ops.merge_heads(heads), x)


@pytest.mark.parametrize("past", [0, 3])
def test_attention_over_all_heads_equals_one_head_at_a_time(past):
    b, h, t, d = 2, 3, 4, 8
    q = rng.normal(size=(b, h, t, d)).astype(np.float32)
    k = rng.normal(size=(b, h, past + t, d)).astype(np.float32)
    v = rng.normal(size=(b, h, past + t, d)).astype(np.float32)
    out, probs = ops.attention(q, k, v, ops.causal_allowed(t, past))
    for bi in range(b):
        for hi in range(h):
            scores = q[bi, hi] @ k[bi, hi].T / math.sqrt(d) + ops.causal_mask(t, past)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(probs[bi, hi], p, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out[bi, hi], p @ v[bi, hi], rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and probs.dtype == np.float32


def test_a_mask_of_the_last_keys_leaves_the_keys_before_visible():
    q, k, v = (rng.normal(size=(2, 3, 4, 8)).astype(np.float32) for _ in range(3))
    k, v = (np.concatenate([a, a[:, :, :2] + 1], axis=2) for a in (k, v))  # 6 keys, 2 of them before the queries'
    whole, narrow = ops.attention(q, k, v, ops.causal_allowed(4, 2)), ops.attention(q, k, v, ops.causal_allowed(4))
    np.testing.assert_array_equal(whole[0], narrow[0])
    np.testing.assert_array_equal(whole[1], narrow[1])


def test_a_query_with_every_key_masked_gives_a_finite_uniform_row():
    q = k = v = np.ones((1, 1, 2, 4), np.float32)
    allowed = np.array([[False, False], [True, True]])[None, None]
    out, probs = ops.attention(q, k, v, allowed)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(probs[0, 0, 0], [0.5, 0.5])


@pytest.mark.parametrize("k", [0, 1, 2, 5, 20, 40])
@pytest.mark.parametrize("special", [None, -np.inf, np.nan])
def test_top_indices_are_a_stable_descending_argsort(k, special, monkeypatch):
    """Most likely first, ties by the lower index; rows with -inf or NaN, or more values than ARGMAX_PASSES,
    are sorted (the argmax passes could find a hidden -inf again)."""
    monkeypatch.setattr(ops, "ARGMAX_PASSES", 30)  # 40 takes the sort
    x = rng.integers(0, 6, size=(4, 50)).astype(np.float32)  # many ties
    if special is not None:
        x[1, :45] = special
    before = x.copy()
    want = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    got = ops.top_indices(x, k)
    assert got.shape == (4, k) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)  # the input is left as it was

def test_linear_uses_the_conv1d_layout():
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    w = rng.normal(size=(4, 6)).astype(np.float32)  # [in, out]
    b = rng.normal(size=6).astype(np.float32)
    np.testing.assert_allclose(ops.linear(x, w, b), np.einsum("bti,io->bto", x, w) + b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (1, 3), (4, 2), (8, 1), (3, 3), (2, 9)])
@pytest.mark.parametrize("n_in", [7, 256, 600])
def test_linear_gives_one_product_whatever_the_number_of_rows(shape, n_in):
    """Few rows go by slices of the weight matrix (ops.few_rows), more in one product: the same numbers."""
    x = rng.normal(size=shape + (n_in,)).astype(np.float32)
    w = rng.normal(size=(n_in, 50)).astype(np.float32)
    b = rng.normal(size=50).astype(np.float32)
    want = (x.astype(np.float64) @ w.astype(np.float64) + b).astype(np.float32)
    got = ops.linear(x, w, b)
    assert got.shape == shape + (50,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ops.few_rows(x.reshape(-1, n_in), w) + b, want.reshape(-1, 50), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 32, 33, 130])
@pytest.mark.parametrize("vocab", [7, 2048, 5000])
def test_head_product_by_vocabulary_slices_is_the_whole_product(n, vocab):
    """2-32 rows go by slices of 2048 vocabulary rows (the last one shorter), more are split across the cores
    by slices, one row is one product."""
    x = rng.normal(size=(n, 24)).astype(np.float32)
    head = rng.normal(size=(vocab, 24)).astype(np.float32)  # [V, C], as wte
    want = x.astype(np.float64) @ head.T.astype(np.float64)
    for columns in (None, np.ascontiguousarray(head.T)):  # the head as stored, or a transposed copy [C, V] too
        got = ops.head_product(x, head, columns)
        assert got.shape == (n, vocab) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_head_product_reads_the_transposed_copy_for_2_to_32_rows():
    head = rng.normal(size=(50, 8)).astype(np.float32)
    marked = np.zeros((8, 50), np.float32)  # not head.T: shows which operand was read
    for n, copy_read in ((1, False), (2, True), (32, True), (33, False)):
        got = ops.head_product(rng.normal(size=(n, 8)).astype(np.float32), head, marked)
        assert (got == 0).all() == copy_read, n


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("t, past", [(1, 0), (1, 37), (100, 0), (300, 0), (300, 50), (257, 3)])
def test_causal_attention_in_blocks_equals_the_masked_whole(t, past, padded):
    """In blocks of queries, on heads split across the cores when there are many (ops.causal_attention), with
    the diagonal square alone masked when nothing is padded (ops.block_mask): what one masked product gives."""
    b, h, d = 2, 3, 8
    q = rng.normal(size=(b, h, t, d)).astype(np.float32)
    k = rng.normal(size=(b, h, past + t, d)).astype(np.float32)
    v = rng.normal(size=(b, h, past + t, d)).astype(np.float32)
    keys = np.ones((b, 1, 1, past + t), bool)
    keys[1, ..., :5 if padded else 0] = False  # row 1 is left-padded, or not
    want_out, want_probs = ops.attention(q, k, v, ops.causal_allowed(t, past) & keys)
    keys = keys if padded else None
    out, probs = ops.causal_attention(q, k, v, keys, block=64)
    np.testing.assert_allclose(out[:, :, 5:], want_out[:, :, 5:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs[:, :, 5:], want_probs[:, :, 5:], rtol=1e-5, atol=1e-6)
    assert (probs[0][..., ~ops.causal_allowed(t, past)] == 0).all()  # nothing above the diagonal (row 0: no padding)
    out_only, none = ops.causal_attention(q, k, v, keys, need_probs=False, block=64)  # divides the output instead
    np.testing.assert_allclose(out_only, out, rtol=1e-5, atol=1e-6)
    assert none is None and np.isfinite(out_only).all()  # padding queries, with no key to see, are finite too
