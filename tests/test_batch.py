"""npgpt batch: JSON Lines in, one result line per line out, in order; resumable; the same results whatever runs it."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from npgpt import batch, study
from npgpt.batch_output import input_hash
from npgpt.errors import InputError, NpgptError, SettingsError

from conftest import ROOT

LONG = "The cat sat on the mat and looked at the dog, who did not look back at all. " * 3  # > 32 tokens


def write_lines(path, lines) -> str:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return str(path)


def read_results(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def assert_same_results(path, expected_path):
    """The same lines, in the same order, with the same ids, texts, token counts and errors; numbers equal to
    float32 rounding. Runs with a different number of BLAS threads per process (1 worker on 2 cores has two,
    2 workers have one each) may round differently: OpenBLAS on an AMD EPYC splits its sums by thread count,
    Intel's kernels do not. With the same thread count, the files are the same bytes (the resume tests)."""
    got, expected = read_results(path), read_results(expected_path)
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]
    for a, b in zip(got, expected):
        for key, value in b.items():
            if isinstance(value, float) or (isinstance(value, list) and any(isinstance(v, float) for v in value)):
                np.testing.assert_allclose(np.array(a[key], float), np.array(value, float), rtol=1e-5,
                                           err_msg=f"{b['id']}: {key}")
            else:
                assert a[key] == value, (b.get("id"), key)


def mixed_requests() -> list:
    """Completions (greedy, sampled with one seed, sampled without a seed), texts of every length (one longer than
    micro's 32-token context), and lines that cannot be done."""
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    lines = []
    for i in range(12):
        lines.append({"id": f"g{i}", "prompt": " ".join(words[:1 + i % 7]), "max_new_tokens": 6})
        lines.append({"id": f"s{i}", "text": " ".join(words[:2 + (5 * i) % 11]) + "."})
    for i in range(4):
        lines.append({"id": f"seeded{i}", "prompt": words[i], "max_new_tokens": 5, "temperature": 0.8, "seed": 7})
        lines.append({"id": f"free{i}", "prompt": words[i], "max_new_tokens": 5, "do_sample": True, "top_k": 50})
    lines += [{"id": "long", "text": LONG}, {"id": "windowed", "text": LONG, "window": 16, "stride": 8},
              {"id": "ids", "prompt": [464, 3797, 3332], "max_new_tokens": 4},
              b"{not json\n", {"prompt": "no id"}, {"id": "bad", "prompt": "x", "temprature": 0.5},
              {"id": "short", "text": "x"}, {"id": "too long", "prompt": LONG * 2, "max_new_tokens": 2},
              {"id": "g0", "text": "a duplicate id"}, b"\n", b"\xff\xfe\n", {"id": [1], "text": "an id that is a list"}]
    return lines


def run_cli(*args, env=None, status=0):
    """`npgpt batch ARGS`, which must exit with `status` (None: any); 1 when any line failed, as in the mixed job."""
    out = subprocess.run([sys.executable, "-m", "npgpt", "batch", *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "NPGPT_PROGRESS": "0", **(env or {})}, timeout=120)
    if status is not None:
        assert out.returncode == status, out.stderr
    return out


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def micro_dir(micro, job_dir):
    """conftest's micro model saved once for this module's jobs (workers load it from there)."""
    path = job_dir / "micro"
    micro.save(path)
    return str(path)


@pytest.fixture(scope="module")
def mixed(job_dir):
    return write_lines(job_dir / "in.jsonl", mixed_requests())


@pytest.fixture(scope="module")
def one_worker(micro_dir, mixed, job_dir):
    """The mixed job run in this process (one worker), with small batches so that each kind has several."""
    out = str(job_dir / "one.jsonl")
    summary = batch.run_file(mixed, out, micro_dir, workers=1, batch_size=3, progress=False)
    return out, summary


def test_every_line_has_its_result_in_input_order(one_worker, micro):
    out, summary = one_worker
    requests, results = mixed_requests(), read_results(out)
    assert len(results) == len(requests)
    for request, result in zip(requests, results):
        if isinstance(request, dict) and isinstance(request.get("id"), str):
            assert result["id"] == request["id"]
    by_id = {r["id"]: r for r in results if "id" in r and "error" not in r}
    assert set(by_id["g3"]) == {"id", "text", "finish_reason", "tokens", "input_hash"}
    assert by_id["g3"]["finish_reason"] == "length" and by_id["g3"]["tokens"] == 6
    assert set(by_id["s3"]) == {"id", "tokens", "logprob", "perplexity", "token_logprobs", "input_hash"}
    assert all(r["input_hash"] == input_hash(json.dumps(q).encode()) for q, r in zip(requests, results)
               if isinstance(q, dict))
    assert summary.lines == len(requests) and summary.done + summary.failed == len(requests)
    assert summary.failed == 9 and summary.tokens > 0 and "tokens/s" in str(summary)


