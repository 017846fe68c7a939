"""Continuous batching: one decode loop shared by many requests, each joining at the next step and leaving when
done, so that concurrent requests cost about one batched forward pass per step instead of one pass each.

    submit(prompts, settings) -> Job (waits in a queue)
    each step: admit waiting jobs (prefill their prompts, join the running batch) -> one forward step for every
               row -> each job's own rules and selection on its rows -> its Steps to its queue -> finished rows
               and cancelled jobs leave the batch

The forward pass, the rules, the selection and the bookkeeping are generation's (Sequences, verify, record): a
job's rows see what they would see alone (their own prompts' padding, rules and random generators), so a job
gives what `model.generate` gives with the same settings, whatever else is running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

from .errors import BusyError, NpgptError, SettingsError
from .generation import fit_prompts, new_rows, record
from .results import Row, Step
from .sequences import Sequences
from .settings import Settings
from .speculative import verify

log = logging.getLogger("npgpt.scheduler")
CANCELLED = "cancelled"  # a Row's finish_reason when its job was cancelled
GATHER = 0.005  # seconds: an idle scheduler waits this long after each request for another, before prefilling
GATHERING_LIMIT = 10  # at most this many times GATHER in all


class Job:
    """One request: its prompts' n rows each (prompt-major), and the Steps they produce, in order."""

    def __init__(self, prompts: list[list[int]], s: Settings, rows: list[Row]):
        self.prompts, self.settings, self.rows = prompts, s, rows
        self.error: Exception | None = None
        self._steps: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._finishing = threading.Lock()  # the decode loop and fail() may finish a job at the same moment
        self._cancelled = False

    def steps(self, timeout: float | None = None):
        """Yield each Step as it is chosen (Step.row indexes `rows`) until every row is finished; raises the
        job's error, if it failed. timeout: seconds to wait for a step (queue.Empty when they pass)."""
        while True:
            step = self._steps.get(timeout=timeout)
            if step is None:
                break
            yield step
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> list[Row]:
        """Block until the job is done; its rows (raises the job's error, if it failed)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the job is still running")
        if self.error is not None:
            raise self.error
        return self.rows

    def cancel(self) -> None:
        """Stop: its rows leave the batch at the next step (a client that went away)."""
        self._cancelled = True

    def fail(self, error: Exception) -> None:
        """End the job now with `error` (a server shutting down): its waiters get the error at once, without
        waiting for the decode loop, and its rows leave the batch at the next step. A job already done stays
        as it ended."""
        self._cancelled = True
        self._finish(error)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _emit(self, steps: list[Step]) -> None:
        for step in steps:
            self._steps.put(step)

    def _finish(self, error: Exception | None = None) -> None:
        with self._finishing:
            if self._done.is_set():
                return
            self.error = error
            for row in self.rows:
                if row.finish_reason is None:
                    row.finish_reason = CANCELLED
            self._done.set()
            self._steps.put(None)


class _Running:
    """A job in the batch: its rules, and per batch row the job's row index and random generator."""

    def __init__(self, job: Job, prompt_length: int, active: list[int]):
        s = job.settings
        self.job, self.rules = job, s.sampler.rules(prompt_length)
        rngs = [rng for _ in job.prompts for rng in s.generators(s.n)] if s.sampler.sampling else None
        self.rows = active  # job row index of each of its batch rows, in batch order
        self.rngs = {i: rngs[i] for i in active} if rngs else None


