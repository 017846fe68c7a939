"""The npgpt command: streams text, and bad input is one line on stderr with a non-zero exit."""

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

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
    line = one_line_error(npgpt("serve", "--model", micro_dir, "--port", "99999"), code=2)
    assert "--port" in line and "from 0 to 65535" in line
    line = one_line_error(npgpt("serve", "--model", micro_dir, "--gather-ms", "5000"), code=2)
    assert "--gather-ms" in line and "from 0 to 1000" in line
    # a flag the command does not have: the command's own help lists its flags, not npgpt's
    line = one_line_error(npgpt("topk", "Hi", "--model", micro_dir, "--k", "3"), code=2)
    assert line == "npgpt topk: error: unrecognized arguments: --k 3 (see npgpt topk --help)"


# Every flag of `npgpt generate` that shapes what is generated, with the rule or setting it must reach.
PROMPT = "Hello"
RULE_FLAGS = [  # (flags, the decoding rule they make, its parameters)
    (["--temperature", "0.5"], "Temperature", {"temperature": 0.5}),
    (["-t", "1.5"], "Temperature", {"temperature": 1.5}),
    (["--top-k", "20"], "TopK", {"k": 20}),
    (["--top-p", "0.9"], "TopP", {"p": 0.9}),
    (["--min-p", "0.05"], "MinP", {"min_p": 0.05}),
    (["--typical-p", "0.8"], "TypicalP", {"mass": 0.8}),
    (["--repetition-penalty", "1.3"], "RepetitionPenalty", {"penalty": 1.3}),
    (["--presence-penalty", "0.5"], "PresenceFrequencyPenalty", {"presence": 0.5, "frequency": 0.0}),
    (["--frequency-penalty", "0.7"], "PresenceFrequencyPenalty", {"presence": 0.0, "frequency": 0.7}),
    (["--no-repeat-ngram-size", "3"], "NoRepeatNGram", {"size": 3}),
    (["--min-new-tokens", "4"], "MinNewTokens", {"min_new_tokens": 4, "prompt_length": 1}),
]
SETTING_FLAGS = [  # (flags, the generation setting they set, its value)
    (["--seed", "4"], "seed", 4),
    (["--max-new-tokens", "7"], "max_new_tokens", 7),
    (["--stop", "zz", "--stop", "yy"], "stop", ["zz", "yy"]),
    (["--n", "2", "--temperature", "1"], "n", 2),
    (["--num-return-sequences", "3", "--temperature", "1"], "n", 3),
    (["--num-beams", "3"], "num_beams", 3),
    (["--length-penalty", "0.5", "--num-beams", "2"], "length_penalty", 0.5),
    (["--early-stopping", "never", "--num-beams", "2"], "early_stopping", "never"),
    (["--logprobs", "2"], "top_logprobs", 2),
    (["--logprobs"], "logprobs", True),
    (["--truncate-prompt"], "truncate_prompt", True),
    (["--sliding-window"], "sliding_window", True),
    (["--prompt-lookup-num-tokens", "6"], "prompt_lookup_num_tokens", 6),
]
BEHAVIOUR_FLAGS = ["--bias", "--ban"]  # checked by what they do to the logits, below
NOT_SETTINGS = {"-h", "--model", "--revision", "--quiet", "--no-echo",  # which model, how text is printed
                "--assistant-model"}  # a model too: loaded by run_generate, tested end to end below


def parsed_settings(micro, flags, command="generate"):
    """The CLI's own path: parse the flags, turn them into keyword settings, then Settings.parse."""
    from npgpt.cli import build_parser
    from npgpt.cli_args import decoding_settings, generation_settings
    from npgpt.settings import Settings

    args = build_parser().parse_args([command, PROMPT, *flags])
    make = generation_settings if command == "generate" else decoding_settings
    return Settings.parse(micro, make(args, micro.tokenizer))


def rules_made(micro, flags, command="generate"):
    prompt_length = len(micro.tokenizer.encode(PROMPT))
    return parsed_settings(micro, flags, command).sampler.rules(prompt_length)


