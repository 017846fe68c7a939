"""The experiments people studying GPT-2 run (the seed notebooks), each one function returning plain data.

    top_k            the next-token candidates and their probabilities (notebook 002), decoding rules applied
    trace            step-by-step greedy or sampled generation, the logits growing by one position (000)
    attention_map    one head's attention probabilities over the prompt's tokens (000, 001)
    causal_mask      the additive mask itself: 0 on and below the diagonal, -inf above (001)
    architecture     the model as a tree of parts with shapes and parameter counts (004)
    temperature_table  how temperature reshapes the top of the distribution (001)
    compare          greedy, temperature, top-k and top-p continuations side by side (004)
    perplexity       a text's perplexity with a sliding window (the standard evaluation)
    hidden_states    the residual stream after every layer (000)

The terminal views are in npgpt.views and the figures in npgpt.plots; the CLI puts them together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .config import GPT2Config
from .errors import SettingsError
from .generation import Settings, prompt_ids, row_generators
from .sampling import apply, next_token_distribution


@dataclass
class Candidate:
    token: str  # the token's text (a part of a character shows as U+FFFD)
    id: int
    probability: float  # under the processed distribution (what generation draws from)
    logit: float  # the model's raw logit


def _distribution(model, ids: list[int], logits: np.ndarray, prompt_length: int, settings: dict) -> np.ndarray:
    """The processed next-token distribution [V] (as generation computes it) for the model's logits [V]."""
    return next_token_distribution(logits, ids, prompt_length=prompt_length, tokenizer=model.tokenizer,
                                   **{"eos_token_id": model.tokenizer.eot_id, **settings})


def _candidates(model, probs: np.ndarray, logits: np.ndarray, k: int) -> list[Candidate]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [Candidate(model.tokenizer.token_text(int(i)), int(i), float(probs[i]), float(logits[i])) for i in order]


def top_k(model, prompt, k: int = 10, **settings) -> list[Candidate]:
    """The k most likely tokens to follow `prompt`, most likely first, with the probabilities generation would
    draw them with under `settings` (e.g. logit_bias={"gonna": -5.0}, temperature=0.7)."""
    if k < 1:
        raise SettingsError(f"k must be >= 1, got {k}")
    ids = prompt_ids(model.tokenizer, prompt)
    logits = model.forward(ids, last_only=True).logits[0, -1]  # [V]
    return _candidates(model, _distribution(model, ids, logits, len(ids), settings), logits, k)


@dataclass
class TraceStep:
    step: int  # 1, 2, ...
    logits_shape: tuple  # (1, T, V): the forward pass covers the whole sequence so far
    chosen: Candidate
    runners_up: list[Candidate]
    text: str  # the prompt and everything generated up to and including this step


def trace(model, prompt, steps: int = 10, alternatives: int = 3, seed: int | None = None,
          **settings) -> list[TraceStep]:
    """Generate step by step as notebook 000 does: run the model over the whole sequence, take the last
    position's distribution, choose (greedily unless sampling settings are given), append, repeat; stops
    early at <|endoftext|>. No cache, so each step's logits are one position longer than the last."""
    tokenizer = model.tokenizer
    ids = prompt_ids(tokenizer, prompt)
    sampler = Settings.parse(model, dict(settings, seed=seed)).sampler  # the very rules generate() uses
    rules, rngs = sampler.rules(prompt_length=len(ids)), row_generators(seed, 1)
    out = []
    for step in range(1, steps + 1):
        if len(ids) >= model.config.n_positions:
            break
        logits = model(ids)  # [T, V]: the whole sequence, one position longer each step
        processed = apply(rules, np.array([ids]), logits[-1:])  # [1, V]
        token = int(sampler.select(processed, rngs)[0])
        probs = ops.softmax(processed[0].astype(np.float64))  # [V]
        ranked = _candidates(model, probs, logits[-1], alternatives + 1)
        chosen = Candidate(tokenizer.token_text(token), token, float(probs[token]), float(logits[-1, token]))
        ids.append(token)
        text = tokenizer.decode([i for i in ids if i != tokenizer.eot_id])
        runners_up = [c for c in ranked if c.id != token][:alternatives]
        out.append(TraceStep(step, (1,) + logits.shape, chosen, runners_up, text))
        if token == tokenizer.eot_id:
            break
    return out


