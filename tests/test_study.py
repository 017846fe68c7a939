"""The study tools (npgpt.study, the CLI's topk, trace, attention, mask, inspect, temperature, compare, score,
hidden): the numbers they show are the model's own."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import npgpt
from npgpt import study, views
from npgpt.weights import canonical_name, read_safetensors

from conftest import golden_dir

PROMPT = "What is the capital of France?"


def log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------------------------------- topk


def test_top_k_probabilities_are_the_processed_distribution(tiny):
    model, _ = tiny
    for settings in ({}, {"logit_bias": {"gonna": -5.0, "ain't": -5.0}}, {"temperature": 0.7, "top_k": 40}):
        cands = study.topk(model, "You are going to", k=10, **settings)
        probs = model.next_token_distribution("You are going to", **settings)
        assert [c.id for c in cands] == list(np.argsort(-probs, kind="stable")[:10])
        np.testing.assert_allclose([c.probability for c in cands], probs[[c.id for c in cands]], rtol=1e-6)
        assert all(a.probability >= b.probability for a, b in zip(cands, cands[1:]))


def test_a_word_bias_lowers_that_words_tokens_by_its_factor(tiny):
    model, _ = tiny
    gonna = model.tokenizer.encode(" gonna")[0]
    plain = model.next_token_distribution("You are going to")
    biased = model.next_token_distribution("You are going to", logit_bias={"gonna": -5.0})
    ratio = (biased[gonna] / biased[0]) / (plain[gonna] / plain[0])
    assert abs(ratio - np.exp(-5.0)) < 1e-6


# ------------------------------------------------------------------------------------------------------- trace


def test_trace_is_generation_step_by_step(tiny):
    model, _ = tiny
    steps = study.trace(model, PROMPT, steps=6)
    prompt_length = len(model.tokenizer.encode(PROMPT))
    assert [s.chosen.id for s in steps] == model.generate(PROMPT, max_new_tokens=6).ids
    assert [s.logits_shape for s in steps] == [(1, prompt_length + i, 50257) for i in range(6)]
    ids = model.tokenizer.encode(PROMPT)
    for s in steps:
        probs = model.next_token_distribution(ids)
        assert abs(s.chosen.probability - probs[s.chosen.id]) < 1e-6
        assert all(c.probability <= s.chosen.probability + 1e-9 for c in s.runners_up)  # greedy: the top one
        ids.append(s.chosen.id)
        assert s.text == model.tokenizer.decode(ids)


def test_a_sampled_trace_draws_what_generate_draws(tiny):
    model, _ = tiny
    steps = study.trace(model, PROMPT, steps=5, temperature=1.5, top_k=100, seed=3)
    assert [s.chosen.id for s in steps] == model.generate(PROMPT, max_new_tokens=5, temperature=1.5, top_k=100,
                                                          seed=3).ids


# --------------------------------------------------------------------------------------------- attention, mask


def test_attention_rows_sum_to_one_and_nothing_is_above_the_diagonal(tiny):
    model, _ = tiny
    tokens, probs = study.attention(model, PROMPT, layer=1, head=1)
    ids = model.tokenizer.encode(PROMPT)
    assert tokens == [model.tokenizer.token_text(i) for i in ids] and probs.shape == (len(ids), len(ids))
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    assert (probs[np.triu_indices(len(ids), 1)] == 0).all()
    np.testing.assert_array_equal(probs, model.forward(ids, output_attentions=True).attentions[1][0, 1])
    with pytest.raises(npgpt.SettingsError, match="layer must be in 0..1"):
        study.attention(model, PROMPT, layer=2)
    with pytest.raises(npgpt.SettingsError, match="head must be in 0..1"):
        study.attention(model, PROMPT, head=5)


def test_the_causal_mask_is_zero_and_minus_infinity():
    m = study.mask(4)
    assert m.tolist() == [[0, -np.inf, -np.inf, -np.inf], [0, 0, -np.inf, -np.inf], [0, 0, 0, -np.inf], [0] * 4]
    text = views.mask(m)
    assert text.splitlines()[2].split() == ["0", "0", "-inf", "-inf", "-inf"]


# ------------------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_the_parameter_total_is_the_checkpoints(name):
    model = npgpt.load(golden_dir(name))
    tensors = read_safetensors(os.path.join(golden_dir(name), "model.safetensors"))
    in_checkpoint = sum(t.size for k, t in tensors.items() if canonical_name(k))  # not the mask buffers
    tree = study.inspect(model)
    assert tree.params == in_checkpoint == model.config.parameter_count()
    parts = {p.name: p.params for p in tree.children}
    assert parts["wte"] == tensors["wte.weight"].size and parts["lm_head"] == 0  # tied
    block = tree.children[2].children[0]
    assert [p.name for p in block.children] == ["ln_1", "attn", "ln_2", "mlp"]
    assert block.params * model.config.n_layer == parts["h"]


def test_the_presets_trees_have_the_published_sizes():
    assert study.inspect(npgpt.GPT2Config.preset("gpt2")).params == 124_439_808
    tree = views.inspect(study.inspect(npgpt.GPT2Config.preset("gpt2")))
    assert "768 -> 2304" in tree and "768 -> 3072" in tree and "split into q | k | v" in tree
    assert tree.splitlines()[-1].split()[-1] == "124,439,808"


def test_an_untied_head_is_counted(small, tmp_path):
    model, _ = small
    state = dict(model.state, **{"lm_head.weight": np.ones_like(model.wte)})
    untied = npgpt.GPT2(model.config, state)
    assert study.inspect(untied).params == model.n_params + model.wte.size


# ----------------------------------------------------------------------------------- temperature and compare


def test_the_temperature_table_is_softmax_of_scaled_logits(tiny):
    model, _ = tiny
    base, table = study.temperature(model, "Hello", (0.1, 0.7, 1.5), top=20)
    logits = model(model.tokenizer.encode("Hello"))[-1].astype(np.float64)
    ids = [c.id for c in base]
    assert ids == list(np.argsort(-logits, kind="stable")[:20])
    for t, probs in table.items():
        np.testing.assert_allclose(probs, np.exp(log_softmax64(logits / t))[ids], rtol=1e-6)
    assert table[0.1][0] > table[0.7][0] > table[1.5][0]  # colder: more mass on the top token
    with pytest.raises(npgpt.SettingsError, match="each temperature must be > 0"):
        study.temperature(model, "Hello", (0.0,))


def test_compare_rows_are_generate_with_those_settings(tiny):
    model, _ = tiny
    rows = study.compare(model, "Hello", max_new_tokens=6, seed=2)
    assert [label for label, _ in rows][:4] == ["greedy", "temperature=0.5", "temperature=1.0", "temperature=1.5"]
    for (label, text), (_, settings) in zip(rows, study.COMPARE_SETTINGS):
        assert text == model.generate("Hello", max_new_tokens=6, seed=2, **settings), label
    assert rows[0][1] == rows[4][1]  # top_k=1 is greedy
    assert all(type(text) is str for _, text in rows)  # plain text: shown as text, not as a Completion's repr


# ----------------------------------------------------------------------------------------------- perplexity


TEXT = ("The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times, "
        "it was the age of wisdom.")


def reference_surprisal(model, ids, window, stride):
    """Token i is scored in the first window (starting at multiples of the stride) that ends after it, with
    that window's tokens before it as context."""
    out = []
    for i in range(1, len(ids)):
        begin = next(b for b in range(0, len(ids), stride) if i < min(b + window, len(ids)))
        logits = model(ids[begin:i])[-1]
        out.append(-log_softmax64(logits)[ids[i]])
    return np.array(out)


