"""Work on many rows split across the CPU's cores: what makes a prefill (or scoring a text) use them all.

OpenBLAS, NumPy's BLAS, runs a matrix product on every core, but NumPy runs an elementwise operation on one:
the exp of attention's softmax and the tanh of GELU, about 1.5 ns per element each on an AMD EPYC, leave the
other cores idle. So an operation on many rows is cut into one part per core (GELU: rows; a product: columns of
the weight matrix; attention: heads), each part run in its own thread (NumPy lets go of the GIL inside its
loops) with OpenBLAS on one thread: its own worker threads would otherwise spin for a while after each
product, on the cores the parts need. On 2 cores (AMD EPYC) this made a 512-token prefill about 6% faster.

OpenBLAS's own worker threads spin for about 0.1 s after a product they shared, waiting for more work: a split
that starts within that time (a server admitting prompts between decoding steps) shares a core with the spinning
thread. A split product of 512 rows by a 768 x 768 matrix took 8.0 ms then against 4.5 ms otherwise (AMD EPYC).
OPENBLAS_THREAD_TIMEOUT=22 (2^22 cycles, about a millisecond), set before NumPy is first imported, cuts it short.

Few rows (a decoding step) are not split: waking a thread costs about 0.1 ms. Nor is anything split when
NumPy's BLAS cannot be told how many threads to use (it is not OpenBLAS), or uses one thread already
(OPENBLAS_NUM_THREADS=1, as each worker of `npgpt batch` does).

Which kernels OpenBLAS chose for the CPU is also read here (blas_kernels): on AVX-512 CPUs its own AVX-512
kernels multiply a few rows slowly, and `npgpt serve` starts itself again with the AVX2 ones (kernels_for_batches).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

# From this many rows on, an operation is split. Measured on 2 cores (AMD EPYC): at 64 rows, GELU took 0.37 ms
# split against 0.62 ms whole, attention 0.39 ms against 0.57 ms, the products as long either way (each core
# taking half the columns); at 8-32 rows, waking the second thread cost more than it saved.
MANY_ROWS = 64


class _OpenBLAS:
    """The thread-count functions of the OpenBLAS that this process loaded (through NumPy), found by name."""

    PREFIXES = ("scipy_openblas", "openblas")  # NumPy's wheels rename OpenBLAS's symbols scipy_openblas*
    SUFFIXES = ("64_", "")  # the 64-bit-integer build adds 64_

    def __init__(self, library: ctypes.CDLL):
        self.set_threads = self.get_threads = self.get_corename = None
        for prefix in self.PREFIXES:
            for suffix in self.SUFFIXES:
                try:
                    self.set_threads = getattr(library, f"{prefix}_set_num_threads{suffix}")
                    self.get_threads = getattr(library, f"{prefix}_get_num_threads{suffix}")
                except AttributeError:
                    continue
                self.get_corename = getattr(library, f"{prefix}_get_corename{suffix}", None)
                if self.get_corename is not None:
                    self.get_corename.restype = ctypes.c_char_p
                return
        raise LookupError("no openblas_set_num_threads in the library")

    def corename(self) -> str | None:
        """The kernels OpenBLAS chose for this CPU ("Haswell", "SkylakeX", ...), or None if it cannot say."""
        return None if self.get_corename is None else self.get_corename().decode("ascii", "replace")

    @classmethod
    def loaded(cls) -> "_OpenBLAS | None":
        """The OpenBLAS mapped into this process (Linux: /proc/self/maps), or None."""
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.lower()}
        except OSError:
            return None
        for path in sorted(paths):
            try:
                return cls(ctypes.CDLL(path))  # already loaded: this is the same library, not a second copy
            except (OSError, LookupError):
                continue
        return None


@functools.lru_cache(maxsize=None)
def _blas() -> _OpenBLAS | None:
    return _OpenBLAS.loaded()


_lock = threading.Lock()  # one split at a time: two would compete for the same cores
_pool: ThreadPoolExecutor | None = None
_in_part = threading.local()  # .active: this thread is running a part (which is then not split again)


def _forget_threads() -> None:
    """In a forked child: the parent's threads do not exist there, so start afresh."""
    global _lock, _pool
    _lock, _pool = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)


def count() -> int:
    """How many parts a split makes: the threads OpenBLAS runs on (1 when it is not NumPy's BLAS)."""
    blas = _blas()
    return 1 if blas is None else max(1, blas.get_threads())


