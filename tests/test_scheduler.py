"""Continuous batching (npgpt.scheduler): jobs join a running batch and leave it, and each gives exactly what
model.generate gives with the same settings, whatever else is running."""

import threading
import time

import numpy as np
import pytest

import npgpt
from npgpt import BusyError, DistributionError, SettingsError
from npgpt.scheduler import CANCELLED, Scheduler

from conftest import golden_dir

CASES = [
    (["Hello, I am"], dict(max_new_tokens=12)),
    (["The cat sat on the mat and then", "A"], dict(max_new_tokens=9, temperature=0.8, top_k=5, seed=3, n=2)),
    ([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]], dict(max_new_tokens=20, temperature=1.0, seed=7, logprobs=True,
                                                 top_logprobs=2)),
    (["Once upon a time"], dict(max_new_tokens=15, repetition_penalty=1.3, min_new_tokens=5, presence_penalty=0.5,
                                frequency_penalty=0.3, logit_bias={13: 5.0})),
    (["x"], dict(max_new_tokens=0)),
    (["Stop here please"], dict(max_new_tokens=30, stop=["e"], temperature=0.9, seed=1)),
]


@pytest.fixture
def scheduler(tiny):
    s = Scheduler(tiny[0], max_rows=6)
    yield s
    s.close()


def ids_of(model, prompts):
    return [model.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]


def alone(model, prompts, settings):
    """model.generate's results for a job, flattened prompt-major as a job's rows are."""
    out = model.generate(prompts, **settings)
    return [r for results in out for r in (results if settings.get("n", 1) > 1 else [results])]


