"""OpenAI's legacy completions API (POST /v1/completions) over npgpt's scheduler: a request body checked and turned
into what `Scheduler.submit` takes, and the response bodies and stream chunks built from a job's rows.

    body (dict) -> parse_completion_request -> CompletionRequest: prompts (ids), settings (generate's keywords)
    job rows -> completion_body                   the whole answer
    job steps -> CompletionStream.start/step/end  the chunks of a streamed answer

Fields take OpenAI's names and meanings (max_tokens 16 and temperature 1 by default; temperature 0 is greedy),
plus npgpt's decoding rules under their own names (top_k, min_p, typical_p, repetition_penalty,
no_repeat_ngram_size, and min_tokens for min_new_tokens). A field that is unknown or not supported (best_of > 1,
suffix) is an error naming it, never ignored. Nothing here touches HTTP: server.py sends what this module builds.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass

import numpy as np

from .errors import ContextLengthError, InputError, NpgptError, SettingsError
from .generation import token_logprobs
from .model import HEAD_ROWS
from .prompts import check_ids
from .settings import MAX_TOP_LOGPROBS

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions API
DEFAULT_TEMPERATURE = 1.0  # OpenAI's: sampling unless temperature is 0
MAX_N = 128  # OpenAI's bound on n
MAX_CHOICES = 1024  # prompts x n of one request (each is a row of the batch, with its own bookkeeping)
MAX_STOP = 4  # stop strings, as OpenAI
MAX_BIAS = 100.0  # logit_bias values lie in [-100, 100], as OpenAI

# Why a choice ended, in OpenAI's words: end-of-text and stop strings are "stop", the token limit and the
# context's end are "length".
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


class ApiError(Exception):
    """An answer other than success: the HTTP status and OpenAI's error object (message, type, param, code)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}  # e.g. Allow with a 405, Retry-After with a 429

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_field(name: str, message: str) -> ApiError:
    return ApiError(400, message, param=name)


# ------------------------------------------------------------------------------------------------ field checks


