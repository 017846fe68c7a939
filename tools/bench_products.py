"""Products of a few rows by GPT-2's weights: every way NumPy allows, timed on the model's own matrices.

    python tools/bench_products.py            # GPT-2 124M (a random checkpoint of the official layout)
    python tools/bench_products.py --quick    # a tiny model, one run: a smoke test of this script

A verify step of k drafted tokens and a decode step of a batch of k rows multiply k rows by every weight
matrix. If that cost little more than one row (the weights read once), speculative decoding and batches would
be nearly free. This prints, for m = 1..16 rows, the time of all 48 block products of one forward step and of
the output head, for each way of computing them, and each over the one-row time of the first way:

- `npgpt`         what npgpt does: ops.linear for the blocks (few_rows for 2-7 rows, one sgemm otherwise),
                  ops.head_product for the head (sgemm on slices of 2048 rows of wte as stored, for 2-32 rows);
- `x @ W`         one sgemm on the weights as stored ([in, out], Conv1D);
- `x @ Wt.T`      the same on a transposed copy ([out, in]); the head is stored this way (it is wte), so for
                  the head this row multiplies wte as stored and `x @ W` uses a transposed copy;
- `K-split`       sgemm on slices of 128 input rows, summed: each slice of the weights fits in the L2 cache;
- `N-split`       sgemm on slices of 512 output columns (for the head: of the transposed copy);
- `stacked GEMV`  one matmul call per slice of 256 input rows that numpy runs as m one-row products (GEMV),
                  so that rows after the first find the slice in cache;
- `row by row`    m one-row products (GEMV), each reading the whole matrix.

Then the floors that the speed targets rest on, from the fastest way at each number of rows (blocks + head,
attention and the rest left out, so real steps cost more): a verify step of 8 drafts (9 rows) over a 1-token
step, and the tokens/s that batches of 8 and 16 rows could reach at most.

Reading the result: a GEMV streams the weights once (the bandwidth floor); OpenBLAS's sgemm packs (copies and
reorders) the weight matrix on every call, which costs two to three one-row products whatever the number of
rows, and NumPy exposes no way to keep a packed copy. Thread settings are not varied here: one BLAS thread
halves every figure (measured with threadpoolctl), and splitting a product across Python threads with one BLAS
thread each was no faster than OpenBLAS's own threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import npgpt  # noqa: E402
from bench import cpu_name  # noqa: E402
from npgpt import ops  # noqa: E402

ROWS = (1, 2, 4, 8, 9, 16)


def npgpt_blocks(x, w, wt):
    return ops.linear(x, w)


def npgpt_head(x, w, wt):
    return ops.head_product(x, wt)


def one_sgemm(x, w, wt):
    return x @ w


def transposed(x, w, wt):
    return x @ wt.T


def k_split(x, w, wt, step=128):
    out = x[:, :step] @ w[:step]
    for k in range(step, w.shape[0], step):
        out += x[:, k:k + step] @ w[k:k + step]
    return out


def n_split(x, w, wt, step=512):
    out = np.empty((x.shape[0], w.shape[1]), np.float32)
    for n in range(0, w.shape[1], step):
        np.matmul(x, w[:, n:n + step], out=out[:, n:n + step])
    return out


def stacked_gemv(x, w, wt, step=256):
    rows = x[:, None, :]  # [m, 1, in]: numpy runs a GEMV per row, on the same slice
    out = np.zeros((x.shape[0], 1, w.shape[1]), np.float32)
    part = np.empty_like(out)
    for k in range(0, w.shape[0], step):
        np.matmul(rows[:, :, k:k + step], w[k:k + step], out=part)
        out += part
    return out[:, 0]


def row_by_row(x, w, wt):
    return np.stack([row @ w for row in x])


OTHER_WAYS = {"x @ W": one_sgemm, "x @ Wt.T": transposed, "K-split": k_split, "N-split": n_split,
              "stacked GEMV": stacked_gemv, "row by row": row_by_row}
WAYS = {"blocks": {"npgpt": npgpt_blocks, **OTHER_WAYS}, "head": {"npgpt": npgpt_head, **OTHER_WAYS}}


def best_of(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and one run: a smoke test")
    args = parser.parse_args(argv)
    config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=64) if args.quick else npgpt.GPT2Config.preset("gpt2")
    runs = 1 if args.quick else 5
    path = os.path.join(tempfile.gettempdir(), "npgpt-bench", ("tiny" if args.quick else "gpt2") + "-random")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        npgpt.GPT2.random(config, seed=0).save(path)
    model = npgpt.load(path)  # the weights as npgpt uses them: read-only views of a memory map
    blocks = [(lin.weight, np.ascontiguousarray(lin.weight.T)) for b in model.blocks
              for lin in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    head = (np.ascontiguousarray(model.lm_head.T), model.lm_head)  # [C, V] copy, and [V, C] as wte stores it
    rng = np.random.default_rng(0)
    print(f"{len(blocks)} block products of a forward step and the head [{model.lm_head.shape[0]} x "
          f"{model.lm_head.shape[1]}], float32, {os.cpu_count()} cores ({cpu_name()}), best of {runs}; "
          f"ms, and in brackets over the one-row time of the first way")
    best = {}  # (part, rows) -> (ms, way) of the fastest way
    for part, matrices in (("blocks", blocks), ("head", [head])):
        base = None
        print(f"\n{part:<14}" + "  ".join(f"{f'{m} rows':>16}" for m in ROWS))
        for name, way in WAYS[part].items():
            cells = []
            for m in ROWS:
                x = rng.standard_normal((m, max(w.shape[0] for w, _ in matrices)), dtype=np.float32)
                ms = best_of(lambda: [way(x[:, :w.shape[0]], w, wt) for w, wt in matrices], runs) * 1e3
                base = ms if base is None else base
                best[part, m] = min(best.get((part, m), (ms, name)), (ms, name))
                cells.append(f"{ms:8.2f} ({ms / base:4.1f}x)")
            print(f"{name:<14}" + "  ".join(cells))
    step = {m: best["blocks", m][0] + best["head", m][0] for m in ROWS}  # ms of a step's products, fastest ways
    print(f"\nfloors from the fastest way at each size (products only; {cpu_name()}):")
    print(f"  1 row: {step[1]:.1f} ms ({best['blocks', 1][1]}, {best['head', 1][1]})")
    print(f"  verify step of 8 drafts (9 rows): {step[9]:.1f} ms = {step[9] / step[1]:.2f}x a 1-token step "
          f"({best['blocks', 9][1]}, {best['head', 9][1]}); the target is <= 1.5x")
    for m in (8, 16):
        print(f"  batch {m}: {step[m]:.1f} ms a step, at most {m * 1e3 / step[m]:.0f} tokens/s = "
              f"{m * step[1] / step[m]:.2f}x one row's rate ({best['blocks', m][1]}, {best['head', m][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