class Scheduler:
    """The decode loop of a server: jobs wait in a queue (at most max_waiting), run together on at most
    max_rows rows (a job larger than that runs alone), and leave as they finish. gather: seconds an idle
    scheduler waits after a request for another (see _gather; 0: none)."""

    def __init__(self, model, max_rows: int = 16, max_waiting: int = 64, gather: float = GATHER):
        for name, value in (("max_rows", max_rows), ("max_waiting", max_waiting)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(gather, (int, float)) or isinstance(gather, bool) or not 0 <= gather <= 1:
            raise SettingsError(f"gather must be between 0 and 1 second, got {gather!r}")
        self.model, self.max_rows, self.max_waiting, self.gather = model, max_rows, max_waiting, gather
        self._submitted = 0  # jobs submitted so far: the gathering sees whether another came
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batch: Sequences | None = None
        self.running: list[_Running] = []  # in batch order: the rows of running[0], then of running[1], ...
        self.steps_run = 0

    # ------------------------------------------------------------------------------------------ the callers' side

    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._loop, name="npgpt-scheduler", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the loop; jobs not finished end with a 'scheduler closed' error."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        closed = BusyError("the server is shutting down")
        for job in list(self._waiting) + [r.job for r in self.running]:
            job._finish(closed)
        self._waiting.clear()
        self.running, self.batch = [], None

    def submit(self, prompts: list, settings: dict) -> Job:
        """Queue prompts (text or ids) with generate's keyword settings; bad ones fail here, at once."""
        s = Settings.parse(self.model, dict(settings))
        if s.num_beams > 1 or s.speculative or s.sliding_window:
            raise SettingsError("the scheduler decodes greedily or by sampling: no beam search, speculative "
                                "decoding or sliding_window")
        ids = fit_prompts(self.model, list(prompts), s)
        job = Job(ids, s, new_rows(self.model, ids, s))
        with self._wake:
            if self._stopping:
                raise BusyError("the server is shutting down")
            if self.waiting >= self.max_waiting:
                raise BusyError(f"{self.waiting} requests are already waiting; try again shortly")
            self._waiting.append(job)
            self._submitted += 1
            self._wake.notify()
        return job

    @property
    def rows(self) -> int:
        return 0 if self.batch is None else len(self.batch)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a place (cancelled ones, about to be dropped, are not counted)."""
        return sum(not job._cancelled for job in self._waiting)

    def _waiting_rows(self) -> int:
        return sum(len(job.rows) for job in self._waiting if not job._cancelled)

    # ------------------------------------------------------------------------------------------- the loop's side

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and self.batch is None:
                    self._wake.wait()
                if self.batch is None and not self._stopping:
                    self._gather()
                if self._stopping:
                    return
            try:
                self._admit()
                if self.batch is not None:
                    self._step()
            except Exception as error:  # noqa: BLE001 (a bug must not kill the server: fail the jobs, go on)
                log.exception("the decode step failed; its jobs end with an error")
                for job in [r.job for r in self.running]:
                    job._finish(error)
                self.running, self.batch = [], None

    def _gather(self) -> None:
        """Woken from idle by a request: wait while others keep coming, each within `gather` seconds of the last
        (GATHERING_LIMIT x gather at most in all, and no longer once they fill max_rows), so that a burst of
        requests is prefilled in one forward pass and decodes together from its first step. A lone request
        waits `gather` (5 ms: about 1% of a 32-token request on 2 cores). Called holding self._wake."""
        deadline = time.monotonic() + GATHERING_LIMIT * self.gather
        while not self._stopping and self._waiting_rows() < self.max_rows and time.monotonic() < deadline:
            seen = self._submitted
            self._wake.wait(min(self.gather, max(0.0, deadline - time.monotonic())))
            if self._submitted == seen:
                return

    def _admit(self) -> None:
        """Prefill the waiting jobs whose rows fit in max_rows (a job larger than that runs once the batch is
        empty), in one forward pass, and join them to the batch."""
        jobs, rows = [], self.rows
        with self._wake:
            while self._waiting:
                job = self._waiting[0]
                if not job._cancelled and rows and rows + len(job.rows) > self.max_rows:
                    break
                self._waiting.popleft()
                if job._cancelled:
                    job._finish()
                elif any(row.finish_reason is None for row in job.rows):
                    jobs.append(job)
                    rows += len(job.rows)
                else:  # nothing to generate (max_new_tokens=0)
                    job._finish()
        if jobs:
            self._join(jobs)

    def _join(self, jobs: list[Job]) -> None:
        """One prefill for the new jobs' prompts together (a batch gives each row what it gives alone), then
        their rows join the running batch."""
        prompts = [p for job in jobs for p in job.prompts]
        try:
            prefilled = Sequences(self.model, prompts, new_tokens=max(row.limit for job in jobs for row in job.rows),
                                  rows=sum(len(job.rows) for job in jobs))
        except NpgptError as error:  # e.g. more rows than memory allows
            for job in jobs:
                job._finish(error)
            return
        origin, first = [], 0  # the prompt each new batch row starts from
        for job in jobs:
            active = [i for i, row in enumerate(job.rows) if row.finish_reason is None]
            origin += [first + i // job.settings.n for i in active]  # rows are n per prompt, prompt-major
            first += len(job.prompts)
            self.running.append(_Running(job, prefilled.prompt_length, active))
        prefilled.select(origin)
        if self.batch is None:
            self.batch = prefilled
        else:
            self.batch.join(prefilled)

    def _step(self) -> None:
        """One token for every row: each job's rules and selection on its rows, then one forward step."""
        batch, start, keep, finals, running = self.batch, 0, [], [], []
        for r in self.running:
            here = list(range(start, start + len(r.rows)))
            start += len(r.rows)
            if r.job._cancelled:
                r.job._finish()
                continue
            try:
                still = self._choose(r, batch, here)
            except NpgptError as error:  # e.g. a distribution its rules left empty: this job alone fails
                r.job._finish(error)
                continue
            if not still:
                r.job._finish()
                continue
            keep += [here[j] for j, _ in still]
            finals += [token for _, token in still]
            r.rows = [r.rows[j] for j, _ in still]
            running.append(r)
        self.running, self.steps_run = running, self.steps_run + 1
        if not keep:
            self.batch = None
            return
        batch.select(keep)
        batch.extend(finals)

    def _choose(self, r: _Running, batch: Sequences, here: list[int]) -> list[tuple[int, int]]:
        """A token for each of a job's rows (batch rows `here`); returns (j, token) of the rows still going."""
        job, s = r.job, r.job.settings
        logits = batch.logits[here[0]:here[-1] + 1, None]  # [A, 1, V]: a view (a job's rows are consecutive)
        rngs = [r.rngs[i] for i in r.rows] if r.rngs else None
        emitted = verify(s.sampler, r.rules, [batch.tokens[b] for b in here], logits, [[] for _ in here], rngs)
        steps, still = record(self.model.tokenizer, job.rows, r.rows, emitted, logits, s)
        job._emit(steps)
        return [(j, emitted[j][-1]) for j in still]
