"""Work split across the cores (npgpt.cores): every part done once, at once, in its own thread, with the same
result as the whole; OpenBLAS's thread count put back; errors raised; a forked child not left waiting."""

import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from npgpt import cores, ops

needs_openblas = pytest.mark.skipif(cores._blas() is None, reason="NumPy's BLAS here is not OpenBLAS: nothing is split")


@pytest.fixture
def three_parts(monkeypatch):
    """Split in three whatever the machine has (the third part waits for a thread on a 2-core machine)."""
    monkeypatch.setattr(cores, "count", lambda: 3)


@needs_openblas
def test_split_covers_each_index_once_in_separate_threads_with_blas_on_one_thread(three_parts):
    before = cores._blas().get_threads()
    seen, threads, blas_threads = [], set(), []
    barrier = threading.Barrier(2, timeout=10)  # two parts must be running at the same time to pass it

    def part(lo, hi):
        seen.extend(range(lo, hi))
        threads.add(threading.get_ident())
        blas_threads.append(cores._blas().get_threads())
        if hi <= 6:  # the first two parts (0-3, 3-6) meet at the barrier
            barrier.wait()

    cores.split(part, 10)
    assert sorted(seen) == list(range(10))
    assert threading.get_ident() in threads and len(threads) >= 2
    assert blas_threads == [1, 1, 1]
    assert cores._blas().get_threads() == before


@needs_openblas
def test_an_error_in_a_part_is_raised_after_every_part_ends_and_blas_threads_come_back(three_parts):
    before = cores._blas().get_threads()
    finished = []

    def part(lo, hi):
        if lo > 0:
            time.sleep(0.05)
            finished.append(lo)
            raise ValueError(f"part {lo}")

    with pytest.raises(ValueError, match="part"):
        cores.split(part, 9)
    assert sorted(finished) == [3, 6]
    assert cores._blas().get_threads() == before


def test_one_core_or_a_part_is_not_split_again(monkeypatch):
    calls = []
    monkeypatch.setattr(cores, "count", lambda: 1)
    cores.split(lambda lo, hi: calls.append((lo, hi)), 10)
    assert calls == [(0, 10)]
    if cores._blas() is None:
        return
    monkeypatch.setattr(cores, "count", lambda: 2)
    inner = []
    cores.split(lambda lo, hi: cores.split(lambda a, b: inner.append((a, b)), 4), 2)  # no deadlock, no nesting
    assert sorted(inner) == [(0, 4), (0, 4)]


@needs_openblas
def test_operations_on_many_rows_give_what_the_whole_gives(three_parts, monkeypatch):
    splits = []  # the n of each split: GELU's rows, the products' blocks of columns, attention's heads, ...
    monkeypatch.setattr(cores, "split", lambda fn, n, split=cores.split: (splits.append(n), split(fn, n))[1])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 50, 96), dtype=np.float32)  # 100 rows >= MANY_ROWS: split
    assert len(x.reshape(-1, 96)) >= cores.MANY_ROWS
    np.testing.assert_array_equal(ops.gelu(x), ops.gelu.__wrapped__(x))  # elementwise: the same bits
    monkeypatch.setattr(cores, "BLOCK_BYTES", 7 * 96 * 4)  # blocks of 7 rows in each part, the last one shorter
    other = rng.standard_normal(x.shape, dtype=np.float32)  # new values: a reused output buffer cannot pass
    np.testing.assert_array_equal(ops.gelu(other), ops.gelu.__wrapped__(other))
    w, b = rng.standard_normal((96, 200), dtype=np.float32), rng.standard_normal(200, dtype=np.float32)
    y = ops.linear(x, w, b)  # 200 columns: parts of 64, 64 and 72 columns
    assert y.shape == (2, 50, 200) and y.dtype == np.float32
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)

    q, k, v = (rng.standard_normal((2, 4, cores.MANY_ROWS + 6, 8), dtype=np.float32) for _ in range(3))
    keys = np.ones((2, 1, 1, q.shape[2]), bool)
    keys[0, ..., :5] = False  # left padding in the first row
    out, probs = ops.causal_attention(q, k, v, keys, need_probs=True, block=32)
    whole_out, whole_probs = ops.blocked_attention(q, k, v, keys, need_probs=True, block=32)
    np.testing.assert_allclose(out, whole_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, whole_probs, rtol=1e-5, atol=1e-7)
    assert ops.causal_attention(q, k, v, keys, need_probs=False)[1] is None
    head = rng.standard_normal((5000, 96), dtype=np.float32)  # [V, C]: 3 slices of the vocabulary
    np.testing.assert_allclose(ops.head_product(x[0], head), x[0] @ head.T, rtol=1e-5, atol=1e-4)
    assert splits == [100, 100, 4, 4, 4, 3]  # GELU rows twice, column blocks of 200, heads twice, vocabulary slices


def _split_in_child(queue):
    seen = []
    cores.split(lambda lo, hi: seen.extend(range(lo, hi)), 6)
    queue.put(sorted(seen))


@needs_openblas
@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's")
def test_a_forked_child_splits_with_threads_of_its_own(monkeypatch):
    monkeypatch.setattr(cores, "count", lambda: 2)
    cores.split(lambda lo, hi: None, 2)  # the parent's pool now has a thread, which a child does not inherit
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_split_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child waited for the parent's thread")
    assert queue.get(timeout=5) == list(range(6))


@pytest.mark.parametrize("name, environ, chosen", [
    ("SkylakeX", {}, "Haswell"), ("SapphireRapids", {}, "Haswell"), ("Cooperlake", {}, "Haswell"),
    ("SkylakeX", {"OPENBLAS_CORETYPE": "SkylakeX"}, None),  # chosen on purpose
    ("Haswell", {}, None), ("Zen", {}, None), (None, {}, None)])
def test_other_kernels_for_batches_only_when_openblas_chose_its_avx512_kernels_by_itself(monkeypatch, name, environ,
                                                                                       chosen):
    monkeypatch.setattr(cores, "blas_kernels", lambda: name)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert cores.kernels_for_batches() == chosen


def test_no_kernels_named_without_openblas(monkeypatch):
    monkeypatch.setattr(cores, "_blas", lambda: None)
    assert cores.blas_kernels() is None and cores.kernels_for_batches() is None


@needs_openblas
def test_the_loaded_openblas_names_its_kernels():
    name = cores.blas_kernels()  # NumPy's wheels export openblas_get_corename
    assert name and name.isprintable() and name == name.strip()


def test_numpy_names_the_cpu_features_it_runs_code_for():
    if platform.machine() in ("x86_64", "AMD64"):
        assert cores.numpy_has("SSE2")  # every x86-64 CPU has it, and NumPy's baseline needs it
        assert cores.numpy_has("AVX512_SKX") == ops.TANH_IS_FAST  # GELU's form follows this NumPy's tanh
    assert cores.numpy_has("NO_SUCH_FEATURE") is False


AVX512 = ("AVX512_SKX", "AVX512_CLX", "AVX512_CNL", "AVX512_ICL", "AVX512_SPR", "X86_V4")  # NumPy's names


@pytest.mark.skipif(not cores.numpy_has("AVX512_SKX"), reason="no AVX-512 code in this NumPy on this CPU to turn off")
def test_turning_numpy_off_its_avx512_code_turns_gelu_to_exp():
    """NPY_DISABLE_CPU_FEATURES, read when NumPy starts: a fresh interpreter, as on a CPU without AVX-512."""
    code = "from npgpt import cores, ops; print(cores.numpy_has('AVX512_SKX'), ops.TANH_IS_FAST)"
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(f for f in AVX512 if cores.numpy_has(f)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
