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
    args = ("generate", "Once", "--model", micro_dir, "-n", "10", "--temperature", "0.9", "--seed", "4")
    first = npgpt(*args)
    assert first.returncode == 0 and first.stdout == npgpt(*args).stdout
    assert npgpt(*args[:-1], "5").stdout != first.stdout


def test_generate_streams_before_it_finishes(micro_dir):
    proc = subprocess.Popen([sys.executable, "-m", "npgpt", "generate", "Hi", "--model", micro_dir, "-n", "20000",
                             "--no-echo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.read(1)  # arrives while the model is still generating
        assert first
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


def test_context_limit_is_reported_on_stderr(micro_dir):
    r = npgpt("generate", "a " * 28, "--model", micro_dir, "-n", "100")
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
