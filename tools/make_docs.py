"""Draw the figures in docs/ with the study commands (npgpt ... --plot docs/NAME.png).

The real GPT-2 weights cannot be downloaded where this project is built, so the figures come from a randomly
initialised GPT-2 (4 layers, 4 heads, 64 wide, GPT-2's vocabulary) whose weights are scaled as
tools/reference.py scales them, so that its distributions and attention are far from uniform. `npgpt inspect`
draws GPT-2 124M itself, from its configuration. Run: python tools/make_docs.py (needs the `plot` extra).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import npgpt  # noqa: E402

DOCS = os.path.join(ROOT, "docs")
TEXT = ("Language models predict the next token from the ones before it. A decoder such as GPT-2 reads the text "
        "from left to right, and its causal attention lets every position look only at the past.")


def demo_model(path: str) -> None:
    config = npgpt.GPT2Config(n_layer=4, n_head=4, n_embd=64, n_positions=128)
    rng = np.random.default_rng(7)
    state = {}
    for name, shape in npgpt.weights.expected_shapes(config).items():
        if name.endswith(".weight") and (".ln_" in name or name.startswith("ln_")):
            state[name] = (0.7 + 0.6 * rng.random(shape)).astype(np.float32)
        elif name.endswith(".bias"):
            state[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name == "wte.weight":
            state[name] = (3.0 / math.sqrt(config.n_embd) * rng.standard_normal(shape)).astype(np.float32)
        elif name == "wpe.weight":
            state[name] = (1.0 / math.sqrt(config.n_embd) * rng.standard_normal(shape)).astype(np.float32)
        else:  # [in, out]
            gain = 1.0 if name.endswith("c_proj.weight") else 2.0
            state[name] = (gain / math.sqrt(shape[0]) * rng.standard_normal(shape)).astype(np.float32)
    npgpt.GPT2(config, state).save(path)


def main() -> None:
    os.makedirs(DOCS, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "demo")
        demo_model(model)
        text = os.path.join(tmp, "text.txt")
        with open(text, "w") as f:
            f.write(TEXT)
        runs = {
            "topk": ["topk", "You are going to", "-k", "10", "--bias", "gonna=-5"],
            "trace": ["trace", "What is the capital of France?", "-n", "8"],
            "attention": ["attention", "What is the capital of France?", "--layer", "1", "--head", "2"],
            "mask": ["mask", "6"],
            "inspect": ["inspect", "gpt2"],
            "temperature": ["temperature", "The future of artificial intelligence is", "--t", "0.1", "0.7", "1.5"],
            "compare": ["compare", "The future of artificial intelligence will involve", "--max-new-tokens", "20"],
            "score": ["score", "text.txt", "--window", "32", "--stride", "16"],  # named so in the title
            "hidden": ["hidden", "What is the capital of France?"],
        }
        env = {**os.environ, "HF_HUB_CACHE": os.path.join(tmp, "empty-cache"),  # inspect: the preset's tree
               "PYTHONPATH": ROOT}
        for name, args in runs.items():
            model_args = [] if name in ("mask", "inspect") else ["--model", model]
            png = os.path.join(DOCS, f"{name}.png")
            subprocess.run([sys.executable, "-m", "npgpt", *args, *model_args, "--plot", png], check=True, env=env,
                           cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"docs/{name}.png")


if __name__ == "__main__":
    main()
