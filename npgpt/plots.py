"""Figures of the study experiments, written as image files. Needs matplotlib (`pip install "npgpt[plot]"`),
an optional extra: nothing else in npgpt imports it, and only these functions do, when called.

plots.NAME(result, path, ...) draws what study.NAME returned (views.NAME(result, ...) shows it as text).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import NpgptError
from .views import describe, topk_title

INSTALL = "pip install 'npgpt[plot]'"
FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def check_path(path) -> None:
    """Refuse, before any work, a figure that cannot be written: no matplotlib, a missing directory, a name
    without a known format."""
    _pyplot()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NpgptError(f"cannot write {path}: no such directory {directory}")
    if not path.lower().endswith(FORMATS):
        raise NpgptError(f"cannot write {path}: name a {', '.join(f[1:] for f in FORMATS)} file, e.g. figure.png")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NpgptError(f"figures (--plot) need matplotlib, which is not installed: {INSTALL}") from None
    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    try:
        check_path(path)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as e:  # e.g. no permission, a full disk
        raise NpgptError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        _pyplot().close(fig)
    return path


def _label(text: str) -> str:
    return repr(text)


def topk(cands, path: str, prompt, settings: dict | None = None) -> str:
    """Bar chart of next-token candidates and their probabilities (notebook 002)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(cands)), 4))
    ax.bar([_label(c.token) for c in cands], [c.probability for c in cands], color="tab:blue")
    ax.set_ylabel("probability")
    ax.set_title(topk_title(prompt, settings))
    ax.tick_params(axis="x", rotation=60)
    return _save(fig, path)


def trace(steps, path: str, prompt, settings: dict | None = None) -> str:
    """Each step's chosen token and its runners-up, with their probabilities."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(steps) + 1), 4.5))
    group = 1 + max((len(s.runners_up) for s in steps), default=0)
    width = 0.8 / group
    for i, s in enumerate(steps):
        ax.bar(i, s.chosen.probability, width, color="tab:blue")
        ax.text(i, s.chosen.probability, " " + _label(s.chosen.token), rotation=90, ha="center", va="bottom",
                fontsize=8)
        for j, c in enumerate(s.runners_up, 1):
            ax.bar(i + j * width, c.probability, width, color="tab:gray", alpha=0.6)
    top = max(s.chosen.probability for s in steps) if steps else 1.0
    ax.set_ylim(0, top * 1.45)
    ax.set_xticks([i + (group - 1) * width / 2 for i in range(len(steps))],
                  [f"step {s.step}\nT={s.logits_shape[1]}" for s in steps], fontsize=8)
    ax.set_ylabel("probability")
    ax.set_title(f"generating from {prompt!r}{describe(settings)}\nchosen token (blue) and runners-up (grey); "
                 "T: positions in the forward pass", fontsize=10)
    return _save(fig, path)


def attention(result, path: str, layer: int, head: int, values: bool = False) -> str:
    """Heatmap of one head's attention probabilities, labelled with the tokens (notebook 001); values=True
    writes the numbers in the cells. result: study.attention's (tokens, probs)."""
    tokens, probs = result
    plt = _pyplot()
    n = len(tokens)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n + 2), max(4, 0.5 * n + 1)))
    image = ax.imshow(probs, cmap="viridis", vmin=0, vmax=1)
    if values:
        for i in range(n):
            for j in range(i + 1):
                ax.text(j, i, f"{probs[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if probs[i, j] > 0.5 else "white")
    labels = [_label(t) for t in tokens]
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(f"attention probabilities, layer {layer}, head {head}")
    fig.colorbar(image, ax=ax, label="probability")
    return _save(fig, path)


def mask(m: np.ndarray, path: str) -> str:
    """The causal mask, 0 and -inf written in the cells (notebook 001)."""
    plt = _pyplot()
    n = len(m)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 1), max(4, 0.6 * n + 1)))
    ax.imshow(np.isinf(m), cmap="viridis", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, "0" if m[i, j] == 0 else "-inf", ha="center", va="center",
                    color="black" if np.isinf(m[i, j]) else "white", fontsize=9)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("key token index")
    ax.set_ylabel("query token index")
    ax.set_title("causal attention mask (added to the scores)")
    return _save(fig, path)


