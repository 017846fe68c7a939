"""The PyTorch reference: GPT-2s built with transformers, written in OpenAI's checkpoint layout.

Used by tools/make_golden.py (golden data) and by the parity tests. Needs torch and transformers
(`pip install -e ".[golden]"`); npgpt itself never imports this.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel


def build(seed: int, logit_std: float = 1.0, **config) -> GPT2LMHeadModel:
    """A randomly initialised GPT2LMHeadModel with eager attention (so attention probabilities are returned),
    re-initialised by `scale_up` so that its outputs are far from uniform."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config))
    model.config._attn_implementation = "eager"
    scale_up(model, seed, logit_std)
    return model.eval()


@torch.no_grad()
def scale_up(model: GPT2LMHeadModel, seed: int, logit_std: float = 1.0) -> None:
    """Replace GPT-2's tiny N(0, 0.02) init (whose logits are almost uniform) with weights of unit-scale
    activations: attention that picks tokens out, MLPs in GELU's non-linear range, residual branches larger
    than the embeddings (else a random GPT-2 just repeats its last token), and logits of standard deviation
    about `logit_std`.

    float32 rounding grows with the size of the values: with these scales a small model's hidden states reach
    about 7 and its logits and hidden states differ from a float64 computation by up to ~5e-6, in PyTorch and
    in npgpt alike, which leaves room under the goldens' absolute 1e-5 bound."""
    g = torch.Generator().manual_seed(seed + 1)
    c = model.config.n_embd
    for name, p in model.transformer.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            p.copy_(0.7 + 0.6 * torch.rand(p.shape, generator=g))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif name == "wte.weight":
            p.copy_(logit_std / math.sqrt(c) * torch.randn(p.shape, generator=g))
        elif name == "wpe.weight":
            p.copy_(1.0 / math.sqrt(c) * torch.randn(p.shape, generator=g))
        else:  # Conv1D weights, stored [in, out]
            gain = 1.0 if name.endswith("c_proj.weight") else 1.5
            p.copy_(gain / math.sqrt(p.shape[0]) * torch.randn(p.shape, generator=g))


def official_state(model: GPT2LMHeadModel, causal_buffers: bool = True) -> dict[str, np.ndarray]:
    """Tensors named as in openai-community/gpt2's model.safetensors: no `transformer.` prefix, no lm_head
    (tied to wte), and the causal-mask buffers `h.N.attn.bias` [1, 1, P, P] that the real file carries
    (left out with causal_buffers=False, as checkpoints saved by recent transformers do: for a long context
    they are most of a small model's bytes)."""
    state = {k.removeprefix("transformer."): v.detach().cpu().numpy().astype(np.float32)
             for k, v in model.state_dict().items() if k.startswith("transformer.")}
    if not causal_buffers:
        return {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    p = model.config.n_positions
    mask = np.tril(np.ones((p, p), dtype=np.float32))[None, None]
    for i in range(model.config.n_layer):
        state.setdefault(f"h.{i}.attn.bias", mask)
    return state


def save_official(model: GPT2LMHeadModel, model_dir: str, causal_buffers: bool = True) -> None:
    """config.json (as transformers writes it) and model.safetensors in the official layout."""
    os.makedirs(model_dir, exist_ok=True)
    config = model.config.to_dict()
    for key in ("_attn_implementation_autoset", "_attn_implementation", "attn_implementation", "dtype",
                "torch_dtype", "transformers_version"):
        config.pop(key, None)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(official_state(model, causal_buffers), os.path.join(model_dir, "model.safetensors"),
              metadata={"format": "pt"})


def gpt2_tokenizer():
    """transformers' GPT2TokenizerFast for GPT-2's vocabulary, built offline from the merges npgpt carries
    (vocab.json and merges.txt written to a temporary directory). Needed by generate's stop_strings."""
    import tempfile

    from transformers import GPT2TokenizerFast

    from npgpt import tokenizer as npgpt_tokenizer

    merges = npgpt_tokenizer.bundled_merges().decode()
    vocab = npgpt_tokenizer.encoder_json_from_ranks(npgpt_tokenizer.ranks_from_merges(merges))
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write(merges)
        return GPT2TokenizerFast.from_pretrained(tmp)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, as transformers' generate computes them for left padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def forward(model, ids: np.ndarray, attention_mask: np.ndarray | None = None):
    """Logits, hidden states and attention probabilities of the reference, as NumPy arrays."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    kwargs = {}
    if attention_mask is not None:
        mask_t = torch.as_tensor(attention_mask, dtype=torch.long)
        kwargs = dict(attention_mask=mask_t, position_ids=position_ids(mask_t))
    out = model(ids_t, output_hidden_states=True, output_attentions=True, **kwargs)
    hidden = np.stack([h.numpy() for h in out.hidden_states])  # [L + 1, B, T, C]
    attentions = np.stack([a.numpy() for a in out.attentions])  # [L, B, H, T, T]
    return out.logits.numpy(), hidden, attentions


def greedy(model, ids: np.ndarray, max_new_tokens: int, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """transformers' own greedy `generate`: the new tokens [B, N] (rows that end early padded with -1)."""
    return generate(model, ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    min_new_tokens=0)[0]


@torch.no_grad()
def generate(model, ids: np.ndarray, attention_mask: np.ndarray | None = None, pad: int = -1, **settings):
    """transformers' `generate` with the given settings: (new tokens [B * n, N], sequence scores or None).

    Rows that end early are padded with `pad` (-1) after their <|endoftext|>."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    mask_t = torch.ones_like(ids_t) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
    eos = model.config.eos_token_id if model.config.eos_token_id < model.config.vocab_size else None
    out = model.generate(ids_t, attention_mask=mask_t, eos_token_id=eos, pad_token_id=pad if eos is not None else None,
                         return_dict_in_generate=True, output_scores=True, **settings)
    scores = getattr(out, "sequences_scores", None)
    return out.sequences[:, ids_t.shape[1]:].numpy(), None if scores is None else scores.numpy()


@torch.no_grad()
def generate_as_given(model, ids: np.ndarray, attention_mask: np.ndarray | None = None, **settings):
    """transformers' `generate` with exactly the settings given (eos_token_id, pad_token_id, max_length,
    generation_config, ...; nothing filled in here): (new tokens [B * n, N] as generate pads them, the processed
    scores of each step [N, B * n, V] for greedy search (else None), sequence scores or None)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    mask_t = torch.ones_like(ids_t) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
    outputs = dict(return_dict_in_generate=True, output_scores=True)
    if settings.get("generation_config") is not None:  # set on the config itself (beside it is deprecated)
        config = settings["generation_config"] = copy.deepcopy(settings["generation_config"])
        for name, value in outputs.items():
            setattr(config, name, value)
        outputs = {}
    out = model.generate(ids_t, attention_mask=mask_t, **outputs, **settings)
    scores = getattr(out, "sequences_scores", None)
    steps = None if scores is not None else np.stack([s.numpy() for s in out.scores])
    return out.sequences[:, ids_t.shape[1]:].numpy(), steps, None if scores is None else scores.numpy()
