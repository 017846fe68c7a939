"""The experiments people studying GPT-2 run (the seed notebooks), each one function returning plain data.

    topk         the next-token candidates and their probabilities (notebook 002), decoding rules applied
    trace        step-by-step greedy or sampled generation, the logits growing by one position (000)
    attention    one head's attention probabilities over the prompt's tokens (000, 001)
    mask         the additive causal mask itself: 0 on and below the diagonal, -inf above (001)
    inspect      the model as a tree of parts with shapes and parameter counts (004)
    temperature  how temperature reshapes the top of the distribution (001)
    compare      greedy, temperature, top-k and top-p continuations side by side (004)
    score        a text's perplexity with a sliding window (the standard evaluation)
    hidden       the residual stream after every layer (000)

and, from npgpt.interpret (looking inside with hooks), logit_lens, direct_logit_attribution, head_ablation,
ablation_hooks, patch and patch_heads, so that study holds every experiment.

Each experiment has one name everywhere: study.NAME computes it, views.NAME shows it in a terminal,
plots.NAME draws it, and `npgpt NAME` runs all three. Bad arguments are SettingsErrors naming the argument;
decoding settings go through Settings.parse, the one path generate() takes too.

What they return shows itself: a short repr (shapes, never whole arrays), str() the terminal view, and in
Jupyter an HTML table or tree (_repr_html_). trace, compare and score take progress=True for a progress bar on
stderr (None: when stderr is a terminal); trace_steps yields a trace's steps as they are made.
"""

from __future__ import annotations

import difflib
import math
import numbers
import time
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from . import display, ops, views
from .config import PRESETS, GPT2Config
from .errors import ContextLengthError, InputError, SettingsError
from .interpret import (ablation_hooks, direct_logit_attribution, head_ablation, logit_lens, patch,  # noqa: F401
                        patch_heads)
from .model import GPT2, HEAD_ROWS
from .progress import Progress, wanted
from .prompts import prompt_ids
from .sampling import apply, probabilities, row_generators
from .settings import Settings

MAX_MASK = 1024  # GPT-2's longest context: a larger mask is nothing the model ever uses


# ------------------------------------------------------------------------------------------------ arguments


def _check_model(model) -> None:
    if not isinstance(model, GPT2):
        raise SettingsError(f"the model must be an npgpt.GPT2 (e.g. npgpt.load('gpt2')), got "
                            f"{type(model).__name__} {model!r:.40}")


def _integer(name: str, value, low: int, high: int | None = None) -> int:
    """An int within [low, high], else a SettingsError naming the argument (bool is not an int here)."""
    allowed = f"in {low}..{high}" if high is not None else f">= {low}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise SettingsError(f"{name} must be an integer {allowed}, got {value!r}")
    if not (low <= value and (high is None or value <= high)):
        raise SettingsError(f"{name} must be {allowed}, got {value}")
    return int(value)


def _positive(name: str, value) -> float:
    """A finite number > 0, else a SettingsError naming the argument."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise SettingsError(f"{name} must be > 0 (and finite), got {value!r}")


# Settings that shape a whole generation (how long, how many, beams): a single next-token distribution or a
# step-by-step trace has no use for them, and silently ignoring them would mislead.
_WHOLE_GENERATION = {f.name for f in fields(Settings)} - {"sampler", "seed"} | {"num_return_sequences"}


def _decoding(model, settings: dict, experiment: str, own: tuple[str, ...]) -> Settings:
    """Keyword decoding settings parsed as generate() parses them; seed is accepted, the settings of a whole
    generation are refused. A name that is neither is a SettingsError with a 'did you mean' hint, among the
    experiment's `own` arguments too (topk(kk=3): did you mean k?)."""
    known = sorted(Settings.names())
    for name in settings:
        close = difflib.get_close_matches(name, list(own) + known, n=1)
        if name not in known and close and close[0] in own:
            raise SettingsError(f"{experiment} has no argument {name!r}; did you mean {close[0]}?")
    parsed = Settings.parse(model, settings)
    extra = sorted(set(settings) & _WHOLE_GENERATION)
    if extra:
        raise SettingsError(f"{experiment} takes decoding rules and seed, not {extra[0]}; "
                            f"use generate() for {extra[0]}")
    return parsed


# ---------------------------------------------------------------------------------------------------- topk


