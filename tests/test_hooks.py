"""Hook points, run_with_cache, run_with_hooks and model.hooks(...) (issue 14), against TransformerLens's own
activations (tests/golden/lens, made by tools/make_lens_golden.py) and against the plain forward pass."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import npgpt
from npgpt.hooks import act_name, hook_names
from conftest import GOLDEN, GOLDEN_ATOL, golden_dir

LENS = os.path.join(GOLDEN, "lens")
ALL = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}


def lens_golden(name):
    return load_file(os.path.join(LENS, f"{name}.safetensors"))


def max_error(ours, ref) -> float:
    """|ours - ref| where finite; the masked (-inf) attention scores must be the same places."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    finite = np.isfinite(ref)
    assert (np.isfinite(ours) == finite).all() and (ours[~finite] == ref[~finite]).all()
    return float(np.abs(ours[finite] - ref[finite]).max()) if finite.any() else 0.0


CASES = [("small", "plain"), ("small", "fold_ln"), ("small", "center_writing_weights"), ("small", "center_unembed"),
         ("small", "all"), ("tiny", "plain"), ("long", "plain")]


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_every_hook_equals_transformer_lens(name, variant):
    golden = lens_golden(name)
    model = npgpt.load(golden_dir(name))
    if variant != "plain":
        model = model.processed(**(ALL if variant == "all" else {variant: True}))
    ids = golden["ids"] if variant == "plain" else golden["ids"][:1]
    logits, cache = model.run_with_cache(ids)
    expected = {k.split("/", 1)[1]: v for k, v in golden.items() if k.startswith(variant + "/")}
    assert set(expected) - {"logits"} == set(cache) == set(hook_names(model.config.n_layer))
    for hook, ref in expected.items():
        ours = logits[:, -ref.shape[1]:] if hook == "logits" else cache[hook]
        if "rows" in golden and hook.endswith(("hook_pattern", "hook_attn_scores")):
            ours = ours[:, :, golden["rows"]]
        assert max_error(ours, ref) <= GOLDEN_ATOL, hook


def test_names_are_transformer_lens_names(micro):
    names = hook_names(2)
    assert len(names) == 2 + 17 * 2 + 2 and names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized"
    assert act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert act_name("k6") == "blocks.6.attn.hook_k"
    assert act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
    assert act_name("pre", 2) == "blocks.2.mlp.hook_pre"
    assert act_name("embed") == "hook_embed"
    assert act_name("scale") == "ln_final.hook_scale"
    assert act_name("resid_post", 5) == "blocks.5.hook_resid_post"


def test_cache_shorthand_and_filter(micro):
    ids = np.arange(6)
    _, cache = micro.run_with_cache(ids)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["q", 0].shape == (1, 6, 2, 4) and cache["pattern", 0].shape == (1, 2, 6, 6)
    assert cache["scale"].shape == (1, 6, 1) and cache["pre", 1].shape == (1, 6, 32)
    assert ("pattern", 1) in cache and "nothing" not in cache
    _, some = micro.run_with_cache(ids, names_filter=["pattern1", "blocks.0.hook_resid_post"])
    assert list(some) == ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
    _, some = micro.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_z"))
    assert len(some) == 2
    with pytest.raises(KeyError, match="names_filter"):
        some["resid_pre", 0]
    with pytest.raises(npgpt.SettingsError, match="names_filter: 'blocks.0.hook_resid_prx'.*did you mean"):
        micro.run_with_cache(ids, names_filter="blocks.0.hook_resid_prx")
    assert "ActivationCache(" in repr(cache)


def test_without_hooks_nothing_changes(small):
    model, _ = small
    ids = np.arange(40)[None] % 1000
    plain = model.forward(ids).logits
    with_pattern = model.forward(ids, output_attentions=True).logits  # normalises the pattern, as hooks need
    assert np.allclose(with_pattern, plain, atol=1e-5, rtol=0)  # plain divides the output instead: rounding only
    logits, cache = model.run_with_cache(ids)
    assert np.array_equal(logits, with_pattern)  # the same operations: bit for bit
    identity = model.run_with_hooks(ids, [(lambda n: True, lambda a, hook: a)])
    assert np.array_equal(identity, with_pattern)
    assert model._fwd_hooks == [] and model._cache_request is None  # nothing left behind
    # last_only with hooks gives the last position's logits of the full run
    with model.hooks([(lambda n: True, lambda a, hook: None)]):
        last = model.forward(ids, last_only=True).logits
    assert np.allclose(last[:, -1], with_pattern[:, -1], atol=1e-6, rtol=0)


