"""Looking inside GPT-2 (issue 14): experiments built on the hook points of npgpt.hooks, each returning arrays.

    logit_lens                 each layer's residual stream read through ln_f and the unembedding: the top
                               tokens it would predict and the rank of a target, layer by layer
    direct_logit_attribution   how much each head, each MLP, the embeddings and the biases add directly to a
                               target's logit (or to a logit difference), through the final LayerNorm's scale
    head_ablation              the change in a target's log-probability when each head is zeroed (or replaced by
                               its mean); ablation_hooks gives the hooks, for run_with_hooks or model.hooks(...)
    patch, patch_heads         activation patching: a clean run's activation put into a corrupted run, per
                               layer x position (resid_pre, attn_out, ...) or per layer x head (hook_z), scored
                               by a metric; equal to transformer_lens.patching's get_act_patch_* results

They are re-exported by npgpt.study; views.NAME shows each result in a terminal and plots.NAME draws it (for
patch_heads: views.patch, plots.patch). Each result's str() is its view. Positions follow npgpt's prompts: text is
encoded with no <|endoftext|> before it (TransformerLens's to_tokens prepends one).

Whole-array work: the lens unembeds every layer at once per position block; patching and head ablation run one
forward pass per layer, the patches of every position (or head) as rows of one batch.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import ops
from .errors import InputError, SettingsError
from .model import GPT2
from .prompts import check_position, prompt_ids

PATCHABLE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
METRICS = ("logit_diff", "logprob", "prob")


# ------------------------------------------------------------------------------------------------ arguments


def _check_model(model) -> None:
    if not isinstance(model, GPT2):
        raise SettingsError(f"the model must be an npgpt.GPT2 (e.g. npgpt.load('gpt2')), got {type(model).__name__}")


def _ids(model, prompt, what: str = "prompt") -> np.ndarray:
    """One prompt (text or ids) as ids [1, T]."""
    if isinstance(prompt, str) or not (isinstance(prompt, np.ndarray) and prompt.ndim == 2):
        return np.array([prompt_ids(model.tokenizer, prompt, model.config.vocab_size)])
    if prompt.shape[0] != 1 or not np.issubdtype(prompt.dtype, np.integer):
        raise InputError(f"{what} must be one prompt (text or ids [T]), got an array of shape {list(prompt.shape)}")
    return np.array([prompt_ids(model.tokenizer, prompt[0].tolist(), model.config.vocab_size)])


def token_id(model, token, name: str = "target") -> int:
    """A token given as an id or as text that is exactly one token (" Paris"), else a SettingsError naming it."""
    if isinstance(token, numbers.Integral) and not isinstance(token, bool):
        if 0 <= token < model.config.vocab_size:
            return int(token)
        raise SettingsError(f"{name} must be a token id in 0..{model.config.vocab_size - 1}, got {token}")
    if isinstance(token, str):
        ids = model.tokenizer.encode(token)
        if len(ids) == 1 and ids[0] < model.config.vocab_size:
            return ids[0]
        pieces = [model.tokenizer.token_text(i) for i in ids]
        raise SettingsError(f"{name} must be one token; {token!r} is {len(ids)} tokens {pieces}: give one of "
                            f"them, or an id")
    raise SettingsError(f"{name} must be a token (text or id), got {token!r}")


def _layer_heads(model, heads) -> list[tuple[int, int]]:
    c = model.config
    try:
        pairs = [(int(layer), int(head)) for layer, head in heads]
    except (TypeError, ValueError):
        raise SettingsError(f"heads must be (layer, head) pairs, got {heads!r:.60}") from None
    for layer, head in pairs:
        if not (0 <= layer < c.n_layer and 0 <= head < c.n_head):
            raise SettingsError(f"heads: ({layer}, {head}) is not a head of this model (layers 0..{c.n_layer - 1}, "
                                f"heads 0..{c.n_head - 1})")
    return pairs



# ------------------------------------------------------------------------------------------------ logit lens


@dataclass
class LogitLens:
    """logit_lens's result. Layer l of L + 1 is the residual stream entering block l (0: the embeddings); the
    last is the model's output (after every block), whose predictions are the model's own."""

    tokens: list[str]  # the prompt's tokens
    labels: list[str]  # "embed", "after block 0", ...: the row names
    top_ids: np.ndarray  # [L + 1, T, k] the k most likely next tokens read at each layer and position
    top_probs: np.ndarray  # [L + 1, T, k]
    top_tokens: list  # [L + 1][T][k] their text
    target: int | None = None
    target_rank: np.ndarray | None = None  # [L + 1, T] 0 = the top token
    target_prob: np.ndarray | None = None  # [L + 1, T]

    def __repr__(self) -> str:
        return (f"LogitLens({len(self.labels)} layers x {len(self.tokens)} positions, top {self.top_ids.shape[-1]}"
                + (f", target {self.target}" if self.target is not None else "") + ")")

    def __str__(self) -> str:
        from . import views

        return views.logit_lens(self)


def logit_lens(model, prompt, target=None, k: int = 5) -> LogitLens:
    """The logit lens: the residual stream before each block and after the last, each through ln_f (its own
    LayerNorm scale) and the unembedding, as if the model stopped there. target (a token or id): its rank and
    probability at every layer and position."""
    _check_model(model)
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k <= model.config.vocab_size:
        raise SettingsError(f"k must be an integer in 1..{model.config.vocab_size}, got {k!r}")
    target = None if target is None else token_id(model, target)
    ids = _ids(model, prompt)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post")))
    resid, _ = cache.accumulated_resid()  # [L + 1, 1, T, C]
    resid = resid[:, 0]  # [L + 1, T, C]
    eps = model.config.layer_norm_epsilon
    top_ids, top_probs, ranks, probs = [], [], [], []
    for layer in resid:  # [T, C]: one layer at a time keeps [T, V] in memory, not [L + 1, T, V]
        logits = model.unembed(ops.layer_norm(layer, model.ln_f.weight, model.ln_f.bias, eps))  # [T, V]
        p = np.exp(ops.log_softmax(logits))  # [T, V]
        order = ops.top_indices(logits, k)  # [T, k], most likely first
        top_ids.append(order)
        top_probs.append(np.take_along_axis(p, order, axis=-1))
        if target is not None:
            ranks.append((logits > logits[:, target:target + 1]).sum(axis=-1))  # [T]
            probs.append(p[:, target])
    top_ids = np.stack(top_ids)
    text = model.tokenizer.token_text
    return LogitLens(
        tokens=[text(int(i)) for i in ids[0]],
        labels=["embed"] + [f"after block {i}" for i in range(model.config.n_layer)],
        top_ids=top_ids, top_probs=np.stack(top_probs),
        top_tokens=[[[text(int(i)) for i in row] for row in layer] for layer in top_ids],
        target=target, target_rank=np.stack(ranks) if ranks else None, target_prob=np.stack(probs) if probs else None)


# ----------------------------------------------------------------------------------- direct logit attribution


@dataclass
class LogitAttribution:
    """direct_logit_attribution's result: what each part of the model writes into the residual stream, read
    through the final LayerNorm (its scale frozen at this position) and the unembedding direction
    W_U[target] - W_U[baseline]. The parts add up to `total`, the model's own logit (difference)."""

    tokens: list[str]
    position: int
    target: int
    baseline: int | None
    heads: np.ndarray  # [L, H] each head's output (z @ W_O of that head)
    mlps: np.ndarray  # [L]
    attn_biases: np.ndarray  # [L] each attention's c_proj bias
    embed: float  # the token embedding
    pos_embed: float  # the position embedding
    ln_bias: float  # ln_f's bias (and a processed model's unembedding bias)
    total: float  # the logit (difference) the model computes

    def parts(self) -> dict[str, float]:
        """Every part by name ("L0H3", "MLP 2", ...), in the residual stream's order."""
        out = {"embed": self.embed, "pos_embed": self.pos_embed}
        for layer in range(len(self.mlps)):
            out.update({f"L{layer}H{h}": float(v) for h, v in enumerate(self.heads[layer])})
            out[f"attn bias {layer}"] = float(self.attn_biases[layer])
            out[f"MLP {layer}"] = float(self.mlps[layer])
        out["ln_f bias"] = self.ln_bias
        return out

    def __repr__(self) -> str:
        return f"LogitAttribution(heads={list(self.heads.shape)}, mlps={list(self.mlps.shape)}, total={self.total:.4f})"

    def __str__(self) -> str:
        from . import views

        return views.direct_logit_attribution(self)


