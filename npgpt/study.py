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

Each experiment has one name everywhere: study.NAME computes it, views.NAME shows it in a terminal,
plots.NAME draws it, and `npgpt NAME` runs all three. Bad arguments are SettingsErrors naming the argument;
decoding settings go through Settings.parse, the one path generate() takes too.
"""

from __future__ import annotations

import difflib
import math
import numbers
import time
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from . import ops
from .config import PRESETS, GPT2Config
from .errors import ContextLengthError, InputError, SettingsError
from .model import GPT2
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


def topk(model, prompt, k: int = 10, **settings) -> list[Candidate]:
    """The k most likely tokens to follow `prompt`, most likely first, with the probabilities generation would
    draw them with under the decoding `settings` (e.g. logit_bias={"gonna": -5.0}, temperature=0.7).
    A seed is accepted and changes nothing: the distribution does not depend on it."""
    _check_model(model)
    k = _integer("k", k, 1)
    sampler = _decoding(model, settings, "topk", own=("prompt", "k")).sampler
    ids = prompt_ids(model.tokenizer, prompt)
    logits = model.forward(ids, last_only=True).logits[0, -1]  # [V]
    _, probs = _processed(ids, logits, sampler)
    return _candidates(model, probs, logits, k)


# --------------------------------------------------------------------------------------------------- trace


@dataclass
class TraceStep:
    step: int  # 1, 2, ...
    logits_shape: tuple  # (1, T, V): the forward pass covers the whole sequence so far
    chosen: Candidate
    runners_up: list[Candidate]
    text: str  # the prompt and everything generated up to and including this step


def trace(model, prompt, steps: int = 10, alternatives: int = 3, **settings) -> list[TraceStep]:
    """Generate step by step as notebook 000 does: run the model over the whole sequence, take the last
    position's distribution, choose (greedily unless sampling settings are given; seed as generate's), append,
    repeat; stops early at <|endoftext|>. No cache, so each step's logits are one position longer than the
    last."""
    _check_model(model)
    steps, alternatives = _integer("steps", steps, 0), _integer("alternatives", alternatives, 0)
    parsed = _decoding(model, settings, "trace", own=("prompt", "steps", "alternatives"))
    sampler, rngs = parsed.sampler, row_generators(parsed.seed, 1)  # the very rules and draws generate() uses
    tokenizer = model.tokenizer
    ids = prompt_ids(tokenizer, prompt)
    if len(ids) > model.config.n_positions:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens; the model's context is "
                                 f"{model.config.n_positions}; shorten it")
    out = []
    for step in range(1, steps + 1):
        if len(ids) >= model.config.n_positions:
            break
        logits = model(ids)  # [T, V]: the whole sequence, one position longer each step
        processed, probs = _processed(ids, logits[-1], sampler)
        token = int(sampler.select(processed, rngs)[0])
        ranked = _candidates(model, probs, logits[-1], alternatives + 1)
        chosen = Candidate(tokenizer.token_text(token), token, float(probs[token]), float(logits[-1, token]))
        ids.append(token)
        text = tokenizer.decode([i for i in ids if i != tokenizer.eot_id])
        runners_up = [c for c in ranked if c.id != token][:alternatives]
        out.append(TraceStep(step, (1,) + logits.shape, chosen, runners_up, text))
        if token == tokenizer.eot_id:
            break
    return out


# ----------------------------------------------------------------------------------------- attention, mask


class Attention(NamedTuple):
    tokens: list[str]  # the prompt's tokens
    probs: np.ndarray  # [T, T]: row i is how query i spreads its attention over keys 0..i


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


def compare(model, prompt, settings=None, max_new_tokens: int = 30, seed: int = 0) -> list[tuple[str, str]]:
    """Continuations of one prompt under several decoding settings, each with the same seed:
    [(label, text)]. `settings` is a list of (label, {setting: value}), by default greedy, three
    temperatures, three top-k and three top-p (notebook 004); a row may set its own max_new_tokens or seed."""
    _check_model(model)
    prompt_ids(model.tokenizer, prompt)  # one prompt, checked before any row runs
    rows = _compare_rows(model, COMPARE_SETTINGS if settings is None else settings, max_new_tokens, seed)
    return [(label, _text(model, model.generate(prompt, **row))) for label, row in rows]


def _text(model, completion) -> str:
    """A continuation as text: generate() gives text for a text prompt and token ids for ids."""
    return completion if isinstance(completion, str) else model.tokenizer.decode(list(completion))


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


def score(model, text: str, window: int | None = None, stride: int | None = None) -> Score:
    """The perplexity exp(mean -log p(token | what precedes it)) of a text, with a sliding window: each window
    of up to `window` tokens (default: the context) starts `stride` tokens (default: half a window) after the
    last, and scores only the tokens the previous window did not, so every token after the first is scored
    once, with at least window - stride tokens of context before it (all of them when the text fits in one
    window). This is Hugging Face's standard evaluation."""
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
    surprisal = []
    scored_to = 1  # the first token is never scored
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end]
        hidden = model.forward(chunk, output_hidden_states=True, last_only=True).hidden_states[-1][0]  # [T, C]
        first = max(scored_to, begin + 1)  # score tokens [first, end), predicted by positions before them
        for rows in _batches(range(first - begin - 1, end - begin - 1), 128):
            logits = hidden[rows] @ model.lm_head.T  # [n, V], 128 rows at a time to bound memory
            targets = np.array(chunk)[np.array(rows) + 1]
            surprisal.append(-ops.log_softmax(logits)[np.arange(len(rows)), targets])
        scored_to = end
        if end == len(ids):
            break
    surprisal = np.concatenate(surprisal).astype(np.float64)
    mean = float(surprisal.mean())
    return Score(math.exp(mean), len(surprisal), mean, surprisal, window, stride, time.perf_counter() - start_time)


def _batches(indices: range, size: int):
    indices = list(indices)
    for i in range(0, len(indices), size):
        yield indices[i:i + size]


# -------------------------------------------------------------------------------------------------- hidden


class Hidden(NamedTuple):
    tokens: list[str]
    ids: list[int]
    states: np.ndarray  # [n_layer + 1, T, C]


def hidden(model, prompt) -> Hidden:
    """(tokens, ids, hidden states [n_layer + 1, T, C]): the embeddings, then each block's output (the last
    after the final LayerNorm, as transformers reports them)."""
    _check_model(model)
    ids = prompt_ids(model.tokenizer, prompt)
    states = np.stack(model.forward(ids, output_hidden_states=True).hidden_states)[:, 0]  # [L + 1, T, C]
    return Hidden([model.tokenizer.token_text(i) for i in ids], ids, states)