@pytest.mark.parametrize("window, stride", [(None, None), (16, 8), (16, 15), (10, 3)])
def test_perplexity_with_a_sliding_window(tiny, window, stride):
    model, _ = tiny
    ids = model.tokenizer.encode(TEXT)
    score = study.score(model, TEXT, window=window, stride=stride)
    want = reference_surprisal(model, ids, window or 64, stride or 32)
    assert score.tokens == len(ids) - 1
    np.testing.assert_allclose(score.surprisal, want, rtol=1e-4, atol=1e-4)
    assert abs(score.perplexity - np.exp(want.mean())) < 1e-3 * score.perplexity
    assert score.tokens_per_second > 0


def test_perplexity_errors(tiny):
    model, _ = tiny
    with pytest.raises(npgpt.SettingsError, match="at least two tokens"):
        study.score(model, "Hi")
    with pytest.raises(npgpt.SettingsError, match="window must be in 2..64"):
        study.score(model, TEXT, window=100)
    with pytest.raises(npgpt.SettingsError, match="stride must be in 1..window - 1 \\(9\\), got 10"):
        study.score(model, TEXT, window=10, stride=10)


# ---------------------------------------------------------------------------------------------- hidden states


def test_hidden_states_are_the_forward_passes(small):
    model, expected = small
    ids = expected["single.ids"][0].tolist()
    tokens, got_ids, states = study.hidden(model, ids)
    assert got_ids == ids and states.shape == (model.config.n_layer + 1, len(ids), model.config.n_embd)
    np.testing.assert_allclose(states, expected["single.hidden"][:, 0], atol=1e-5)  # PyTorch's