def direct_logit_attribution(model, prompt, target, baseline=None, position: int = -1) -> LogitAttribution:
    """Direct logit attribution at `position` (default the last): each head's, MLP's, embedding's and bias's
    direct effect on target's logit, or on logit(target) - logit(baseline) when a baseline token is given.

    Each part's vector v becomes ((v - mean(v)) / scale) * ln_f.weight @ (W_U[target] - W_U[baseline]), scale
    being ln_f's at that position in this run (hook_scale): linear, so the parts add up to the logit (difference)."""
    _check_model(model)
    target = token_id(model, target)
    baseline = None if baseline is None else token_id(model, baseline, "baseline")
    ids = _ids(model, prompt)
    t = ids.shape[1]
    position = check_position(position, t)
    c = model.config
    logits, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith(
        ("hook_z", "hook_mlp_out", "hook_embed", "hook_pos_embed", "ln_final.hook_scale")))
    unembed = model.lm_head[target] - (model.lm_head[baseline] if baseline is not None else 0.0)  # [C]
    direction = (unembed * model.ln_f.weight).astype(np.float64)  # [C]
    scale = float(cache["ln_final.hook_scale"][0, position, 0])

    def read(v):  # [..., C] -> [...]
        v = np.asarray(v, np.float64)
        return ((v - v.mean(axis=-1, keepdims=True)) / scale) @ direction

    heads, mlps, biases = np.zeros((c.n_layer, c.n_head)), np.zeros(c.n_layer), np.zeros(c.n_layer)
    for layer, block in enumerate(model.blocks):
        z = cache["z", layer][0, position]  # [H, D]
        w_o = block.attn.c_proj.weight.reshape(c.n_head, c.head_size, c.n_embd)  # [H, D, C]
        heads[layer] = read(np.einsum("hd,hdc->hc", z, w_o))  # [H]
        biases[layer] = read(block.attn.c_proj.bias)
        mlps[layer] = read(cache["mlp_out", layer][0, position])
    ln_bias = float(model.ln_f.bias @ unembed)
    if model.lm_head_bias is not None:
        ln_bias += float(model.lm_head_bias[target] - (model.lm_head_bias[baseline] if baseline is not None else 0))
    row = logits[0, position]
    total = float(row[target] - (row[baseline] if baseline is not None else 0.0))
    return LogitAttribution(
        tokens=[model.tokenizer.token_text(int(i)) for i in ids[0]], position=position, target=target,
        baseline=baseline, heads=heads, mlps=mlps, attn_biases=biases,
        embed=float(read(cache["embed"][0, position])), pos_embed=float(read(cache["pos_embed"][0, position])),
        ln_bias=ln_bias, total=total)