def assert_same(job, expected, settings):
    got = [row.result(as_text=False) for row in job.wait(timeout=30)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert list(g) == list(e) and g.text == e.text and g.finish_reason == e.finish_reason
        if settings.get("logprobs"):
            assert [lp.token for lp in g.logprobs] == [lp.token for lp in e.logprobs]
            np.testing.assert_allclose([lp.logprob for lp in g.logprobs], [lp.logprob for lp in e.logprobs],
                                       atol=1e-5)
            assert all(len(lp.top_logprobs) == 2 for lp in g.logprobs)


def test_jobs_submitted_together_give_what_generate_gives_alone(tiny, scheduler):
    model = tiny[0]
    jobs = [(scheduler.submit(ids_of(model, p), s), alone(model, ids_of(model, p), s), s) for p, s in CASES]
    scheduler.start()
    for job, expected, settings in jobs:
        assert_same(job, expected, settings)
    # they ran side by side: about as many steps as the longest job, far fewer than one job after another
    assert scheduler.steps_run <= 31 < sum(s["max_new_tokens"] for _, s in CASES)


def test_a_job_joins_a_running_batch_and_leaves_it(tiny):
    model = tiny[0]
    long_prompt, short_prompt = ids_of(model, ["A long one, that runs while others come"]), ids_of(model, ["Later"])
    long_settings = dict(max_new_tokens=40, temperature=1.0, seed=11)
    short_settings = dict(max_new_tokens=5, top_k=3, temperature=0.7, seed=2, n=2, presence_penalty=1.0)
    s = Scheduler(model)  # not started: the test runs its loop by hand, one step at a time
    first = s.submit(long_prompt, long_settings)
    for _ in range(10):
        s._admit()
        s._step()
    second = s.submit(short_prompt, short_settings)  # joins the running batch at the next step
    rows_seen = []
    while not first.done:
        s._admit()
        rows_seen.append(s.rows)
        s._step()
    assert rows_seen[:6] == [3, 3, 3, 3, 3, 1] and s.steps_run == 40  # joined, left, all within 40 steps
    assert_same(second, alone(model, short_prompt, short_settings), short_settings)
    assert_same(first, alone(model, long_prompt, long_settings), long_settings)


def test_steps_stream_in_order_and_join_to_the_rows(tiny, scheduler):
    model = tiny[0]
    job = scheduler.start().submit(ids_of(model, ["Hello", "World"]), dict(max_new_tokens=6, n=2,
                                                                          temperature=1.0, seed=5))
    pieces = [[] for _ in job.rows]
    for step in job.steps(timeout=30):
        pieces[step.row].append(step.text)
    assert ["".join(p) for p in pieces] == ["".join(row.pieces) for row in job.rows]
    assert all(row.finish_reason == "length" for row in job.rows)


def test_a_cancelled_job_leaves_at_the_next_step_and_the_others_go_on(tiny):
    model = tiny[0]
    settings = dict(max_new_tokens=30)
    s = Scheduler(model)  # not started: the test runs its loop by hand, one step at a time
    keep = s.submit(ids_of(model, ["Keep going"]), settings)
    gone = s.submit(ids_of(model, ["Stop soon"]), settings)
    s._admit()
    s._step()
    s._step()
    assert s.rows == 2 and len(gone.rows[0].ids) == 2
    gone.cancel()
    s._step()
    assert gone.done and gone.rows[0].finish_reason == CANCELLED and len(gone.rows[0].ids) == 2
    assert s.rows == 1 and len(keep.rows[0].ids) == 3
    while not keep.done:
        s._step()
    assert_same(keep, alone(model, ids_of(model, ["Keep going"]), settings), settings)
    waiting = s.submit(ids_of(model, ["Never run"]), settings)
    waiting.cancel()  # cancelled while waiting: it never joins
    s._admit()
    assert waiting.done and s.rows == 0 and waiting.rows[0].ids == []


def test_a_failing_job_fails_alone(tiny, scheduler):
    model = tiny[0]
    impossible = dict(max_new_tokens=3, temperature=1.0, seed=0,
                      logit_bias={i: -float("inf") for i in range(model.config.vocab_size)})
    fine = dict(max_new_tokens=8)
    bad = scheduler.submit(ids_of(model, ["Nothing can be drawn"]), impossible)
    good = scheduler.submit(ids_of(model, ["Everything is fine"]), fine)
    scheduler.start()
    with pytest.raises(DistributionError):
        bad.wait(timeout=30)
    assert_same(good, alone(model, ids_of(model, ["Everything is fine"]), fine), fine)


def test_bad_settings_fail_at_submit_and_a_full_queue_is_busy(tiny):
    model = tiny[0]
    s = Scheduler(model, max_waiting=1)
    with pytest.raises(SettingsError, match="temperature"):
        s.submit([[1, 2]], dict(temperature=-1))
    with pytest.raises(SettingsError, match="beam"):
        s.submit([[1, 2]], dict(num_beams=2))
    s.submit([[1, 2]], dict(max_new_tokens=2))  # not started: it waits
    with pytest.raises(BusyError, match="waiting"):
        s.submit([[1, 2]], dict(max_new_tokens=2))
    with pytest.raises(SettingsError, match="max_rows"):
        Scheduler(model, max_rows=0)
    s.close()


def test_close_ends_waiting_jobs_with_an_error(tiny):
    s = Scheduler(tiny[0])
    job = s.submit([[1, 2, 3]], dict(max_new_tokens=5))
    s.close()
    with pytest.raises(BusyError, match="shutting down"):
        job.wait(timeout=5)
    with pytest.raises(BusyError):
        s.submit([[1]], {})


def test_fail_ends_a_running_job_at_once_and_its_rows_leave():
    slow = npgpt.load(golden_dir("tiny"))
    with slow.hooks(fwd_hooks=[("hook_embed", lambda x, hook: time.sleep(0.02))]):  # 20 ms a step
        s = Scheduler(slow).start()
        try:
            job = s.submit([[1, 2, 3]], dict(max_new_tokens=50))
            steps = job.steps(timeout=10)
            next(steps)  # it runs (for a second)
            job.fail(BusyError("the server is shutting down"))
            with pytest.raises(BusyError, match="shutting down"):
                job.wait(timeout=0)  # at once: done without the decode loop
            with pytest.raises(BusyError, match="shutting down"):
                for _ in steps:
                    pass
            deadline = time.monotonic() + 10
            while s.running and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not s.running and len(job.rows[0].ids) < 50  # its row left the batch
            job.fail(RuntimeError("later"))  # a job already done stays as it ended
            assert isinstance(job.error, BusyError)
        finally:
            s.close()


def test_many_clients_at_once(tiny):
    """Threads submitting and reading at the same time, more jobs than rows: none lost or mixed up."""
    model = tiny[0]
    s = Scheduler(model, max_rows=4).start()
    prompts = [f"Client number {i} says" for i in range(10)]
    results, errors = {}, []

    def client(i):
        try:
            settings = dict(max_new_tokens=4 + i % 5, temperature=1.0, seed=i)
            job = s.submit(ids_of(model, [prompts[i]]), settings)
            results[i] = ("".join(step.text for step in job.steps(timeout=60)), settings)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    s.close()
    assert not errors
    for i, (text, settings) in results.items():
        assert text == model.generate(prompts[i], **settings)
    assert len(results) == 10


def submit_every(s, seconds: float, count: int, model) -> threading.Thread:
    """A thread that submits `count` small jobs, one every `seconds`."""
    def submitting():
        for i in range(count):
            time.sleep(seconds)
            s.submit([[1, 2, i]], dict(max_new_tokens=1))
    thread = threading.Thread(target=submitting)
    thread.start()
    return thread


def test_an_idle_scheduler_gathers_a_burst_before_its_prefill(tiny):
    """Requests that keep coming within `gather` of each other wait for one another, so that one prefill
    takes them all; a quiet `gather` ends the wait."""
    model = tiny[0]
    s = Scheduler(model, gather=0.5)
    s.submit([[1, 2]], dict(max_new_tokens=1))
    burst = submit_every(s, 0.05, 3, model)
    with s._wake:
        s._gather()
    burst.join()
    assert s.waiting == 4
    s.close()


def test_gathering_stops_at_its_limit_and_when_the_rows_are_full(tiny):
    model = tiny[0]
    s = Scheduler(model, max_waiting=1000, gather=0.02)  # at most GATHERING_LIMIT x 20 ms = 0.2 s
    s.submit([[1, 2]], dict(max_new_tokens=1))
    stream = submit_every(s, 0.005, 200, model)  # a second at least, never 20 ms quiet
    with s._wake:
        s._gather()
    gathered = s.waiting
    stream.join()
    assert 1 < gathered < 201  # it waited for some, but did not wait for the stream to end
    s.close()

    full = Scheduler(model, max_rows=2, gather=1.0)
    full.submit([[1, 2]], dict(max_new_tokens=1, n=2, temperature=1.0))  # two rows: as many as a batch takes
    started = time.monotonic()
    with full._wake:
        full._gather()
    assert time.monotonic() - started < 0.9  # did not wait a second for a request that could not join
    full.close()


def test_a_burst_decodes_from_one_prefill_and_gather_is_checked(tiny):
    model = tiny[0]
    s = Scheduler(model, max_rows=8, gather=0.3)
    joins = []
    join = s._join
    s._join = lambda jobs: (joins.append(len(jobs)), join(jobs))
    s.start()
    jobs = []
    for i in range(5):  # 50 ms apart: without gathering, the first would be prefilled alone
        jobs.append(s.submit([[5, 6, i]], dict(max_new_tokens=3)))
        time.sleep(0.05)
    for job in jobs:
        job.wait(timeout=30)
    s.close()
    assert joins == [5]
    for bad in (-0.001, 1.5, "5", True, None):
        with pytest.raises(SettingsError, match="gather"):
            Scheduler(model, gather=bad)