def test_hooks_replace_and_edit_in_place(micro):
    ids = np.arange(7)
    plain = micro.run_with_hooks(ids)
    seen = []

    def zero_head(z, hook):
        seen.append((hook.name, hook.layer(), z.shape))
        z[:, :, 1] = 0.0  # in place

    def zero_head_copy(z, hook):
        z = z.copy()
        z[:, :, 1] = 0.0
        return z

    a = micro.run_with_hooks(ids, [("blocks.1.attn.hook_z", zero_head)])
    b = micro.run_with_hooks(ids, [("blocks.1.attn.hook_z", zero_head_copy)])
    assert seen == [("blocks.1.attn.hook_z", 1, (1, 7, 2, 4))]
    assert np.array_equal(a, b) and not np.allclose(a, plain)
    # the cache records the activation after the hooks
    _, cache = micro.run_with_cache(ids, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert (cache["z", 1][:, :, 1] == 0).all()
    # a pattern hook: uniform attention
    uniform = micro.run_with_hooks(ids, [("blocks.0.attn.hook_pattern",
                                          lambda p, hook: np.tril(np.ones_like(p)) / np.arange(1, 8)[:, None])])
    assert not np.allclose(uniform, plain)


def test_bad_hooks_are_settings_errors(micro):
    with pytest.raises(npgpt.SettingsError, match="did you mean 'blocks.0.hook_resid_pre'"):
        micro.run_with_hooks([1, 2], [("blocks.0.hook_resid_pr", lambda a, h: a)])
    with pytest.raises(npgpt.SettingsError, match="not a hook point"):
        micro.run_with_hooks([1, 2], [("blocks.7.hook_resid_pre", lambda a, h: a)])
    with pytest.raises(npgpt.SettingsError, match="same shape"):
        micro.run_with_hooks([1, 2], [("hook_embed", lambda a, h: a[:, :1])])
    with pytest.raises(npgpt.SettingsError, match="fwd_hooks"):
        micro.run_with_hooks([1, 2], [("hook_embed", 3)])
    assert micro._fwd_hooks == []


def test_hooks_act_in_generate_and_stream_and_leave_on_exit(tiny):
    model, _ = tiny
    settings = dict(max_new_tokens=8, do_sample=False)
    base = model.generate("Once upon a time", **settings)
    shapes = []

    def steer(x, hook):
        shapes.append(x.shape)
        return x + 3.0 * model.wte[262]  # toward one token

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):
        steered = model.generate("Once upon a time", **settings)
        streamed = "".join(model.stream("Once upon a time", **settings))
    assert steered != base and streamed == steered
    assert shapes[0][1] > 1 and all(s[1] == 1 for s in shapes[1:8])  # the prompt, then one position a step
    assert model.generate("Once upon a time", **settings) == base  # removed on exit


def test_hooked_attention_in_blocks_beyond_128_tokens():
    """A pattern hook on a long prompt computes the full pattern; the result equals the blocked path's."""
    model = npgpt.load(golden_dir("long"))
    ids = np.arange(300)[None] % 500
    plain = model.forward(ids, output_attentions=True)
    logits, cache = model.run_with_cache(ids, names_filter=lambda n: "pattern" in n or "attn_scores" in n)
    assert np.allclose(logits, plain.logits, atol=GOLDEN_ATOL, rtol=0)
    for layer in range(2):
        assert np.allclose(cache["pattern", layer], plain.attentions[layer], atol=1e-6, rtol=0)
        assert np.isneginf(cache["attn_scores", layer][0, 0, 0, 1:]).all()


def test_hooks_with_a_cache_and_padding(tiny):
    """Generation of a left-padded batch with a hook on the pattern: the padding keys get no attention."""
    model, _ = tiny
    patterns = []
    with model.hooks([("blocks.0.attn.hook_pattern", lambda p, hook: patterns.append(p.copy()))]):
        out = model.generate(["Hello there my friend", "Hi"], max_new_tokens=3, do_sample=False)
    assert out == [model.generate(p, max_new_tokens=3, do_sample=False) for p in ["Hello there my friend", "Hi"]]
    first = patterns[0]  # [2, H, T, T]: row 1 is padded on the left
    assert np.isfinite(first).all() and np.allclose(first.sum(-1), 1, atol=1e-5)


def test_processed_models(small):
    model, _ = small
    ids = np.arange(30)[None] % 1000
    plain = model.forward(ids).logits
    for options in ({"fold_ln": True}, {"center_writing_weights": True},
                    {"fold_ln": True, "center_writing_weights": True}):
        assert np.allclose(model.processed(**options).forward(ids).logits, plain, atol=GOLDEN_ATOL, rtol=0)
    centred = model.processed(**ALL).forward(ids).logits
    log_softmax = npgpt.ops.log_softmax
    assert np.allclose(log_softmax(centred), log_softmax(plain), atol=GOLDEN_ATOL, rtol=0)
    assert np.array_equal(model.forward(ids).logits, plain)  # the original is unchanged
    processed = model.processed(fold_ln=True)
    assert processed.processing == {"fold_ln": True} and (processed.ln_f.weight == 1).all()
    with pytest.raises(npgpt.SettingsError, match="processed"):
        processed.save("/nonexistent")
    with pytest.raises(npgpt.SettingsError, match="fold_ln"):
        model.processed(fold_ln="yes")
