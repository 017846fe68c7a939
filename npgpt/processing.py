"""TransformerLens's weight processing (fold_ln, center_writing_weights, center_unembed) as a new model; see
GPT2.processed for what each option changes. Off by default: npgpt's logits equal transformers'."""

from __future__ import annotations

import numpy as np

from .errors import SettingsError


def processed(model, fold_ln: bool, center_writing_weights: bool, center_unembed: bool):
    for name, value in (("fold_ln", fold_ln), ("center_writing_weights", center_writing_weights),
                        ("center_unembed", center_unembed)):
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be True or False, got {value!r}")
    state = {name: a.copy() for name, a in model.state.items()}
    state["lm_head.weight"] = model.lm_head.copy()  # [V, C]: untied from wte from here on
    state["lm_head.bias"] = (model.lm_head_bias.copy() if model.lm_head_bias is not None
                             else np.zeros(model.lm_head.shape[0], np.float32))  # [V]
    if fold_ln:
        for i in range(model.config.n_layer):
            _fold_layer_norm(state, f"h.{i}.ln_1", f"h.{i}.attn.c_attn")
            _fold_layer_norm(state, f"h.{i}.ln_2", f"h.{i}.mlp.c_fc")
        _fold_layer_norm(state, "ln_f", "lm_head", transposed=True)
    if center_writing_weights:
        for name in ("wte.weight", "wpe.weight"):
            state[name] -= state[name].mean(axis=1, keepdims=True)  # [V or n_positions, C]
        for i in range(model.config.n_layer):
            for proj in (f"h.{i}.attn.c_proj", f"h.{i}.mlp.c_proj"):
                state[f"{proj}.weight"] -= state[f"{proj}.weight"].mean(axis=1, keepdims=True)  # [in, C]
                state[f"{proj}.bias"] -= state[f"{proj}.bias"].mean()  # [C]
    if center_unembed:
        state["lm_head.weight"] -= state["lm_head.weight"].mean(axis=0, keepdims=True)  # [V, C]: over V
        state["lm_head.bias"] -= state["lm_head.bias"].mean()
    model = type(model)(model.config, state, model.tokenizer, name=model.name)
    model.generation_config = model.generation_config
    model.processing = {**model.processing, **{name: True for name, value in (
        ("fold_ln", fold_ln), ("center_writing_weights", center_writing_weights),
        ("center_unembed", center_unembed)) if value}}
    return model


def _fold_layer_norm(state: dict, norm: str, reader: str, transposed: bool = False) -> None:
    """Fold LayerNorm `norm`'s weight and bias into the linear layer `reader` that reads its output, in place:
    (n * w + b) @ W + c = n @ (w[:, None] * W) + (b @ W + c); then centre the folded W over its input axis (n
    has mean 0) and make the norm weight 1, bias 0. W is [C, out], or [out, C] if transposed (the unembedding)."""
    w, b = state[f"{norm}.weight"], state[f"{norm}.bias"]  # [C]
    weight = state[f"{reader}.weight"]
    weight = weight.T if transposed else weight  # [C, out]
    state[f"{reader}.bias"] = state[f"{reader}.bias"] + b @ weight  # [out]
    weight = weight * w[:, None]
    weight = weight - weight.mean(axis=0, keepdims=True)
    state[f"{reader}.weight"] = np.ascontiguousarray(weight.T if transposed else weight)
    state[f"{norm}.weight"], state[f"{norm}.bias"] = np.ones_like(w), np.zeros_like(b)