@dataclass
class Candidate:
    token: str  # the token's text (a part of a character shows as U+FFFD)
    id: int
    probability: float  # under the processed distribution (what generation draws from)
    logit: float  # the model's raw logit


def _processed(ids: list[int], logits: np.ndarray, sampler) -> tuple[np.ndarray, np.ndarray]:
    """(processed logits [1, V], their distribution [V]) for the model's logits [V] after `ids`, as generation
    computes them; a distribution nothing can be drawn from is a DistributionError."""
    processed = apply(sampler.rules(prompt_length=len(ids)), np.array([ids]), logits[None])  # [1, V]
    return processed, probabilities(processed)[0]


def _candidates(model, probs: np.ndarray, logits: np.ndarray, k: int) -> list[Candidate]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [Candidate(model.tokenizer.token_text(int(i)), int(i), float(probs[i]), float(logits[i])) for i in order]


def _short(prompt, most: int = 40) -> str:
    """A prompt's repr, cut to `most` characters."""
    text = repr(prompt)
    return text if len(text) <= most else text[:most - 3] + "..."


class Candidates(list):
    """study.topk's result: a list of Candidate, most likely first. str() is the terminal table; in Jupyter an
    HTML table with probability bars. prompt and settings: what the distribution is of."""

    def __init__(self, candidates=(), prompt=None, settings: dict | None = None):
        super().__init__(candidates)
        self.prompt, self.settings = prompt, dict(settings or {})

    def __repr__(self) -> str:
        shown = ", ".join(f"{c.token!r} {c.probability:.2%}" for c in self[:3])
        return f"Candidates({len(self)} after {_short(self.prompt)}: {shown}{', ...' if len(self) > 3 else ''})"

    def __str__(self) -> str:
        return views.topk(self, self.prompt, self.settings)

    def _repr_html_(self) -> str:
        shown, note = display.limit(self)
        top = max((c.probability for c in shown), default=0.0) or 1.0
        rows = [[rank, display.token(c.token), c.id, f"{c.probability:.4%}", display.bar(c.probability / top),
                 f"{c.logit:.3f}"] for rank, c in enumerate(shown, 1)]
        return display.table(["#", "token", "id", "probability", "", "logit"], rows, align="rlrrll",
                             caption=views.topk_title(self.prompt, self.settings), note=note)


def topk(model, prompt, k: int = 10, **settings) -> Candidates:
    """The k most likely tokens to follow `prompt`, most likely first, with the probabilities generation would
    draw them with under the decoding `settings` (e.g. logit_bias={"gonna": -5.0}, temperature=0.7).
    A seed is accepted and changes nothing: the distribution does not depend on it."""
    _check_model(model)
    k = _integer("k", k, 1)
    sampler = _decoding(model, settings, "topk", own=("prompt", "k")).sampler
    ids = prompt_ids(model.tokenizer, prompt)
    logits = model.forward(ids, last_only=True).logits[0, -1]  # [V]
    _, probs = _processed(ids, logits, sampler)
    return Candidates(_candidates(model, probs, logits, k), prompt, settings)


# --------------------------------------------------------------------------------------------------- trace


@dataclass
class TraceStep:
    step: int  # 1, 2, ...
    logits_shape: tuple  # (1, T, V): the forward pass covers the whole sequence so far
    chosen: Candidate
    runners_up: list[Candidate]
    text: str  # the prompt and everything generated up to and including this step


class Trace(list):
    """study.trace's result: a list of TraceStep. str() is the terminal view; in Jupyter an HTML table, a row
    per step. prompt and settings: what was generated from, and how."""

    def __init__(self, steps=(), prompt=None, settings: dict | None = None):
        super().__init__(steps)
        self.prompt, self.settings = prompt, dict(settings or {})

    def __repr__(self) -> str:
        chosen = ", ".join(repr(s.chosen.token) for s in self[:8])
        return f"Trace({len(self)} steps from {_short(self.prompt)}: {chosen}{', ...' if len(self) > 8 else ''})"

    def __str__(self) -> str:
        return views.trace(self, self.prompt, self.settings)

    def _repr_html_(self) -> str:
        shown, note = display.limit(self)
        rows = [[s.step, f"[{', '.join(map(str, s.logits_shape))}]", display.token(s.chosen.token),
                 f"{s.chosen.probability:.1%}", display.bar(s.chosen.probability, 60),
                 display.Html(", ".join(f"{display.token(c.token)} {c.probability:.1%}" for c in s.runners_up)),
                 _tail(s.text)] for s in shown]
        return display.table(["step", "logits", "chosen", "p", "", "runners-up", "text so far"], rows,
                             align="rllrlll", caption=f"Prompt: {self.prompt!r}{views.describe(self.settings)}",
                             note=note)


