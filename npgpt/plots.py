"""Figures of the study experiments. Needs matplotlib (`pip install "npgpt[plot]"`), an optional extra:
nothing else in npgpt imports it, and only these functions do, when called.

plots.NAME(result, path=None, ...) draws what study.NAME returned (views.NAME(result, ...) shows it as text)
and returns a matplotlib Figure: in Jupyter it shows itself inline, in a script fig.savefig(...) or
save(fig, path) writes it, and given a path the function writes it too. The figures are made without pyplot:
matplotlib's backend, its style (rcParams) and pyplot's list of figures are left as they were, so the user's
own plt.show() works as before, and nothing needs a screen.
"""

from __future__ import annotations

import functools
import io
import os
import warnings

import numpy as np

from .errors import NpgptError
from .views import describe, topk_title

INSTALL = "pip install 'npgpt[plot]'"
FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")
MAX_BARS = 40  # bars of a bar chart: candidates, steps, tokens
MAX_LABELS = 64  # tokens labelled along an axis
MAX_INCHES = 20  # the longest side of a figure


def figure_path(path) -> str:
    """The file a figure named `path` is written to: `path`, or path + '.png' when it names no format at all."""
    path = os.fspath(path)
    return path if os.path.splitext(path)[1] else path + ".png"


def check_path(path) -> None:
    """Refuse, before any work, a figure that cannot be written: no matplotlib, a missing directory, a name
    without a known format."""
    _figure_class()
    path = figure_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NpgptError(f"cannot write {path}: no such directory {directory}")
    if not path.lower().endswith(FORMATS):
        raise NpgptError(f"cannot write {path}: name a {', '.join(f[1:] for f in FORMATS)} file, e.g. figure.png")


@functools.cache
def _figure_class():
    """matplotlib's Figure, made to show itself in Jupyter as a PNG even when pyplot was never imported."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NpgptError(f"figures (--plot) need matplotlib, which is not installed: {INSTALL}") from None

    class NpgptFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            return buffer.getvalue()

    NpgptFigure.__name__ = NpgptFigure.__qualname__ = "Figure"
    return NpgptFigure


def _new(width: float, height: float, **subplots):
    """(a figure of about width x height inches, at most MAX_INCHES a side; its axes)."""
    fig = _figure_class()(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)))
    return fig, fig.subplots(**subplots)


def save(fig, path) -> str:
    """Write the figure to `path` (its format from the name: png, svg, pdf, jpg; none given: png) and return
    the file's name."""
    check_path(path)
    path = figure_path(path)
    try:
        with warnings.catch_warnings():  # a token's character the font lacks is drawn as a box: no need to warn
            warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
            fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as e:  # e.g. no permission, a full disk
        raise NpgptError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _done(fig, path):
    """The figure, written to `path` first when one is given."""
    if path is not None:
        save(fig, path)
    return fig


def _shown(count: int, most: int) -> str:
    """A title's note when a figure shows only the first `most` of `count`."""
    return f" (the first {most} of {count:,})" if count > most else ""


def _label(text: str) -> str:
    return repr(text)


def _token_axis(set_ticks, tokens, rotation=0) -> None:
    """Label an axis with the tokens, when there are few enough to read."""
    if len(tokens) <= MAX_LABELS:
        set_ticks(range(len(tokens)), [_label(t) for t in tokens], rotation=rotation)


def topk(cands, path=None, prompt=None, settings: dict | None = None):
    """Bar chart of next-token candidates and their probabilities (notebook 002). prompt and settings, for the
    title, default to those study.topk kept with the candidates."""
    prompt = getattr(cands, "prompt", None) if prompt is None else prompt
    settings = getattr(cands, "settings", None) if settings is None else settings
    shown = cands[:MAX_BARS]
    fig, ax = _new(max(6, 0.4 * len(shown)), 4)
    ax.bar([_label(c.token) for c in shown], [c.probability for c in shown], color="tab:blue")
    ax.set_ylabel("probability")
    ax.set_title(topk_title(prompt, settings) + _shown(len(cands), MAX_BARS))
    ax.tick_params(axis="x", rotation=60)
    return _done(fig, path)


