"""Hook points: named places in the forward pass where an activation can be read or replaced.

TransformerLens's idea, in NumPy: every activation worth looking at passes through an identity with a name, and
the names are the API. They are TransformerLens's names for GPT-2, with the same shapes and meaning:

    hook_embed, hook_pos_embed                  [B, T, C]     token and position embeddings
    blocks.{i}.hook_resid_pre                   [B, T, C]     the residual stream entering block i
    blocks.{i}.ln1.hook_scale                   [B, T, 1]     sqrt(var(x) + eps) of ln_1
    blocks.{i}.ln1.hook_normalized              [B, T, C]     (x - mean) / scale, before ln_1's weight and bias
    blocks.{i}.attn.hook_q, hook_k, hook_v      [B, T, H, D]
    blocks.{i}.attn.hook_attn_scores            [B, H, T, S]  q.k / sqrt(D), masked keys -inf
    blocks.{i}.attn.hook_pattern                [B, H, T, S]  softmax of the scores
    blocks.{i}.attn.hook_z                      [B, T, H, D]  pattern @ v, before c_proj
    blocks.{i}.hook_attn_out                    [B, T, C]     c_proj(z): what attention adds
    blocks.{i}.hook_resid_mid                   [B, T, C]     resid_pre + attn_out
    blocks.{i}.ln2.hook_scale, hook_normalized  as ln1, for ln_2
    blocks.{i}.mlp.hook_pre                     [B, T, 4C]    x @ W_fc + b, before gelu
    blocks.{i}.mlp.hook_post                    [B, T, 4C]    gelu(pre)
    blocks.{i}.hook_mlp_out                     [B, T, C]     what the MLP adds
    blocks.{i}.hook_resid_post                  [B, T, C]     resid_mid + mlp_out
    ln_final.hook_scale, hook_normalized        as ln1, for ln_f

S = past + T: with a key/value cache (generation), a step's queries are its new positions only and its keys
are every position so far; q, k and v are the new positions' (as TransformerLens with its cache).

A hook is `fn(activation, hook)`: it may change the activation in place, or return a replacement of the same
shape (None keeps it); `hook.name` is the hook point's name and `hook.layer()` its block. Hooks of one point run
in the order given; a cache, when asked for, records what the activation is after them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from .errors import SettingsError

BLOCK_POINTS = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
                "hook_mlp_out", "hook_resid_post")


def hook_names(n_layer: int) -> list[str]:
    """Every hook point of a GPT-2 of n_layer blocks, in the order the forward pass reaches them."""
    return (["hook_embed", "hook_pos_embed"]
            + [f"blocks.{i}.{point}" for i in range(n_layer) for point in BLOCK_POINTS]
            + ["ln_final.hook_scale", "ln_final.hook_normalized"])


# TransformerLens's shorthand (transformer_lens.utils.get_act_name), for GPT-2's hook points.
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_post": "post"}
_LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """A hook point's full name from TransformerLens's shorthand: act_name("pattern", 3) ->
    "blocks.3.attn.hook_pattern", act_name("resid_post", 5), act_name("scale", 2, "ln1"), act_name("k6"),
    act_name("normalized") -> "ln_final.hook_normalized". A full name is returned as it is."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.match(r"([a-z_]+?)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or None
    name = _ALIASES.get(name, name)
    if name in ("q", "k", "v", "z", "pattern", "attn_scores"):
        layer_type = "attn"
    elif name in ("pre", "post"):
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPES:
        layer_type = _LAYER_TYPES[layer_type]
    full = f"blocks.{layer}." if layer is not None else ""
    full += f"{layer_type}." if layer_type else ""
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


class HookPoint:
    """What a hook function receives besides the activation: the point's name (TransformerLens's HookPoint)."""

    def __init__(self, name: str):
        self.name = name

    def layer(self) -> int | None:
        """The block this point is in (None for the embeddings and ln_final)."""
        return int(self.name.split(".")[1]) if self.name.startswith("blocks.") else None

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def check_hooks(fwd_hooks, n_layer: int) -> list[tuple[str, Callable]]:
    """fwd_hooks as a list of (name, fn), each name a hook point (or a predicate on names, as TransformerLens
    allows) expanded to the names it selects; anything else is a SettingsError naming fwd_hooks."""
    names = hook_names(n_layer)
    known = set(names)
    if isinstance(fwd_hooks, tuple) and len(fwd_hooks) == 2 and isinstance(fwd_hooks[0], str):
        fwd_hooks = [fwd_hooks]  # a single (name, fn)
    try:
        pairs = list(fwd_hooks)
    except TypeError:
        raise SettingsError(f"fwd_hooks must be a list of (name, fn) pairs, got {type(fwd_hooks).__name__}") from None
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
            raise SettingsError(f"fwd_hooks must be (name, fn) pairs with fn(activation, hook) callable, "
                                f"got {pair!r:.60}")
        name, fn = pair
        if callable(name):
            out += [(n, fn) for n in names if name(n)]
        elif isinstance(name, str) and name in known:
            out.append((name, fn))
        else:
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; see npgpt.hooks.hook_names(n_layer)"
            raise SettingsError(f"fwd_hooks: {name!r} is not a hook point of this model{hint}")
    return out


