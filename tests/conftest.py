import os
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

import npgpt

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
ROOT = os.path.dirname(HERE)
TOOLS = os.path.join(ROOT, "tools")

# The goldens' bound on |npgpt - PyTorch| (issue 2); the full-size parity test allows 1e-4.
GOLDEN_ATOL = 1e-5


def golden_dir(name: str) -> str:
    return os.path.join(GOLDEN, name)


def load_golden(name: str):
    """(model, expected arrays) of a golden model made by tools/make_golden.py."""
    return npgpt.load(golden_dir(name)), load_file(os.path.join(GOLDEN, name, "expected.safetensors"))


@pytest.fixture(scope="session")
def small():
    return load_golden("small")


@pytest.fixture(scope="session")
def tiny():
    return load_golden("tiny")


@pytest.fixture(scope="session")
def micro_config():
    """A GPT-2 with the real vocabulary but a few thousand other parameters: fast for behaviour tests."""
    return npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=32)


@pytest.fixture(scope="session")
def micro(micro_config):
    return npgpt.GPT2.random(micro_config, seed=0)


@pytest.fixture
def micro_dir(micro, tmp_path):
    path = tmp_path / "micro"
    micro.save(path)
    return str(path)


def reference_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def import_reference():
    """tools/reference.py (needs torch and transformers)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    import reference

    return reference


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
