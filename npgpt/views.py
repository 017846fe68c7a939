"""Plain-text views of the study experiments for a terminal: tables, bars, shaded matrices, trees.

views.NAME(result, ...) shows what study.NAME returned (the figure is plots.NAME(result, ...)). A view
shows at most MAX_ROWS rows and MAX_COLUMNS columns (what a terminal shows), and says what it left out.
"""

from __future__ import annotations

import numpy as np

from .prompts import check_position

MAX_ROWS = 100  # candidates, tokens of a table
MAX_COLUMNS = 64  # tokens of a matrix (attention, mask, hidden)
SHADES = " ░▒▓█"  # attention 0, then up to 0.25, 0.5, 0.75, 1
EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int = 30) -> str:
    """A horizontal bar `fraction` (0..1) of `width` characters long, to an eighth of a character."""
    eighths = int(round(max(0.0, min(1.0, fraction)) * width * 8))
    full, rest = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[rest] if rest else "")


def token(text: str) -> str:
    """A token shown unambiguously: its repr, so spaces and newlines are visible."""
    return repr(text)


def percent(p: float) -> str:
    """A probability as a percentage, with two significant digits below 0.1% (an untrained model's 1.8e-4 shows as
    0.018%, not 0.0%)."""
    return f"{p:.1%}" if p >= 0.001 or p == 0 else f"{100 * p:.2g}%"


def left_out(shown: int, total: int, what: str) -> list[str]:
    """The note under a view that shows `shown` of `total` (none when it shows them all)."""
    if shown >= total:
        return []
    return [f"(showing the first {shown:,} of {total:,} {what}: a view shows at most that many)"]


def describe(settings: dict | None, leave_out: tuple[str, ...] = ()) -> str:
    """The settings that were given, as ' (name=value, ...)': those at zero or empty are off and not shown."""
    given = ", ".join(f"{k}={v}" for k, v in (settings or {}).items() if v and k not in leave_out)
    return f" ({given})" if given else ""


def topk_title(prompt, settings: dict | None = None) -> str:
    # a seed changes nothing in one distribution: showing it would suggest it does
    return f"next token after {prompt!r}" + describe(settings, leave_out=("seed",))


def topk(cands, prompt, settings: dict | None = None) -> str:
    """The candidates ranked, with their probabilities as numbers and bars (the first MAX_ROWS of them)."""
    total, cands = len(cands), cands[:MAX_ROWS]
    width = max(len(token(c.token)) for c in cands)
    top = max(c.probability for c in cands) or 1.0
    lines = [topk_title(prompt, settings), f"{'#':>3}  {'token':<{width}}  {'id':>6}  {'probability':>11}"]
    for rank, c in enumerate(cands, 1):
        lines.append(f"{rank:>3}  {token(c.token):<{width}}  {c.id:>6}  {c.probability:>11.4%}  "
                     f"{bar(c.probability / top)}")
    return "\n".join(lines + left_out(len(cands), total, "candidates"))


def trace(steps, prompt, settings: dict | None = None) -> str:
    return "\n".join([trace_header(prompt, settings)] + [trace_step(s) for s in steps])


def trace_header(prompt, settings: dict | None = None) -> str:
    """What trace shows before its steps (the CLI prints it, then each step as it is made)."""
    return f"Prompt: {prompt!r}{describe(settings)}\n"


def trace_step(s) -> str:
    """One step of a trace: the text so far, then the logits' shape, the choice and its runners-up."""
    shown = s.runners_up[:MAX_ROWS]
    others = ", ".join(f"{token(c.token)} {percent(c.probability)}" for c in shown)
    if len(shown) < len(s.runners_up):
        others += f", ... ({len(s.runners_up) - len(shown):,} more)"
    return (f"Step {s.step}: {s.text!r}\n"
            f"    logits {list(s.logits_shape)}  chose {token(s.chosen.token)} (id {s.chosen.id}, "
            f"p={percent(s.chosen.probability)})  runners-up: {others}")