# ------------------------------------------------------------------------------------------------- ablation


def ablation_hooks(model, heads, mode: str = "zero", reference=None) -> list:
    """fwd_hooks that ablate heads [(layer, head), ...]: their output z set to 0 ("zero") or to its mean over
    the positions of `reference` (a prompt; "mean"). For run_with_hooks, or model.hooks(...) while generating."""
    _check_model(model)
    pairs = _layer_heads(model, heads)
    if mode not in ("zero", "mean"):
        raise SettingsError(f"mode must be 'zero' or 'mean', got {mode!r}")
    means = {}
    if mode == "mean":
        if reference is None:
            raise SettingsError("mode='mean' needs a reference prompt whose positions give each head's mean output")
        _, cache = model.run_with_cache(_ids(model, reference, "reference"),
                                        names_filter=lambda n: n.endswith("hook_z"))
        means = {layer: cache["z", layer][0].mean(axis=0) for layer, _ in pairs}  # [H, D]
    by_layer: dict[int, list[int]] = {}
    for layer, head in pairs:
        by_layer.setdefault(layer, []).append(head)

    def hook_for(layer, chosen):
        def ablate(z, hook):  # z [B, T, H, D]
            z[:, :, chosen] = means[layer][chosen] if mode == "mean" else 0.0
        return ablate

    return [(f"blocks.{layer}.attn.hook_z", hook_for(layer, chosen)) for layer, chosen in by_layer.items()]