def _show(value) -> str:
    """A value as the client wrote it, short."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value) -> bool:
    """A finite JSON number (an integer of 400 digits is one for JSON, not for a float)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1e300


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None):
    def check(name, value):
        if not _is_integer(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join([f">= {low}"] * (low is not None) + [f"<= {high}"] * (high is not None))
            raise bad_field(name, f"{name} must be an integer{' ' + bounds if bounds else ''}, got {_show(value)}")
        return value
    return check


def number(low: float, high: float | None = None, low_open: bool = False):
    def check(name, value):
        ok = _is_number(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
        if not ok:
            bounds = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
            raise bad_field(name, f"{name} must be a number {bounds}, got {_show(value)}")
        return float(value)
    return check


def boolean(name, value):
    if not isinstance(value, bool):
        raise bad_field(name, f"{name} must be true or false, got {_show(value)}")
    return value


def string(name, value):
    if not isinstance(value, str):
        raise bad_field(name, f"{name} must be a string, got {_show(value)}")
    return value


def stop_strings(name, value):
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_field(name, f"stop must be a non-empty string or a list of them, got {_show(value)}")
    if len(stops) > MAX_STOP:
        raise bad_field(name, f"stop takes at most {MAX_STOP} strings, got {len(stops)}")
    return stops


def logit_bias(name, value):
    """{"token id": bias} -> {id: bias}; ids are checked against the vocabulary with the prompt."""
    if not isinstance(value, dict):
        raise bad_field(name, f"logit_bias must be an object mapping token ids to a bias, got {_show(value)}")
    bias = {}
    for key, b in value.items():
        if not (key.isascii() and key.isdigit()):
            raise bad_field(name, f"logit_bias keys are token ids written as strings (e.g. \"50256\"), "
                                  f"got {_show(key)}")
        if not _is_number(b) or not -MAX_BIAS <= b <= MAX_BIAS:
            raise bad_field(name, f"logit_bias values must be numbers in [-100, 100], got {_show(b)} for {key}")
        bias[int(key)] = float(b)
    return bias


def stream_options(name, value):
    if not isinstance(value, dict):
        raise bad_field(name, f"stream_options must be an object, got {_show(value)}")
    unknown = sorted(set(value) - {"include_usage", "include_obfuscation"})
    if unknown:
        raise bad_field(name, f"stream_options takes include_usage (and include_obfuscation, which npgpt never "
                              f"adds), not {unknown[0]!r}")
    for key, v in value.items():
        boolean(f"stream_options.{key}", v)
    return value


def anything(name, value):
    return value


# field -> its check; the value a check returns is what the request keeps. null means "not given" for each.
OPENAI_FIELDS = {
    "model": string, "prompt": anything, "max_tokens": integer(0), "temperature": number(0.0, 2.0),
    "top_p": number(0.0, 1.0, low_open=True), "n": integer(1, MAX_N), "stream": boolean,
    "stream_options": stream_options, "logprobs": integer(0, MAX_TOP_LOGPROBS), "echo": boolean,
    "stop": stop_strings, "presence_penalty": number(-2.0, 2.0), "frequency_penalty": number(-2.0, 2.0),
    "logit_bias": logit_bias, "seed": integer(0, 2**63 - 1), "user": string,
    "best_of": integer(1), "suffix": anything,
}
# npgpt's decoding rules, as extra fields (vLLM's names where it has them): field -> generate's keyword
NPGPT_FIELDS = {"top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
                "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size",
                "min_tokens": "min_new_tokens"}
NPGPT_CHECKS = {"top_k": integer(0), "min_p": number(0.0, 1.0), "typical_p": number(0.0, 1.0, low_open=True),
                "repetition_penalty": number(0.0, low_open=True), "no_repeat_ngram_size": integer(0),
                "min_tokens": integer(0)}
FIELDS = {**OPENAI_FIELDS, **NPGPT_CHECKS}
# OpenAI fields passed to generate under the same name
PASSED = ("top_p", "presence_penalty", "frequency_penalty", "seed")


def _check_fields(body: dict) -> dict:
    """The given (non-null) fields, each checked; an unknown field or an unsupported one is an error."""
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(FIELDS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise bad_field(unknown[0], f"unknown field {unknown[0]!r}{hint} (npgpt refuses what it would ignore)")
    values = {k: FIELDS[k](k, v) for k, v in body.items() if v is not None}
    if values.get("best_of", 1) != 1:
        raise bad_field("best_of", "best_of is not supported (it ranks candidates server-side); use n and "
                                   "logprobs to choose among samples yourself")
    if "suffix" in values:
        raise bad_field("suffix", "suffix is not supported: GPT-2 was not trained to fill in the middle")
    if "stream_options" in values and not values.get("stream"):
        raise bad_field("stream_options", "stream_options is only allowed with stream: true")
    return values


# ----------------------------------------------------------------------------------------------------- prompts


def parse_prompts(prompt, tokenizer, vocab_size: int, n_positions: int) -> list[list[int]]:
    """OpenAI's prompt forms -> one list of token ids per prompt: a string, a list of strings, a list of ids,
    a list of lists of ids. An empty text or id list starts from <|endoftext|> (as npgpt's generate)."""
    what = "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if prompt is None:
        raise bad_field("prompt", "prompt is required: the text (or token ids) to continue")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        if all(_is_integer(t) for t in prompt):
            prompts = [prompt]
        elif all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
            prompts = prompt
        else:
            raise bad_field("prompt", f"{what}, got a list mixing {_kinds(prompt)}")
    else:
        raise bad_field("prompt", f"{what}, got {'an empty list' if prompt == [] else _show(prompt)}")
    out = []
    for i, p in enumerate(prompts):
        name = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        try:
            ids = tokenizer.encode(p) if isinstance(p, str) else check_ids(p, vocab_size)
        except NpgptError as e:
            raise bad_field("prompt", f"{name}: {e}") from None
        ids = ids or [tokenizer.eot_id]
        if len(ids) > n_positions:
            raise bad_field("prompt", f"{name} is {len(ids)} tokens; the model's context is {n_positions} tokens: "
                                      "shorten it")
        out.append(ids)
    return out


def _kinds(values: list) -> str:
    names = {bool: "booleans", int: "token ids", str: "strings", list: "lists", dict: "objects", float: "numbers"}
    return " and ".join(sorted({names.get(type(v), type(v).__name__) for v in values}))


# ----------------------------------------------------------------------------------------------------- requests


@dataclass
class CompletionRequest:
    """A checked request: the prompts' ids, generate's settings, and how to answer."""

    model: str
    prompts: list[list[int]]  # one list of ids per prompt
    settings: dict  # keyword settings as model.generate and Scheduler.submit take them
    n: int  # choices per prompt
    stream: bool = False
    include_usage: bool = False  # stream: a last chunk with the usage
    echo: bool = False
    logprobs: int | None = None  # None: no logprobs; N: each token's and its N most likely alternatives

    @property
    def sampling(self) -> bool:
        return "temperature" in self.settings

    def job_prompts(self) -> list[list[int]]:
        """What to submit: the prompts, each n times when decoding greedily (generate's n needs sampling, and
        OpenAI gives n choices at temperature 0 too: the same text n times). Rows stay prompt-major."""
        return self.prompts if self.sampling else [p for p in self.prompts for _ in range(self.n)]


def parse_completion_request(body, model, served_name: str) -> CompletionRequest:
    """A request body (parsed JSON) -> a CompletionRequest, or an ApiError naming the field that is wrong.

    `model` may be left out (this server serves one model); when given it must be the served model's name."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    values = _check_fields(body)
    name = values.get("model", served_name)
    if name != served_name:
        raise ApiError(404, f"model {name!r} is not served here; this server serves {served_name!r}",
                       param="model", code="model_not_found")
    prompts = parse_prompts(body.get("prompt"), model.tokenizer, model.config.vocab_size, model.config.n_positions)
    n = values.get("n", 1)
    if len(prompts) * n > MAX_CHOICES:
        raise bad_field("n" if n > 1 else "prompt", f"{len(prompts)} prompts x n={n} make {len(prompts) * n} "
                                                   f"choices; one request makes at most {MAX_CHOICES}")
    return CompletionRequest(model=name, prompts=prompts, settings=generate_settings(values),
                             n=n, stream=values.get("stream", False),
                             include_usage=values.get("stream_options", {}).get("include_usage", False),
                             echo=values.get("echo", False), logprobs=values.get("logprobs"))


def generate_settings(values: dict) -> dict:
    """Checked request fields -> generate's keyword settings (OpenAI's defaults: 16 tokens, temperature 1)."""
    settings = {"max_new_tokens": values.get("max_tokens", DEFAULT_MAX_TOKENS)}
    temperature = values.get("temperature", DEFAULT_TEMPERATURE)
    if temperature == 0:
        settings["do_sample"] = False  # greedy, whatever top_p or top_k say (as OpenAI at temperature 0)
    else:
        settings["temperature"] = temperature
        if values.get("n", 1) > 1:
            settings["n"] = values["n"]
    settings.update({k: values[k] for k in PASSED if k in values})
    settings.update({NPGPT_FIELDS[k]: values[k] for k in NPGPT_FIELDS if k in values})
    if values.get("stop"):
        settings["stop"] = values["stop"]
    if values.get("logit_bias"):
        settings["logit_bias"] = values["logit_bias"]
    if values.get("logprobs") is not None:
        settings.update(logprobs=True, top_logprobs=values["logprobs"])
    return settings


# the API's name of each of generate's settings, to name the field of a SettingsError
_API_NAMES = {**{v: k for k, v in NPGPT_FIELDS.items()}, "max_new_tokens": "max_tokens", "top_logprobs": "logprobs",
              **{k: k for k in (*PASSED, "temperature", "stop", "logit_bias", "n", "logprobs")}}


def scheduler_error(e: NpgptError) -> ApiError:
    """What the scheduler refused at submit, as a 400 naming the field when the message names a setting."""
    if isinstance(e, (ContextLengthError, InputError)):
        return bad_field("prompt", str(e))
    param = None
    if isinstance(e, SettingsError):  # the first setting its message names
        param = next((_API_NAMES[w] for w in re.findall(r"[a-z_]+", str(e)) if w in _API_NAMES), None)
    return ApiError(400, str(e) or type(e).__name__, param=param)


# ---------------------------------------------------------------------------------------------------- responses


def completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def finish_reason(reason: str | None) -> str | None:
    return FINISH_REASONS.get(reason, reason)


@dataclass
class Echo:
    """A prompt as echo returns it: its text, its tokens' texts, the piece of text each token adds, and each
    token's logprobs (None for the first token: nothing predicts it) when asked for."""

    text: str
    tokens: list[str]
    pieces: list[str]
    logprobs: list | None  # TokenLogprob per token, the first None; None without logprobs

    def legacy_logprobs(self) -> dict:
        return legacy_logprobs(self.tokens, self.logprobs, _offsets(self.pieces, 0))


def echo_prompt(model, ids: list[int], logprobs: int | None) -> Echo:
    """The echo of one prompt; with logprobs, one forward pass over it gives each token's log-probability and
    its `logprobs` most likely alternatives, as generation reports them."""
    tokenizer, decoder = model.tokenizer, model.tokenizer.stream_decoder()
    pieces = [decoder.feed(t) for t in ids]
    pieces[-1] += decoder.flush()
    entries = None
    if logprobs is not None:  # the head over HEAD_ROWS positions at a time: never all T x V logits at once
        hidden = model.forward(np.asarray([ids]), logits=False).last_hidden_state[0]  # [T, C]
        entries = [None]  # the first token has no logprob: nothing comes before it
        for start in range(0, len(ids) - 1, HEAD_ROWS):
            stop = min(start + HEAD_ROWS, len(ids) - 1)
            entries += token_logprobs(tokenizer, model.unembed(hidden[start:stop]), ids[start + 1:stop + 1], logprobs)
    return Echo("".join(pieces), [tokenizer.token_text(t) for t in ids], pieces, entries)


def _float(x) -> float | None:
    """A logprob for JSON (which has no -inf)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _top(lp) -> dict | None:
    """OpenAI's top_logprobs entry: the most likely tokens, and the chosen one when it is not among them."""
    if lp is None:
        return None
    top = {a.token: _float(a.logprob) for a in lp.top_logprobs}
    top.setdefault(lp.token, _float(lp.logprob))
    return top


def legacy_logprobs(tokens: list[str], entries: list, offsets: list[int]) -> dict:
    """OpenAI's legacy logprobs object. entries: a TokenLogprob per token (None: not predicted, the first echoed
    token); offsets: where each token's text starts in the choice's text."""
    return {"tokens": tokens, "token_logprobs": [None if lp is None else _float(lp.logprob) for lp in entries],
            "top_logprobs": [_top(lp) for lp in entries], "text_offset": offsets}


def _offsets(pieces: list[str], start: int) -> list[int]:
    """Where each token's text starts: the length of the text before it (a token that ends inside a character
    starts where that character will)."""
    offsets, at = [], start
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return offsets


def choice_body(index: int, row, echo: Echo | None, logprobs: int | None) -> dict:
    """One choice of a complete answer from its finished row (and its prompt's echo)."""
    head = echo.text if echo else ""
    lp = None
    if logprobs is not None:
        generated = row.logprobs[:len(row.ids)]
        tokens, entries = [e.token for e in generated], list(generated)
        offsets = _offsets(row.pieces[:len(row.ids)], len(head))
        if echo:
            tokens, entries = echo.tokens + tokens, echo.logprobs + entries
            offsets = _offsets(echo.pieces, 0) + offsets
        lp = legacy_logprobs(tokens, entries, offsets)
    return {"text": head + "".join(row.pieces), "index": index, "logprobs": lp,
            "finish_reason": finish_reason(row.finish_reason)}


def usage(request: CompletionRequest, rows) -> dict:
    """Token counts: each prompt once (whatever n), every generated token (without a final end-of-text)."""
    prompt_tokens = sum(len(p) for p in request.prompts)
    completion_tokens = sum(len(row.ids) for row in rows)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request: CompletionRequest, rows, echoes: list[Echo] | None, id: str | None = None,
                    created: int | None = None) -> dict:
    """The whole answer: the choices ordered prompt-major (prompt i's choices are i*n .. i*n+n-1)."""
    n = request.n
    choices = [choice_body(k, row, echoes[k // n] if echoes else None, request.logprobs)
               for k, row in enumerate(rows)]
    return {"id": id or completion_id(), "object": "text_completion", "created": created or int(time.time()),
            "model": request.model, "choices": choices, "usage": usage(request, rows)}


class CompletionStream:
    """The chunks of a streamed answer, in OpenAI's shape: each carries one choice (its index, a piece of text,
    that piece's logprobs), finish_reason null until the choice's last chunk. With echo, each choice starts with
    its prompt; with stream_options.include_usage, a last chunk has no choices and the usage."""

    def __init__(self, request: CompletionRequest, echoes: list[Echo] | None, id: str | None = None,
                 created: int | None = None):
        self.request, self.echoes = request, echoes
        self.id, self.created = id or completion_id(), created or int(time.time())
        choices = len(request.prompts) * request.n
        self.sent = [0] * choices  # characters of each choice sent so far
        self.finished = [False] * choices

    def chunk(self, index: int, text: str, logprobs: dict | None = None, finish: str | None = None) -> dict:
        chunk = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.request.model,
                 "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}]}
        if self.request.include_usage:
            chunk["usage"] = None
        self.sent[index] += len(text)
        self.finished[index] = finish is not None
        return chunk

    def start(self) -> list[dict]:
        """The echo chunks, one per choice, before anything is generated."""
        if not self.echoes:
            return []
        out = []
        for k in range(len(self.sent)):
            echo = self.echoes[k // self.request.n]
            out.append(self.chunk(k, echo.text, echo.legacy_logprobs() if echo.logprobs is not None else None))
        return out

    def step(self, step) -> dict | None:
        """The chunk of one scheduler Step (None when it adds nothing: no text, no logprobs, not the end)."""
        finish = finish_reason(step.finish_reason)
        lp = None
        if self.request.logprobs is not None and step.logprob is not None and step.finish_reason != "eos":
            lp = legacy_logprobs([step.logprob.token], [step.logprob], [self.sent[step.row]])
        if not step.text and lp is None and finish is None:
            return None
        return self.chunk(step.row, step.text, lp, finish)

    def end(self, rows) -> list[dict]:
        """A last chunk for each choice that finished without a step (max_tokens 0, a full context), then the
        usage chunk when asked for."""
        out = [self.chunk(k, "", None, finish_reason(rows[k].finish_reason))
               for k in range(len(rows)) if not self.finished[k]]
        if self.request.include_usage:
            out.append({"id": self.id, "object": "text_completion", "created": self.created,
                        "model": self.request.model, "choices": [], "usage": usage(self.request, rows)})
        return out