def _tail(text: str, most: int = 60) -> str:
    return text if len(text) <= most else "..." + text[-most:]


def trace_steps(model, prompt, steps: int = 10, alternatives: int = 3, **settings):
    """trace's steps one by one, each as soon as it is made (an iterator of TraceStep); the arguments are
    checked at once, before the first step."""
    _check_model(model)
    steps, alternatives = _integer("steps", steps, 0), _integer("alternatives", alternatives, 0)
    parsed = _decoding(model, settings, "trace", own=("prompt", "steps", "alternatives", "progress"))
    ids = prompt_ids(model.tokenizer, prompt)
    if len(ids) > model.config.n_positions:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens; the model's context is "
                                 f"{model.config.n_positions}; shorten it")
    return _trace_steps(model, ids, steps, alternatives, parsed)


def _trace_steps(model, ids: list[int], steps: int, alternatives: int, parsed: Settings):
    sampler, rngs = parsed.sampler, row_generators(parsed.seed, 1)  # the very rules and draws generate() uses
    tokenizer = model.tokenizer
    for step in range(1, steps + 1):
        if len(ids) >= model.config.n_positions:
            return
        logits = model(ids)  # [T, V]: the whole sequence, one position longer each step
        processed, probs = _processed(ids, logits[-1], sampler)
        token = int(sampler.select(processed, rngs)[0])
        ranked = _candidates(model, probs, logits[-1], alternatives + 1)
        chosen = Candidate(tokenizer.token_text(token), token, float(probs[token]), float(logits[-1, token]))
        ids.append(token)
        text = tokenizer.decode([i for i in ids if i != tokenizer.eot_id])
        runners_up = [c for c in ranked if c.id != token][:alternatives]
        yield TraceStep(step, (1,) + logits.shape, chosen, runners_up, text)
        if token == tokenizer.eot_id:
            return


def trace(model, prompt, steps: int = 10, alternatives: int = 3, progress: bool | None = False,
          **settings) -> Trace:
    """Generate step by step as notebook 000 does: run the model over the whole sequence, take the last
    position's distribution, choose (greedily unless sampling settings are given; seed as generate's), append,
    repeat; stops early at <|endoftext|>. No cache, so each step's logits are one position longer than the
    last. progress=True: a progress bar on stderr (None: when stderr is a terminal)."""
    made = trace_steps(model, prompt, steps, alternatives, **settings)
    out = Trace(prompt=prompt, settings=settings)
    with Progress("trace", steps, wanted(progress), unit="steps", transient=True) as bar:
        for step in made:
            out.append(step)
            bar.update(1)
    return out


# ----------------------------------------------------------------------------------------- attention, mask


class Attention(NamedTuple):
    tokens: list[str]  # the prompt's tokens
    probs: np.ndarray  # [T, T]: row i is how query i spreads its attention over keys 0..i

    def __repr__(self) -> str:
        return f"Attention(tokens={_tokens(self.tokens)}, probs={display.shape(self.probs)})"

    def _repr_html_(self) -> str:
        """A heat map: row i is query token i, its cells the attention it gives keys 0..i."""
        shown, note = display.limit(self.tokens, views.MAX_COLUMNS)
        n = len(shown)
        rows = [[display.token(t)] + [display.shaded(f"{p:.2f}", p) if j <= i else "" for j, p in
                                      enumerate(self.probs[i, :n])] for i, t in enumerate(shown)]
        return display.table([""] + list(range(n)), rows, align="l" + "r" * n, note=note and f"{note} tokens",
                             caption="attention probabilities (rows: queries, columns: keys)")


def _tokens(tokens: list[str], most: int = 4) -> str:
    """'7 ['What', ' is', ...]': how many tokens, and the first few."""
    shown = ", ".join(repr(t) for t in tokens[:most])
    return f"{len(tokens)} [{shown}{', ...' if len(tokens) > most else ''}]"


