"""Corpus-scale jobs: a JSON Lines file of requests in, one result line per request out, in input order.

    npgpt batch IN.jsonl OUT.jsonl --model gpt2 [--workers N] [--engine ray]
    npgpt.batch.run([{"id": 1, "prompt": "Hello,", "max_new_tokens": 5}, {"id": 2, "text": "A text."}], "gpt2")

(in a script, under `if __name__ == "__main__":`: each worker process runs the main script again as it starts).

A request is a JSON object with an "id" (a string or an integer, unique in the file) and either
    "prompt" (text or token ids) and generate()'s settings   -> {"id", "text", "finish_reason", "tokens"}
    "text", optionally "window" and "stride" (study.score's)  -> {"id", "tokens", "logprob", "perplexity",
                                                                  "token_logprobs"}
A completion's "tokens" counts the generated tokens. A score's "tokens" counts the text's tokens and
"token_logprobs" has one entry per token, null for the first (nothing predicts it); "logprob" is their sum and
"perplexity" exp(-logprob / (tokens - 1)): the numbers of `npgpt score` (to float32 rounding). A request that cannot
be done gives {"id", "error"} ({"line", "error"} when no id can be read) and the job goes on. In OUT, each result
also ends with "input_hash", a short hash of the line of IN it was made from (batch_output.input_hash).

How a job runs:

    IN -> windows of WINDOW lines -> requests (parsed and checked; a bad one is an error line at once)
       -> units: the requests of a window sorted by kind, settings and length, cut into batches of at most
          batch_size rows and batch_tokens padded tokens (a unit is one model.generate over a list of prompts
          or one forward pass over left-padded texts; a text longer than the context, or one with its own
          window, is scored alone by study.score)
       -> an engine runs the units: in this process, in N worker processes (each maps the checkpoint: the
          weights are the OS's page cache, shared), or on Ray actors
       -> results are written to OUT in input order, each line whole: one write() of the line and its newline,
          fsync'ed every few seconds; a result that completes before the ones ahead of it waits in memory.

Resume: OUT is always the results of IN's first k lines. A rerun reads them (checking that each was made from the
same line of IN: its id and its input_hash), removes a torn last line (the job was killed while writing it), and
continues from line k: it never duplicates a line. Identical results: the units are cut from the whole window,
whatever the engine, the number of workers or how much of the window is already done (a unit with some lines done
is run again whole), so a request's numbers never depend on where or when it ran. They may depend on its batch
mates, in float32's last digits: padding changes how sums are rounded (and a greedy near-tie may tip);
batch_size=1 gives exactly what generate() and study.score give. A request that samples without a seed gets one
derived from the job's seed (--seed, default 0) and its id (`request_seed`): the job is reproducible, and a new
--seed draws new samples.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from . import load
from .config import HUB_REPOS
from .errors import InputError, NpgptError, SettingsError
from .model import GPT2
from .batch_output import HASH_FIELD, Ordered, ResultFile, Written, input_hash, written_results
from .batch_units import (BATCH_SIZE, BATCH_TOKENS, Request, parse_request, plan,  # noqa: F401 (public)
                          request_seed, run_unit, token_logprobs)

WINDOW = 1024  # input lines whose requests are sorted by length and cut into units together


# ----------------------------------------------------------------------------------------------- engines


def model_spec(model, revision: str | None = None) -> tuple[str, str | None]:
    """(name or directory, revision) a worker loads the model from; for a loaded GPT2, where it was loaded from."""
    if isinstance(model, GPT2):
        name = model.name or ""
        if not (os.path.isdir(name) or name in HUB_REPOS or "/" in name):
            raise SettingsError("workers load the model themselves: pass its name or directory, or save it first "
                                "(model.save(dir)) and pass dir; workers=1 runs it in this process")
        return (os.path.abspath(name) if os.path.isdir(name) else name), revision
    return (os.path.abspath(model) if os.path.exists(model) else model), revision


def load_spec(spec: tuple[str, str | None], offline: bool | None = None):
    name, revision = spec
    return load(name, revision=revision, offline=offline, progress=False)


class InProcess:
    """Runs the units one after the other in this process."""

    name = "local"

    def __init__(self, model, job_seed: int):
        self.model, self.job_seed, self.workers = model, job_seed, 1

    def map(self, units: Iterable[dict]) -> Iterator[tuple[dict, list]]:
        for unit in units:
            yield unit, run_unit(self.model, unit, self.job_seed)


_WORKER: dict = {}  # in a worker process: the model it loaded and the job's seed
STARTUP_REPORT = "NPGPT_BATCH_STARTUP_REPORT"  # the file where a worker that cannot start writes why


def _start_worker(spec, job_seed: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        model = load_spec(spec, offline=True)  # the parent already fetched it
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        report_startup_error(first if isinstance(e, NpgptError) else f"{type(e).__name__}: {first}")
        raise
    _WORKER.update(model=model, job_seed=job_seed)


def report_startup_error(message: str) -> None:
    """Tells the parent why this worker cannot start: the pool only tells it that the process ended."""
    path = os.environ.get(STARTUP_REPORT)
    if path:
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


def refuse_in_a_starting_worker(function: str) -> None:
    """A worker process started with 'spawn' runs the parent's main script again before it takes any work. A
    script that calls run() at its top level, not under `if __name__ == "__main__":`, would start a job in each
    worker, which multiprocessing refuses with a long traceback: say instead what to change."""
    # multiprocessing's own test for this (spawn._check_not_importing_main): set while the main script runs again
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        message = (f"npgpt.batch.{function}() was called again by the main script, which each worker process runs "
                   'as it starts: call it under `if __name__ == "__main__":`')
        report_startup_error(message)
        raise NpgptError(message)


def _run_in_worker(unit: dict) -> list:
    return run_unit(_WORKER["model"], unit, _WORKER["job_seed"])


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class Processes:
    """Runs the units in `workers` processes started with 'spawn' (forking a process whose BLAS threads run is
    unsafe). Each loads the model once: a memory map of the checkpoint, so the weights are the OS's page cache,
    shared by all of them; a worker's own memory is its activations. Each gets cores // workers BLAS threads.
    A few units per worker are in flight at a time, so that results come back about in input order."""

    name = "local"

    def __init__(self, spec, workers: int, job_seed: int):
        self.spec, self.workers, self.job_seed = spec, workers, job_seed

    def map(self, units: Iterable[dict]) -> Iterator[tuple[dict, list]]:
        # The workers' BLAS reads its thread count from the environment when it loads, and the pool starts the
        # workers as units are submitted: the variables stay set until the job ends.
        threads = str(max(1, usable_cores() // self.workers))
        with _startup_report() as report, _environment({**dict.fromkeys(BLAS_THREADS, threads),
                                                        STARTUP_REPORT: report}):
            pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_worker, initargs=(self.spec, self.job_seed))
            finished = False
            try:
                yield from self._run(pool, iter(units))
                finished = True
            except BrokenProcessPool:
                raise _worker_stopped(report) from None
            finally:
                if not finished:  # interrupted or failed: stop the workers at once, even in the middle of a unit
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.terminate()
                pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, pool, units: Iterator[dict]) -> Iterator[tuple[dict, list]]:
        running = {}
        for unit in units:
            running[pool.submit(_run_in_worker, unit)] = unit
            while len(running) >= 2 * self.workers:
                yield from self._finished(running)
        while running:
            yield from self._finished(running)

    @staticmethod
    def _finished(running: dict) -> Iterator[tuple[dict, list]]:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            yield running.pop(future), future.result()


@contextlib.contextmanager
def _startup_report() -> Iterator[str]:
    """An empty file for the workers' start-up errors (see report_startup_error), removed afterwards; "" when no
    temporary file can be made (their errors are then on stderr only)."""
    try:
        fd, path = tempfile.mkstemp(prefix="npgpt-batch-", suffix=".txt")
    except OSError:
        yield ""
        return
    os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """os.environ with `variables` set, for the worker processes started meanwhile; as it was afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_stopped(report: str) -> NpgptError:
    """Why the pool broke: the error a worker wrote as it failed to start, else the usual cause."""
    reason = ""
    if report:
        with open(report, encoding="utf-8") as f:
            reason = f.readline().strip()
    if reason:
        return NpgptError(f"a worker process could not start: {reason}")
    return NpgptError("a worker process stopped (out of memory, or it could not start: its error is above); use "
                      "fewer --workers or a smaller --batch-tokens, then rerun the same command to resume")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------- jobs