def attention(result, layer: int, head: int, values: bool = False) -> str:
    """Row i: how query token i spreads its attention over tokens 0..i (blank above the diagonal: 0), in
    shades, or as numbers with values=True. result: study.attention's (tokens, probs)."""
    tokens, probs = result
    total, tokens = len(tokens), tokens[:MAX_COLUMNS]
    labels = [f"{i:>2} {token(t)[:14]:<14}" for i, t in enumerate(tokens)]
    lines = [f"attention probabilities, layer {layer}, head {head} (rows: queries, columns: keys; each row sums to 1)"]
    header = " " * 18 + "".join(f"{j:>6}" if values else f"{j % 100:>2}" for j in range(len(tokens)))
    lines.append(header)
    for i, label in enumerate(labels):
        if values:
            cells = "".join(f"{probs[i, j]:6.2f}" if j <= i else "     ." for j in range(len(tokens)))
        else:
            cells = "".join(_shade(probs[i, j]) * 2 for j in range(len(tokens)))
        lines.append(f"{label} {cells}")
    if not values:
        lines.append("shades: ' ' 0  '░' < 0.25  '▒' < 0.5  '▓' < 0.75  '█' >= 0.75   (--values for numbers)")
    return "\n".join(lines + left_out(len(tokens), total, "tokens"))


def _shade(p: float) -> str:
    if p <= 0:
        return SHADES[0]
    return SHADES[min(4, 1 + int(p * 4))]


def mask(m: np.ndarray) -> str:
    """The mask's cells, 0 or -inf (its first MAX_COLUMNS rows and columns: the rest repeat the pattern)."""
    n = min(len(m), MAX_COLUMNS)
    lines = ["causal mask: added to the attention scores before the softmax (rows: queries, columns: keys)",
             "     " + "".join(f"{j:>6}" for j in range(n))]
    for i in range(n):
        lines.append(f"{i:>4} " + "".join(f"{'0' if v == 0 else '-inf':>6}" for v in m[i, :n]))
    return "\n".join(lines + left_out(n, len(m), "rows and columns"))


def inspect(part) -> str:
    """The architecture with parameter counts; of the identical blocks only the first is opened."""
    lines = []

    def walk(p, prefix: str, last: bool, depth: int):
        connector = "" if depth == 0 else ("└── " if last else "├── ")
        name = f"{prefix}{connector}{p.name}"
        count = f"{p.params:,}" if p.params or p.name == "lm_head" else ""
        lines.append(f"{name:<34} {p.detail:<58} {count:>13}")
        child_prefix = prefix + ("" if depth == 0 else ("    " if last else "│   "))
        if p.note:
            lines.append(f"{child_prefix}{'    ' if not p.children else '│   '}  ({p.note})")
        children = p.children
        if p.name == "h" and len(children) > 1:  # the blocks are alike: show one, then summarise
            walk(children[0], child_prefix, False, depth + 1)
            more = len(children) - 1
            names = "h.1" if more == 1 else f"h.1 ... h.{more}"
            lines.append(f"{child_prefix}└── {names}   {more} more block{'s' if more > 1 else ''} like h.0, "
                         f"{children[0].params:,} parameters each")
            return
        for i, child in enumerate(children):
            walk(child, child_prefix, i == len(children) - 1, depth + 1)

    walk(part, "", True, 0)
    lines.append(f"{'total':<34} {'':<58} {part.params:>13,}")
    return "\n".join(lines)


def temperature(result, prompt) -> str:
    """result: study.temperature's (candidates, {temperature: their probabilities})."""
    base, table = result
    total, base = len(base), base[:MAX_ROWS]
    width = max(len(token(c.token)) for c in base)
    lines = [f"after {prompt!r}",
             "probability of the top tokens (ranked at temperature 1) after dividing the logits by t",
             f"{'token':<{width}}" + "".join(f"  {'t=' + format(t, 'g'):<20}" for t in table)]
    for i, c in enumerate(base):
        cells = "".join(f"  {p[i]:7.2%} {bar(p[i], 11):<11}" for p in table.values())
        lines.append(f"{token(c.token):<{width}}{cells}")
    return "\n".join(lines + left_out(len(base), total, "tokens"))


def compare(rows, prompt) -> str:
    width = max(len(label) for label, _ in rows)
    lines = [f"Prompt: {prompt!r}", ""]
    for label, text in rows:
        lines.append(f"{label:<{width}}  ... {text!r}")
    return "\n".join(lines)


def score(s, source: str = "text") -> str:
    """One line: the perplexity, what it was measured over, and the speed; source names the text."""
    return (f"{source}: perplexity {s.perplexity:.3f} over {s.tokens:,} tokens (mean -log p {s.mean_nll:.4f} nats), "
            f"window {s.window}, stride {s.stride}; {s.tokens_per_second:,.0f} tokens/s")


