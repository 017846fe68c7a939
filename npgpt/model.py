"""GPT-2's forward pass in NumPy, with a key/value cache for generation.

    ids [B, T] -> wte[ids] + wpe[positions]                       x [B, T, C]
    n_layer x:  x = x + attn(layer_norm(x))                       causal multi-head self-attention
                x = x + mlp(layer_norm(x))                        gelu(x @ W_fc + b) @ W_proj + b
    layer_norm(x) @ wte.T                                         logits [B, T, V] (the head is tied to wte)
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import ops, processing
from .config import GPT2Config
from .errors import ConfigError, ContextLengthError, InputError, NpgptError, SettingsError, WeightsError
from .generation import generate, stream_steps, stream_text
from .hooks import ActivationCache, HookTable, check_hooks, hook_names, names_selected
from .kv_cache import KVCache
from .memory import check_fits
from .prompts import prompt_ids
from .rules import check_integer
from .sampling import Sampler, apply, probabilities
from .settings import GenerationConfig, Settings
from .tokenizer import Tokenizer
from .weights import expected_shapes, find_checkpoint, load_weights, save_weights

HEAD_ROWS = 128  # positions unembedded at once when every position's logits are needed (scoring, echo): 26 MB


@dataclass
class LayerNorm:
    weight: np.ndarray  # [C]
    bias: np.ndarray  # [C]


@dataclass
class Linear:
    weight: np.ndarray  # [in, out] (Conv1D layout: y = x @ weight + bias)
    bias: np.ndarray  # [out]


@dataclass
class Attention:
    c_attn: Linear  # [C, 3C]: query | key | value side by side
    c_proj: Linear  # [C, C]


@dataclass
class MLP:
    c_fc: Linear  # [C, 4C]
    c_proj: Linear  # [4C, C]


@dataclass
class Block:
    """One transformer block's weights, named as the checkpoint names them (h.{i}.ln_1, h.{i}.attn.c_attn, ...)."""

    ln_1: LayerNorm
    attn: Attention
    ln_2: LayerNorm
    mlp: MLP


@dataclass
class Output:
    logits: np.ndarray | None  # [B, T, V] float32 (T = 1 when only the last position was asked for; None: not asked)
    hidden_states: list[np.ndarray] | None = None  # n_layer + 1 of [B, T, C]
    attentions: list[np.ndarray] | None = None  # n_layer of [B, H, T, S]
    last_hidden_state: np.ndarray | None = None  # [B, T, C] after ln_f (T = 1 with last_only), always given

    def __repr__(self) -> str:  # shapes, never the arrays
        def arrays(a):
            return "None" if a is None else f"{len(a)} x {_shape(a[0])}" if a else "[]"

        return (f"Output(logits={_shape(self.logits)}, hidden_states={arrays(self.hidden_states)}, "
                f"attentions={arrays(self.attentions)}, last_hidden_state={_shape(self.last_hidden_state)})")


def _read_only(a: np.ndarray) -> bool:
    """Whether nothing can write to a's data: neither a nor any array it is a view of is writeable."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return True


def _shape(a: np.ndarray | None) -> str:
    return "None" if a is None else f"{a.dtype}[{', '.join(map(str, a.shape))}]"


def attention(x, w: Attention, n_head: int, cache, layer: int, keys_allowed, need_probs: bool,
              last_query_only: bool = False, hooks: HookTable | None = None):
    """Causal multi-head self-attention of x [B, T, C] (already layer-normed) -> [B, T, C] and, if need_probs,
    the probabilities [B, H, T, S]. With a cache, k and v are stored after the past positions and attention
    reads all S = past + T of them. last_query_only: only the last position attends ([B, 1, C] out).
    hooks: the forward pass's hook table (None: no hook, the plain path)."""
    c = x.shape[-1]
    qkv = ops.linear(x, w.c_attn.weight, w.c_attn.bias)  # [B, T, 3C]
    q, k, v = (ops.split_heads(qkv[..., i * c:(i + 1) * c], n_head) for i in range(3))  # [B, H, T, D]
    if hooks is not None:
        q, k, v = (_hook_heads(hooks, f"blocks.{layer}.attn.hook_{n}", a) for n, a in zip("qkv", (q, k, v)))
    if cache is not None:
        k, v = cache.update(layer, k, v)  # [B, H, S, D], S = past + T
    if last_query_only:
        q = q[:, :, -1:]  # [B, H, 1, D]
    if hooks is not None and hooks.wants(f"blocks.{layer}.attn.hook_attn_scores", f"blocks.{layer}.attn.hook_pattern"):
        a, probs = hooked_attention(q, k, v, keys_allowed, hooks, f"blocks.{layer}.attn.")
    else:
        a, probs = ops.causal_attention(q, k, v, keys_allowed, need_probs)  # [B, H, T, D], [B, H, T, S] or None
    if hooks is not None:
        a = _hook_heads(hooks, f"blocks.{layer}.attn.hook_z", a)
    return ops.linear(ops.merge_heads(a), w.c_proj.weight, w.c_proj.bias), probs  # [B, T, C]