def attention_map(model, prompt, layer: int = 0, head: int = 0) -> tuple[list[str], np.ndarray]:
    """(the prompt's tokens, head `head` of layer `layer`'s attention probabilities [T, T]): row i is how
    query i spreads its attention over keys 0..i; above the diagonal everything is 0."""
    c = model.config
    if not 0 <= layer < c.n_layer:
        raise SettingsError(f"layer must be in 0..{c.n_layer - 1}, got {layer}")
    if not 0 <= head < c.n_head:
        raise SettingsError(f"head must be in 0..{c.n_head - 1}, got {head}")
    ids = prompt_ids(model.tokenizer, prompt)
    probs = model.forward(ids, output_attentions=True).attentions[layer][0, head]  # [T, T]
    return [model.tokenizer.token_text(i) for i in ids], probs


def causal_mask(n: int) -> np.ndarray:
    """The additive causal mask GPT-2 puts on attention scores: 0 where allowed, -inf above the diagonal."""
    if n < 1:
        raise SettingsError(f"the mask needs n >= 1, got {n}")
    return ops.causal_mask(n)


@dataclass
class Part:
    name: str
    detail: str = ""  # what it is and its shapes
    params: int = 0  # parameters of this part and everything under it
    children: list["Part"] = field(default_factory=list)
    note: str = ""  # how the part is used, beyond its shapes


def architecture(model_or_config) -> Part:
    """GPT-2 as a tree of parts with their shapes and parameter counts. Given a model, the counts are those of
    its checkpoint's tensors (an untied output head is counted; the tied one shares wte)."""
    config = model_or_config if isinstance(model_or_config, GPT2Config) else model_or_config.config
    state = None if isinstance(model_or_config, GPT2Config) else model_or_config.state
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


def temperature_table(model, prompt, temperatures=(0.1, 0.7, 1.5), top: int = 20
                      ) -> tuple[list[Candidate], dict[float, np.ndarray]]:
    """The `top` most likely next tokens (at temperature 1) and their probabilities at each temperature:
    softmax(logits / t) over the whole vocabulary, shown for those tokens (notebook 001)."""
    if not temperatures or any(not t > 0 for t in temperatures):
        raise SettingsError(f"temperatures must be > 0, got {list(temperatures)}")
    ids = prompt_ids(model.tokenizer, prompt)
    logits = model.forward(ids, last_only=True).logits[0, -1]  # [V]
    base = _candidates(model, ops.softmax(logits.astype(np.float64)), logits, top)
    chosen = np.array([c.id for c in base])
    table = {float(t): ops.softmax(logits.astype(np.float64) / t)[chosen] for t in temperatures}
    return base, table


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


def compare(model, prompt, settings=None, max_new_tokens: int = 30, seed: int = 0) -> list[tuple[str, str]]:
    """Continuations of one prompt under several decoding settings, each with the same seed:
    [(label, text)], by default greedy, three temperatures, three top-k and three top-p (notebook 004)."""
    return [(label, model.generate(prompt, max_new_tokens=max_new_tokens, seed=seed, **rules))
            for label, rules in (settings or COMPARE_SETTINGS)]


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


def perplexity(model, text: str, window: int | None = None, stride: int | None = None) -> Score:
    """exp(mean -log p(token | what precedes it)) over a text, with a sliding window: each window of up to
    `window` tokens (default: the context) starts `stride` tokens (default: half a window) after the last,
    and scores only the tokens the previous window did not, so every token after the first is scored once,
    with at least window - stride tokens of context before it (all of them when the text fits in one
    window). This is Hugging Face's standard evaluation."""
    ids = model.tokenizer.encode(text)
    window = window or model.config.n_positions
    stride = stride or max(1, window // 2)
    if not 1 < window <= model.config.n_positions:
        raise SettingsError(f"window must be in 2..{model.config.n_positions}, got {window}")
    if not 1 <= stride < window:
        raise SettingsError(f"stride must be in 1..window - 1 ({window - 1}), got {stride}: windows must overlap "
                            "so that each token has something before it")
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


def hidden_states(model, prompt) -> tuple[list[str], list[int], np.ndarray]:
    """(tokens, ids, hidden states [n_layer + 1, T, C]): the embeddings, then each block's output (the last
    after the final LayerNorm, as transformers reports them)."""
    ids = prompt_ids(model.tokenizer, prompt)
    states = np.stack(model.forward(ids, output_hidden_states=True).hidden_states)[:, 0]  # [L + 1, T, C]
    return [model.tokenizer.token_text(i) for i in ids], ids, states