@pytest.mark.parametrize("command", ["generate", "topk", "trace"])
@pytest.mark.parametrize("flags, rule, parameters", RULE_FLAGS, ids=lambda x: x[0] if isinstance(x, list) else "")
def test_each_decoding_flag_makes_the_rule_it_names(micro, command, flags, rule, parameters):
    rules = [r for r in rules_made(micro, flags, command) if type(r).__name__ != "SuppressTokens"]
    assert [type(r).__name__ for r in rules] == [rule], rules  # that rule, and no other
    for name, value in parameters.items():
        assert getattr(rules[0], name) == pytest.approx(value), (rules[0], name)


@pytest.mark.parametrize("flags, name, value", SETTING_FLAGS, ids=lambda x: x[0] if isinstance(x, list) else "")
def test_each_generation_flag_sets_its_setting(micro, flags, name, value):
    assert getattr(parsed_settings(micro, flags), name) == value


@pytest.mark.parametrize("command", ["generate", "topk", "trace"])
def test_bias_and_ban_reach_the_logits_of_their_words_tokens(micro, command):
    the = set(micro.tokenizer.encode("the") + micro.tokenizer.encode(" the"))
    rules = rules_made(micro, ["--bias", "the=-5", "--bias", "50256=2.5", "--ban", "and"], command)
    logits = np.zeros((1, micro.config.vocab_size), np.float32)
    ids = np.array([micro.tokenizer.encode(PROMPT)])
    bias, ban = (r for r in rules if type(r).__name__ in ("LogitBias", "BannedSequences"))
    biased = bias(ids, logits)[0]
    assert {int(i) for i in np.flatnonzero(biased == -5)} == the and biased[50256] == 2.5
    assert np.count_nonzero(biased) == len(the) + 1
    banned = set(np.flatnonzero(np.isneginf(ban(ids, logits)[0])))
    assert banned == set(micro.tokenizer.encode("and") + micro.tokenizer.encode(" and"))


def test_every_flag_is_covered_by_the_tests_above():
    """A flag added to `npgpt generate` (or to the decoding flags every study command shares) needs a line in
    RULE_FLAGS or SETTING_FLAGS; a flag removed or renamed makes those fail."""
    from npgpt.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    covered = {f for flags, *_ in RULE_FLAGS + SETTING_FLAGS for f in flags if f.startswith("-")}
    covered |= set(BEHAVIOUR_FLAGS) | NOT_SETTINGS
    for action in commands["generate"]._actions:
        if action.option_strings:
            assert set(action.option_strings) & covered, f"no test for {action.option_strings}"

    def decoding_flags(command):
        return {f for a in commands[command]._actions for f in a.option_strings if a.container.title
                and a.container.title.startswith("decoding rules")}

    assert decoding_flags("topk") == decoding_flags("trace") == decoding_flags("generate")
    assert decoding_flags("generate") <= covered


# End to end: the command's output is what generate() gives with the same settings, and differs from the
# output without the flag.


def run_cli(capsys, *args):
    from npgpt.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_decoding_flags_end_to_end(micro_dir, capsys):
    import npgpt as api

    model = api.load(micro_dir)
    base = ("generate", PROMPT, "--model", micro_dir, "--max-new-tokens", "5", "--no-echo")
    greedy = model.generate(PROMPT, max_new_tokens=5)
    assert run_cli(capsys, *base) == greedy + "\n"
    word = greedy.split()[0]  # the word greedy decoding produces first
    cases = [
        (["--bias", f"{word}=-100"], dict(logit_bias={word: -100.0})),
        (["--ban", word], dict(bad_words_ids=[model.tokenizer.encode(word), model.tokenizer.encode(" " + word)])),
        (["--stop", word[1:3]], dict(stop=[word[1:3]])),
        (["--temperature", "1", "--seed", "4"], dict(temperature=1.0, seed=4)),
    ]
    for flags, settings in cases:
        want = model.generate(PROMPT, max_new_tokens=5, **settings)
        assert run_cli(capsys, *base, *flags) == want + "\n", flags
        assert want != greedy, flags
    assert run_cli(capsys, *base[:-3], "--max-new-tokens", "2", "--no-echo") == \
        model.generate(PROMPT, max_new_tokens=2) + "\n"