def _hook_heads(hooks: HookTable, name: str, a: np.ndarray) -> np.ndarray:
    """Run a per-head activation [B, H, T, D] through its hook point, which shows it as TransformerLens does,
    [B, T, H, D] (a view: editing it in place edits a)."""
    if not hooks.wants(name):
        return a
    return hooks(name, a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


def hooked_attention(q, k, v, keys_allowed, hooks: HookTable, prefix: str):
    """Attention with its scores and pattern passed through hook points: the whole [B, H, T, S] score matrix
    at once (a long prompt is not taken in blocks of queries here: T x S floats per head, and the keys no query
    may see are multiplied too). Masked scores are -inf in the hook, as in TransformerLens; the softmax treats
    them as ops.attention does, so with hooks that change nothing the result is, bit for bit, that of
    forward(output_attentions=True), which also normalises the pattern (without it, the output is divided by the
    softmax's sums instead: the same up to float32 rounding).
    q [B, H, T, D], k and v [B, H, S, D] -> output [B, H, T, D], pattern [B, H, T, S]."""
    t, s = q.shape[2], k.shape[2]
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)  # [B, H, T, S]
    allowed = ops.visible(t, s - t, keys_allowed)  # [..., T, S] or None
    if allowed is not None:
        scores = np.where(allowed, scores, np.float32(-np.inf))
    scores = hooks(prefix + "hook_attn_scores", scores)
    pattern = ops.softmax(np.maximum(scores, ops.MASKED))  # -inf -> the finite MASKED: an all-padding row is uniform
    pattern = hooks(prefix + "hook_pattern", pattern)
    return pattern @ v, pattern


def layer_norm(x, w: LayerNorm, eps: float, hooks: HookTable | None = None, prefix: str = ""):
    """ops.layer_norm, or, when a hook wants its parts, the same steps with its scale sqrt(var + eps) [B, T, 1]
    and normalized (x - mean) / scale [B, T, C] passed through prefix + hook_scale and hook_normalized."""
    if hooks is None or not hooks.wants(prefix + "hook_scale", prefix + "hook_normalized"):
        return ops.layer_norm(x, w.weight, w.bias, eps)
    centred, scale = ops.centre_and_scale(x, eps)  # [B, T, C], [B, T, 1]
    scale = hooks(prefix + "hook_scale", scale)
    normalized = hooks(prefix + "hook_normalized", centred * (1.0 / scale))  # [B, T, C]
    return normalized * w.weight + w.bias


def mlp(x, w: MLP, hooks: HookTable | None = None, prefix: str = ""):
    """gelu(x @ W_fc + b) @ W_proj + b: [B, T, C] -> [B, T, 4C] -> [B, T, C]"""
    if hooks is None:
        return ops.linear(ops.gelu(ops.linear(x, w.c_fc.weight, w.c_fc.bias)), w.c_proj.weight, w.c_proj.bias)
    pre = hooks(prefix + "hook_pre", ops.linear(x, w.c_fc.weight, w.c_fc.bias))  # [B, T, 4C]
    post = hooks(prefix + "hook_post", ops.gelu(pre))  # [B, T, 4C]
    return ops.linear(post, w.c_proj.weight, w.c_proj.bias)  # [B, T, C]


def _nested(ids) -> bool:
    """Whether ids given as a Python sequence hold rows ([B, T]) rather than ids ([T])."""
    return isinstance(ids, (list, tuple)) and bool(ids) and isinstance(ids[0], (list, tuple, np.ndarray))


