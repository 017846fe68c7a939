"""npgpt: GPT-2 inference and text generation in plain NumPy.

    import npgpt
    model = npgpt.load("gpt2")                    # downloaded once into the Hugging Face cache
    model.generate("Hello, I am", max_new_tokens=20)
"""

from __future__ import annotations

import os

from . import hf_cache, hub
from .config import PRESETS, GPT2Config
from .errors import (BusyError, ConfigError, ContextLengthError, DistributionError, HubError, InputError, NpgptError,
                     PromptTruncatedWarning, SettingsError, TokenizerError, WeightsError)
from .results import Completion, TokenCompletion
from .model import GPT2, KVCache, Output
from .settings import GenerationConfig
from .tokenizer import Tokenizer
from .weights import refuse_pickle

__version__ = "0.1.0"

__all__ = [
    "GPT2", "GPT2Config", "GenerationConfig", "KVCache", "Output", "Tokenizer", "Completion", "TokenCompletion", "load", "PRESETS",
    "NpgptError", "ConfigError", "WeightsError", "TokenizerError", "InputError", "ContextLengthError", "SettingsError",
    "DistributionError", "HubError", "BusyError", "PromptTruncatedWarning", "__version__",
]


def load(name_or_path: str | os.PathLike, revision: str | None = None, *, offline: bool | None = None,
         progress: bool | None = None) -> GPT2:
    """Load a GPT-2: a local directory (config.json + model.safetensors), a .safetensors file with its
    config.json beside it, or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or org/name),
    downloaded once into the Hugging Face cache and reused, offline too.

    revision: a branch, tag or commit on the hub. offline: use the cache only (default: HF_HUB_OFFLINE).
    progress: a progress bar on stderr for large downloads (default: when stderr is a terminal).
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        raise ConfigError(f"load takes a model's name ('gpt2', 'org/name') or a directory's path, "
                          f"got {name_or_path!r}")
    path = os.fspath(name_or_path)
    if revision is not None and os.path.exists(path):
        raise ConfigError(f"revision={revision!r} names a version on the hub, but {path} is a local path: "
                          "leave revision out, or give the hub name")
    if os.path.isfile(path):  # a checkpoint file: its config.json is beside it
        refuse_pickle(path)
        if path.endswith(".json"):
            raise ConfigError(f"{path} is a JSON file, not a checkpoint: load the directory it is in "
                              f"({os.path.dirname(path) or '.'})")
        return GPT2.from_dir(os.path.dirname(path) or ".", weights=path)
    if os.path.isdir(path) or not hf_cache.looks_like_repo_id(path):
        return GPT2.from_dir(path)
    snapshot = hub.Hub.from_env(offline=offline, progress=progress).snapshot(path, revision)
    return GPT2.from_dir(snapshot, name=path)


def __getattr__(name: str):
    """npgpt.study, npgpt.plots, ... without importing them first (as `import torch` gives torch.nn): the study
    tools are imported on first use, so `import npgpt` stays light."""
    if name in ("study", "plots", "views", "display", "batch"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'npgpt' has no attribute {name!r}")