def hidden(result) -> str:
    """Per layer, the length of each token's hidden-state vector (the residual stream grows layer by layer).
    result: study.hidden's (tokens, ids, states)."""
    tokens, _, states = result
    total, tokens = len(tokens), tokens[:MAX_COLUMNS]
    norms = np.linalg.norm(states[:, :MAX_COLUMNS], axis=-1)  # [L + 1, T]
    lines = [f"hidden states [{states.shape[0]} = embeddings + {states.shape[0] - 1} layers, {states.shape[1]} tokens, "
             f"{states.shape[2]} wide]; the table shows each vector's length (the last is after ln_f)",
             f"{'':>12}" + "".join(f"{token(t)[:9]:>10}" for t in tokens)]
    for layer, row in enumerate(norms):
        name = "embeddings" if layer == 0 else f"layer {layer}"
        lines.append(f"{name:>12}" + "".join(f"{v:>10.2f}" for v in row))
    return "\n".join(lines + left_out(len(tokens), total, "tokens"))


# ----------------------------------------------------------------------- issue 14: looking inside (npgpt.interpret)


def _signed(value: float, top: float, width: int = 20) -> str:
    """A bar for a value that may be negative: '-' bars to the left of '|', '+' to the right."""
    length = bar(abs(value) / (top or 1.0), width)
    return f"{length:>{width}}|" if value < 0 else f"{'':>{width}}|{length}"


def logit_lens(lens, position: int = -1) -> str:
    """Each layer's top tokens at one position (default the last), and the target's rank and probability."""
    t = len(lens.tokens)
    position = check_position(position, t)
    head = f"logit lens at position {position} ({token(lens.tokens[position])})"
    if lens.target is not None:
        head += ", target rank and probability"
    lines = [head]
    width = max(len(label) for label in lens.labels)
    for layer, label in enumerate(lens.labels):
        tops = "  ".join(f"{token(tok)} {percent(p)}" for tok, p in zip(lens.top_tokens[layer][position],
                                                                   lens.top_probs[layer, position]))
        target = ""
        if lens.target is not None:
            target = f"#{lens.target_rank[layer, position] + 1:<6} {lens.target_prob[layer, position]:>7.2%}  "
        lines.append(f"{label:<{width}}  {target}{tops}")
    return "\n".join(lines)


def direct_logit_attribution(result, most: int = 20) -> str:
    """The parts with the largest direct effect on the logit (difference), signed bars, and their sum."""
    parts = result.parts()
    order = sorted(parts, key=lambda n: -abs(parts[n]))[:most]
    top = max(abs(parts[n]) for n in order) if order else 1.0
    what = f"logit of token {result.target}" + (f" - logit of token {result.baseline}" if result.baseline is not None
                                                else "")
    lines = [f"direct logit attribution of the {what} at position {result.position} "
             f"({token(result.tokens[result.position])}): total {result.total:+.4f}"]
    lines += [f"{name:>12}  {parts[name]:+9.4f}  {_signed(parts[name], top)}" for name in order]
    return "\n".join(lines + left_out(len(order), len(parts), "parts (the largest first)"))


def _matrix(values: np.ndarray, rows: list[str], columns: list[str], title: str) -> str:
    """A signed matrix as numbers: rows by columns (at most MAX_COLUMNS columns)."""
    columns = columns[:MAX_COLUMNS]
    widths = [max(8, len(c) + 1) for c in columns]  # each column as wide as its label needs
    lines = [title, f"{'':>8}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for name, row in zip(rows, values):
        lines.append(f"{name:>8}" + "".join(f"{v:>{w}.3f}" for v, w in zip(row, widths)))
    return "\n".join(lines + left_out(len(columns), values.shape[1], "columns"))


def head_ablation(result) -> str:
    return _matrix(result.effect, [f"layer {i}" for i in range(len(result.effect))],
                   [f"head {h}" for h in range(result.effect.shape[1])],
                   f"change in log p({token(result.target_token)}) when each head is {result.mode}-ablated "
                   f"(without: {result.logprob:.4f})")


def patch(result) -> str:
    return _matrix(result.values, [f"layer {i}" for i in range(len(result.values))], result.labels,
                   f"activation patching of {result.activation} by layer x {result.axis}: {result.metric} "
                   f"(clean {result.clean_metric:.4f}, corrupted {result.corrupted_metric:.4f})")
