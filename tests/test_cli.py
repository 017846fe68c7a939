"""The npgpt command: streams text, and bad input is one line on stderr with a non-zero exit."""

import os
import subprocess
import sys
from importlib.metadata import entry_points

from conftest import golden_dir


def npgpt(*args, **kw):
    return subprocess.run([sys.executable, "-m", "npgpt", *args], capture_output=True, text=True, timeout=120, **kw)


def test_console_script_is_installed():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("npgpt") == "npgpt.cli:main"


def test_generate_prints_the_prompt_and_its_continuation():
    r = npgpt("generate", "Hello, I am", "--model", golden_dir("tiny"), "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello, I am") and len(r.stdout.strip()) > len("Hello, I am")
    assert r.stderr == ""
    import npgpt as api

    model = api.load(golden_dir("tiny"))
    assert r.stdout == "Hello, I am" + model.generate("Hello, I am", max_new_tokens=8) + "\n"


def test_generate_with_sampling_is_reproducible(micro_dir):
    args = ("generate", "Once", "--model", micro_dir, "--max-new-tokens", "10", "--temperature", "0.9", "--seed", "4")
    first = npgpt(*args)
    assert first.returncode == 0 and first.stdout == npgpt(*args).stdout
    assert npgpt(*args[:-1], "5").stdout != first.stdout


def test_generate_streams_before_it_finishes(micro_dir):
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", "generate", "Hi", "--model", micro_dir,
                             "--max-new-tokens", "20000", "--no-echo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.read(1)  # arrives while the model is still generating
        assert first
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


def test_context_limit_is_reported_on_stderr(micro_dir):
    r = npgpt("generate", "a " * 28, "--model", micro_dir, "--max-new-tokens", "100")
    assert r.returncode == 0
    assert r.stderr.strip() == "npgpt: stopped: the text filled the model's context of 32 tokens"


def one_line_error(r, code=1):
    assert r.returncode == code
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_missing_model_directory_is_one_line(tmp_path):
    line = one_line_error(npgpt("generate", "Hello", "--model", str(tmp_path / "nowhere")))
    assert line == f"npgpt: error: {tmp_path / 'nowhere'}: no such model directory"


def test_broken_checkpoint_is_one_line(micro_dir):
    with open(os.path.join(micro_dir, "model.safetensors"), "r+b") as f:
        f.truncate(5000)
    line = one_line_error(npgpt("generate", "Hello", "--model", micro_dir))
    assert "truncated" in line


def test_prompt_too_long_is_one_line(micro_dir):
    line = one_line_error(npgpt("generate", "a " * 40, "--model", micro_dir))
    assert "context is 32" in line


def test_bad_arguments_are_one_line(micro_dir):
    line = one_line_error(npgpt("generate", "Hi", "--model", micro_dir, "--max-new-tokens", "lots"), code=2)
    assert "--max-new-tokens" in line
    one_line_error(npgpt("generate", "Hi", "--model", micro_dir, "--max-new-tokens", "-3"), code=2)
    line = one_line_error(npgpt("generate", "Hi", "--model", micro_dir, "--temperature", "-1"))
    assert "temperature" in line
    one_line_error(npgpt("frobnicate"), code=2)
    one_line_error(npgpt(), code=2)


def test_every_decoding_flag_is_accepted_and_used(micro_dir):
    base = ("generate", "Hello", "--model", micro_dir, "--max-new-tokens", "6", "--no-echo")
    plain = npgpt(*base, "--temperature", "1", "--seed", "2")
    flags = ["--top-k", "20", "--top-p", "0.9", "--min-p", "0.01", "--typical-p", "0.99", "--repetition-penalty",
             "1.2", "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--bias", "the=-5", "--bias",
             "50256=-100", "--ban", "and", "--no-repeat-ngram-size", "2", "--min-new-tokens", "2", "--stop", "zz"]
    r = npgpt(*base, "--temperature", "1", "--seed", "2", *flags)
    assert r.returncode == 0, r.stderr
    assert r.stdout != plain.stdout


def test_several_prompts_samples_and_beams(micro_dir):
    r = npgpt("generate", "Hello", "Once upon a time", "--model", micro_dir, "--max-new-tokens", "4", "--n", "2",
              "--temperature", "1", "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- ") == 4 and "'Once upon a time', sequence 2" in r.stdout
    r = npgpt("generate", "Hello", "--model", micro_dir, "--max-new-tokens", "4", "--num-beams", "3", "--n", "2")
    assert r.returncode == 0, r.stderr
    assert "beam 1, score" in r.stdout and "beam 2, score" in r.stdout


def test_logprobs_table(micro_dir):
    r = npgpt("generate", "Hello", "--model", micro_dir, "--max-new-tokens", "3", "--logprobs", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split()[:2] == ["token", "logprob"] and len(lines) == 5


def test_bad_decoding_flags_are_one_line(micro_dir):
    base = ("generate", "Hi", "--model", micro_dir)
    assert "top_p" in one_line_error(npgpt(*base, "--temperature", "1", "--top-p", "1.5"))
    assert "repetition_penalty" in one_line_error(npgpt(*base, "--repetition-penalty", "0"))
    assert "WORD=VALUE" in one_line_error(npgpt(*base, "--bias", "gonna"), code=2)
    assert "n > 1" in one_line_error(npgpt(*base, "--n", "2"))