@dataclass
class HeadAblation:
    """head_ablation's result: effect[l, h] = the target's log-probability at the last position with head h of
    layer l ablated, minus without (negative: the head helped)."""

    tokens: list[str]
    target: int
    target_token: str
    mode: str
    logprob: float  # without ablation
    effect: np.ndarray  # [L, H]

    def __repr__(self) -> str:
        return f"HeadAblation(effect={list(self.effect.shape)}, mode={self.mode!r}, target={self.target_token!r})"

    def __str__(self) -> str:
        from . import views

        return views.head_ablation(self)


def head_ablation(model, prompt, target=None, mode: str = "zero") -> HeadAblation:
    """Ablate each head alone ("zero": its output z set to 0; "mean": to its mean over the prompt's positions)
    and measure the change in the target's log-probability after the prompt (target: default the model's top
    token). One forward pass per layer: the heads are the rows of one batch."""
    _check_model(model)
    if mode not in ("zero", "mean"):
        raise SettingsError(f"mode must be 'zero' or 'mean', got {mode!r}")
    ids = _ids(model, prompt)
    c = model.config
    logits, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_z"))
    target = int(np.argmax(logits[0, -1])) if target is None else token_id(model, target)
    base = float(ops.log_softmax(logits[0, -1])[target])
    effect = np.zeros((c.n_layer, c.n_head), np.float32)
    rows = np.repeat(ids, c.n_head, axis=0)  # [H, T]: row h ablates head h
    heads = np.arange(c.n_head)
    for layer in range(c.n_layer):
        fill = cache["z", layer][0].mean(axis=0) if mode == "mean" else np.zeros((c.n_head, c.head_size), np.float32)

        def ablate(z, hook, fill=fill):  # z [H, T, H, D]
            z = z.copy()
            z[heads, :, heads] = fill[:, None]  # row h, every position, head h
            return z

        out = model.run_with_hooks(rows, [(f"blocks.{layer}.attn.hook_z", ablate)], last_only=True)  # [H, 1, V]
        effect[layer] = ops.log_softmax(out[:, -1])[:, target] - base
    return HeadAblation([model.tokenizer.token_text(int(i)) for i in ids[0]], target,
                        model.tokenizer.token_text(target), mode, base, effect)


# ------------------------------------------------------------------------------------------- activation patching


@dataclass
class Patching:
    """patch's and patch_heads' result: values[l, i] = the metric of the corrupted run with the clean run's
    activation at layer l and position (or head) i put in. normalized: 0 = as corrupted, 1 = as clean."""

    activation: str  # "resid_pre", ..., or "z" (patch_heads)
    axis: str  # "position" or "head"
    labels: list[str]  # the positions' tokens "clean / corrupted", or head numbers
    values: np.ndarray  # [L, T] or [L, H]
    clean_metric: float
    corrupted_metric: float
    metric: str = "custom"

    @property
    def normalized(self) -> np.ndarray:
        span = self.clean_metric - self.corrupted_metric
        return (self.values - self.corrupted_metric) / (span if span else np.nan)

    def __repr__(self) -> str:
        return (f"Patching({self.activation} by layer x {self.axis}: {list(self.values.shape)}, clean "
                f"{self.clean_metric:.4f}, corrupted {self.corrupted_metric:.4f})")

    def __str__(self) -> str:
        from . import views

        return views.patch(self)


def make_metric(model, clean_logits, corrupted_logits, metric="logit_diff", answer=None, wrong=None):
    """(metric function of logits [B, T, V] -> float, its name). metric: a function, or "logit_diff"
    (logit(answer) - logit(wrong) at the last position, the batch's mean), "logprob" or "prob" (of answer).
    answer defaults to the clean run's top next token, wrong to the corrupted run's."""
    if callable(metric):
        return (lambda logits: float(metric(logits))), getattr(metric, "__name__", "custom")
    if metric not in METRICS:
        raise SettingsError(f"metric must be one of {', '.join(METRICS)} or a function of the logits, got {metric!r}")
    a = int(np.argmax(clean_logits[0, -1])) if answer is None else token_id(model, answer, "answer")
    if metric == "logit_diff":
        w = int(np.argmax(corrupted_logits[0, -1])) if wrong is None else token_id(model, wrong, "wrong")
        text = model.tokenizer.token_text
        if a == w:  # logit(a) - logit(a) is 0 whatever is patched: a table of zeros would mean nothing
            raise SettingsError(f"the answer and the wrong token are both {text(a)!r} (the clean and corrupted runs "
                                "predict the same token); give answer= and wrong= (--answer, --wrong) that differ")
        return (lambda logits: float((logits[:, -1, a] - logits[:, -1, w]).mean()),
                f"logit({text(a)!r}) - logit({text(w)!r})")
    if metric == "logprob":
        return (lambda logits: float(ops.log_softmax(logits[:, -1])[:, a].mean()),
                f"log p({model.tokenizer.token_text(a)!r})")
    return (lambda logits: float(np.exp(ops.log_softmax(logits[:, -1]))[:, a].mean()),
            f"p({model.tokenizer.token_text(a)!r})")


