"""Make the hook, weight-processing and patching goldens (issue 14) from TransformerLens itself.

For the golden checkpoints small (3 blocks, 1000 tokens), tiny (the real 50257-token vocabulary) and long (a
320-token context: a 150-token prompt takes npgpt's attention in blocks of 64 queries), a HookedTransformer is
built on the same weights, offline: its HookedTransformerConfig is written by hand from config.json (from_pretrained
would look the model up on the hub) and the weights are converted by TransformerLens's own GPT-2 conversion
(transformer_lens.pretrained.weight_conversions.convert_gpt2_weights) from transformers' GPT2LMHeadModel loaded
from the checkpoint directory. Then run_with_cache records every hook point; tests/golden/lens/NAME.safetensors
holds, under "VARIANT/HOOK NAME":

    ids                         the input ids [B, T]
    VARIANT/logits              [B, T, V] (small's plain run; the others keep the last position only, [B, 1, V])
    small's processed variants run the first row of ids only
    VARIANT/<hook name>         every GPT-2 hook point's activation ([B, H, T, S] ones of long: rows LONG_ROWS)

VARIANT is "plain" (no processing: logits equal transformers') and, for small, each of TransformerLens's weight
processing options alone ("fold_ln", "center_writing_weights", "center_unembed") and all three ("all"); value
biases are never folded (fold_value_biases=False), which npgpt does not offer.

small.safetensors also holds activation patching by transformer_lens.patching between a clean and a corrupted
prompt of one length, with the metric logits[:, -1, A] - logits[:, -1, B] (batch mean):

    patch.clean, patch.corrupted [1, T], patch.answers [2] (A, B)
    patch.resid_pre, patch.attn_out, patch.mlp_out [L, T]    get_act_patch_resid_pre / attn_out / mlp_out
    patch.heads [L, H]                                       get_act_patch_attn_head_out_all_pos (hook_z)

A file whose tensors are unchanged is left as it is, so that running this reproduces the committed files.

Run (TransformerLens 3.x, which still has HookedTransformer, in its own environment):
    python -m venv /tmp/tlenv && /tmp/tlenv/bin/pip install torch==2.13.0 transformers transformer-lens==3.9.0
    /tmp/tlenv/bin/python tools/make_lens_golden.py
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig, patching
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
from transformers import GPT2LMHeadModel

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden")
OUT = os.path.join(GOLDEN, "lens")

PROCESSING = {
    "plain": {},
    "fold_ln": {"fold_ln": True},
    "center_writing_weights": {"center_writing_weights": True},
    "center_unembed": {"center_unembed": True},
    "all": {"fold_ln": True, "center_writing_weights": True, "center_unembed": True},
}
LONG_T = 150
LONG_ROWS = [0, 1, 127, 128, 129, 149]  # query rows kept of long's [B, H, T, S] activations


def hooked(model_dir: str, fold_ln=False, center_writing_weights=False, center_unembed=False) -> HookedTransformer:
    """A HookedTransformer on a GPT-2 layout checkpoint, built offline."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    cfg = HookedTransformerConfig(
        n_layers=c["n_layer"], d_model=c["n_embd"], n_heads=c["n_head"], d_head=c["n_embd"] // c["n_head"],
        d_mlp=4 * c["n_embd"], n_ctx=c["n_positions"], d_vocab=c["vocab_size"], act_fn="gelu_new",
        normalization_type="LN", eps=c["layer_norm_epsilon"], positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", default_prepend_bos=False, device="cpu", dtype=torch.float32)
    hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=fold_ln,
                                      center_writing_weights=center_writing_weights,
                                      center_unembed=center_unembed, fold_value_biases=False)
    return model.eval()


def activations(model: HookedTransformer, ids: np.ndarray, prefix: str, rows=None, last_logits=False) -> dict:
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor(ids))
    out = {f"{prefix}/logits": (logits[:, -1:] if last_logits else logits).numpy()}
    for name, a in cache.items():
        if name.startswith("unembed."):  # newer than GPT-2's list (its hook_out is the logits)
            continue
        a = a.numpy()
        if rows is not None and name.endswith(("hook_pattern", "hook_attn_scores")):
            a = a[:, :, rows]
        out[f"{prefix}/{name}"] = np.ascontiguousarray(a)
    return out


def patching_results(model: HookedTransformer) -> dict:
    rng = np.random.default_rng(14)
    clean = rng.integers(0, model.cfg.d_vocab, size=(1, 9))
    corrupted = clean.copy()
    corrupted[0, 2] = (clean[0, 2] + 17) % model.cfg.d_vocab  # one token differs
    answers = np.array([int(clean[0, -1]), int(corrupted[0, 2])])

    def metric(logits):
        return (logits[:, -1, answers[0]] - logits[:, -1, answers[1]]).mean()

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(torch.tensor(clean))
        bad = torch.tensor(corrupted)
        out = {"patch.clean": clean, "patch.corrupted": corrupted, "patch.answers": answers}
        for what, fn in (("resid_pre", patching.get_act_patch_resid_pre), ("attn_out", patching.get_act_patch_attn_out),
                         ("mlp_out", patching.get_act_patch_mlp_out),
                         ("heads", patching.get_act_patch_attn_head_out_all_pos)):
            out[f"patch.{what}"] = fn(model, bad, clean_cache, metric).numpy()
    return out


def write(name: str, tensors: dict) -> None:
    path = os.path.join(OUT, f"{name}.safetensors")
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if os.path.exists(path):
        old = load_file(path)
        if old.keys() == tensors.keys() and all(np.array_equal(old[k], v) for k, v in tensors.items()):
            print(f"{path}: unchanged")
            return
    save_file(tensors, path)
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path) / 1e3:.0f} kB")


def main() -> None:
    torch.set_grad_enabled(False)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(140)

    small = os.path.join(GOLDEN, "small")
    ids = rng.integers(0, 1000, size=(2, 12))
    tensors = {"ids": ids}
    for variant, options in PROCESSING.items():
        processed = variant != "plain"
        tensors.update(activations(hooked(small, **options), ids[:1] if processed else ids, variant,
                                   last_logits=processed))
    tensors.update(patching_results(hooked(small)))
    write("small", tensors)

    ids = rng.integers(0, 50257, size=(1, 10))
    write("tiny", {"ids": ids, **activations(hooked(os.path.join(GOLDEN, "tiny")), ids, "plain", last_logits=True)})

    ids = rng.integers(0, 500, size=(1, LONG_T))
    write("long", {"ids": ids, "rows": np.array(LONG_ROWS),
                   **activations(hooked(os.path.join(GOLDEN, "long")), ids, "plain", rows=LONG_ROWS,
                                 last_logits=True)})


if __name__ == "__main__":
    main()