def attention(model, prompt, layer: int = 0, head: int = 0) -> Attention:
    """(the prompt's tokens, head `head` of layer `layer`'s attention probabilities [T, T]); above the
    diagonal everything is 0."""
    _check_model(model)
    c = model.config
    layer, head = _integer("layer", layer, 0, c.n_layer - 1), _integer("head", head, 0, c.n_head - 1)
    ids = prompt_ids(model.tokenizer, prompt)
    probs = model.forward(ids, output_attentions=True).attentions[layer][0, head]  # [T, T]
    return Attention([model.tokenizer.token_text(i) for i in ids], probs)


def mask(n: int) -> np.ndarray:
    """The additive causal mask GPT-2 puts on attention scores [n, n]: 0 where allowed, -inf above the
    diagonal."""
    return ops.causal_mask(_integer("n", n, 1, MAX_MASK))


# ------------------------------------------------------------------------------------------------- inspect


@dataclass
class Part:
    name: str
    detail: str = ""  # what it is and its shapes
    params: int = 0  # parameters of this part and everything under it
    children: list["Part"] = field(default_factory=list)
    note: str = ""  # how the part is used, beyond its shapes

    def __repr__(self) -> str:  # the tree is str(part); a repr names the part only
        return (f"Part({self.name!r}, {self.detail!r}, params={self.params:,}, "
                f"children={[c.name for c in self.children]})")

    def __str__(self) -> str:
        return views.inspect(self)

    def _repr_html_(self) -> str:
        """The tree as nested lists, each part with its shapes and parameter count; the parts under the top
        one fold (click to open)."""
        return f'<div class="npgpt" style="font-family:monospace">{_part_html(self, top=True)}</div>'


def _part_html(part: Part, top: bool = False) -> str:
    count = f' <span style="color:{display.BLUE}">{part.params:,}</span>' if part.params or not part.children else ""
    line = f"<b>{display.escape(part.name)}</b> {display.escape(part.detail)}{count}"
    if part.note:
        line += f' <span style="color:gray">({display.escape(part.note)})</span>'
    if not part.children:
        return line
    items = "".join(f"<li>{_part_html(child)}</li>" for child in part.children)
    listing = f'<ul style="list-style:none;margin:0;padding-left:1.5em">{items}</ul>'
    total = f"<div>total {part.params:,} parameters</div>" if top else ""
    return f"<details{' open' if top else ''}><summary>{line}</summary>{listing}</details>{total}"


def _subject(subject) -> tuple[GPT2Config, dict | None]:
    """(configuration, the checkpoint's tensors or None) of a model, a configuration or a preset's name."""
    if isinstance(subject, GPT2):
        return subject.config, subject.state
    if isinstance(subject, GPT2Config):
        return subject, None
    if isinstance(subject, str) and subject in PRESETS:
        return GPT2Config.preset(subject), None
    raise SettingsError(f"inspect takes a model, a GPT2Config or a preset name ({', '.join(PRESETS)}), got "
                        f"{subject!r:.60}; load other models with npgpt.load first")