def _pair(model, clean, corrupted):
    clean, corrupted = _ids(model, clean, "clean"), _ids(model, corrupted, "corrupted")
    if clean.shape != corrupted.shape:
        raise InputError(f"the clean and corrupted prompts must have the same number of tokens (got "
                         f"{clean.shape[1]} and {corrupted.shape[1]}); change a word for one of as many tokens")
    return clean, corrupted


def patch(model, clean, corrupted, metric="logit_diff", activation: str = "resid_pre", answer=None,
          wrong=None) -> Patching:
    """Activation patching over layers x positions: for each block l and position p, the corrupted prompt run
    with the clean run's `activation` (resid_pre, resid_mid, resid_post, attn_out or mlp_out) of block l at
    position p, scored by `metric` (see make_metric). As transformer_lens.patching.get_act_patch_<activation>.
    One forward pass per block: the T patches are the rows of one batch."""
    _check_model(model)
    if activation not in PATCHABLE:
        raise SettingsError(f"activation must be one of {', '.join(PATCHABLE)}, got {activation!r}")
    clean, corrupted = _pair(model, clean, corrupted)
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_" + activation))
    corrupted_logits = model.forward(corrupted).logits
    score, name = make_metric(model, clean_logits, corrupted_logits, metric, answer, wrong)
    t = clean.shape[1]
    values = np.zeros((model.config.n_layer, t), np.float32)
    positions = np.arange(t)
    for layer in range(model.config.n_layer):
        source = cache[activation, layer][0]  # [T, C]

        def put(act, hook, source=source):  # act [T, T, C]: row p takes the clean activation at position p
            act = act.copy()
            act[positions, positions] = source
            return act

        logits = model.run_with_hooks(np.repeat(corrupted, t, axis=0), [(f"blocks.{layer}.hook_{activation}", put)],
                                      last_only=not callable(metric))  # a named metric reads the last position only
        values[layer] = [score(logits[p:p + 1]) for p in range(t)]
    labels = [_pair_label(model, a, b) for a, b in zip(clean[0], corrupted[0])]
    return Patching(activation, "position", labels, values, score(clean_logits), score(corrupted_logits), name)


def patch_heads(model, clean, corrupted, metric="logit_diff", answer=None, wrong=None) -> Patching:
    """Activation patching over layers x heads: each head's output z (every position) from the clean run put into
    the corrupted run, scored by `metric`. As transformer_lens.patching.get_act_patch_attn_head_out_all_pos."""
    _check_model(model)
    clean, corrupted = _pair(model, clean, corrupted)
    c = model.config
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    corrupted_logits = model.forward(corrupted).logits
    score, name = make_metric(model, clean_logits, corrupted_logits, metric, answer, wrong)
    values = np.zeros((c.n_layer, c.n_head), np.float32)
    heads = np.arange(c.n_head)
    for layer in range(c.n_layer):
        source = cache["z", layer][0]  # [T, H, D]

        def put(z, hook, source=source):  # z [H, T, H, D]: row h takes head h's clean output
            z = z.copy()
            z[heads, :, heads] = source.transpose(1, 0, 2)
            return z

        logits = model.run_with_hooks(np.repeat(corrupted, c.n_head, axis=0), [(f"blocks.{layer}.attn.hook_z", put)],
                                      last_only=not callable(metric))
        values[layer] = [score(logits[h:h + 1]) for h in range(c.n_head)]
    return Patching("z", "head", [str(h) for h in range(c.n_head)], values, score(clean_logits),
                    score(corrupted_logits), name)


def _pair_label(model, a, b) -> str:
    text = model.tokenizer.token_text
    return repr(text(int(a))) if a == b else f"{text(int(a))!r}/{text(int(b))!r}"