def test_bad_lines_become_error_lines_and_the_job_goes_on(one_worker):
    results = read_results(one_worker[0])
    errors = {r.get("id", f"line {r.get('line')}"): r["error"] for r in results if "error" in r}
    n = len(mixed_requests())
    assert errors[f"line {n - 8}"].startswith("not JSON")
    assert errors[f"line {n - 7}"] == 'the request has no "id"'
    assert "did you mean temperature" in errors["bad"]
    assert errors["short"] == "perplexity needs a text of at least two tokens"
    assert "context" in errors["too long"]
    assert errors["g0"].startswith("duplicate id")
    assert errors[f"line {n - 2}"].startswith("empty line")
    assert errors[f"line {n - 1}"] == "the line is not UTF-8 text"
    assert errors[f"line {n}"].startswith('"id" must be a string or an integer')
    assert all("\n" not in e for e in errors.values())


def test_the_same_numbers_as_generate_and_score(micro_dir, mixed, tmp_path, micro):
    """Alone in its batch (batch_size=1), a request gives exactly what the library gives."""
    out = str(tmp_path / "alone.jsonl")
    batch.run_file(mixed, out, micro_dir, workers=1, batch_size=1, progress=False)
    by_id = {r["id"]: r for r in read_results(out) if "id" in r and "error" not in r}
    for request in mixed_requests():
        if not isinstance(request, dict) or not isinstance(request.get("id"), str) or request["id"] not in by_id \
                or request["id"] == "g0":
            continue
        result, settings = by_id[request["id"]], {k: v for k, v in request.items() if k not in ("id", "prompt", "text")}
        if "text" in request:
            s = study.score(micro, request["text"], **settings)
            assert result["tokens"] == s.tokens + 1 and result["token_logprobs"][0] is None
            np.testing.assert_allclose(result["token_logprobs"][1:], -s.surprisal, rtol=1e-6)
            assert result["perplexity"] == pytest.approx(s.perplexity, rel=1e-6)
            assert result["logprob"] == pytest.approx(-s.surprisal.sum(), rel=1e-6)
        else:
            if settings.get("do_sample") and "seed" not in settings:
                settings["seed"] = batch.request_seed(0, request["id"])
            c = micro.generate(request["prompt"], **settings)
            assert (result["text"], result["finish_reason"], result["tokens"]) == (c.text, c.finish_reason, len(c.ids))


def test_batched_scoring_matches_one_text_at_a_time(micro):
    rows = [micro.tokenizer.encode(t) for t in ("A short one.", "A somewhat longer text than that one is.", "Hi x")]
    together = batch.token_logprobs(micro, rows)
    for row, logprobs in zip(rows, together):
        np.testing.assert_allclose(logprobs, batch.token_logprobs(micro, [row])[0], rtol=1e-5, atol=1e-6)


def test_one_and_two_workers_write_identical_files(one_worker, micro_dir, mixed, tmp_path):
    out = tmp_path / "two.jsonl"
    done = run_cli(mixed, out, "--model", micro_dir, "--workers", 2, "--batch-size", 3, env={"NPGPT_PROGRESS": "1"},
                   status=1)
    assert_same_results(out, one_worker[0])
    assert "2 workers" in done.stderr and "lines" in done.stderr  # the bar, then the summary
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("npgpt batch: ") and " done, 9 failed" in summary and "tokens/s" in summary


