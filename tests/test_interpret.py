"""The experiments built on hook points (issue 14): logit lens, direct logit attribution, head ablation and
activation patching, the latter equal to transformer_lens.patching's results (tests/golden/lens/small)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import npgpt
from npgpt import interpret, ops, study, views
from conftest import GOLDEN, GOLDEN_ATOL, golden_dir
from test_cli import npgpt as cli


@pytest.fixture(scope="module")
def patching():
    return load_file(os.path.join(GOLDEN, "lens", "small.safetensors"))


def metric_of(golden):
    a, b = golden["patch.answers"]
    return lambda logits: (logits[:, -1, a] - logits[:, -1, b]).mean()


@pytest.mark.parametrize("activation", ["resid_pre", "attn_out", "mlp_out"])
def test_patch_equals_transformer_lens(small, patching, activation):
    model, _ = small
    result = study.patch(model, patching["patch.clean"], patching["patch.corrupted"], metric_of(patching), activation)
    assert result.values.shape == patching[f"patch.{activation}"].shape
    assert np.abs(result.values - patching[f"patch.{activation}"]).max() <= GOLDEN_ATOL
    a, b = (int(t) for t in patching["patch.answers"])  # the named metric (last position only) gives the same
    named = study.patch(model, patching["patch.clean"], patching["patch.corrupted"], "logit_diff", activation,
                        answer=a, wrong=b)
    assert np.abs(named.values - patching[f"patch.{activation}"]).max() <= GOLDEN_ATOL


def test_patch_heads_equals_transformer_lens(small, patching):
    model, _ = small
    result = study.patch_heads(model, patching["patch.clean"], patching["patch.corrupted"], metric_of(patching))
    assert np.abs(result.values - patching["patch.heads"]).max() <= GOLDEN_ATOL


def test_patching_with_named_metrics(tiny):
    model, _ = tiny
    r = study.patch(model, "The cat sat on the", "The dog sat on the")
    assert r.values.shape == (2, 5) and r.axis == "position"
    # block 0's input is the embeddings: patching the one position that differs makes the clean run
    assert r.values[0, 1] == pytest.approx(r.clean_metric, abs=1e-4)
    assert r.values[0, 0] == pytest.approx(r.corrupted_metric, abs=1e-4)
    assert np.isfinite(r.normalized).all()
    resid_post = study.patch(model, "The cat sat on the", "The dog sat on the", "prob", "resid_post", answer=" the")
    assert resid_post.values[-1, -1] == pytest.approx(resid_post.clean_metric, abs=1e-5)
    assert "activation patching" in str(r) and "Patching(" in repr(r)
    with pytest.raises(npgpt.InputError, match="same number of tokens"):
        study.patch(model, "The cat sat", "The doggy sat on")
    with pytest.raises(npgpt.SettingsError, match="activation"):
        study.patch(model, "a b", "a c", activation="resid")
    with pytest.raises(npgpt.SettingsError, match="metric"):
        study.patch(model, "a b", "a c", metric="loss")
    with pytest.raises(npgpt.SettingsError, match="answer must be one token"):
        study.patch(model, "a b", "a c", answer=" Paris is")


def test_logit_lens(tiny):
    model, _ = tiny
    lens = study.logit_lens(model, "The cat sat on the", target=" mat", k=3)
    logits = model(model.tokenizer.encode("The cat sat on the"))  # [T, V]
    assert lens.top_ids.shape == (3, 5, 3) and lens.labels[0] == "embed"
    assert (lens.top_ids[-1] == np.argsort(-logits, axis=-1, kind="stable")[:, :3]).all()  # the last is the model's
    probs = np.exp(ops.log_softmax(logits))
    target = model.tokenizer.encode(" mat")[0]
    assert np.allclose(lens.target_prob[-1], probs[:, target], atol=1e-6)
    assert (lens.target_rank[-1] == (logits > logits[:, target:target + 1]).sum(-1)).all()
    assert "logit lens" in str(lens) and "LogitLens(" in repr(lens)
    with pytest.raises(npgpt.SettingsError, match="target must be one token"):
        study.logit_lens(model, "a", target=" Paris is")
    with pytest.raises(npgpt.SettingsError, match="k must be"):
        study.logit_lens(model, "a", k=0)


def test_direct_logit_attribution_adds_up(small):
    model, _ = small
    for m in (model, model.processed(fold_ln=True, center_writing_weights=True, center_unembed=True)):
        d = study.direct_logit_attribution(m, list(range(10, 30)), target=5, baseline=7)
        assert d.heads.shape == (3, 4) and d.mlps.shape == (3,)
        assert sum(d.parts().values()) == pytest.approx(d.total, abs=1e-4)
        logits = m.forward(np.arange(10, 30)).logits[0, -1]
        assert d.total == pytest.approx(float(logits[5] - logits[7]), abs=1e-6)
    single = study.direct_logit_attribution(model, list(range(10, 30)), target=5, position=3)
    assert sum(single.parts().values()) == pytest.approx(single.total, abs=1e-4)
    assert "direct logit attribution" in str(single)
    with pytest.raises(npgpt.SettingsError, match="position"):
        study.direct_logit_attribution(model, [1, 2], target=5, position=2)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_head_ablation(small, mode):
    model, _ = small
    ids = list(range(40, 60))
    result = study.head_ablation(model, ids, target=3, mode=mode)
    base = ops.log_softmax(model.forward(ids).logits[0, -1])[3]
    assert result.logprob == pytest.approx(float(base), abs=1e-6)
    hooks = study.ablation_hooks(model, [(1, 2)], mode, reference=ids)
    ablated = model.run_with_hooks(ids, hooks)[0, -1]
    assert result.effect[1, 2] == pytest.approx(float(ops.log_softmax(ablated)[3] - base), abs=1e-5)
    assert "ablated" in str(result)


def test_ablation_while_generating(tiny):
    model, _ = tiny
    every_head = [(layer, head) for layer in range(2) for head in range(2)]
    base = model.generate("Once upon a time", max_new_tokens=6, do_sample=False)
    with model.hooks(study.ablation_hooks(model, every_head)):
        ablated = model.generate("Once upon a time", max_new_tokens=6, do_sample=False)
    assert ablated != base
    with pytest.raises(npgpt.SettingsError, match="heads"):
        study.ablation_hooks(model, [(2, 0)])
    with pytest.raises(npgpt.SettingsError, match="reference"):
        study.ablation_hooks(model, [(0, 0)], "mean")


def test_views_and_figures(small, tmp_path):
    pytest.importorskip("matplotlib")
    from npgpt import plots

    model, _ = small
    ids = list(range(12))
    results = {
        "logit_lens": study.logit_lens(model, ids, target=4),
        "direct_logit_attribution": study.direct_logit_attribution(model, ids, 4),
        "head_ablation": study.head_ablation(model, ids),
        "patch": study.patch_heads(model, ids, ids[:5] + [99] + ids[6:], answer=4, wrong=7),
    }
    for name, result in results.items():
        assert getattr(views, name)(result) == str(result)
        path = tmp_path / f"{name}.png"
        getattr(plots, name)(result, path)
        assert path.stat().st_size > 1000


def test_cli_lens_and_patch(tmp_path):
    r = cli("lens", "The cat sat on the", "--model", golden_dir("tiny"), "--target", " mat")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("logit lens at position 4") and "after block 1" in r.stdout
    r = cli("patch", "The cat sat on the", "The dog sat on the", "--model", golden_dir("tiny"),
            "--activation", "heads", "--metric", "logprob")
    assert r.returncode == 0 and "by layer x head" in r.stdout, r.stderr
    r = cli("patch", "The cat sat", "The doggy sat on", "--model", golden_dir("tiny"))
    assert r.returncode == 1 and r.stderr.startswith("npgpt: error: the clean and corrupted prompts")
    r = cli("lens", "a", "--model", golden_dir("tiny"), "--target", " Paris is")
    assert r.returncode == 1 and "target must be one token" in r.stderr


def test_a_lens_view_refuses_a_position_outside_the_prompt(small):
    lens = study.logit_lens(small[0], list(range(6)))
    assert views.logit_lens(lens, position=-6).startswith("logit lens at position 0")
    for position in (6, -7):
        with pytest.raises(npgpt.SettingsError, match="position must be an integer in -6..5"):
            views.logit_lens(lens, position=position)


def test_a_logit_difference_of_one_token_with_itself_is_refused(small):
    model, _ = small
    with pytest.raises(npgpt.SettingsError, match="the answer and the wrong token are both"):
        study.patch(model, list(range(8)), list(range(8)), answer=4, wrong=4)


def test_small_probabilities_keep_two_significant_digits():
    assert [views.percent(p) for p in (0.5, 0.001, 1.8e-4, 4e-5, 0.0)] == ["50.0%", "0.1%", "0.018%", "0.004%", "0.0%"]