@dataclasses.dataclass
class Summary:
    lines: int = 0  # lines in the input
    skipped: int = 0  # already in OUT before this run
    skipped_failed: int = 0  # of those, the error results
    done: int = 0
    failed: int = 0
    tokens: int = 0  # scored tokens and generated tokens, of this run
    seconds: float = 0.0
    workers: int = 1
    engine: str = "local"

    def __str__(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        skipped = f", {self.skipped:,} already done" if self.skipped else ""
        if self.skipped_failed:
            skipped += f" ({self.skipped_failed:,} failed)"
        lines = f"{self.lines:,} {'line' if self.lines == 1 else 'lines'}"
        return (f"{lines}: {self.done:,} done, {self.failed:,} failed{skipped}; {self.tokens:,} tokens "
                f"in {self.seconds:.1f} s ({rate:,.0f} tokens/s, {self.workers} "
                f"{'worker' if self.workers == 1 else 'workers'}, {self.engine})")

    @property
    def any_failed(self) -> bool:
        """Whether the output holds an error result, from this run or an earlier one."""
        return self.failed + self.skipped_failed > 0


class Job:
    """The requests of one input, run by an engine, their results passed to `emit` in input order."""

    def __init__(self, model, engine, emit, written: list[Written] | None = None, batch_size: int = BATCH_SIZE,
                 batch_tokens: int = BATCH_TOKENS, progress: bool = False, total: int | None = None,
                 hashed: bool = False):
        self.model, self.engine, self.written = model, engine, written or []
        self.batch_size, self.batch_tokens = batch_size, batch_tokens
        self.summary = Summary(skipped=len(self.written), skipped_failed=sum(w.failed for w in self.written),
                               workers=engine.workers, engine=engine.name)
        self.output = Ordered(self._count(emit), start=len(self.written))
        self.first_line: dict[str, int] = {}
        self.progress, self.total = progress, total
        # hashed: the entries are the lines of a file (bytes), and each result carries its line's hash
        self.hashed, self.hashes = hashed, {}  # hashes: {input index: hash} of the results still to come

    def _count(self, emit):
        def counted(result: dict) -> None:
            emit(result)
            if "error" in result:
                self.summary.failed += 1
            else:
                self.summary.done += 1
                self.summary.tokens += result.get("tokens", 0)
        return counted

    def run(self, entries: Iterable) -> Summary:
        from .progress import Progress, wanted

        start = time.monotonic()
        todo = None if self.total is None else max(0, self.total - len(self.written))
        with Progress("batch", todo, wanted(self.progress), unit="lines", transient=False) as bar:
            for unit, results in self.engine.map(self._units(entries, bar)):
                for index, result in results:
                    self._put(index, result)
                bar.update(sum(1 for item in unit["items"] if item[0] >= len(self.written)))
        self.summary.seconds = time.monotonic() - start
        self.summary.workers = self.engine.workers  # Ray's default is known once the cluster is
        if self.output.next != self.summary.lines:  # cannot happen: every line has a result
            raise NpgptError(f"only {self.output.next} of {self.summary.lines} results were written; rerun to resume")
        return self.summary

    def _put(self, index: int, result: dict) -> None:
        digest = self.hashes.pop(index, None)  # None unless hashed, and for a line already written (Ordered drops it)
        self.output.put(index, result if digest is None else {**result, HASH_FIELD: digest})

    def _units(self, entries: Iterable, bar) -> Iterator[dict]:
        """The units still to run, window by window; error lines go straight to the output."""
        window = []
        for index, entry in enumerate(entries):
            request = parse_request(index, entry)
            if self.hashed:
                request.input_hash = input_hash(entry)
            window.append(request)
            if len(window) == WINDOW:
                yield from self._window(window, bar)
                window = []
        yield from self._window(window, bar)
        if self.summary.lines < len(self.written):
            raise NpgptError(f"the output already holds {len(self.written)} results but the input has only "
                             f"{self.summary.lines} lines: it belongs to another input; write to a new file")

    def _check_written(self, r: Request) -> None:
        """Refuses to resume when the result already written for r's line was made from another line."""
        written, n = self.written[r.index], r.index + 1
        if written.key != r.key:
            raise NpgptError(f"line {n} of the output is the result for {written.key}, but line {n} of the input "
                             f"is {r.key}: the output belongs to another input; write to a new file")
        if written.input_hash is not None and written.input_hash != r.input_hash:
            redo = f", or cut the output to its first {n - 1} lines to redo the rest" if n > 1 else ""
            raise NpgptError(f"line {n} of the input changed after its result was written (line {n} of the output "
                             f"was made from another request): write to a new file{redo}")

    def _window(self, requests: list[Request], bar) -> Iterator[dict]:
        done = len(self.written)
        self.summary.lines += len(requests)
        for r in requests:
            if r.id is not None:
                first = self.first_line.setdefault(r.key, r.index)
                if first != r.index:
                    r.kind, r.error = "error", f"duplicate id: line {first + 1} has it too; ids must be unique"
            if r.index < done:
                self._check_written(r)
                continue
            if r.input_hash is not None:
                self.hashes[r.index] = r.input_hash
            if r.kind == "error":
                self._put(r.index, r.failed(r.error))
                bar.update(1)
        if requests and requests[-1].index >= done:  # a window wholly done is not planned again
            for unit in plan([r for r in requests if r.kind != "error"], self.model, self.batch_size,
                             self.batch_tokens):
                if any(item[0] >= done for item in unit["items"]):
                    yield unit


def make_engine(model: GPT2, source=None, engine: str = "local", workers: int | None = None, job_seed: int = 0,
                address: str | None = None, revision: str | None = None):
    """What runs the units: this process (one local worker), worker processes, or Ray actors. model: the model
    loaded here; source: where workers load it from (its name or directory; default: where `model` was loaded
    from)."""
    if engine not in ("local", "ray"):
        raise SettingsError(f"engine must be 'local' or 'ray', got {engine!r}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise SettingsError(f"workers must be an integer >= 1, got {workers!r}")
    source = model if source is None else source
    if engine == "ray":
        from .batch_ray import RayEngine

        return RayEngine(model_spec(source, revision), workers, job_seed, address)
    if address is not None:
        raise SettingsError("an address is for the ray engine (--engine ray)")
    if workers is None:
        workers = usable_cores() if _loadable(source) else 1
    if workers == 1:
        return InProcess(model, job_seed)
    return Processes(model_spec(source, revision), workers, job_seed)


def _loadable(source) -> bool:
    try:
        model_spec(source)
    except SettingsError:
        return False
    return True


def _check_batching(batch_size, batch_tokens) -> None:
    for name, value in (("batch_size", batch_size), ("batch_tokens", batch_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"{name} must be an integer >= 1, got {value!r}")


def _check_requests(requests) -> None:
    """A str, bytes or dict is iterable, but walking it gives characters, bytes or keys, each a bad request."""
    if isinstance(requests, (str, bytes, bytearray, dict, os.PathLike)) or not isinstance(requests, Iterable):
        raise InputError(f"requests must be an iterable of request dicts (or of JSON lines), e.g. a list, got "
                         f"{type(requests).__name__}; for a file, use npgpt.batch.run_file(in_path, out_path, model)")


def run(requests: Iterable, model="gpt2", *, workers: int | None = None, engine: str = "local",
        address: str | None = None, batch_size: int = BATCH_SIZE, batch_tokens: int = BATCH_TOKENS, seed: int = 0,
        revision: str | None = None, progress: bool | None = False) -> list[dict]:
    """Run requests (dicts as the lines of a batch file, or those lines as str) and return their results, in
    order. model: a name, a directory or a loaded GPT2 (for worker processes or Ray, one loaded from a directory
    or the hub: each worker loads it itself). workers: processes (default: one per core; a GPT2 that cannot be
    loaded again runs in this process) or Ray actors (default: the cluster's CPUs). seed: the job's seed, for
    the sampling requests without one (see request_seed)."""
    refuse_in_a_starting_worker("run")
    _check_requests(requests)
    _check_batching(batch_size, batch_tokens)
    loaded = model if isinstance(model, GPT2) else load(model, revision=revision, progress=False)
    runner = make_engine(loaded, model, engine, workers, seed, address, revision)
    results: list[dict] = []
    Job(loaded, runner, results.append, batch_size=batch_size, batch_tokens=batch_tokens,
        progress=progress).run(requests)
    return results


def run_file(in_path: str, out_path: str, model="gpt2", *, workers: int | None = None, engine: str = "local",
             address: str | None = None, batch_size: int = BATCH_SIZE, batch_tokens: int = BATCH_TOKENS,
             seed: int = 0, revision: str | None = None, progress: bool | None = None) -> Summary:
    """Run the requests of IN (JSON Lines) and append their results to OUT in input order, resuming after the
    results OUT already holds. Returns the Summary (done, failed, tokens/s; any_failed counts earlier runs too)."""
    refuse_in_a_starting_worker("run_file")
    _check_batching(batch_size, batch_tokens)
    if not os.path.isfile(in_path):
        raise InputError(f"{in_path}: no such file" if not os.path.exists(in_path) else f"{in_path}: not a file")
    if os.path.exists(out_path) and os.path.samefile(in_path, out_path):
        raise SettingsError("the output file must not be the input file")
    loaded = model if isinstance(model, GPT2) else load(model, revision=revision, progress=progress)
    runner = make_engine(loaded, model, engine, workers, seed, address, revision)
    written = written_results(out_path)
    with open(in_path, "rb") as f:
        total = sum(1 for _ in f)
    out = ResultFile(out_path)
    try:
        with open(in_path, "rb") as f:
            return Job(loaded, runner, out.write, written, batch_size, batch_tokens, progress, total,
                       hashed=True).run(f)
    finally:
        out.close()


# ---------------------------------------------------------------------------------------------- command line


EXIT_STATUS = ("exit status: 0 when every line of OUT is a result; 1 when any line failed (the summary says how "
               "many, their lines in OUT say why), even in an earlier run, or when the job stopped on an error (its "
               "message says what to do); 130 on Ctrl-C")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `npgpt batch`."""
    parser.epilog = EXIT_STATUS
    parser.add_argument("input", metavar="IN.jsonl", help="requests, one JSON object per line: {\"id\", \"prompt\", "
                        "generate's settings} to complete, {\"id\", \"text\"} to score")
    parser.add_argument("output", metavar="OUT.jsonl", help="results, one line per request in input order; a "
                        "rerun resumes after the lines it already holds")
    parser.add_argument("--model", "-m", default="gpt2", metavar="NAME", help="a hub name (gpt2, gpt2-medium, ..., "
                        "org/name) or a directory with config.json and model.safetensors (gpt2)")
    parser.add_argument("--revision", help="hub branch, tag or commit (default: main)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--workers", "-w", type=int, metavar="N", help="worker processes (default: one per core) or "
                        "Ray actors (default: the cluster's CPUs)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local processes (default) or a Ray cluster (pip install 'npgpt[ray]')")
    parser.add_argument("--address", metavar="ADDRESS", help="the Ray cluster to join (default: RAY_ADDRESS, else "
                        "a local one)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="ROWS",
                        help=f"rows per batch ({BATCH_SIZE})")
    parser.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS, metavar="TOKENS",
                        help=f"padded tokens per batch, which bounds a worker's memory ({BATCH_TOKENS})")
    parser.add_argument("--seed", type=int, default=0, help="the job's seed: sampling requests without their own "
                        "seed get one made from it and their id (0)")


def run_command(args) -> int:
    """`npgpt batch`: run the job, then one line of summary on stderr; 1 when OUT holds a failed line (a script
    must not take a job whose every line failed for a success), else 0."""
    try:
        summary = run_file(args.input, args.output, args.model, workers=args.workers, engine=args.engine,
                           address=args.address, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                           seed=args.seed, revision=args.revision, progress=False if args.quiet else None)
    except KeyboardInterrupt:
        print(f"\nnpgpt: interrupted; {args.output} holds whole lines only: rerun the same command to resume",
              file=sys.stderr)
        raise
    print(f"npgpt batch: {summary}", file=sys.stderr)
    return 1 if summary.any_failed else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m npgpt.batch`: the command on its own, as the CLI runs it."""
    parser = argparse.ArgumentParser(prog="npgpt batch", description="Complete and score JSON Lines requests.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except NpgptError as e:
        print(f"npgpt: error: {str(e) or type(e).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    from npgpt.batch import main as _main  # the workers unpickle this module's functions by its package name

    sys.exit(_main())