# ----------------------------------------------------------------------------------------------- bad arguments


BAD_CALLS = [  # (the call, the error it must raise, what its message must say)
    (lambda m: study.topk(m, "Hi", kk=3), npgpt.SettingsError, "topk has no argument 'kk'; did you mean k?"),
    (lambda m: study.topk(m, "Hi", k=0), npgpt.SettingsError, "k must be >= 1, got 0"),
    (lambda m: study.topk(m, "Hi", k="3"), npgpt.SettingsError, "k must be an integer >= 1, got '3'"),
    (lambda m: study.topk(m, "Hi", k=True), npgpt.SettingsError, "k must be an integer"),
    (lambda m: study.topk(m, "Hi", temprature=0.5), npgpt.SettingsError, "temprature"),
    (lambda m: study.topk(m, "Hi", top_p=2.0, temperature=1.0), npgpt.SettingsError, "top_p"),
    (lambda m: study.topk(m, "Hi", max_new_tokens=5), npgpt.SettingsError, "not max_new_tokens"),
    (lambda m: study.topk(m, None), npgpt.InputError, "prompt"),
    (lambda m: study.topk(m, b"Hi"), npgpt.InputError, "bytes"),
    (lambda m: study.topk(m, [1.5]), npgpt.InputError, "integers"),
    (lambda m: study.topk(m, [10 ** 6]), npgpt.InputError, "outside the vocabulary"),
    (lambda m: study.topk("gpt2", "Hi"), npgpt.SettingsError, "npgpt.GPT2"),
    (lambda m: study.trace(m, "Hi", steps="3"), npgpt.SettingsError, "steps must be an integer >= 0, got '3'"),
    (lambda m: study.trace(m, "Hi", steps=-1), npgpt.SettingsError, "steps must be >= 0, got -1"),
    (lambda m: study.trace(m, "Hi", alternatives=1.5), npgpt.SettingsError, "alternatives must be an integer"),
    (lambda m: study.trace(m, "Hi", stepz=3), npgpt.SettingsError, "did you mean steps?"),
    (lambda m: study.trace(m, "Hi", num_beams=2), npgpt.SettingsError, "not num_beams"),
    (lambda m: study.trace(m, "Hi", seed="x", temperature=1), npgpt.SettingsError, "seed"),
    (lambda m: study.trace(m, "a " * 40), npgpt.ContextLengthError, "context is 32"),
    (lambda m: study.attention(m, "Hi", layer=2), npgpt.SettingsError, "layer must be in 0..1, got 2"),
    (lambda m: study.attention(m, "Hi", layer="0"), npgpt.SettingsError, "layer must be an integer in 0..1"),
    (lambda m: study.attention(m, "Hi", head=-1), npgpt.SettingsError, "head must be in 0..1, got -1"),
    (lambda m: study.mask(0), npgpt.SettingsError, "n must be in 1..1024, got 0"),
    (lambda m: study.mask(10 ** 6), npgpt.SettingsError, "n must be in 1..1024"),
    (lambda m: study.mask(2.0), npgpt.SettingsError, "n must be an integer"),
    (lambda m: study.inspect("gpt-2"), npgpt.SettingsError, "a preset name (gpt2, "),
    (lambda m: study.inspect(None), npgpt.SettingsError, "inspect takes a model"),
    (lambda m: study.temperature(m, "Hi", 0.5), npgpt.SettingsError, "temperatures must be a non-empty list"),
    (lambda m: study.temperature(m, "Hi", []), npgpt.SettingsError, "temperatures must be a non-empty list"),
    (lambda m: study.temperature(m, "Hi", [0.5, "hot"]), npgpt.SettingsError, "each temperature must be > 0"),
    (lambda m: study.temperature(m, "Hi", [float("inf")]), npgpt.SettingsError, "each temperature must be > 0"),
    (lambda m: study.temperature(m, "Hi", top=0), npgpt.SettingsError, "top must be >= 1, got 0"),
    (lambda m: study.compare(m, "Hi", settings=[{"temp": 1}]), npgpt.SettingsError, "(label, settings dict)"),
    (lambda m: study.compare(m, "Hi", settings=[("hot", {"temp": 1})]), npgpt.SettingsError,
     "compare row 'hot': unknown setting 'temp'"),
    (lambda m: study.compare(m, "Hi", settings=[]), npgpt.SettingsError, "non-empty list"),
    (lambda m: study.compare(m, "Hi", settings="greedy"), npgpt.SettingsError, "non-empty list"),
    (lambda m: study.compare(m, "Hi", max_new_tokens=-1), npgpt.SettingsError, "max_new_tokens"),
    (lambda m: study.compare(m, "Hi", seed=1.5), npgpt.SettingsError, "seed"),
    (lambda m: study.compare(m, "Hi", settings=[("two", {"n": 2, "temperature": 1})]), npgpt.SettingsError,
     "one continuation per row"),
    (lambda m: study.compare(m, ["Hi", "there"]), npgpt.InputError, "token ids must be integers"),
    (lambda m: study.score(m, TEXT, window=1), npgpt.SettingsError, "window must be in 2..32, got 1"),
    (lambda m: study.score(m, TEXT, window="8"), npgpt.SettingsError, "window must be an integer"),
    (lambda m: study.score(m, TEXT, window=8, stride=0.5), npgpt.SettingsError, "stride must be in 1..window - 1"),
    (lambda m: study.score(m, b"text"), npgpt.InputError, "score takes text (str), got bytes"),
    (lambda m: study.hidden(m, 42), npgpt.InputError, "got int"),
]


