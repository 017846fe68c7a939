"""GPT-2's forward pass in NumPy, with a key/value cache for generation.

    ids [B, T] -> wte[ids] + wpe[positions]                       x [B, T, C]
    n_layer x:  x = x + attn(layer_norm(x))                       causal multi-head self-attention
                x = x + mlp(layer_norm(x))                        gelu(x @ W_fc + b) @ W_proj + b
    layer_norm(x) @ wte.T                                         logits [B, T, V] (the head is tied to wte)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from . import ops
from .config import GPT2Config
from .errors import ConfigError, ContextLengthError, InputError, NpgptError, SettingsError
from .generation import generate, stream_steps, stream_text
from .memory import check_fits
from .prompts import prompt_ids
from .sampling import Sampler, apply, probabilities
from .settings import GenerationConfig, Settings
from .tokenizer import Tokenizer
from .weights import expected_shapes, find_checkpoint, load_weights, save_weights


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
    logits: np.ndarray  # [B, T, V] float32 (T = 1 when only the last position was asked for)
    hidden_states: list[np.ndarray] | None = None  # n_layer + 1 of [B, T, C]
    attentions: list[np.ndarray] | None = None  # n_layer of [B, H, T, S]

    def __repr__(self) -> str:  # shapes, never the arrays
        def arrays(a):
            return "None" if a is None else f"{len(a)} x {_shape(a[0])}" if a else "[]"

        return (f"Output(logits={_shape(self.logits)}, hidden_states={arrays(self.hidden_states)}, "
                f"attentions={arrays(self.attentions)})")


def _shape(a: np.ndarray) -> str:
    return f"{a.dtype}[{', '.join(map(str, a.shape))}]"


def attention(x, w: Attention, n_head: int, cache, layer: int, keys_allowed, need_probs: bool,
              last_query_only: bool = False):
    """Causal multi-head self-attention of x [B, T, C] (already layer-normed) -> [B, T, C] and, if need_probs,
    the probabilities [B, H, T, S]. With a cache, k and v are stored after the past positions and attention
    reads all S = past + T of them. last_query_only: only the last position attends ([B, 1, C] out)."""
    c = x.shape[-1]
    qkv = ops.linear(x, w.c_attn.weight, w.c_attn.bias)  # [B, T, 3C]
    q, k, v = (ops.split_heads(qkv[..., i * c:(i + 1) * c], n_head) for i in range(3))  # [B, H, T, D]
    if cache is not None:
        k, v = cache.update(layer, k, v)  # [B, H, S, D], S = past + T
    if last_query_only:
        q = q[:, :, -1:]  # [B, H, 1, D]
    a, probs = ops.causal_attention(q, k, v, keys_allowed, need_probs)  # [B, H, T, D], [B, H, T, S] or None
    return ops.linear(ops.merge_heads(a), w.c_proj.weight, w.c_proj.bias), probs  # [B, T, C]


def mlp(x, w: MLP):
    """gelu(x @ W_fc + b) @ W_proj + b: [B, T, C] -> [B, T, 4C] -> [B, T, C]"""
    return ops.linear(ops.gelu(ops.linear(x, w.c_fc.weight, w.c_fc.bias)), w.c_proj.weight, w.c_proj.bias)


class KVCache:
    """Keys and values of every position seen so far, preallocated for `capacity` positions (by default the
    model's context; a left-padded batch may need its padding on top).

    keys, values: [L, B, H, capacity, D]. A forward pass over T new positions writes them at
    [length, length + T) in each layer, attends over [0, length + T), then advances `length` by T.
    """

    def __init__(self, config: GPT2Config, batch_size: int, capacity: int | None = None):
        capacity = config.n_positions if capacity is None else capacity
        shape = (config.n_layer, batch_size, config.n_head, capacity, config.head_size)
        check_fits(2 * 4 * math.prod(shape), f"a key/value cache of {batch_size} rows x {capacity} positions",
                   "use fewer rows or positions")
        self.keys = np.zeros(shape, dtype=np.float32)  # zeroed lazily by the OS: memory is used as it fills
        self.values = np.zeros(shape, dtype=np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v [B, H, T, D] after the past ones; return all keys and values so far, [B, H, S, D]."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def select(self, rows) -> None:
        """Keep, reorder or repeat batch rows: new row i is old row rows[i]. Only the filled positions move."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == self.batch_size and (rows == np.arange(len(rows))).all():
            return
        if len(rows) == self.batch_size:  # a reordering (beam search): in place
            for cache in (self.keys, self.values):
                cache[:, :, :, :self.length] = cache[:, rows, :, :self.length]
            return
        check_fits(2 * self.keys[:, :1].nbytes * len(rows), f"a key/value cache of {len(rows)} rows",
                   "use fewer rows")
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = np.zeros((old.shape[0], len(rows)) + old.shape[2:], dtype=old.dtype)
            new[:, :, :, :self.length] = old[:, rows, :, :self.length]
            setattr(self, name, new)


    def compact(self, keep: np.ndarray, capacity: int) -> np.ndarray:
        """Keep only the positions where keep [B, length] is True, each row's moved to the end of the filled
        part (earlier places become padding), in a cache of `capacity` positions. Returns the new padding mask
        [B, new length] (True = a position). Speculative decoding leaves holes; this closes them."""
        counts = keep.sum(axis=1)
        n = int(counts.max())
        mask = np.arange(n)[None] >= (n - counts)[:, None]  # [B, n]: right-aligned
        shape = self.keys.shape[:3] + (max(capacity, n),) + self.keys.shape[4:]
        check_fits(2 * 4 * math.prod(shape), f"a key/value cache of {shape[1]} rows x {shape[3]} positions",
                   "use fewer rows or positions")
        for name in ("keys", "values"):
            old, new = getattr(self, name), np.zeros(shape, dtype=np.float32)
            for row in range(shape[1]):
                new[:, row, :, n - counts[row]:n] = old[:, row, :, np.nonzero(keep[row])[0]]
            setattr(self, name, new)
        self.length = n
        return mask


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
        os.makedirs(model_dir, exist_ok=True)
        self.config.save(os.path.join(model_dir, "config.json"))
        save_weights(self.state, os.path.join(model_dir, "model.safetensors"))

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
                last_only: bool = False) -> Output:
        """Run the model over ids [B, T], after the positions already in `cache` if one is given.

        attention_mask [B, past + T]: 1 for tokens, 0 for padding (as transformers); padding keys are ignored
        and, unless position_ids [B, T] are given, positions count real tokens only (left padding works).
        last_only: compute logits for the last position only (what generation needs).
        hidden_states follow transformers: the embeddings, each block's output, and the last one after ln_f.
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

        # When only the last position's logits are wanted, the last block needs every position's keys and
        # values (for the cache) but only the last position's query, attention output and MLP.
        trim_last = last_only and not (output_hidden_states or output_attentions)
        x = self.wte[ids] + self.wpe[positions]  # [B, T, C]
        hidden = [x] if output_hidden_states else None  # kept only when asked: [B, T, C] per layer adds up
        attentions = [] if output_attentions else None
        eps = self.config.layer_norm_epsilon
        for i, block in enumerate(self.blocks):
            last_query_only = trim_last and i == len(self.blocks) - 1
            h = ops.layer_norm(x, block.ln_1.weight, block.ln_1.bias, eps)  # [B, T, C]
            a, probs = attention(h, block.attn, self.config.n_head, cache, i, keys_allowed,
                                 output_attentions, last_query_only)  # [B, T, C], [B, H, T, S]
            x = (x[:, -1:] if last_query_only else x) + a  # [B, T, C] (T = 1 if last_query_only)
            x = x + mlp(ops.layer_norm(x, block.ln_2.weight, block.ln_2.bias, eps), block.mlp)  # [B, T, C]
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attentions.append(probs)
        if cache is not None:
            cache.length += t

        x = ops.layer_norm(x, self.ln_f.weight, self.ln_f.bias, eps)  # [B, T, C]
        if output_hidden_states:
            hidden[-1] = x  # as transformers: the last hidden state is after ln_f
        if last_only:
            x = x[:, -1:]  # [B, 1, C]
        logits = (x.reshape(-1, x.shape[-1]) @ self.lm_head.T).reshape(b, -1, self.lm_head.shape[0])  # [B, T, V]
        return Output(logits, hidden, attentions)

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
        settings (temperature, top_k, top_p, logit_bias by id or word, ...: the rules of npgpt.sampling).
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