class GPT2:
    """A GPT-2 language model: weights, configuration and tokenizer.

    model(ids) gives logits; model.generate(prompt) continues a prompt.
    """

    def __init__(self, config: GPT2Config, state: dict[str, np.ndarray], tokenizer: Tokenizer | None = None,
                 name: str | None = None):
        self.config = config
        self.tokenizer = tokenizer or Tokenizer.gpt2()
        self.name = name
        self.generation_config = None  # the model's generation_config.json, when it has one (GenerationConfig)
        self.state = state  # official names -> arrays, as in the checkpoint
        c = config
        self.wte = state["wte.weight"]  # [V, C]
        self.wpe = state["wpe.weight"]  # [n_positions, C]
        self.blocks = [self._block_weights(state, f"h.{i}") for i in range(c.n_layer)]
        self.ln_f = LayerNorm(state["ln_f.weight"], state["ln_f.bias"])
        self.lm_head = state.get("lm_head.weight", self.wte)  # [V, C]; GPT-2 ties it to wte
        self.lm_head_bias = state.get("lm_head.bias")  # [V]; None, but for a processed model (fold_ln)
        self.processing: dict[str, bool] = {}  # the weight processing applied (see processed())
        self._fwd_hooks: list = []  # (name, fn) pairs active in every forward pass (model.hooks(...))
        self._cache_request = None  # (dict to fill, names) while run_with_cache runs
        self._head_columns: tuple[np.ndarray, np.ndarray] | None = None  # (lm_head, its transposed copy)

    @staticmethod
    def _block_weights(state: dict, key: str) -> Block:
        def linear(name):
            return Linear(state[f"{key}.{name}.weight"], state[f"{key}.{name}.bias"])

        def norm(name):
            return LayerNorm(state[f"{key}.{name}.weight"], state[f"{key}.{name}.bias"])

        return Block(ln_1=norm("ln_1"), attn=Attention(linear("attn.c_attn"), linear("attn.c_proj")),
                     ln_2=norm("ln_2"), mlp=MLP(linear("mlp.c_fc"), linear("mlp.c_proj")))

    # ----------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, weights: str | None = None, name: str | None = None) -> "GPT2":
        """Load `config.json` and `model.safetensors` (official layout) from a directory.

        weights: a safetensors file to use instead of the directory's model.safetensors.
        """
        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise NpgptError(f"{model_dir}: no such model directory")
        config = GPT2Config.from_json(os.path.join(model_dir, "config.json"))
        state = load_weights(weights or find_checkpoint(model_dir), config)
        model = cls(config, state, Tokenizer.for_model_dir(model_dir, vocab_size=config.vocab_size),
                    name=name or model_dir)
        model.generation_config = GenerationConfig.from_model_dir(model_dir)
        return model

    @classmethod
    def random(cls, config: GPT2Config | str = "gpt2", seed: int = 123) -> "GPT2":
        """An untrained GPT-2 initialised as OpenAI did: N(0, 0.02) weights, residual projections scaled by
        1/sqrt(2 * n_layer), zero biases, unit LayerNorm gains."""
        config = GPT2Config.preset(config) if isinstance(config, str) else config
        if not isinstance(config, GPT2Config):
            raise ConfigError(f"GPT2.random takes a GPT2Config or a preset name, got {type(config).__name__}")
        check_integer("seed", seed)
        check_fits(4 * config.parameter_count(), f"a random GPT-2 of {config.parameter_count():,} parameters",
                   "choose a smaller configuration", error=ConfigError)
        rng = np.random.default_rng(seed)
        state = {}
        for name, shape in expected_shapes(config).items():
            if name.endswith(".bias"):
                state[name] = np.zeros(shape, np.float32)
            elif ".ln_" in name or name.startswith("ln_"):
                state[name] = np.ones(shape, np.float32)
            else:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
                state[name] = rng.normal(0.0, std, size=shape).astype(np.float32)
        return cls(config, state, name="random")

    def save(self, model_dir: str | os.PathLike) -> None:
        """Write config.json and model.safetensors in the official layout (transformers can load them)."""
        if self.processing:
            raise SettingsError(f"this model's weights were processed ({', '.join(self.processing)}): the official "
                                "layout has no place for them; save the model before model.processed(...)")
        if not isinstance(model_dir, (str, os.PathLike)) or not os.fspath(model_dir):
            raise SettingsError(f"save takes a directory's path, got {model_dir!r}")
        if os.path.isfile(model_dir):
            raise WeightsError(f"{os.fspath(model_dir)} is a file: save takes a directory (it writes config.json "
                               "and model.safetensors there)")
        try:
            os.makedirs(model_dir, exist_ok=True)
        except OSError as e:
            raise WeightsError(f"{os.fspath(model_dir)}: cannot make this directory ({e.strerror or e}); "
                               "choose another path") from None
        save_weights(self.state, os.path.join(model_dir, "model.safetensors"))
        self.config.save(os.path.join(model_dir, "config.json"))  # last: a directory with one is complete

    @property
    def n_params(self) -> int:
        return sum(a.size for a in self.state.values())

    # ------------------------------------------------------------------------------------------ forward pass

    def __call__(self, ids) -> np.ndarray:
        """Logits for every position: ids [T] -> [T, V], ids [B, T] -> [B, T, V]."""
        single = np.ndim(ids) == 1 if isinstance(ids, np.ndarray) else not _nested(ids)
        logits = self.forward(ids).logits  # [B, T, V]
        return logits[0] if single else logits

    def new_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        return KVCache(self.config, batch_size, capacity)

    def forward(self, ids, cache: KVCache | None = None, attention_mask=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                last_only: bool = False, logits: bool = True) -> Output:
        """Run the model over ids [B, T], after the positions already in `cache` if one is given.

        attention_mask [B, past + T]: 1 for tokens, 0 for padding (as transformers); padding keys are ignored
        and, unless position_ids [B, T] are given, positions count real tokens only (left padding works).
        last_only: compute logits for the last position only (what generation needs).
        logits=False: no output head (logits None), for callers that unembed last_hidden_state themselves, a
        chunk at a time (scoring every position of a text).
        hidden_states follow transformers: the embeddings, each block's output, and the last one after ln_f;
        last_hidden_state, that last one alone, is always given (it costs nothing to keep).
        """
        ids = self._check_ids(ids)
        b, t = ids.shape
        past = cache.length if cache is not None else 0
        if cache is not None and (cache.batch_size != b or past + t > cache.capacity):
            raise InputError(f"cache holds {cache.batch_size} rows and {cache.capacity} positions; "
                             f"got {b} rows reaching position {past + t}")
        keys_allowed, positions = self._keys_and_positions(b, t, past, attention_mask, position_ids)
        if positions.min() < 0:
            raise InputError("position_ids must be >= 0")
        if positions.max() >= self.config.n_positions:
            raise ContextLengthError(f"{positions.max() + 1} positions do not fit in the model's context of "
                                     f"{self.config.n_positions} tokens; shorten the input")

        # Hooks, and the activations run_with_cache records: None unless some are active, and then the plain
        # path below is the one that runs (every `if hooks` is skipped).
        hooks = self._hook_table()
        # When only the last position's logits are wanted, the last block needs every position's keys and
        # values (for the cache) but only the last position's query, attention output and MLP. Hooks see
        # every position, as they would without last_only.
        trim_last = last_only and not (output_hidden_states or output_attentions or hooks)
        embed, pos_embed = self.wte[ids], self.wpe[positions]  # [B, T, C], [B or 1, T, C]
        if hooks:
            embed = hooks("hook_embed", embed)
            pos_embed = hooks("hook_pos_embed", np.ascontiguousarray(np.broadcast_to(pos_embed, embed.shape)))
        x = embed + pos_embed  # [B, T, C]
        hidden = [x] if output_hidden_states else None  # kept only when asked: [B, T, C] per layer adds up
        attentions = [] if output_attentions else None
        eps = self.config.layer_norm_epsilon
        for i, block in enumerate(self.blocks):
            last_query_only = trim_last and i == len(self.blocks) - 1
            name = f"blocks.{i}." if hooks else ""
            if hooks:
                x = hooks(name + "hook_resid_pre", x)
            h = layer_norm(x, block.ln_1, eps, hooks, name + "ln1.")  # [B, T, C]
            a, probs = attention(h, block.attn, self.config.n_head, cache, i, keys_allowed,
                                 output_attentions, last_query_only, hooks)  # [B, T, C], [B, H, T, S]
            if hooks:
                a = hooks(name + "hook_attn_out", a)
            x = (x[:, -1:] if last_query_only else x) + a  # [B, T, C] (T = 1 if last_query_only)
            if hooks:
                x = hooks(name + "hook_resid_mid", x)
            m = mlp(layer_norm(x, block.ln_2, eps, hooks, name + "ln2."), block.mlp, hooks, name + "mlp.")
            if hooks:
                m = hooks(name + "hook_mlp_out", m)
            x = x + m  # [B, T, C]
            if hooks:
                x = hooks(name + "hook_resid_post", x)
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attentions.append(probs)
        if cache is not None:
            cache.length += t

        x = layer_norm(x, self.ln_f, eps, hooks, "ln_final.")  # [B, T, C]
        if output_hidden_states:
            hidden[-1] = x  # as transformers: the last hidden state is after ln_f
        if last_only:
            x = x[:, -1:]  # [B, 1, C]
        logits_out = self.unembed(x, decoding=cache is not None) if logits else None
        return Output(logits_out, hidden, attentions, x)  # logits [B, T, V]

    def unembed(self, x: np.ndarray, decoding: bool = False) -> np.ndarray:
        """The output head: logits [..., V] of final-layer-normed vectors x [..., C] (x @ wte.T, the head being tied
        to wte; a processed model's has a bias), by ops.head_product. decoding: a step of a decode loop (forward
        with a cache), whose 2-32 rows (a batch, drafts to check) are multiplied by head_columns()."""
        rows = x.reshape(-1, x.shape[-1])  # [N, C]
        columns = self.head_columns() if decoding and 1 < len(rows) <= ops.HEAD_ROWS_SLICED else None
        logits = ops.head_product(rows, self.lm_head, columns).reshape(*x.shape[:-1], -1)  # [..., V]
        if self.lm_head_bias is not None:  # only a processed model (fold_ln) has one
            logits += self.lm_head_bias
        return logits

    def head_columns(self) -> np.ndarray | None:
        """The output head transposed, [C, V] and contiguous, which products of a few rows read 1.4-1.7x faster
        (ops.head_product), or None. Made at the first decode step of several rows and kept (154 MB for GPT-2
        124M); only of a head that cannot change in place (a loaded checkpoint's weights are read-only views of
        the file), so that the copy is never stale: a writeable head (GPT2.random, processed(), yours) has none."""
        head = self.lm_head
        if not _read_only(head):
            return None
        if self._head_columns is None or self._head_columns[0] is not head:
            self._head_columns = (head, np.ascontiguousarray(head.T))  # two threads may both make it: one is kept
        return self._head_columns[1]

    # ------------------------------------------------------------------------- hooks and the activation cache

    def _hook_table(self) -> HookTable | None:
        """The hooks of this forward pass (None when no hook nor cache is active: the plain path)."""
        if not self._fwd_hooks and self._cache_request is None:
            return None
        cache, names = self._cache_request or (None, frozenset())
        return HookTable(self._fwd_hooks, cache, names)

    @contextmanager
    def hooks(self, fwd_hooks=()):
        """Hooks that act in every forward pass inside the `with`, generate and stream included; removed on exit.

            with model.hooks(fwd_hooks=[("blocks.3.hook_resid_post", steer)]):
                model.generate("I think", max_new_tokens=20)

        fwd_hooks: (name, fn) pairs, name a hook point (npgpt.hooks.hook_names) or a predicate on names;
        fn(activation, hook) may edit the activation in place or return a replacement of its shape. During
        generation a step's activations are its new positions' ([B, 1, ...] after the prompt; keys, values and
        attention patterns reach over every position so far, [B, H, 1, S]). The hooks belong to the model, so
        they act in every thread that uses it while the `with` lasts.
        """
        pairs = check_hooks(fwd_hooks, self.config.n_layer)
        before = self._fwd_hooks
        self._fwd_hooks = before + pairs
        try:
            yield self
        finally:
            self._fwd_hooks = before

    def run_with_hooks(self, prompt, fwd_hooks=(), **forward_settings) -> np.ndarray:
        """The logits [B, T, V] of a prompt (text, ids [T] or [B, T]) run with these hooks (see hooks()) on top
        of any already active. Text is encoded as generate encodes it: no <|endoftext|> is put before it
        (TransformerLens's to_tokens prepends one). forward_settings: forward()'s (attention_mask, ...)."""
        with self.hooks(fwd_hooks):
            return self.forward(self._prompt_array(prompt), **forward_settings).logits

    def run_with_cache(self, prompt, names_filter=None, fwd_hooks=(), **forward_settings):
        """(logits [B, T, V], ActivationCache) of a prompt: every hook point's activation, or those names_filter
        selects (a name, shorthand such as "pattern3", a list of them, or a predicate on names). With fwd_hooks,
        the cache holds the activations as the hooks left them. Costs memory: a 124M GPT-2 keeps about
        (30 C + 3 H T) floats per position per block."""
        names = names_selected(names_filter, self.config.n_layer)
        activations: dict[str, np.ndarray] = {}
        before = self._cache_request
        self._cache_request = (activations, names)
        try:
            logits = self.run_with_hooks(prompt, fwd_hooks, **forward_settings)
        finally:
            self._cache_request = before
        order = {n: i for i, n in enumerate(hook_names(self.config.n_layer))}
        activations = dict(sorted(activations.items(), key=lambda item: order[item[0]]))
        return logits, ActivationCache(activations, self.config.n_layer)

    def _prompt_array(self, prompt) -> np.ndarray:
        """Text -> its ids [1, T]; ids are left for forward() to check."""
        if isinstance(prompt, str):
            return np.array([prompt_ids(self.tokenizer, prompt, self.config.vocab_size)])
        return prompt

    # -------------------------------------------------------------------------------------- weight processing

    def processed(self, fold_ln: bool = False, center_writing_weights: bool = False,
                  center_unembed: bool = False) -> "GPT2":
        """A new model with TransformerLens's weight processing (the original is unchanged). Each option keeps
        the next-token probabilities; fold_ln and center_writing_weights keep the logits too (to float
        rounding), center_unembed shifts each position's logits by a constant. The activations change:

        fold_ln: every LayerNorm's weight and bias go into the weights that read its output (ln_1 into c_attn,
            ln_2 into c_fc, ln_f into the unembedding, which then has a bias [V] and is no longer tied to wte);
            those weights are centred over their input axis (a normalized vector has mean 0, so this changes
            nothing) and the LayerNorms become weight 1, bias 0: hook_normalized is then what the next layer
            reads.
        center_writing_weights: what writes to the residual stream (wte, wpe, each attn and mlp c_proj weight
            and bias) has its mean over the model axis C removed: the residual stream has mean 0 and, since
            every LayerNorm subtracts the mean, nothing downstream changes. The unembedding keeps the original
            wte (untied).
        center_unembed: the unembedding's mean over the vocabulary is removed (logits of each position shift
            by the same amount; softmax does not change).
        """
        return processing.processed(self, fold_ln, center_writing_weights, center_unembed)

    def _check_ids(self, ids) -> np.ndarray:
        if isinstance(ids, (str, bytes)) or ids is None:
            raise InputError(f"forward takes token ids ([T] or [B, T] integers), got {type(ids).__name__}; "
                             "encode text with model.tokenizer.encode")
        try:
            ids = np.asarray(ids)
        except ValueError:  # ragged nested lists
            raise InputError("token ids must form a [T] or [B, T] array (rows of one length); use generate() "
                             "for prompts of different lengths") from None
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InputError(f"expected token ids of shape [T] or [B, T] with T >= 1, got shape {list(ids.shape)}")
        if not np.issubdtype(ids.dtype, np.integer) or ids.dtype == np.bool_:
            raise InputError(f"token ids must be integers, got {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise InputError(f"token id {bad} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        return ids

    def _keys_and_positions(self, b, t, past, attention_mask, position_ids):
        """Which keys are tokens rather than padding ([B, 1, 1, S] bool, None = all) and the positions [B or 1, T]."""
        if attention_mask is None:
            positions = np.arange(past, past + t)[None] if position_ids is None else np.asarray(position_ids)
            return None, positions
        mask = np.asarray(attention_mask).astype(bool)
        if mask.shape != (b, past + t):
            raise InputError(f"attention_mask must have shape [B, past + T] = [{b}, {past + t}], "
                             f"got {list(mask.shape)}")
        if position_ids is None:
            position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, past:]  # [B, T] counting real tokens
        return (None if mask.all() else mask[:, None, None, :]), np.asarray(position_ids)

    # ---------------------------------------------------------------------------------------------- generation

    def generate(self, prompt, **settings):
        """Continue a prompt. Text in, the continuation's text out; ids in, the new ids out.

        See npgpt.generation.generate for the settings (max_new_tokens, temperature, seed, ...).
        """
        return generate(self, prompt, **settings)

    def next_token_distribution(self, prompt, **settings) -> np.ndarray:
        """The probabilities [V] that generation would draw the token after `prompt` from, with these decoding
        settings (temperature, top_k, top_p, logit_bias by id or word, ...: the rules of npgpt.sampling). With
        greedy settings (the default, temperature 0, do_sample=False) it is the distribution whose most likely
        token generation takes: the rules that apply then (penalties, bias, bans) shape it, the sampling ones not.
        Settings that do not change the distribution (max_new_tokens, stop, ...) are refused; seed is
        accepted, as with generate, and changes nothing here."""
        extra = sorted(set(settings) - Sampler.names() - {"seed"})
        if extra:
            raise SettingsError(f"{extra[0]!r} does not change the next-token distribution; "
                                "next_token_distribution takes the decoding rules (temperature, top_k, ...)")
        s = Settings.parse(self, settings)
        ids = prompt_ids(self.tokenizer, prompt, self.config.vocab_size)
        logits = self.forward(ids, last_only=True).logits[0]  # [1, V]
        processed = apply(s.sampler.rules(prompt_length=len(ids)), np.array([ids]), logits)
        return probabilities(processed)[0].astype(np.float32)

    def stream(self, prompt, **settings):
        """Like generate, but yields the text piece by piece as it is produced."""
        return stream_text(self, prompt, **settings)

    def stream_steps(self, prompt, **settings):
        """Like stream, but yields a Step per token: its id, its text and, on the last, the finish reason."""
        return stream_steps(self, prompt, **settings)

    def __repr__(self) -> str:
        """The module tree, as print(torch_module) shows it, with each part's shapes and parameter count."""
        c, b = self.config, self.blocks[0]

        def n(*arrays):
            return f"{sum(a.size for a in arrays):,}"

        def linear(name, w):
            return f"({name}): Conv1D(in={w.weight.shape[0]}, out={w.weight.shape[1]})  {n(w.weight, w.bias)}"

        def norm(name, w):
            return f"({name}): LayerNorm(({w.weight.shape[0]},), eps={c.layer_norm_epsilon:g})  {n(w.weight, w.bias)}"

        block_params = sum(a.size for a in _block_arrays(b))
        head = "tied to wte" if self.lm_head is self.wte else f"its own weight  {n(self.lm_head)}"
        lines = [
            f"GPT2(name={self.name!r}, params={self.n_params:,}",
            f"  (wte): Embedding({c.vocab_size}, {c.n_embd})  {n(self.wte)}",
            f"  (wpe): Embedding({c.n_positions}, {c.n_embd})  {n(self.wpe)}",
            f"  (h): {c.n_layer} x Block  {block_params * c.n_layer:,}",
            f"    {norm('ln_1', b.ln_1)}",
            f"    (attn): CausalSelfAttention({c.n_head} heads of {c.head_size})  "
            f"{n(b.attn.c_attn.weight, b.attn.c_attn.bias, b.attn.c_proj.weight, b.attn.c_proj.bias)}",
            f"      {linear('c_attn', b.attn.c_attn)}",
            f"      {linear('c_proj', b.attn.c_proj)}",
            f"    {norm('ln_2', b.ln_2)}",
            f"    (mlp): MLP(gelu tanh)  {n(b.mlp.c_fc.weight, b.mlp.c_fc.bias, b.mlp.c_proj.weight, b.mlp.c_proj.bias)}",
            f"      {linear('c_fc', b.mlp.c_fc)}",
            f"      {linear('c_proj', b.mlp.c_proj)}",
            f"  {norm('ln_f', self.ln_f)}",
            f"  (lm_head): Linear({c.n_embd}, {c.vocab_size}, bias=False)  {head}",
            ")",
        ]
        return "\n".join(lines)


def _block_arrays(block: Block) -> list[np.ndarray]:
    """The arrays of one block's weights."""
    return [block.ln_1.weight, block.ln_1.bias, block.attn.c_attn.weight, block.attn.c_attn.bias,
            block.attn.c_proj.weight, block.attn.c_proj.bias, block.ln_2.weight, block.ln_2.bias,
            block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias]