def split(fn, n: int) -> None:
    """fn(lo, hi) on consecutive parts [lo, hi) of range(n), one part per core, all at once (one part in the
    calling thread), with OpenBLAS on one thread meanwhile; on one core, or inside a part, simply fn(0, n).
    Each part must write its own slice of the result. An exception in a part is raised once all have finished."""
    parts = min(count(), n)
    if parts <= 1 or getattr(_in_part, "active", False):
        fn(0, n)
        return
    global _pool
    bounds = [n * i // parts for i in range(parts + 1)]
    blas = _blas()
    with _lock:
        if _pool is None:  # its threads start when first needed, and wait for work between splits
            _pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="npgpt-cores")
        threads = blas.get_threads()
        blas.set_threads(1)
        try:
            others = [_pool.submit(_part, fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
            try:
                _part(fn, bounds[0], bounds[1])
            finally:
                wait(others)
            for part in others:
                part.result()  # raises the part's exception, if it had one
        finally:
            blas.set_threads(threads)


# OpenBLAS's kernels for AVX-512 CPUs. Their general product of a few rows is slow: on an Intel Xeon (2 cores,
# 2026-12-05) the 48 block products of a step took 41 ms for 8 rows against 23 ms with the AVX2 ("Haswell")
# kernels, 3.3x and 1.9x one row's time; a 512-token prompt, on the other hand, took 21% longer with the AVX2
# kernels (tools/bench_products.py, tools/bench.py). The kernels are chosen when NumPy loads OpenBLAS, from the
# environment variable OPENBLAS_CORETYPE: nothing in a running process can change them.
AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


def blas_kernels() -> str | None:
    """The kernels NumPy's OpenBLAS chose for this CPU ("Haswell", "SkylakeX", ...); None if NumPy's BLAS is
    not OpenBLAS or cannot say."""
    blas = _blas()
    return None if blas is None else blas.corename()


def kernels_for_batches() -> str | None:
    """The OPENBLAS_CORETYPE to start a process with when it mostly decodes several rows a step (npgpt serve):
    "Haswell", OpenBLAS's AVX2 kernels, when it chose AVX-512 ones by itself; None when nobody needs to choose
    (other kernels, kernels someone chose through OPENBLAS_CORETYPE, or a BLAS that is not OpenBLAS)."""
    name = blas_kernels()
    if name is None or name.lower() not in AVX512_KERNELS or "OPENBLAS_CORETYPE" in os.environ:
        return None
    return "Haswell"


def numpy_has(feature: str) -> bool:
    """Whether NumPy found this CPU feature (a name of its own, "AVX512_SKX", "AVX2") and runs its code for it;
    False when this NumPy cannot say. NPY_DISABLE_CPU_FEATURES turns features off."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # NumPy 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__  # NumPy 1
        except ImportError:
            return False
    return bool(__cpu_features__.get(feature, False))


def _part(fn, lo: int, hi: int) -> None:
    _in_part.active = True
    try:
        fn(lo, hi)
    finally:
        _in_part.active = False


# by_rows gives fn blocks of rows of about this size, so that the several passes an elementwise operation makes
# over its block (GELU: eight) read it from the core's cache rather than from memory: the GELUs of a 512-token
# prefill took 24-27 ms in total in blocks of 256 KB against 30-34 ms in one piece a core (Intel Xeon, 2 MB of L2
# a core; an AMD EPYC has 512 KB, which a block and its output still fit in).
BLOCK_BYTES = 256 * 1024


def by_rows(fn):
    """Decorator for an operation fn(x [..., F], *args, out=None) -> [..., F] in which each row of x is
    independent of the others (GELU): with MANY_ROWS or more rows, they go in parts across the cores (split),
    each part computed by fn itself, a block of rows at a time (BLOCK_BYTES), into its rows of one output."""
    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        rows = x.reshape(-1, x.shape[-1])  # [N, F]
        if len(rows) < MANY_ROWS or count() == 1:
            return fn(x, *args, **kwargs)
        out = np.empty_like(rows)  # [N, F]

        step = max(1, BLOCK_BYTES // rows[0].nbytes)

        def part(lo, hi):
            for start in range(lo, hi, step):
                stop = min(start + step, hi)
                fn(rows[start:stop], *args, out=out[start:stop], **kwargs)
        split(part, len(rows))
        return out.reshape(x.shape)
    return run