def inspect(subject) -> Part:
    """GPT-2 as a tree of parts with their shapes and parameter counts, of a model, a GPT2Config or a preset
    name ("gpt2"). Given a model, the counts are those of its checkpoint's tensors (an untied output head is
    counted; the tied one shares wte)."""
    config, state = _subject(subject)
    c, f, v, p, h = config.n_embd, config.mlp_size, config.vocab_size, config.n_positions, config.n_head

    def tensor(name: str, shape: tuple) -> int:
        if state is not None:
            return int(state[name].size)
        return int(np.prod(shape))

    def linear(name, key, n_in, n_out, detail=""):
        params = tensor(f"{key}.weight", (n_in, n_out)) + tensor(f"{key}.bias", (n_out,))
        return Part(name, f"{n_in} -> {n_out}   weight [{n_in}, {n_out}], bias [{n_out}]{detail}", params)

    def norm(name, key):
        return Part(name, f"LayerNorm   weight [{c}], bias [{c}], eps {config.layer_norm_epsilon:g}",
                    tensor(f"{key}.weight", (c,)) + tensor(f"{key}.bias", (c,)))

    blocks = []
    for i in range(config.n_layer):
        key = f"h.{i}"
        c_attn = linear("c_attn", f"{key}.attn.c_attn", c, 3 * c)
        c_attn.note = f"split into q | k | v: 3 x {c}, each {h} heads x {c // h}"
        attn = Part("attn", f"causal self-attention, {h} heads", children=[
            c_attn, linear("c_proj", f"{key}.attn.c_proj", c, c)])
        mlp = Part("mlp", "GELU (tanh)", children=[
            linear("c_fc", f"{key}.mlp.c_fc", c, f), linear("c_proj", f"{key}.mlp.c_proj", f, c)])
        block = Part(f"h.{i}", "block", children=[norm("ln_1", f"{key}.ln_1"), attn, norm("ln_2", f"{key}.ln_2"),
                                                   mlp])
        blocks.append(block)
    untied = state is not None and "lm_head.weight" in state
    head = Part("lm_head", f"{c} -> {v}   " + ("its own weight" if untied else "tied to wte: reads wte as stored"),
                tensor("lm_head.weight", (v, c)) if untied else 0)
    root = Part("GPT2LMHeadModel", f"{config.n_layer} layers, {h} heads, {c} wide, context {p}", children=[
        Part("wte", f"token embedding [{v}, {c}]", tensor("wte.weight", (v, c))),
        Part("wpe", f"position embedding [{p}, {c}]", tensor("wpe.weight", (p, c))),
        Part("h", f"{config.n_layer} x block", children=blocks),
        norm("ln_f", "ln_f"),
        head,
    ])
    _total(root)
    return root


def _total(part: Part) -> int:
    if part.children:
        part.params = sum(_total(child) for child in part.children)
    return part.params


# --------------------------------------------------------------------------------------------- temperature


class TemperatureTable(NamedTuple):
    candidates: list[Candidate]  # the top tokens at temperature 1, most likely first
    table: dict[float, np.ndarray]  # temperature -> those tokens' probabilities at it

    def __repr__(self) -> str:
        tables = ", ".join(f"{t:g}: {display.shape(p)}" for t, p in self.table.items())
        return f"TemperatureTable(candidates={_tokens([c.token for c in self.candidates])}, table={{{tables}}})"

    def _repr_html_(self) -> str:
        shown, note = display.limit(self.candidates)
        rows = [[display.token(c.token)] + [display.Html(f"{p[i]:.2%} {display.bar(p[i], 60)}")
                                            for p in self.table.values()] for i, c in enumerate(shown)]
        return display.table(["token"] + [f"t={t:g}" for t in self.table], rows, note=note,
                             caption="probability of the top tokens (ranked at temperature 1) at each temperature")


def temperature(model, prompt, temperatures=(0.1, 0.7, 1.5), top: int = 20) -> TemperatureTable:
    """The `top` most likely next tokens (at temperature 1) and their probabilities at each temperature:
    softmax(logits / t) over the whole vocabulary, shown for those tokens (notebook 001)."""
    _check_model(model)
    if isinstance(temperatures, np.ndarray):
        temperatures = temperatures.tolist()
    if not isinstance(temperatures, (list, tuple)) or not temperatures:
        raise SettingsError(f"temperatures must be a non-empty list of numbers > 0, got {temperatures!r:.60}")
    temperatures = [_positive("each temperature", t) for t in temperatures]
    top = _integer("top", top, 1)
    ids = prompt_ids(model.tokenizer, prompt)
    logits = model.forward(ids, last_only=True).logits[0, -1].astype(np.float64)  # [V]
    base = _candidates(model, probabilities(logits), logits, top)
    chosen = np.array([c.id for c in base])
    # Divide each logit's gap to the largest, not the logit itself: softmax does not see the shift, and a tiny
    # t then sends the gaps to -inf (probability 0) instead of overflowing to inf - inf = NaN.
    gaps = logits - logits.max()
    with np.errstate(over="ignore"):
        table = {t: probabilities(gaps / t)[chosen] for t in temperatures}
    return TemperatureTable(base, table)


# ------------------------------------------------------------------------------------------------- compare