def inspect(part, path: str) -> str:
    """Parameters per part: embeddings, the blocks' attention, MLP and LayerNorms, the final LayerNorm, the head."""
    plt = _pyplot()
    blocks = next(p for p in part.children if p.name == "h").children
    groups = {"wte": 0, "wpe": 0, "attn (all blocks)": 0, "mlp (all blocks)": 0, "LayerNorms": 0, "lm_head": 0}
    for p in part.children:
        if p.name in ("wte", "wpe", "lm_head"):
            groups[p.name] += p.params
        elif p.name == "ln_f":
            groups["LayerNorms"] += p.params
    for block in blocks:
        for p in block.children:
            key = {"attn": "attn (all blocks)", "mlp": "mlp (all blocks)"}.get(p.name, "LayerNorms")
            groups[key] += p.params
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(groups)
    ax.barh(names, [groups[n] / 1e6 for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(groups[n] / 1e6, i, f" {groups[n]:,}" + (" (tied to wte)" if n == "lm_head" and not groups[n]
                                                            else ""), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(groups.values()) / 1e6 * 1.25)
    ax.set_xlabel("parameters (millions)")
    ax.set_title(f"{part.detail}: {part.params:,} parameters")
    return _save(fig, path)


def temperature(result, path: str, prompt) -> str:
    """One bar chart per temperature over the same top tokens (notebook 001).
    result: study.temperature's (candidates, {temperature: their probabilities})."""
    base, table = result
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), squeeze=False)
    labels = [_label(c.token) for c in base]
    for ax, (t, probs) in zip(axes[0], table.items()):
        ax.bar(labels, probs, color="skyblue")
        ax.set_title(f"temperature = {t:g}")
        ax.tick_params(axis="x", rotation=90)
        ax.set_ylabel("probability")
    fig.suptitle(f"after {prompt!r}")
    fig.tight_layout()
    return _save(fig, path)


def compare(rows, path: str, prompt) -> str:
    """The continuations side by side, each row labelled with its settings (notebook 004)."""
    import textwrap

    plt = _pyplot()
    wrapped = [(label, textwrap.fill(repr(text), 90)) for label, text in rows]
    units = 1.5 + sum(w.count("\n") + 1.4 for _, w in wrapped)  # one unit: a line of text
    fig, ax = plt.subplots(figsize=(12, 0.2 * units + 0.2))
    ax.axis("off")
    unit = 1.0 / units
    ax.text(0, 1.0, f"prompt: {prompt!r}", fontsize=10, fontweight="bold", va="top", transform=ax.transAxes)
    y = 1.0 - 1.5 * unit
    for label, text in wrapped:
        ax.text(0, y, label, fontsize=9, fontweight="bold", va="top", transform=ax.transAxes, color="tab:blue")
        ax.text(0.17, y, text, fontsize=9, va="top", family="monospace", transform=ax.transAxes)
        y -= unit * (text.count("\n") + 1.4)
    return _save(fig, path)


def score(s, path: str, source: str = "text") -> str:
    """How surprising each token is (-log p, nats) along the text, with the perplexity."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(np.arange(1, len(s.surprisal) + 1), s.surprisal, lw=0.8, color="tab:blue")
    ax.axhline(s.mean_nll, color="tab:red", lw=1, label=f"mean {s.mean_nll:.2f} nats: perplexity {s.perplexity:.1f}")
    ax.set_xlabel("token position")
    ax.set_ylabel("-log p(token | before)")
    ax.set_title(f"surprisal along {source} (window {s.window}, stride {s.stride})")
    ax.legend()
    return _save(fig, path)


def hidden(result, path: str) -> str:
    """Length of every token's hidden state after every layer. result: study.hidden's (tokens, ids, states)."""
    tokens, _, states = result
    plt = _pyplot()
    norms = np.linalg.norm(states, axis=-1)  # [L + 1, T]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(tokens) + 2), max(3, 0.35 * len(norms) + 1)))
    image = ax.imshow(norms, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(tokens)), [_label(t) for t in tokens], rotation=90)
    ax.set_yticks(range(len(norms)), ["embeddings"] + [f"layer {i}" for i in range(1, len(norms))])
    ax.set_title("hidden-state vector lengths (the last after ln_f)")
    fig.colorbar(image, ax=ax, label="||h||")
    return _save(fig, path)
