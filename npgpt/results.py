"""What generation gives back, and the bookkeeping of one sequence while it is generated.

    Completion (a str) or TokenCompletion (a list of ids), each with ids, text, finish_reason, logprobs, score
    Step: one new token, as streaming yields it
    Row: a sequence being generated: its ids, its text so far, held-back text, why it finished
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import display

# Why generation ended, on every result.
EOS = "eos"  # the model produced <|endoftext|> (or another eos_token_id; not part of the result)
LENGTH = "length"  # max_new_tokens were generated
STOP = "stop"  # a stop string appeared (the text ends before it; the ids include the tokens that completed it)
CONTEXT = "context"  # the sequence filled the model's context window (n_positions tokens)


@dataclass
class Alternative:
    token: str
    id: int
    logprob: float


@dataclass
class TokenLogprob:
    """A generated token with its log-probability under the model and the most likely alternatives
    (OpenAI's logprobs / top_logprobs). Log-probabilities are the model's own (log-softmax of its logits),
    before any decoding rule, so they do not depend on the sampling settings."""

    token: str
    id: int
    logprob: float
    top_logprobs: list[Alternative] = field(default_factory=list)


class _Details:
    """What a Completion and a TokenCompletion carry beside their text or ids; shown short, as a notebook cell
    shows them: the text (cut), the finish reason, the token count."""

    ids: list[int]  # the new token ids (without a final <|endoftext|>; with the tokens that completed a stop)
    text: str
    finish_reason: str  # "eos", "length", "stop" or "context"
    logprobs: list[TokenLogprob] | None  # with logprobs=True, one per id
    score: float | None  # beam search: the beam's length-normalised log-probability, as transformers'

    def _repr_html_(self) -> str:
        """In a notebook: the text, its finish reason and token count, and the logprobs as a table."""
        text = self.text if isinstance(self.text, str) else ""
        parts = [f"<div style='white-space: pre-wrap; font-family: monospace'>{display.escape(text)}</div>",
                 f"<div><b>{display.escape(self.finish_reason)}</b> after {len(self.ids)} tokens"
                 + ("" if self.score is None else f", score {self.score:.4f}") + "</div>"]
        if self.logprobs:
            shown, note = display.limit(self.logprobs)
            rows = [[display.token(lp.token), lp.id, f"{lp.logprob:.3f}",
                     ", ".join(f"{a.token!r} {a.logprob:.2f}" for a in lp.top_logprobs)] for lp in shown]
            parts.append(display.table(["token", "id", "logprob", "alternatives"], rows, align="lrrl", note=note))
        return "".join(parts)

    def _details(self) -> str:
        score = "" if self.score is None else f", score={self.score:.4f}"
        logprobs = "" if not self.logprobs else ", logprobs=[...]"
        return f"finish_reason={self.finish_reason!r}, tokens={len(self.ids)}{score}{logprobs}"


class Completion(str, _Details):
    """The generated text (a str), carrying ids, finish_reason, logprobs and score."""

    def __new__(cls, text: str, ids, finish_reason, logprobs=None, score=None):
        self = super().__new__(cls, text)
        self.text, self.ids, self.finish_reason, self.logprobs, self.score = text, ids, finish_reason, logprobs, score
        return self

    def __repr__(self) -> str:
        text = str.__repr__(self) if len(self) <= 60 else str.__repr__(self[:57]) + "..."
        return f"Completion({text}, {self._details()})"


class TokenCompletion(list, _Details):
    """The generated token ids (a list), carrying text, finish_reason, logprobs and score."""

    def __init__(self, ids, finish_reason, text="", logprobs=None, score=None):
        super().__init__(ids)
        self.ids, self.text, self.finish_reason, self.logprobs, self.score = list(ids), text, finish_reason, \
            logprobs, score

    def __repr__(self) -> str:
        ids = list.__repr__(self) if len(self) <= 12 else list.__repr__(self[:12])[:-1] + ", ...]"
        return f"TokenCompletion({ids}, text={self.text[:40]!r}, {self._details()})"


@dataclass
class Step:
    """One generated token, as streaming yields it."""

    token_id: int
    text: str  # the text it completes ("" while a character or a possible stop string is unfinished)
    finish_reason: str | None = None  # set on the last step
    logprob: TokenLogprob | None = None
    row: int = 0  # which row of the batch


class StopStrings:
    """Holds back text that may be the start of a stop string; reports a stop string once it is complete.

    Only the text after the prompt is searched (transformers also looks across the prompt). What is held back
    is shorter than the longest stop string, so each piece costs time in proportion to the stop strings'
    length, never to the text's.
    """

    def __init__(self, stops: list[str]):
        self.stops, self.pending = stops, ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that can be shown now, whether a stop string was found: the text is then cut before it)"""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            shown, self.pending = self.pending[:min(hits)], ""
            return shown, True
        hold = max(held_back(self.pending, s) for s in self.stops)
        shown = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(shown):]
        return shown, False

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown


def held_back(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `stop` (it may yet become `stop`).

    Only the places where stop's first character occurs in the last len(stop) - 1 characters are tried."""
    start = max(0, len(text) - len(stop) + 1)
    i = text.find(stop[0], start)
    while i >= 0:
        if stop.startswith(text[i:]):
            return len(text) - i
        i = text.find(stop[0], i + 1)
    return 0


@dataclass
class Row:
    """The bookkeeping of one generated sequence."""

    limit: int  # tokens it may generate: max_new_tokens or what is left of the context
    decoder: object  # the tokenizer's StreamDecoder
    stops: StopStrings
    ids: list = field(default_factory=list)
    pieces: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    score: float | None = None

    def advance(self, token: int, logprob, max_new_tokens: int, eos_ids: tuple[int, ...]) -> str:
        """Record a new token; set the finish reason when the row is done. Returns the text to show now."""
        if token in eos_ids:
            self.finish_reason = EOS
            text = self.stops.feed(self.decoder.flush())[0] + self.stops.flush()
        else:
            self.ids.append(token)
            if logprob is not None:
                self.logprobs.append(logprob)
            text, stopped = self.stops.feed(self.decoder.feed(token))
            if stopped:
                self.finish_reason = STOP
            elif len(self.ids) == self.limit:
                self.finish_reason = LENGTH if len(self.ids) == max_new_tokens else CONTEXT
                tail, stopped = self.stops.feed(self.decoder.flush())
                text += tail if stopped else tail + self.stops.flush()
                if stopped:
                    self.finish_reason = STOP
        self.pieces.append(text)
        return text

    def result(self, as_text: bool):
        text = "".join(self.pieces)
        logprobs = self.logprobs if self.logprobs else None
        if as_text:
            return Completion(text, self.ids, self.finish_reason, logprobs, self.score)
        return TokenCompletion(self.ids, self.finish_reason, text, logprobs, self.score)