# notebook 004's experiment: each row its settings
COMPARE_SETTINGS = [
    ("greedy", {}),
    ("temperature=0.5", {"temperature": 0.5}),
    ("temperature=1.0", {"temperature": 1.0}),
    ("temperature=1.5", {"temperature": 1.5}),
    ("top_k=1", {"temperature": 1.0, "top_k": 1}),
    ("top_k=50", {"temperature": 1.0, "top_k": 50}),
    ("top_k=500", {"temperature": 1.0, "top_k": 500}),
    ("top_p=0.95", {"temperature": 1.0, "top_p": 0.95}),
    ("top_p=0.75", {"temperature": 1.0, "top_p": 0.75}),
    ("top_p=0.5", {"temperature": 1.0, "top_p": 0.5}),
]


def _compare_rows(model, rows, max_new_tokens, seed) -> list[tuple[str, dict]]:
    """[(label, the settings generate() gets)], every row checked before any generation runs."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise SettingsError(f"settings must be a non-empty list of (label, settings dict), got {rows!r:.60}")
    Settings.parse(model, {"max_new_tokens": max_new_tokens, "seed": seed})  # the rows' defaults, once
    checked = []
    for row in rows:
        if not (isinstance(row, (list, tuple)) and len(row) == 2 and isinstance(row[0], str)
                and isinstance(row[1], dict)):
            raise SettingsError(f"each entry of settings is a (label, settings dict) pair, got {row!r:.60}")
        label, rules = row
        settings = {"max_new_tokens": max_new_tokens, "seed": seed, **rules}  # a row may set its own
        try:
            parsed = Settings.parse(model, settings)
        except SettingsError as e:
            raise SettingsError(f"compare row {label!r}: {e}") from None
        if parsed.n != 1:
            raise SettingsError(f"compare row {label!r}: one continuation per row, got n={parsed.n}")
        checked.append((label, settings))
    return checked


def compare(model, prompt, settings=None, max_new_tokens: int = 30, seed: int = 0,
            progress: bool | None = False) -> list[tuple[str, str]]:
    """Continuations of one prompt under several decoding settings, each with the same seed:
    [(label, text)]. `settings` is a list of (label, {setting: value}), by default greedy, three
    temperatures, three top-k and three top-p (notebook 004); a row may set its own max_new_tokens or seed.
    progress=True: a progress bar on stderr, a row at a time (None: when stderr is a terminal)."""
    _check_model(model)
    prompt_ids(model.tokenizer, prompt)  # one prompt, checked before any row runs
    rows = _compare_rows(model, COMPARE_SETTINGS if settings is None else settings, max_new_tokens, seed)
    out = []
    with Progress("compare", len(rows), wanted(progress), unit="rows", transient=True) as bar:
        for label, row in rows:
            out.append((label, _text(model, model.generate(prompt, **row))))
            bar.update(1)
    return out


def _text(model, completion) -> str:
    """A continuation as plain text (not a Completion, whose repr says more than its text): generate() gives
    text for a text prompt and token ids for ids."""
    return str.__str__(completion) if isinstance(completion, str) else model.tokenizer.decode(list(completion))


# --------------------------------------------------------------------------------------------------- score


@dataclass
class Score:
    perplexity: float
    tokens: int  # tokens scored (every token but the first, which nothing predicts)
    mean_nll: float  # nats per token
    surprisal: np.ndarray  # [tokens] -log p of each scored token, in order
    window: int
    stride: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def __repr__(self) -> str:  # the surprisal's shape, not its values
        return (f"Score(perplexity={self.perplexity:.4f}, tokens={self.tokens}, mean_nll={self.mean_nll:.4f}, "
                f"surprisal={display.shape(self.surprisal)}, window={self.window}, stride={self.stride}, "
                f"seconds={self.seconds:.3f})")

    def __str__(self) -> str:
        return views.score(self)

    def _repr_html_(self) -> str:
        most = int(np.argmax(self.surprisal)) if len(self.surprisal) else 0
        rows = [["perplexity", f"{self.perplexity:.3f}"],
                ["tokens scored", f"{self.tokens:,}"],
                ["mean -log p", f"{self.mean_nll:.4f} nats"],
                ["surprisal", f"{display.shape(self.surprisal)}, the largest {self.surprisal.max():.2f} nats "
                              f"(scored token {most})" if len(self.surprisal) else display.shape(self.surprisal)],
                ["window, stride", f"{self.window}, {self.stride}"],
                ["speed", f"{self.tokens_per_second:,.0f} tokens/s ({self.seconds:.3f} s)"]]
        return display.table(None, rows, caption="perplexity", align="lr")


def score(model, text: str, window: int | None = None, stride: int | None = None,
          progress: bool | None = False) -> Score:
    """The perplexity exp(mean -log p(token | what precedes it)) of a text, with a sliding window: each window
    of up to `window` tokens (default: the context) starts `stride` tokens (default: half a window) after the
    last, and scores only the tokens the previous window did not, so every token after the first is scored
    once, with at least window - stride tokens of context before it (all of them when the text fits in one
    window). This is Hugging Face's standard evaluation. progress=True: a progress bar on stderr (None: when
    stderr is a terminal)."""
    _check_model(model)
    if not isinstance(text, str):
        raise InputError(f"score takes text (str), got {type(text).__name__}")
    context = model.config.n_positions
    window = context if window is None else _integer("window", window, 2, context)
    stride = max(1, window // 2) if stride is None else stride
    if not (isinstance(stride, numbers.Integral) and not isinstance(stride, bool) and 1 <= stride < window):
        raise SettingsError(f"stride must be in 1..window - 1 ({window - 1}), got {stride!r}: windows must "
                            "overlap so that each token has something before it")
    ids = model.tokenizer.encode(text)
    if len(ids) < 2:
        raise SettingsError("perplexity needs a text of at least two tokens")
    start_time = time.perf_counter()
    with Progress("score", len(ids) - 1, wanted(progress), unit="tokens", transient=True) as bar:
        surprisal = np.concatenate(list(_surprisal(model, ids, window, stride, bar))).astype(np.float64)
    mean = float(surprisal.mean())
    return Score(math.exp(mean), len(surprisal), mean, surprisal, window, stride, time.perf_counter() - start_time)


def _surprisal(model, ids: list[int], window: int, stride: int, bar: Progress):
    """Each window's -log p of the tokens it scores, window after window."""
    scored_to = 1  # the first token is never scored
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end]
        hidden = model.forward(chunk, logits=False).last_hidden_state[0]  # [T, C]
        first = max(scored_to, begin + 1)  # score tokens [first, end), predicted by positions before them
        for rows in _batches(range(first - begin - 1, end - begin - 1), HEAD_ROWS):
            logits = model.unembed(hidden[rows])  # [n, V], HEAD_ROWS at a time to bound memory
            targets = np.array(chunk)[np.array(rows) + 1]
            yield -ops.log_softmax(logits)[np.arange(len(rows)), targets]
        bar.update(end - first)
        scored_to = end
        if end == len(ids):
            return