def test_with_one_blas_thread_each_one_and_two_workers_write_the_same_bytes(micro_dir, mixed, tmp_path):
    one_thread = {name: "1" for name in batch.BLAS_THREADS}
    run_cli(mixed, tmp_path / "one.jsonl", "--model", micro_dir, "--workers", 1, "--batch-size", 3, env=one_thread,
            status=1)
    run_cli(mixed, tmp_path / "two.jsonl", "--model", micro_dir, "--workers", 2, "--batch-size", 3,  # 1 thread each
            status=1)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_resume_continues_a_partial_output_to_the_same_file(one_worker, micro_dir, mixed, tmp_path):
    expected = open(one_worker[0], "rb").read()
    lines = expected.splitlines(keepends=True)
    out = tmp_path / "partial.jsonl"
    out.write_bytes(b"".join(lines[:7]) + lines[7][:25])  # seven lines and a torn one: killed mid-write
    summary = batch.run_file(mixed, str(out), micro_dir, workers=1, batch_size=3, progress=False)
    assert out.read_bytes() == expected
    assert summary.skipped == 7 and summary.done + summary.failed == len(lines) - 7
    again = batch.run_file(mixed, str(out), micro_dir, workers=1, batch_size=3, progress=False)
    assert out.read_bytes() == expected and again.skipped == len(lines) and again.done == again.failed == 0