def trace(steps, path=None, prompt=None, settings: dict | None = None):
    """Each step's chosen token and its runners-up, with their probabilities."""
    prompt = getattr(steps, "prompt", None) if prompt is None else prompt
    settings = getattr(steps, "settings", None) if settings is None else settings
    shown = steps[:MAX_BARS]
    fig, ax = _new(max(6, 1.1 * len(shown) + 1), 4.5)
    group = 1 + min(max((len(s.runners_up) for s in shown), default=0), 9)
    width = 0.8 / group
    for i, s in enumerate(shown):
        ax.bar(i, s.chosen.probability, width, color="tab:blue")
        ax.text(i, s.chosen.probability, " " + _label(s.chosen.token), rotation=90, ha="center", va="bottom",
                fontsize=8)
        for j, c in enumerate(s.runners_up[:group - 1], 1):
            ax.bar(i + j * width, c.probability, width, color="tab:gray", alpha=0.6)
    top = max(s.chosen.probability for s in shown) if shown else 1.0
    ax.set_ylim(0, top * 1.45)
    ax.set_xticks([i + (group - 1) * width / 2 for i in range(len(shown))],
                  [f"step {s.step}\nT={s.logits_shape[1]}" for s in shown], fontsize=8)
    ax.set_ylabel("probability")
    ax.set_title(f"generating from {prompt!r}{describe(settings)}{_shown(len(steps), MAX_BARS)}\nchosen token "
                 "(blue) and runners-up (grey); T: positions in the forward pass", fontsize=10)
    return _done(fig, path)


def attention(result, path=None, layer: int | None = None, head: int | None = None, values: bool = False):
    """Heatmap of one head's attention probabilities, labelled with the tokens (notebook 001); values=True
    writes the numbers in the cells (of up to 32 tokens). result: study.attention's (tokens, probs)."""
    tokens, probs = result
    n = len(tokens)
    fig, ax = _new(max(5, 0.5 * n + 2), max(4, 0.5 * n + 1))
    image = ax.imshow(probs, cmap="viridis", vmin=0, vmax=1)
    if values and n <= 32:
        for i in range(n):
            for j in range(i + 1):
                ax.text(j, i, f"{probs[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if probs[i, j] > 0.5 else "white")
    _token_axis(ax.set_xticks, tokens, rotation=90)
    _token_axis(ax.set_yticks, tokens)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    which = "" if layer is None else f", layer {layer}" + ("" if head is None else f", head {head}")
    ax.set_title(f"attention probabilities{which}")
    fig.colorbar(image, ax=ax, label="probability")
    return _done(fig, path)


def mask(m: np.ndarray, path=None):
    """The causal mask, 0 and -inf written in the cells (of up to 16 positions) (notebook 001)."""
    n = len(m)
    fig, ax = _new(max(4, 0.6 * n + 1), max(4, 0.6 * n + 1))
    ax.imshow(np.isinf(m), cmap="viridis", vmin=0, vmax=1)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, "0" if m[i, j] == 0 else "-inf", ha="center", va="center",
                        color="black" if np.isinf(m[i, j]) else "white", fontsize=9)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    ax.set_xlabel("key token index")
    ax.set_ylabel("query token index")
    ax.set_title("causal attention mask (added to the scores)" + ("" if n <= 16 else ": yellow -inf, purple 0"))
    return _done(fig, path)