def _batches(indices: range, size: int):
    indices = list(indices)
    for i in range(0, len(indices), size):
        yield indices[i:i + size]


# -------------------------------------------------------------------------------------------------- hidden


class Hidden(NamedTuple):
    tokens: list[str]
    ids: list[int]
    states: np.ndarray  # [n_layer + 1, T, C]

    def __repr__(self) -> str:
        return (f"Hidden(tokens={_tokens(self.tokens)}, ids={_tokens(self.ids)}, "
                f"states={display.shape(self.states)})")

    def _repr_html_(self) -> str:
        """Each token's hidden-state length after each layer, shaded (the residual stream grows)."""
        shown, note = display.limit(self.tokens, views.MAX_COLUMNS)
        norms = np.linalg.norm(self.states[:, :len(shown)], axis=-1)  # [L + 1, T]
        top = float(norms.max()) if norms.size else 1.0
        rows = [["embeddings" if layer == 0 else f"layer {layer}"] + [display.shaded(f"{v:.2f}", v / top)
                                                                      for v in row]
                for layer, row in enumerate(norms)]
        return display.table([""] + [display.token(t) for t in shown], rows, align="l" + "r" * len(shown),
                             note=note and f"{note} tokens", caption=f"hidden states {display.shape(self.states)}: "
                                                                     "each vector's length (the last after ln_f)")


def hidden(model, prompt) -> Hidden:
    """(tokens, ids, hidden states [n_layer + 1, T, C]): the embeddings, then each block's output (the last
    after the final LayerNorm, as transformers reports them)."""
    _check_model(model)
    ids = prompt_ids(model.tokenizer, prompt)
    states = np.stack(model.forward(ids, output_hidden_states=True).hidden_states)[:, 0]  # [L + 1, T, C]
    return Hidden([model.tokenizer.token_text(i) for i in ids], ids, states)
