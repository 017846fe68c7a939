"""GPT2Config: the handful of numbers that define a GPT-2, read from a Hugging Face `config.json`."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import InitVar, asdict, dataclass, fields

from .errors import ConfigError, refuse_unknown_keywords

# The activations that are GPT-2's tanh-approximated GELU under their various names.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Far above GPT-2 XL (1.6 billion) yet a size whose float32 weights a large machine can still hold; a config
# beyond it is a mistake, refused before anything is allocated.
MAX_PARAMETERS = 20_000_000_000


@refuse_unknown_keywords(ConfigError)
@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream (C)
    n_positions: int = 1024  # context length: learned position embeddings
    vocab_size: int = 50257  # tokens (the last one, 50256, is <|endoftext|>)
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    # The names from-scratch tutorials use (seed notebook 003's GPT_CONFIG_124M), so GPT2Config(**that) works;
    # TUTORIAL_NAMES maps them. Keyword-only stand-ins: they are not fields.
    context_length: InitVar[int | None] = None
    emb_dim: InitVar[int | None] = None
    n_heads: InitVar[int | None] = None
    n_layers: InitVar[int | None] = None
    drop_rate: InitVar[float | None] = None
    qkv_bias: InitVar[bool | None] = None

    def __post_init__(self, context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias):
        given = dict(context_length=context_length, emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers)
        defaults = {f.name: f.default for f in fields(self)}
        for alias, value in given.items():
            if value is None:
                continue
            name = TUTORIAL_NAMES[alias]
            if getattr(self, name) not in (defaults[name], value):
                raise ConfigError(f"config: {alias} and {name} are the same setting and disagree")
            object.__setattr__(self, name, value)
        if drop_rate is not None and not (isinstance(drop_rate, (int, float)) and 0 <= drop_rate < 1):
            raise ConfigError(f"config: drop_rate must be in [0, 1), got {drop_rate!r} (it is off at inference)")
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        eps = self.layer_norm_epsilon
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1):
            raise ConfigError(f"config: layer_norm_epsilon must be a small positive number (GPT-2: 1e-5), got {eps!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
            raise ConfigError(f"config: n_inner must be a positive integer or null, got {self.n_inner!r}")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ConfigError(f"config: {self.parameter_count():,} parameters ({self.n_layer} layers of width "
                              f"{self.n_embd}); npgpt runs GPT-2s up to {MAX_PARAMETERS:,} (GPT-2 XL has 1.6 billion)")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_size(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def preset(cls, name: str) -> "GPT2Config":
        """The configuration of one of OpenAI's GPT-2 sizes (or distilgpt2) by its hub name."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "GPT2Config":
        """Read the fields of a transformers GPT2Config dict, refusing features this implementation lacks."""
        model_type = d.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"{source}: model_type is {model_type!r}; npgpt runs GPT-2 models only")
        activation = d.get("activation_function", "gelu_new")
        if activation not in TANH_GELU_NAMES:
            raise ConfigError(f"{source}: activation_function {activation!r} is not GPT-2's tanh GELU")
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if d.get(flag):
                raise ConfigError(f"{source}: {flag}=true is not supported by npgpt")
        if d.get("scale_attn_weights", True) is False:
            raise ConfigError(f"{source}: scale_attn_weights=false is not supported by npgpt")
        d = _from_tutorial_names(d, source)
        missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing {', '.join(missing)}; is this a GPT-2 config.json?")
        fields = dict(
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            n_embd=d["n_embd"],
            n_positions=d.get("n_positions", d.get("n_ctx", 1024)),
            vocab_size=d.get("vocab_size", 50257),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            n_inner=d.get("n_inner"),
        )
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"{source}: {str(e).removeprefix('config: ')}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "GPT2Config":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file; a model directory needs a config.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=path)

    def to_dict(self) -> dict:
        """A config.json that transformers' GPT2LMHeadModel also reads."""
        d = asdict(self)
        d.update(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            activation_function="gelu_new",
            n_ctx=self.n_positions,
            bos_token_id=50256,
            eos_token_id=50256,
            tie_word_embeddings=True,
        )
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write config.json; the file appears only once it is complete."""
        path = os.fspath(path)
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise ConfigError(f"{path}: cannot write the config ({e.strerror or e}); "
                              "free some space or choose another directory") from None

    def parameter_count(self) -> int:
        """Parameters of the model with the output projection tied to the token embedding (as GPT-2)."""
        c, f = self.n_embd, self.mlp_size
        per_block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * f + f) + (f * c + c)
        return self.vocab_size * c + self.n_positions * c + self.n_layer * per_block + 2 * c


# OpenAI's GPT-2 sizes (and distilgpt2): the name people use, the hub repo it lives in now, its configuration.
OFFICIAL = {
    "gpt2": ("openai-community/gpt2", GPT2Config(n_layer=12, n_head=12, n_embd=768)),
    "gpt2-medium": ("openai-community/gpt2-medium", GPT2Config(n_layer=24, n_head=16, n_embd=1024)),
    "gpt2-large": ("openai-community/gpt2-large", GPT2Config(n_layer=36, n_head=20, n_embd=1280)),
    "gpt2-xl": ("openai-community/gpt2-xl", GPT2Config(n_layer=48, n_head=25, n_embd=1600)),
    "distilgpt2": ("distilbert/distilgpt2", GPT2Config(n_layer=6, n_head=12, n_embd=768)),
}
# The names from-scratch tutorials use (Raschka's GPT_CONFIG_124M, seed notebook 003) -> GPT-2's, in one table.
# None: a setting that changes nothing at inference (dropout is off) or that GPT-2's layout fixes.
TUTORIAL_NAMES = {
    "context_length": "n_positions",
    "emb_dim": "n_embd",
    "n_heads": "n_head",
    "n_layers": "n_layer",
    "drop_rate": None,  # dropout: training only
    "qkv_bias": None,  # GPT-2 has query/key/value biases; a model without them is one with zero biases
}


def _from_tutorial_names(d: dict, source: str) -> dict:
    out = {}
    for key, value in d.items():
        name = TUTORIAL_NAMES.get(key, key)
        if name is None:
            continue
        if name in out and out[name] != value:
            raise ConfigError(f"{source}: {key} and {name} are the same setting and disagree")
        out[name] = value
    return out


PRESETS = {name: config for name, (_, config) in OFFICIAL.items()}
HUB_REPOS = {name: repo for name, (repo, _) in OFFICIAL.items()}
