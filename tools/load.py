"""Load on an OpenAI-compatible completions server: npgpt serve against transformers serve, same checkpoint,
same run, loopback only, a bounded number of requests.

    python tools/load.py                      # GPT-2 124M (random weights), 1, 4 and 16 clients, 32 tokens each
    python tools/load.py --no-transformers    # npgpt alone
    python tools/load.py --quick              # a tiny model, a few requests: a smoke test of this script

For each server: start it on 127.0.0.1, run every request alone (one at a time: the reference answers and the
one-client rate), then 16 requests again with 1, 4 and 16 clients sending at once. Prints aggregate tokens/s
(completion tokens over wall time), p50/p95 request latency, and how many answers equal the same request run
alone (greedy, so they must all be equal; nothing lost, nothing mixed up). transformers is run as
`transformers serve --continuous-batching --device cpu`, the command given by --transformers-cli (from a venv
with `transformers[serving]` and accelerate, e.g. `python -m venv /tmp/tf && /tmp/tf/bin/pip install
torch==2.13.0 "transformers[serving]" accelerate`, then `--transformers-cli /tmp/tf/bin/transformers`).

Random weights make the texts meaningless (greedy often repeats one token); both servers run the same weights,
so the rates compare the implementations.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import npgpt  # noqa: E402
from bench import cpu_name  # noqa: E402
from npgpt import cores  # noqa: E402
from npgpt import tokenizer as bpe  # noqa: E402

HOST = "127.0.0.1"  # never anything else: this tool sends load to a server it started itself
REQUESTS, TIMEOUT = 16, 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data}")
        return data
    finally:
        conn.close()


def wait_ready(port: int, process: subprocess.Popen, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer /health within {seconds:.0f} s")


class Server:
    """A server process on 127.0.0.1 for the duration of a `with` block."""

    def __init__(self, name: str, command: list[str], port: int, model: str):
        self.name, self.command, self.port, self.model = name, command, port, model

    def __enter__(self):
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.port, self.process)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if exc and exc[0] is not None:
            self.log.seek(0)
            sys.stderr.write(self.log.read().decode(errors="replace")[-3000:])
        self.log.close()

    def complete(self, prompt: str, tokens: int) -> tuple[str, int, float]:
        """(text, completion tokens, seconds) of one greedy request."""
        start = time.perf_counter()
        answer = post(self.port, {"model": self.model, "prompt": prompt, "max_tokens": tokens, "temperature": 0})
        return answer["choices"][0]["text"], answer["usage"]["completion_tokens"], time.perf_counter() - start


def run_level(server: Server, prompts: list[str], tokens: int, clients: int) -> dict:
    """All prompts, `clients` at a time (each client sends its share one after another)."""
    answers, errors = [None] * len(prompts), []

    def client(k: int) -> None:
        for i in range(k, len(prompts), clients):
            try:
                answers[i] = server.complete(prompts[i], tokens)
            except Exception as error:  # noqa: BLE001 (reported below, counted as lost)
                errors.append(f"request {i}: {error}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * len(prompts))
    wall = time.perf_counter() - start
    done = [a for a in answers if a is not None]
    latencies = sorted(a[2] for a in done)
    return {"answers": answers, "errors": errors, "tokens/s": sum(a[1] for a in done) / wall,
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")}


def measure(server: Server, prompts: list[str], tokens: int, levels: list[int]) -> dict:
    server.complete(prompts[0], 4)  # warm up
    alone = run_level(server, prompts, tokens, 1)
    results = {}
    for clients in levels:
        level = run_level(server, prompts, tokens, clients) if clients > 1 else alone
        same = sum(a is not None and b is not None and a[0] == b[0]
                   for a, b in zip(level["answers"], alone["answers"]))
        results[clients] = dict(level, same=same)
        for e in level["errors"]:
            print(f"  {server.name}, {clients} clients: {e}", file=sys.stderr)
    return results


def checkpoint(quick: bool) -> str:
    name = "quick" if quick else "gpt2"
    path = os.path.join(tempfile.gettempdir(), "npgpt-bench", f"{name}-random")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=64) if quick else npgpt.GPT2Config.preset("gpt2")
        npgpt.GPT2.random(config, seed=0).save(path)
    return path


def with_tokenizer_files(model_dir: str) -> str:
    """The checkpoint as transformers loads it with its tokenizer: a sibling directory with the same weights
    and config, plus GPT-2's vocab.json and merges.txt (written from the vocabulary npgpt carries)."""
    peer = model_dir.rstrip("/") + "-hf"
    os.makedirs(peer, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        target = os.path.join(peer, name)
        if not os.path.exists(target):
            shutil.copyfile(os.path.join(model_dir, name), target)
    merges = bpe.bundled_merges().decode()
    with open(os.path.join(peer, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(bpe.encoder_json_from_ranks(bpe.ranks_from_merges(merges)), f, ensure_ascii=False)
    with open(os.path.join(peer, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(merges)
    return peer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few requests: a smoke test")
    parser.add_argument("--tokens", type=int, default=32, help="completion tokens a request (32)")
    parser.add_argument("--gather-ms", type=int, help="npgpt serve's --gather-ms (default: its own)")
    parser.add_argument("--no-transformers", action="store_true", help="measure npgpt alone")
    parser.add_argument("--transformers-cli", default=shutil.which("transformers"),
                        help="the `transformers` command of a venv with transformers[serving] and accelerate")
    args = parser.parse_args(argv)
    levels = [1, 2] if args.quick else [1, 4, 16]
    prompts = [f"Request {i}: the weather in city number {i} today is" for i in range(4 if args.quick else REQUESTS)]
    model_dir = checkpoint(args.quick)

    port = free_port()
    servers = [Server("npgpt", [sys.executable, "-m", "npgpt", "serve", "--model", model_dir, "--host", HOST,
                                "--port", str(port), "--max-rows", str(max(levels))]
                      + ([] if args.gather_ms is None else ["--gather-ms", str(args.gather_ms)]), port, model_dir)]
    if not args.no_transformers:
        if not args.transformers_cli:
            parser.error("give --transformers-cli (from a venv with transformers[serving] and accelerate) or "
                         "--no-transformers")
        peer, peer_port = with_tokenizer_files(model_dir), free_port()
        command = [args.transformers_cli, "serve", "--continuous-batching", "--device", "cpu", "--host", HOST,
                   "--port", str(peer_port), peer]
        servers.append(Server("transformers", command, peer_port, peer))
    results = {}
    for server in servers:
        with server:
            results[server.name] = measure(server, prompts, args.tokens, levels)

    kernels = cores.kernels_for_batches()  # npgpt serve starts itself again with these
    print(f"\n{len(prompts)} greedy requests of {args.tokens} tokens per level, random weights, "
          f"{os.cpu_count()} cores ({cpu_name()}{f'; npgpt serve chose {kernels} kernels' if kernels else ''})\n")
    header = f"{'clients':>7}" + "".join(f"  {name + ' tok/s':>18} {'p50 s':>6} {'p95 s':>6} {'same':>5}"
                                         for name in results)
    print(header + ("   npgpt / transformers" if "transformers" in results else ""))
    for clients in levels:
        line = f"{clients:>7}"
        for r in results.values():
            c = r[clients]
            line += f"  {c['tokens/s']:>18.1f} {c['p50']:>6.2f} {c['p95']:>6.2f} {c['same']:>2}/{len(prompts)}"
        if "transformers" in results:
            line += f"   {results['npgpt'][clients]['tokens/s'] / results['transformers'][clients]['tokens/s']:.2f}x"
        print(line)
    for name, r in results.items():
        print(f"{name}: {max(levels)} clients / 1 client = {r[max(levels)]['tokens/s'] / r[1]['tokens/s']:.2f}x")
    lost = sum(len(r[c]["errors"]) for r in results.values() for c in levels)
    mixed = sum(len(prompts) - r[c]["same"] for r in results.values() for c in levels)
    print(f"lost requests: {lost}; answers differing from the request alone: {mixed}")
    return 0 if lost == 0 and mixed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
