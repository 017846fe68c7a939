"""npgpt: GPT-2 inference and text generation in plain NumPy.

    import npgpt
    model = npgpt.load("path/to/model")           # config.json + model.safetensors
    model.generate("Hello, I am", max_new_tokens=20)
"""

from __future__ import annotations

import os

from .config import PRESETS, GPT2Config
from .errors import ConfigError, ContextLengthError, NpgptError, SettingsError, WeightsError
from .generation import Completion, TokenCompletion
from .model import GPT2, KVCache, Output
from .tokenizer import Tokenizer
from .weights import refuse_pickle

__version__ = "0.1.0"

__all__ = [
    "GPT2", "GPT2Config", "KVCache", "Output", "Tokenizer", "Completion", "TokenCompletion", "load", "PRESETS",
    "NpgptError", "ConfigError", "WeightsError", "ContextLengthError", "SettingsError", "__version__",
]


def load(name_or_path: str | os.PathLike) -> GPT2:
    """Load a GPT-2 from a directory holding config.json and model.safetensors (the official layout)."""
    path = os.fspath(name_or_path)
    if os.path.isfile(path):  # a checkpoint file: its config.json is beside it
        refuse_pickle(path)
        return GPT2.from_dir(os.path.dirname(path) or ".", weights=path)
    return GPT2.from_dir(path)