def names_selected(names_filter, n_layer: int) -> set[str]:
    """The hook points a run_with_cache names_filter selects: None = all, a name, a list of names, or a
    predicate on names (as TransformerLens). Shorthand names are accepted ("pattern3", "resid_post5")."""
    names = hook_names(n_layer)
    if names_filter is None:
        return set(names)
    if callable(names_filter):
        return {n for n in names if names_filter(n)}
    wanted = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    full = [act_name(n) if isinstance(n, str) else n for n in wanted]
    unknown = [n for n in full if n not in set(names)]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "; see npgpt.hooks.hook_names(n_layer)"
        raise SettingsError(f"names_filter: {unknown[0]!r} is not a hook point of this model{hint}")
    return set(full)


class HookTable:
    """The hooks and cache of one forward pass. The model asks `wants(name)` before computing what only a hook
    needs (the attention scores of a long prompt, a LayerNorm's parts), then calls table(name, activation)."""

    def __init__(self, fwd_hooks: list[tuple[str, Callable]], cache: dict | None = None,
                 cached: set[str] | frozenset = frozenset()):
        self.fns: dict[str, list[Callable]] = {}
        for name, fn in fwd_hooks:
            self.fns.setdefault(name, []).append(fn)
        self.cache = cache
        self.cached = cached if cache is not None else frozenset()

    def wants(self, *names: str) -> bool:
        return any(n in self.fns or n in self.cached for n in names)

    def __call__(self, name: str, x: np.ndarray) -> np.ndarray:
        for fn in self.fns.get(name, ()):
            new = fn(x, HookPoint(name))
            if new is not None:
                new = np.asarray(new, dtype=np.float32)
                if new.shape != x.shape:
                    raise SettingsError(f"the hook on {name} returned shape {list(new.shape)} for an activation "
                                        f"of shape {list(x.shape)}; return an array of the same shape, or None")
                x = new
        if name in self.cached:
            self.cache[name] = x.copy()  # what the activation is here, even if a later hook edits it in place
        return x


class ActivationCache(Mapping):
    """The activations of one forward pass by hook point name, indexable as TransformerLens's ActivationCache:
    cache["blocks.3.attn.hook_pattern"], cache["pattern", 3], cache["resid_post", -1], cache["scale", 2, "ln1"],
    cache["k6"]. Arrays keep their batch axis ([B, ...])."""

    def __init__(self, activations: dict[str, np.ndarray], n_layer: int):
        self.activations = activations
        self.n_layer = n_layer

    def _key(self, key) -> str:
        if isinstance(key, str):
            return key if key in self.activations else act_name(key)
        if isinstance(key, tuple) and key and isinstance(key[0], str):
            key = list(key) + [None] * (3 - len(key))
            layer = key[1] + self.n_layer if key[1] is not None and key[1] < 0 else key[1]
            return act_name(key[0], layer, key[2])
        raise KeyError(key)

    def __getitem__(self, key) -> np.ndarray:
        name = self._key(key)
        if name not in self.activations:
            raise KeyError(f"{name!r} is not in this cache (run_with_cache's names_filter left it out, "
                           f"or it is not a hook point)")
        return self.activations[name]

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self.activations
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def stack(self, name: str) -> np.ndarray:
        """One per-block activation of every block, stacked: stack("resid_post") -> [L, B, T, C]."""
        return np.stack([self[name, i] for i in range(self.n_layer)])

    def accumulated_resid(self) -> tuple[np.ndarray, list[str]]:
        """The residual stream entering each block and after the last: [L + 1, B, T, C], with labels
        ("0_pre", ..., "final_post"), as TransformerLens's accumulated_resid (without ln_final)."""
        resid = [self["resid_pre", i] for i in range(self.n_layer)] + [self["resid_post", self.n_layer - 1]]
        labels = [f"{i}_pre" for i in range(self.n_layer)] + ["final_post"]
        return np.stack(resid), labels

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}: {list(a.shape)}" for n, a in list(self.activations.items())[:3])
        more = f", ... ({len(self)} in all)" if len(self) > 3 else ""
        return f"ActivationCache({shown}{more})"