def inspect(part, path=None):
    """Parameters per part: embeddings, the blocks' attention, MLP and LayerNorms, the final LayerNorm, the head."""
    groups = _parameter_groups(part)
    fig, ax = _new(8, 3.5)
    names = list(groups)
    ax.barh(names, [groups[n] / 1e6 for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(groups[n] / 1e6, i, f" {groups[n]:,}" + (" (tied to wte)" if n == "lm_head" and not groups[n]
                                                            else ""), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(groups.values()) / 1e6 * 1.25)
    ax.set_xlabel("parameters (millions)")
    ax.set_title(f"{part.detail}: {part.params:,} parameters")
    return _done(fig, path)


def _parameter_groups(part) -> dict[str, int]:
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
    return groups


def temperature(result, path=None, prompt=None):
    """One bar chart per temperature over the same top tokens (notebook 001).
    result: study.temperature's (candidates, {temperature: their probabilities})."""
    base, table = result
    fig, axes = _new(5 * len(table), 4, ncols=len(table), squeeze=False)
    shown = base[:MAX_BARS]
    labels = [_label(c.token) for c in shown]
    for ax, (t, probs) in zip(axes[0], table.items()):
        ax.bar(labels, probs[:len(shown)], color="skyblue")
        ax.set_title(f"temperature = {t:g}")
        ax.tick_params(axis="x", rotation=90)
        ax.set_ylabel("probability")
    if prompt is not None:
        fig.suptitle(f"after {prompt!r}{_shown(len(base), MAX_BARS)}")
    fig.tight_layout()
    return _done(fig, path)


def compare(rows, path=None, prompt=None):
    """The continuations side by side, each row labelled with its settings (notebook 004)."""
    import textwrap

    wrapped = [(label, textwrap.fill(repr(text), 90)) for label, text in rows]
    units = 1.5 + sum(w.count("\n") + 1.4 for _, w in wrapped)  # one unit: a line of text
    fig, ax = _new(12, 0.2 * units + 0.2)
    ax.axis("off")
    unit = 1.0 / units
    if prompt is not None:
        ax.text(0, 1.0, f"prompt: {prompt!r}", fontsize=10, fontweight="bold", va="top", transform=ax.transAxes)
    y = 1.0 - 1.5 * unit
    for label, text in wrapped:
        ax.text(0, y, label, fontsize=9, fontweight="bold", va="top", transform=ax.transAxes, color="tab:blue")
        ax.text(0.17, y, text, fontsize=9, va="top", family="monospace", transform=ax.transAxes)
        y -= unit * (text.count("\n") + 1.4)
    return _done(fig, path)


def score(s, path=None, source: str = "text"):
    """How surprising each token is (-log p, nats) along the text, with the perplexity."""
    fig, ax = _new(10, 3.5)
    ax.plot(np.arange(1, len(s.surprisal) + 1), s.surprisal, lw=0.8, color="tab:blue")
    ax.axhline(s.mean_nll, color="tab:red", lw=1, label=f"mean {s.mean_nll:.2f} nats: perplexity {s.perplexity:.1f}")
    ax.set_xlabel("token position")
    ax.set_ylabel("-log p(token | before)")
    ax.set_title(f"surprisal along {source} (window {s.window}, stride {s.stride})")
    ax.legend()
    return _done(fig, path)


def hidden(result, path=None):
    """Length of every token's hidden state after every layer. result: study.hidden's (tokens, ids, states)."""
    tokens, _, states = result
    norms = np.linalg.norm(states, axis=-1)  # [L + 1, T]
    fig, ax = _new(max(5, 0.6 * len(tokens) + 2), max(3, 0.35 * len(norms) + 1))
    image = ax.imshow(norms, cmap="magma", aspect="auto")
    _token_axis(ax.set_xticks, tokens, rotation=90)
    ax.set_yticks(range(len(norms)), ["embeddings"] + [f"layer {i}" for i in range(1, len(norms))])
    ax.set_title("hidden-state vector lengths (the last after ln_f)")
    fig.colorbar(image, ax=ax, label="||h||")
    return _done(fig, path)


# ----------------------------------------------------------------------- issue 14: looking inside (npgpt.interpret)


def logit_lens(lens, path=None):
    """Heatmap of the target's probability (or, without a target, the top token's) at every layer and position,
    each cell labelled with the layer's top token (of up to 24 positions)."""
    probs = lens.target_prob if lens.target is not None else lens.top_probs[..., 0]  # [L + 1, T]
    n_layers, t = probs.shape
    fig, ax = _new(max(6, 0.9 * t + 2), max(4, 0.45 * n_layers + 1.5))
    image = ax.imshow(probs, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    if t <= 24:
        for layer in range(n_layers):
            for p in range(t):
                ax.text(p, layer, lens.top_tokens[layer][p][0][:8], ha="center", va="center", fontsize=7,
                        color="black" if probs[layer, p] > 0.5 else "white")
    _token_axis(ax.set_xticks, lens.tokens, rotation=90)
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels(lens.labels)
    ax.set_xlabel("position (the next token is predicted)")
    what = "the target's probability" if lens.target is not None else "the top token's probability"
    ax.set_title(f"logit lens: {what}; cells name each layer's top token")
    fig.colorbar(image, ax=ax, label="probability")
    return _done(fig, path)


def _signed_map(values, rows, columns, title, label, path):
    top = float(np.abs(values).max()) or 1.0
    fig, ax = _new(max(5, 0.6 * len(columns) + 2), max(3, 0.45 * len(rows) + 1.5))
    image = ax.imshow(values, cmap="RdBu", vmin=-top, vmax=top, aspect="auto")
    _token_axis(ax.set_xticks, columns, rotation=90)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    return _done(fig, path)


def direct_logit_attribution(result, path=None):
    """Each head's direct effect (layers x heads, red negative, blue positive) beside each MLP's."""
    values = np.concatenate([result.heads, result.mlps[:, None]], axis=1)  # [L, H + 1]
    columns = [f"H{h}" for h in range(result.heads.shape[1])] + ["MLP"]
    return _signed_map(values, [f"layer {i}" for i in range(len(values))], columns,
                       f"direct logit attribution (total {result.total:+.3f})", "logit contribution", path)


def head_ablation(result, path=None):
    """The change in the target's log-probability when each head is ablated (layers x heads)."""
    return _signed_map(result.effect, [f"layer {i}" for i in range(len(result.effect))],
                       [f"H{h}" for h in range(result.effect.shape[1])],
                       f"{result.mode}-ablation: change in log p({result.target_token!r})", "change", path)


def patch(result, path=None):
    """Activation patching results, layers x positions (or heads)."""
    return _signed_map(result.values, [f"layer {i}" for i in range(len(result.values))], result.labels,
                       f"patching {result.activation}: {result.metric}", "metric", path)