def test_resume_after_sigkill(micro_dir, tmp_path):
    lines = [{"id": i, "prompt": f"Line {i} says", "max_new_tokens": 16, "temperature": 1.0} for i in range(50)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    job = subprocess.Popen([sys.executable, "-m", "npgpt", "batch", source, out, "-m", micro_dir, "-w", "1", "-q"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 5):
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = out.read_bytes().count(b"\n")
    assert 5 <= killed_at < len(lines), "the job should have been killed in the middle"
    with open(out, "ab") as f:
        f.write(b'{"id": 999, "text": "half a li')  # as if the kill had come in the middle of a write
    resumed = run_cli(source, out, "--model", micro_dir, "--workers", 1)
    assert "removed a torn last line" in resumed.stderr
    results = read_results(out)
    assert [r["id"] for r in results] == list(range(len(lines)))
    reference = batch.run(lines, micro_dir, workers=1)  # run() returns results without their input's hash
    assert [{k: v for k, v in r.items() if k != "input_hash"} for r in results] == reference


def test_an_output_of_another_input_is_refused(one_worker, micro_dir, tmp_path):
    other = write_lines(tmp_path / "other.jsonl", [{"id": "x", "text": "Something else entirely."}] * 2)
    done = run_cli(other, one_worker[0], "--model", micro_dir, "-w", 1, status=None)
    assert done.returncode == 1 and done.stderr.startswith("npgpt: error: line 1 of the output is the result for")
    assert len(done.stderr.strip().splitlines()) == 1


def test_sampling_without_a_seed_depends_on_the_job_seed_and_the_id_only(micro_dir, micro):
    requests = [{"id": i, "prompt": "Once upon a time", "max_new_tokens": 8, "temperature": 1.0} for i in range(3)]
    first = batch.run(requests, micro)
    assert batch.run(requests[::-1], micro) == first[::-1]  # not the order, not the batch
    assert len({r["text"] for r in first}) == 3  # each id its own draw
    assert batch.run(requests, micro, seed=1) != first


def test_python_api_and_its_errors(micro, tmp_path):
    results = batch.run([{"id": 1, "text": "Hello there, world."}, '{"id": 2, "prompt": "Hi", "max_new_tokens": 2}'],
                        micro)
    assert results[0]["tokens"] == len(micro.tokenizer.encode("Hello there, world.")) and results[1]["tokens"] == 2
    with pytest.raises(SettingsError, match="save it first"):
        batch.run([{"id": 1, "text": "ab cd"}], micro, workers=2)  # a random model: workers cannot load it
    with pytest.raises(SettingsError, match="workers must be an integer >= 1"):
        batch.run([], micro, workers=0)
    with pytest.raises(SettingsError, match="engine must be"):
        batch.run([], micro, engine="spark")
    with pytest.raises(NpgptError, match="no such file"):
        batch.run_file(str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl"), micro)


def test_the_ray_extra_is_named_when_ray_is_missing(monkeypatch, micro_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(SettingsError, match=r"pip install 'npgpt\[ray\]'"):
        batch.run([{"id": 1, "text": "ab cd"}], micro_dir, engine="ray")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its settings
def test_ray_engine_writes_the_same_file(one_worker, micro_dir, mixed, tmp_path):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Ray cannot be imported ({e}); pip install 'npgpt[ray]'")
    out = str(tmp_path / "ray.jsonl")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        summary = batch.run_file(mixed, out, micro_dir, engine="ray", workers=2, batch_size=3, progress=False)
    finally:
        ray.shutdown()
    assert_same_results(out, one_worker[0])
    assert summary.engine == "ray" and summary.workers == 2


def test_the_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path):
    """A smoke test of tools/bench_batch.py (its numbers are the script's to report, never a test's)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_batch.py"), "--quick",
                           "--no-transformers", "--dir", str(tmp_path / "quick")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("npgpt, 1 worker, batch 4", "npgpt, 2 workers, batch 4", "RssAnon / model"):
        assert row in done.stdout, row


def test_resume_refuses_an_input_line_changed_since_its_result(micro_dir, tmp_path):
    lines = [{"id": i, "prompt": f"Line {i} says", "max_new_tokens": 2} for i in range(6)]
    source, out = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
    batch.run_file(source, str(out), micro_dir, workers=1, progress=False)
    written = out.read_bytes()
    assert len({r["input_hash"] for r in read_results(out)}) == len(lines)
    lines[3]["prompt"] = "Another prompt"  # the same id, another request
    write_lines(tmp_path / "in.jsonl", lines)
    with pytest.raises(NpgptError, match=r"^line 4 of the input changed after its result was written .*first 3 lines"):
        batch.run_file(source, str(out), micro_dir, workers=1, progress=False)
    assert out.read_bytes() == written
    write_lines(tmp_path / "in.jsonl", lines[:3])  # the lines before it still match
    with pytest.raises(NpgptError, match="already holds 6 results but the input has only 3 lines"):
        batch.run_file(source, str(out), micro_dir, workers=1, progress=False)


@pytest.mark.parametrize("requests", ["notalist", b'{"id": 1, "text": "ab cd"}', {"id": 1, "text": "ab cd"}, 5])
def test_requests_must_be_an_iterable_of_requests(micro, requests):
    with pytest.raises(InputError, match=r"requests must be .* request dicts .*; for a file, use .*run_file"):
        batch.run(requests, micro)


def test_the_command_exits_1_when_any_line_failed(micro_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("Not JSON at all.\nNor this.\n")
    out = tmp_path / "out.jsonl"
    done = run_cli(text, out, "--model", micro_dir, "-w", 1, status=1)
    assert done.stderr.strip().splitlines()[-1].startswith("npgpt batch: 2 lines: 0 done, 2 failed;")
    assert [r["error"][:8] for r in read_results(out)] == ["not JSON"] * 2
    again = run_cli(text, out, "--model", micro_dir, "-w", 1, status=1)  # the output still holds failed lines
    assert "2 already done (2 failed)" in again.stderr
    good = write_lines(tmp_path / "good.jsonl", [{"id": 1, "text": "Hello there."}])
    run_cli(good, tmp_path / "good.out", "--model", micro_dir, "-w", 1, status=0)
    assert "exit status: 0 when every line" in run_cli("--help").stdout.replace("\n", " ")


def test_an_unguarded_script_is_told_to_use_the_main_guard(micro_dir, tmp_path):
    """Each spawned worker runs the main script again as it starts: a script that calls run() outside the
    `if __name__ == "__main__":` guard must be told so, not that a worker ran out of memory."""
    call = f"print(npgpt.batch.run([{{'id': 1, 'text': 'Hello there.'}}], {micro_dir!r}, workers=2))"
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)  # this npgpt, in the workers too

    def run_script(text):
        script = tmp_path / "script.py"
        script.write_text(text)
        return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": path, "NPGPT_PROGRESS": "0"})

    done = run_script(f"import npgpt.batch\n{call}\n")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("npgpt.errors.NpgptError: a worker process could not start: npgpt.batch.run() was called "
                           'again by the main script') and last.endswith('under `if __name__ == "__main__":`'), last
    assert "out of memory" not in done.stderr
    guarded = run_script(f"import npgpt.batch\nif __name__ == '__main__':\n    {call}\n")
    assert guarded.returncode == 0 and "'perplexity'" in guarded.stdout, guarded.stderr


def test_a_worker_that_cannot_load_the_model_says_why(tmp_path):
    (tmp_path / "empty").mkdir()
    workers = batch.Processes((str(tmp_path / "empty"), None), 2, 0)
    with pytest.raises(NpgptError, match=r"^a worker process could not start: .*empty/config.json: no such file"):
        list(workers.map([{"kind": "score", "items": [[0, 1, [464, 3797]]]}]))
