"""A smoke test of tools/bench.py (the speed targets are the script's to report, never a test's)."""

import os
import subprocess
import sys

from conftest import ROOT


def test_bench_runs_end_to_end_on_a_tiny_model(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench.py"), "--quick", "--dir",
                           str(tmp_path / "quick")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for row in ("decode batch 1 (tokens/s)", "prefill 64 tokens (tokens/s)", "ms per token at position ~892",
                "cold start to first token (s)", "peak RSS (MB)", "floor:", "x the floor",
                "ceilings from the products alone", "decode batch 4: ", "prefill 64 tokens: ",
                "prefill 64 tokens with its exp and tanh: ", "prefill of 64 tokens timed in place"):
        assert row in out, row
    parts = out.split("timed in place, ms")[1]
    for part in ("whole", "products", "attention", "GELU", "LayerNorm", "cache writes", "the rest"):
        assert f"{part} " in parts, part
    assert os.path.isfile(tmp_path / "quick" / "model.safetensors")


def test_bench_products_runs_end_to_end_on_a_tiny_model():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_products.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for way in ("npgpt", "x @ W", "x @ Wt.T", "K-split", "N-split", "stacked GEMV", "row by row"):
        rows = [line for line in done.stdout.splitlines() if line.startswith(way + " ")]
        assert len(rows) == 2, way  # a row in the blocks table and one in the head's
    for floor in ("1 row: ", "verify step of 8 drafts (9 rows): ", "batch 8: ", "batch 16: "):
        assert floor in done.stdout, floor


def test_bench_speculative_runs_end_to_end_on_tiny_models():
    """npgpt alone (transformers is not needed for the script to run); every table is printed."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_speculative.py"), "--quick",
                           "--no-transformers"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for part in ("verify step of k drafts / 1-token step: k=1", "ms of a step of k drafts", "k = 16",
                 "input-grounded, lookup", "open-ended, assistant"):
        assert part in done.stdout, part


def test_load_runs_end_to_end_against_a_live_server():
    """tools/load.py --quick: a server on 127.0.0.1, a few requests at 1 and 2 clients, every answer checked."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "load.py"), "--quick", "--no-transformers"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "lost requests: 0; answers differing from the request alone: 0" in done.stdout