@pytest.mark.parametrize("call, error, says", BAD_CALLS, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_are_one_line_errors_naming_them(micro, call, error, says):
    with pytest.raises(error) as caught:
        call(micro)
    message = str(caught.value)
    assert says in message and "\n" not in message, message


def test_inspect_takes_a_preset_name():
    assert study.inspect("gpt2").params == study.inspect(npgpt.GPT2Config.preset("gpt2")).params == 124_439_808


def test_topk_accepts_a_seed_and_ignores_it(micro):
    plain = study.topk(micro, "Hi", k=5, temperature=0.8)
    assert study.topk(micro, "Hi", k=5, temperature=0.8, seed=1) == plain


def test_a_distribution_nothing_can_be_drawn_from_is_a_distribution_error(micro):
    everything = {i: -np.inf for i in range(micro.config.vocab_size)}
    with pytest.raises(npgpt.DistributionError):
        study.topk(micro, "Hi", logit_bias=everything)
    with pytest.raises(npgpt.DistributionError):
        study.trace(micro, "Hi", steps=2, logit_bias=everything)


def test_a_tiny_temperature_is_greedy_not_nan(micro):
    base, table = study.temperature(micro, "Hi", [1e-300, 1.0], top=3)
    assert table[1e-300].tolist() == [1.0, 0.0, 0.0]
    assert np.isfinite(table[1.0]).all()


def test_compare_checks_every_row_before_generating_any(micro, monkeypatch):
    calls = []
    monkeypatch.setattr(micro, "generate", lambda *a, **kw: calls.append(kw))
    with pytest.raises(npgpt.SettingsError, match="compare row 'bad': .*top_p"):
        study.compare(micro, "Hi", settings=[("fine", {}), ("bad", {"temperature": 1.0, "top_p": 2.0})])
    assert calls == []


def test_a_compare_row_may_set_its_own_length_and_seed(micro):
    rows = study.compare(micro, "Hi", settings=[("short", {"max_new_tokens": 2}), ("seeded", {"temperature": 1.0,
                                                                                           "seed": 7})])
    assert rows == [("short", micro.generate("Hi", max_new_tokens=2)),
                    ("seeded", micro.generate("Hi", max_new_tokens=30, temperature=1.0, seed=7))]
    ids = micro.tokenizer.encode("Hi")
    assert study.compare(micro, ids, settings=[("greedy", {})], max_new_tokens=3) == \
        [("greedy", micro.generate("Hi", max_new_tokens=3))]  # token ids in, text out


# ---------------------------------------------------------------------------------------------------- the CLI


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "npgpt", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_topk_prints_the_processed_probabilities(tiny):
    model, _ = tiny
    r = cli("topk", "You are going to", "-k", "5", "--bias", "gonna=-5", "--model", golden_dir("tiny"))
    assert r.returncode == 0, r.stderr
    cands = study.topk(model, "You are going to", k=5, logit_bias={"gonna": -5.0})
    lines = r.stdout.splitlines()
    assert "logit_bias" in lines[0] and len(lines) == 7
    for line, c in zip(lines[2:], cands):
        assert repr(c.token) in line and str(c.id) in line and f"{c.probability:.4%}" in line


def test_cli_trace_shows_the_logits_growing(tiny):
    r = cli("trace", PROMPT, "-n", "3", "--model", golden_dir("tiny"))
    assert r.returncode == 0, r.stderr
    shapes = [line.split("logits ")[1].split("]")[0] + "]" for line in r.stdout.splitlines() if "logits [" in line]
    assert shapes == ["[1, 7, 50257]", "[1, 8, 50257]", "[1, 9, 50257]"]


def test_cli_attention_mask_inspect_temperature_compare_hidden(tiny, tmp_path):
    model_dir = golden_dir("tiny")
    r = cli("attention", PROMPT, "--layer", "1", "--head", "0", "--model", model_dir)
    assert r.returncode == 0 and "layer 1, head 0" in r.stdout and "' France'" in r.stdout
    r = cli("attention", PROMPT, "--values", "--model", model_dir)
    first_row = r.stdout.splitlines()[2].split()
    assert first_row[-1] == "." and float(first_row[2]) == 1.0  # query 0 sees only itself
    assert cli("mask", "3").stdout.splitlines()[-1].split() == ["2", "0", "0", "0"]
    r = cli("inspect", model_dir)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].split()[-1] == f"{npgpt.load(model_dir).n_params:,}"
    r = cli("temperature", "Hello", "--t", "0.5", "2", "--top", "4", "--model", model_dir)
    assert r.returncode == 0 and "t=0.5" in r.stdout and "t=2" in r.stdout and len(r.stdout.splitlines()) == 7
    r = cli("compare", "Hello", "--max-new-tokens", "4", "--model", model_dir)
    assert r.returncode == 0 and r.stdout.count("...") == len(study.COMPARE_SETTINGS)
    out = tmp_path / "states.npz"
    r = cli("hidden", "Hello there", "--out", str(out), "--model", model_dir)
    assert r.returncode == 0, r.stderr
    saved = np.load(out, allow_pickle=False)  # plain arrays: no pickle needed to read them back
    assert saved["hidden_states"].shape == (3, 2, 16) and saved["tokens"].tolist() == ["Hello", " there"]