def test_several_sequences_and_beams_end_to_end(micro_dir, capsys):
    import npgpt as api

    model = api.load(micro_dir)
    base = ("generate", PROMPT, "--model", micro_dir, "--max-new-tokens", "4", "--no-echo")
    out = run_cli(capsys, *base, "--n", "2", "--temperature", "1", "--seed", "3")
    texts = [line for line in out.splitlines() if not line.startswith("--- ")]
    assert texts == list(model.generate(PROMPT, max_new_tokens=4, n=2, temperature=1.0, seed=3))
    out = run_cli(capsys, *base, "--num-beams", "3")
    assert out.splitlines()[1] == model.generate(PROMPT, max_new_tokens=4, num_beams=3)
    assert "beam 1, score" in out


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
    assert lines[1].endswith("top alternatives")
    r = npgpt("generate", "Hello", "--model", micro_dir, "--max-new-tokens", "3", "--logprobs")
    lines = r.stdout.splitlines()  # without N, no column of alternatives (it would be empty)
    assert lines[1].split() == ["token", "logprob"] and all(re.search(r"\s-?\d+\.\d{3}$", line) for line in lines[2:])


def test_bad_decoding_flags_are_one_line(micro_dir):
    base = ("generate", "Hi", "--model", micro_dir)
    assert "top_p" in one_line_error(npgpt(*base, "--temperature", "1", "--top-p", "1.5"))
    assert "repetition_penalty" in one_line_error(npgpt(*base, "--repetition-penalty", "0"))
    assert "WORD=VALUE" in one_line_error(npgpt(*base, "--bias", "gonna"), code=2)
    assert "n > 1" in one_line_error(npgpt(*base, "--n", "2"))


# ------------------------------------------------------------------------------------ errors the CLI itself meets


def test_files_the_cli_reads_and_writes_fail_in_one_line(micro_dir, tmp_path):
    model = ("--model", micro_dir)
    assert one_line_error(npgpt("score", str(tmp_path), *model)).endswith("is a directory, not a text file")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    assert one_line_error(npgpt("score", str(latin), *model)).endswith("latin.txt: not UTF-8 text")
    nowhere = tmp_path / "no" / "such" / "dir"
    line = one_line_error(npgpt("hidden", "Hi", "--out", str(nowhere / "h.npz"), *model))
    assert line == f"npgpt: error: cannot write {nowhere / 'h.npz'}: No such file or directory"


def test_a_figure_that_cannot_be_written_fails_before_any_work(tmp_path):
    missing = tmp_path / "no" / "m.png"
    line = one_line_error(npgpt("mask", "3", "--plot", str(missing)))
    assert line == f"npgpt: error: cannot write {missing}: no such directory {missing.parent}"
    line = one_line_error(npgpt("mask", "3", "--plot", str(tmp_path / "m.bmpx")))
    assert "name a png, svg, pdf, jpg, jpeg file" in line


def run_main_with(run: str, *argv: str):
    """Run npgpt.cli.main in a fresh interpreter, with the `models` command replaced by `run`."""
    code = ("import sys; from npgpt import cli\n"
            f"def run(args):\n    {run}\n"
            "cli.run_models = run\n"
            f"sys.exit(cli.main(['models', *{list(argv)!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_only_npgpt_errors_become_one_line_errors():
    r = run_main_with("raise __import__('npgpt').SettingsError('top_p must be in (0, 1], got 2')")
    assert r.returncode == 1 and r.stderr == "npgpt: error: top_p must be in (0, 1], got 2\n"
    r = run_main_with("raise ValueError('a bug in npgpt')")  # not bad input: its traceback is the report
    assert r.returncode == 1 and "Traceback" in r.stderr and "ValueError: a bug in npgpt" in r.stderr


def test_a_closed_pipe_ends_quietly_and_an_interrupt_exits_130():
    r = run_main_with("raise BrokenPipeError()")
    assert r.returncode == 0 and r.stderr == ""
    r = run_main_with("raise KeyboardInterrupt()")
    assert r.returncode == 130 and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ progress bars, streaming, caps


@pytest.fixture
def long_context_dir(tmp_path):
    """A micro GPT-2 with room for more than 100 new tokens."""
    import npgpt as api

    path = tmp_path / "long"
    api.GPT2.random(api.GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=256), seed=0).save(path)
    return str(path)