def test_cli_score(tiny, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    r = cli("score", str(text), "--window", "16", "--stride", "8", "--model", golden_dir("tiny"))
    assert r.returncode == 0, r.stderr
    want = study.score(tiny[0], TEXT, window=16, stride=8)
    assert f"perplexity {want.perplexity:.3f} over {want.tokens} tokens" in r.stdout and "tokens/s" in r.stdout
    missing = cli("score", str(tmp_path / "nope.txt"), "--model", golden_dir("tiny"))
    assert missing.returncode == 1 and missing.stderr.strip().endswith("nope.txt: no such file")


def test_cli_study_errors_are_one_line():
    r = cli("attention", "Hi", "--layer", "9", "--model", golden_dir("tiny"))
    assert r.returncode == 1 and r.stderr.strip() == "npgpt: error: layer must be in 0..1, got 9"
    assert cli("mask", "0").stderr.strip() == "npgpt: error: n must be in 1..1024, got 0"


# ---------------------------------------------------------------------------------------------------- figures


def matplotlib_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


PLOTS = [
    ("topk", "You are going to", "-k", "8"),
    ("trace", PROMPT, "-n", "4"),
    ("attention", PROMPT, "--layer", "1"),
    ("temperature", "Hello", "--top", "8"),
    ("compare", "Hello", "--max-new-tokens", "6"),
    ("hidden", "Hello there"),
]


@pytest.mark.skipif(not matplotlib_available(), reason="needs matplotlib (the plot extra)")
@pytest.mark.parametrize("args", PLOTS + [("mask", "5"), ("inspect", golden_dir("tiny")), ("score", "TEXTFILE")],
                         ids=lambda a: a[0])
def test_each_command_writes_a_png(args, tmp_path):
    png = tmp_path / "figure.png"
    args = list(args)
    if args[0] == "score":
        (tmp_path / "t.txt").write_text(TEXT)
        args[1] = str(tmp_path / "t.txt")
    model = ["--model", golden_dir("tiny")] if args[0] not in ("mask", "inspect") else []
    r = cli(*args, *model, "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert r.stderr.strip() == f"wrote {png}"


def test_without_matplotlib_plot_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from npgpt.cli import main; "
            f"sys.exit(main(['mask', '3', '--plot', {str(tmp_path / 'm.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("npgpt: error: figures (--plot) need matplotlib, which is not installed: "
                                "pip install 'npgpt[plot]'")
    assert not (tmp_path / "m.png").exists()


# ------------------------------------------------------------------------------- steps as they come, progress


def test_trace_steps_are_the_trace_one_by_one(micro):
    steps = study.trace_steps(micro, "Hi", steps=4, temperature=1.0, seed=5)
    assert not isinstance(steps, list)
    first = next(steps)
    assert [first, *steps] == study.trace(micro, "Hi", steps=4, temperature=1.0, seed=5)


def test_trace_steps_checks_its_arguments_at_once(micro):
    with pytest.raises(npgpt.SettingsError, match="steps must be >= 0"):
        study.trace_steps(micro, "Hi", steps=-1)  # not only when the first step is asked for
    with pytest.raises(npgpt.ContextLengthError):
        study.trace_steps(micro, "a " * 40)


@pytest.mark.parametrize("run, unit", [
    (lambda m, p: study.trace(m, "Hi", steps=3, progress=p), "3 steps"),
    (lambda m, p: study.compare(m, "Hi", settings=[("a", {}), ("b", {})], max_new_tokens=2, progress=p), "2 rows"),
    (lambda m, p: study.score(m, TEXT, window=16, stride=8, progress=p).surprisal.tolist(), "/ 30 tokens"),
], ids=["trace", "compare", "score"])
def test_long_work_draws_a_progress_bar_when_asked(micro, capsys, run, unit):
    quiet = run(micro, False)
    assert capsys.readouterr().err == ""
    assert run(micro, True) == quiet  # the same work
    err = capsys.readouterr().err
    assert err.startswith("\r") and unit in err and "/s" in err and err.endswith("\r\x1b[K")  # erased at the end


def test_progress_none_follows_the_terminal_and_the_environment(micro, capsys, monkeypatch):
    monkeypatch.delenv("NPGPT_PROGRESS", raising=False)
    study.trace(micro, "Hi", steps=2, progress=None)
    assert capsys.readouterr().err == ""  # captured stderr is no terminal
    monkeypatch.setenv("NPGPT_PROGRESS", "1")
    study.trace(micro, "Hi", steps=2, progress=None)
    assert "2 steps" in capsys.readouterr().err


def test_views_cap_what_a_terminal_cannot_show(micro):
    text = views.mask(study.mask(1000))
    lines = text.splitlines()
    assert len(lines) == 2 + views.MAX_COLUMNS + 1 and len(max(lines, key=len)) < 500
    assert lines[-1] == "(showing the first 64 of 1,000 rows and columns: a view shows at most that many)"
    text = views.topk(study.topk(micro, "Hi", k=100_000), "Hi")
    assert len(text.splitlines()) == 2 + views.MAX_ROWS + 1 and "of 50,257 candidates" in text
    long_prompt = list(range(30))
    assert "(showing the first 30" not in views.attention(study.attention(micro, long_prompt), 0, 0)


# --------------------------------------------------------------------------------------------------- figures


FIGURES = {  # each plots function, given what its study function returns
    "logit_lens": lambda m: [study.logit_lens(m, "Hi there", target=" the")],
    "direct_logit_attribution": lambda m: [study.direct_logit_attribution(m, "Hi there", " the")],
    "head_ablation": lambda m: [study.head_ablation(m, "Hi there")],
    "patch": lambda m: [study.patch(m, "Hi there", "Hi where")],
    "topk": lambda m: [study.topk(m, "Hi", k=5)],
    "trace": lambda m: [study.trace(m, "Hi", steps=3)],
    "attention": lambda m: [study.attention(m, "Hi there"), None, 0, 1, True],
    "mask": lambda m: [study.mask(5)],
    "inspect": lambda m: [study.inspect(m)],
    "temperature": lambda m: [study.temperature(m, "Hi", top=4), None, "Hi"],
    "compare": lambda m: [study.compare(m, "Hi", settings=[("greedy", {})], max_new_tokens=3), None, "Hi"],
    "score": lambda m: [study.score(m, TEXT, window=16, stride=8)],
    "hidden": lambda m: [study.hidden(m, "Hi there")],
}


@pytest.mark.skipif(not matplotlib_available(), reason="needs matplotlib (the plot extra)")
def test_figures_leave_matplotlib_as_they_found_it(micro, tmp_path):
    """Every plots function returns a Figure, and neither switches the backend, nor changes the style, nor
    leaves a figure in pyplot (which would then show up at the user's next plt.show())."""
    import matplotlib
    from matplotlib.figure import Figure

    from npgpt import plots

    assert set(FIGURES) == {name for name in dir(study) if hasattr(plots, name) and hasattr(views, name)
                            and callable(getattr(plots, name)) and name != "save"}
    backend, style = matplotlib.get_backend(), dict(matplotlib.rcParams)
    for name, args in FIGURES.items():
        fig = getattr(plots, name)(*args(micro))
        assert isinstance(fig, Figure), name
        assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # shows itself in Jupyter, pyplot or not
        assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == style, name
    pyplot = __import__("sys").modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


@pytest.mark.skipif(not matplotlib_available(), reason="needs matplotlib (the plot extra)")
def test_a_figure_given_a_path_is_written_there(micro, tmp_path):
    from npgpt import plots

    cands = study.topk(micro, "Hi", k=3)
    fig = plots.topk(cands, tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml") and fig.axes[0].get_title() == \
        "next token after 'Hi'"  # the prompt, kept with the candidates
    assert plots.save(fig, tmp_path / "plain") == str(tmp_path / "plain.png")  # no format named: a png
    assert (tmp_path / "plain.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(npgpt.NpgptError, match="name a png, svg"):
        plots.save(fig, tmp_path / "c.bmpx")


@pytest.mark.skipif(not matplotlib_available(), reason="needs matplotlib (the plot extra)")
def test_a_token_the_font_cannot_draw_is_saved_without_a_warning(micro, tmp_path):
    from npgpt import plots

    fig = plots.topk(study.topk(micro, "Hi", k=3))
    fig.axes[0].set_title("\u4e2d")  # a CJK character: not in matplotlib's DejaVu Sans
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.save(fig, tmp_path / "cjk.png")


@pytest.mark.skipif(not matplotlib_available(), reason="needs matplotlib (the plot extra)")
def test_large_figures_stay_a_readable_size(micro):
    from npgpt import plots

    for fig in (plots.topk(study.topk(micro, "Hi", k=5000)), plots.mask(study.mask(1024))):
        assert max(fig.get_size_inches()) <= plots.MAX_INCHES
    assert len(plots.topk(study.topk(micro, "Hi", k=5000)).axes[0].patches) == plots.MAX_BARS