def long_work(model_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("one two three four five six seven eight nine ten " * 4)
    return {
        "compare": ["compare", "Hi", "--max-new-tokens", "3", "--model", model_dir],
        "score": ["score", str(text), "--window", "16", "--stride", "8", "--model", model_dir],
        "trace": ["trace", "Hi", "-n", "3", "--model", model_dir],
        "generate": ["generate", "Hi", "--max-new-tokens", "150", "--model", model_dir],
    }


def test_no_progress_bar_when_stderr_is_not_a_terminal(long_context_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NPGPT_PROGRESS"}
    for name, args in long_work(long_context_dir, tmp_path).items():
        r = npgpt(*args, env=env)
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr)


def test_a_progress_bar_for_long_work_on_a_terminal(long_context_dir, tmp_path):
    """NPGPT_PROGRESS=1 draws the bars as on a terminal (and --quiet leaves them out even then)."""
    env = {**os.environ, "NPGPT_PROGRESS": "1"}
    counts = {"compare": "/ 10 rows", "score": "/ 40 tokens", "trace": "/ 3 steps", "generate": "/ 150 tokens"}
    for name, args in long_work(long_context_dir, tmp_path).items():
        r = subprocess.run([sys.executable, "-m", "npgpt", *args], capture_output=True, timeout=120, env=env)
        err = r.stderr.decode()  # as bytes: text mode would turn each \r into a \n
        assert r.returncode == 0, err
        assert err.startswith(f"\r{name}: ") and counts[name] in err and "/s" in err, name
        assert err.endswith("\r\x1b[K"), name  # erased when done: nothing is left on the terminal
        assert npgpt(*args, "--quiet", env=env).stderr == "", name
    short = npgpt("generate", "Hi", "--max-new-tokens", "20", "--model", long_context_dir, env=env)
    assert short.returncode == 0 and short.stderr == ""  # a short generation needs no bar


def test_trace_prints_each_step_as_it_is_made(micro_dir, monkeypatch, capsys):
    from npgpt import cli, study

    made = study.trace_steps
    printed = []

    def watched(*args, **kw):
        for step in made(*args, **kw):
            printed.append(capsys.readouterr().out)  # what was printed before this step was made
            yield step

    monkeypatch.setattr(study, "trace_steps", watched)
    assert cli.main(["trace", "Hi", "-n", "3", "--model", micro_dir]) == 0
    rest = capsys.readouterr().out
    assert printed[0] == "Prompt: 'Hi'\n\n" and printed[1].startswith("Step 1: ") and printed[2].startswith("Step 2")
    assert rest.startswith("Step 3: ") and rest.count("\n") == 2


def test_views_too_big_for_a_terminal_are_capped_with_a_note(micro_dir):
    r = npgpt("mask", "1000")
    assert r.returncode == 0 and len(r.stdout) < 30_000 and r.stderr == ""
    assert r.stdout.splitlines()[-1] == ("(showing the first 64 of 1,000 rows and columns: a view shows at most "
                                         "that many)")
    r = npgpt("topk", "Hi", "-k", "100000", "--model", micro_dir)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 103
    assert lines[-1] == "(showing the first 100 of 50,257 candidates: a view shows at most that many)"
    assert "n must be in 1..1024" in one_line_error(npgpt("mask", "5000"))


def test_plot_reports_the_file_it_wrote(tmp_path):
    r = npgpt("mask", "3", "--plot", "noext", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "wrote noext.png\n"
    assert (tmp_path / "noext.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "noext").exists()


def test_a_long_generation_on_a_terminal_ends_with_its_speed(long_context_dir, capsys, monkeypatch):
    """The text streams on the terminal (no bar over it); a line with the speed follows it on stderr."""
    from npgpt import cli

    monkeypatch.setenv("NPGPT_PROGRESS", "1")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["generate", "Hi", "--max-new-tokens", "150", "--model", long_context_dir]) == 0
    err = capsys.readouterr().err
    assert err.startswith("npgpt: 150 tokens, ") and err.endswith(" tokens/s\n") and "\r" not in err


def test_speculative_flags_give_the_plain_text(micro_dir):
    plain = npgpt("generate", "the cat sat on the mat, the cat", "--model", micro_dir, "--max-new-tokens", "12")
    for flags in (["--prompt-lookup-num-tokens", "4"], ["--assistant-model", micro_dir]):
        fast = npgpt("generate", "the cat sat on the mat, the cat", "--model", micro_dir, "--max-new-tokens", "12",
                     *flags)
        assert fast.returncode == 0 and fast.stdout == plain.stdout, fast.stderr


class StartedAgain(Exception):
    pass


@pytest.fixture
def avx512_openblas(monkeypatch):
    """OpenBLAS as on an AVX-512 CPU where it chose its own kernels, and `npgpt serve --model /no/such/model` as
    this process's command line."""
    from npgpt import cores

    monkeypatch.setattr(cores, "kernels_for_batches", lambda: "Haswell")
    monkeypatch.setattr(cores, "blas_kernels", lambda: "SkylakeX")
    monkeypatch.setattr(sys, "argv", ["npgpt", "serve", "--model", "/no/such/model"])


@pytest.mark.parametrize("own_process", [True, False])
def test_serve_starts_again_with_the_kernels_for_batches_only_as_its_process_own_command(monkeypatch, capsys,
                                                                                        avx512_openblas,
                                                                                        own_process):
    """On OpenBLAS's AVX-512 kernels, `npgpt serve` runs itself again (same process) with OPENBLAS_CORETYPE set;
    main() called with arguments is a caller's process, which it must not replace."""
    from npgpt import cli

    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise StartedAgain

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "npgpt", "serve", "--model", "/no/such/model"])
    if own_process:
        with pytest.raises(StartedAgain):
            cli.main()
        (path, argv, env), = calls
        assert path == sys.executable and argv == sys.orig_argv + ["--started-again-from", "SkylakeX"]
        assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["PATH"] == os.environ["PATH"]
        assert capsys.readouterr().err == ""  # the restarted server says it, after its address
    else:
        assert cli.main(sys.argv[1:]) == 1 and not calls
        assert capsys.readouterr().err.startswith("npgpt: error: /no/such/model")


def test_serve_serves_as_it_is_when_it_cannot_start_again(monkeypatch, capsys, avx512_openblas):
    from npgpt import cli

    def execve(path, argv, env):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "execve", execve)
    assert cli.main() == 1  # went on to load the model
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("npgpt serve: could not start again with OPENBLAS_CORETYPE=Haswell ([Errno 13] Permission "
                      "denied); serving with OpenBLAS's SkylakeX kernels")
    assert err[1].startswith("npgpt: error: /no/such/model") and len(err) == 2


@pytest.mark.parametrize("flag, gather", [([], 0.005), (["--gather-ms", "0"], 0.0), (["--gather-ms", "40"], 0.04)])
def test_serve_passes_its_settings_to_the_server(monkeypatch, micro_dir, flag, gather):
    from npgpt import cli, server

    given = {}
    monkeypatch.setattr(server, "serve", lambda model, **kw: given.update(kw))
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # no start again, whatever this CPU
    assert cli.main(["serve", "--model", micro_dir, "--max-rows", "3", "--max-waiting", "7"] + flag) == 0
    assert (given["max_rows"], given["max_waiting"], given["gather"]) == (3, 7, gather)
