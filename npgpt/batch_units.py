"""The requests of a batch job (npgpt.batch) and the units they are run in: a request parsed and checked, the
requests of a window cut into units of similar length, and a unit run on a model (one model.generate over
prompts with the same settings, or one forward pass over left-padded texts), giving each request its result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings

import numpy as np

from . import study
from .errors import NpgptError, SettingsError
from .model import HEAD_ROWS
from .prompts import left_pad
from .settings import Settings

BATCH_SIZE = 16  # rows of one unit
BATCH_TOKENS = 512  # padded tokens of one unit (rows x width): bounds a worker's activations (see token_logprobs)
SCORE_FIELDS = {"id", "text", "window", "stride"}


# ------------------------------------------------------------------------------------------------ requests


@dataclasses.dataclass
class Request:
    """One input line, parsed. kind: "generate", "score" or "error" (then `error` says why)."""

    index: int  # 0-based position in the input
    id: object = None  # None when no id could be read
    kind: str = "error"
    body: dict = dataclasses.field(default_factory=dict)  # the JSON object without its id
    error: str = ""
    length: int = 0  # tokens of the prompt or text (set when the unit is planned)
    ids: list | None = None  # a text's token ids
    input_hash: str | None = None  # of its line of IN (see batch_output.input_hash), for a job that writes a file

    @property
    def key(self) -> str:
        """What names its result line: its id, or its line number when it has no id."""
        return f"id {json.dumps(self.id)}" if self.id is not None else f"line {self.index + 1}"

    def failed(self, message: str) -> dict:
        return error_result(self.id, self.index, message)


def error_result(id, index: int, message: str) -> dict:
    return {"id": id, "error": message} if id is not None else {"line": index + 1, "error": message}


def parse_request(index: int, entry) -> Request:
    """A line of the input (bytes or str) or a request given in Python (a dict) -> a Request; nothing about it
    can raise: what is wrong with it is the Request's error."""
    r = Request(index)
    if isinstance(entry, bytes):
        try:
            entry = entry.decode("utf-8")
        except UnicodeDecodeError:
            r.error = "the line is not UTF-8 text"
            return r
    if isinstance(entry, str):
        if not entry.strip():
            r.error = "empty line: a request is a JSON object with an id"
            return r
        try:
            entry = json.loads(entry)
        except ValueError as e:
            r.error = f"not JSON ({getattr(e, 'msg', e)} at column {getattr(e, 'colno', '?')})"
            return r
    if not isinstance(entry, dict):
        r.error = f"a request is a JSON object with an id, got {type(entry).__name__}"
        return r
    if "id" not in entry:
        r.error = 'the request has no "id"'
        return r
    if not isinstance(entry["id"], (str, int)) or isinstance(entry["id"], bool):
        r.error = f'"id" must be a string or an integer, got {json.dumps(entry["id"], default=repr)[:40]}'
        return r
    r.id = entry["id"]
    r.body = {k: v for k, v in entry.items() if k != "id"}
    r.kind, r.error = _check_body(r.body)
    return r


def _check_body(body: dict) -> tuple[str, str]:
    """(kind, "") for a request that can be tried, ("error", why) for one that cannot."""
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as e:  # a request given in Python with a value JSON cannot hold
        return "error", f"the request must be JSON (strings, numbers, lists, objects): {e}"
    if ("prompt" in body) == ("text" in body):
        return "error", ('give "prompt" (to complete it) or "text" (to score it), not both' if "prompt" in body
                         else 'the request needs a "prompt" (to complete) or a "text" (to score)')
    if "text" in body:
        extra = sorted(set(body) - SCORE_FIELDS)
        if extra:
            return "error", f'a scoring request takes "text", "window" and "stride", not {extra[0]!r}'
        if not isinstance(body["text"], str):
            return "error", f'"text" must be a string, got {type(body["text"]).__name__}'
        return "score", ""
    prompt = body["prompt"]
    ids = isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    if not (isinstance(prompt, str) or ids):
        return "error", '"prompt" must be text or a list of token ids'
    return "generate", ""


def request_seed(job_seed: int, id) -> int:
    """The seed a sampling request without its own seed is given: a hash of the job's seed and the request's id,
    so it depends on nothing else (not on the worker, the batch or the order)."""
    digest = hashlib.sha256(f"{job_seed}\0{json.dumps(id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # >= 0, < 2**63


# --------------------------------------------------------------------------------------------------- units


def plan(requests: list[Request], model, batch_size: int = BATCH_SIZE, batch_tokens: int = BATCH_TOKENS) -> list[dict]:
    """The units of work of one window of requests (the error ones are left out), in the order of their first
    request. A unit is plain JSON: {"kind", "items": [[index, id, payload], ...], "settings"}; kinds:
        score       texts of similar length (token ids) scored in one forward pass
        score_text  one text scored by study.score (longer than the context, or with its own window)
        generate    prompts of similar length with the same settings, generated together"""
    n_positions, tokenizer = model.config.n_positions, model.tokenizer
    singles, scores, prompts = [], [], {}
    for r in requests:
        if r.kind == "score":
            if set(r.body) == {"text"}:
                r.ids = _encode(tokenizer, r.body["text"])
                r.length = len(r.ids or ())
            if r.ids is not None and 2 <= r.length <= n_positions:
                scores.append(r)
            else:  # study.score says what is wrong with a text of fewer than two tokens, or a bad window
                singles.append({"kind": "score_text", "items": [[r.index, r.id, r.body]]})
        elif r.kind == "generate":
            prompt = r.body["prompt"]
            r.length = len(_encode(tokenizer, prompt) or ()) if isinstance(prompt, str) else len(prompt)
            settings = {k: v for k, v in r.body.items() if k != "prompt"}
            key = json.dumps(settings, sort_keys=True)
            if "max_length" in settings:  # it counts the padded width: such a request runs alone
                key += f"\0{r.index}"
            prompts.setdefault(key, []).append(r)
    units = [{"kind": "score", "items": [[r.index, r.id, r.ids] for r in group]}
             for group in _similar_lengths(scores, batch_size, batch_tokens)]
    for key, group in prompts.items():
        settings = {k: v for k, v in group[0].body.items() if k != "prompt"}
        units += [{"kind": "generate", "settings": settings, "items": [[r.index, r.id, r.body["prompt"]] for r in g]}
                  for g in _similar_lengths(group, batch_size, batch_tokens)]
    return sorted(units + singles, key=lambda u: min(item[0] for item in u["items"]))


def _encode(tokenizer, text: str) -> list[int] | None:
    """A text's ids, or None when the tokenizer refuses it (the worker then reports why, on its line)."""
    try:
        return tokenizer.encode(text)
    except NpgptError:
        return None


def _similar_lengths(requests: list[Request], batch_size: int, batch_tokens: int) -> list[list[Request]]:
    """Requests sorted by length, cut into groups of at most batch_size rows and batch_tokens padded tokens."""
    groups, group = [], []
    for r in sorted(requests, key=lambda r: (r.length, r.index)):
        if group and (len(group) == batch_size or (len(group) + 1) * r.length > batch_tokens):
            groups.append(group)
            group = []
        group.append(r)
    return groups + [group] if group else groups


# --------------------------------------------------------------------------------- running a unit (workers)


def run_unit(model, unit: dict, job_seed: int = 0) -> list[tuple[int, dict]]:
    """[(input index, result)] for every request of a unit; a request that fails gets an error result."""
    items = unit["items"]
    if unit["kind"] == "generate":
        return _generate_unit(model, unit["settings"], items, job_seed)
    if unit["kind"] == "score":
        return _score_unit(model, items)
    return [(index, _guarded(id, index, lambda: _score_text(model, id, body))) for index, id, body in items]


def _guarded(id, index: int, work) -> dict:
    """work()'s result, or an error result saying what went wrong: one bad request never stops the job."""
    try:
        return work()
    except NpgptError as e:
        return error_result(id, index, str(e) or type(e).__name__)
    except Exception as e:  # noqa: BLE001 (a bug in npgpt: reported on the request's line, the job goes on)
        first = (str(e).splitlines() or [""])[0]
        return error_result(id, index, f"internal error, please report it: {type(e).__name__}: {first}")


def _generate_unit(model, settings: dict, items: list, job_seed: int) -> list[tuple[int, dict]]:
    try:
        parsed = Settings.parse(model, settings)
        if parsed.n > 1:
            raise SettingsError("batch makes one sequence per request (n=1): give each sample its own line, id and "
                                "seed")
    except NpgptError as e:
        return [(index, error_result(id, index, str(e))) for index, id, _ in items]
    groups: dict[str, list] = {}
    for index, id, prompt in items:  # a sampling request without a seed is given its own: it runs alone
        own = dict(settings)
        if parsed.sampler.sampling and own.get("seed") is None:
            own["seed"] = request_seed(job_seed, id)
        groups.setdefault(json.dumps(own, sort_keys=True), []).append((index, id, prompt))
    out = []
    for key, members in groups.items():
        out += _generate(model, json.loads(key), members)
    return out


def _generate(model, settings: dict, members: list) -> list[tuple[int, dict]]:
    """One model.generate over the members' prompts; when it fails (one prompt too long, bad ids), each member
    alone, so that the error lands on the request that caused it."""
    if len(members) > 1:
        try:
            completions = _quiet(lambda: model.generate([p for _, _, p in members], **settings))
        except Exception:  # noqa: BLE001 (each member alone says which one failed and why)
            return [result for m in members for result in _generate(model, settings, [m])]
        return [(index, _completion(id, c)) for (index, id, _), c in zip(members, completions)]
    index, id, prompt = members[0]
    return [(index, _guarded(id, index, lambda: _completion(id, _quiet(lambda: model.generate(prompt, **settings)))))]


def _quiet(work):
    with warnings.catch_warnings():  # PromptTruncatedWarning: the request asked for truncate_prompt
        warnings.simplefilter("ignore")
        return work()


def _completion(id, c) -> dict:
    result = {"id": id, "text": c.text, "finish_reason": c.finish_reason, "tokens": len(c.ids)}
    if c.logprobs:
        result["logprobs"] = [{"token": lp.token, "logprob": _short(lp.logprob),
                               "top_logprobs": [{"token": a.token, "logprob": _short(a.logprob)}
                                                for a in lp.top_logprobs]} for lp in c.logprobs]
    return result


def _score_unit(model, items: list) -> list[tuple[int, dict]]:
    try:
        logprobs = token_logprobs(model, [ids for _, _, ids in items])
    except Exception:  # noqa: BLE001 (each text alone says which one failed and why)
        return [(index, _guarded(id, index, lambda: _score(id, token_logprobs(model, [ids])[0])))
                for index, id, ids in items]
    return [(index, _score(id, lp)) for (index, id, _), lp in zip(items, logprobs)]


def token_logprobs(model, rows: list[list[int]]) -> list[np.ndarray]:
    """log p(token | the tokens before it) of every token but the first, for texts that fit the context: one
    forward pass over the rows, left-padded and masked, then the output head over every row's positions,
    HEAD_ROWS at a time, as study.score computes it. rows: token ids; returns a float32 array [len(row) - 1]
    per row.

    Memory: besides the forward pass's own, the last hidden state [B, W, C] (1.5 MB a row for GPT-2 124M at 512
    padded tokens) and the head's [HEAD_ROWS, V] array (26 MB)."""
    ids, mask = left_pad(rows, model.tokenizer.eot_id)  # [B, W]
    hidden = model.forward(ids, attention_mask=mask, logits=False).last_hidden_state  # [B, W, C], after ln_f
    width = ids.shape[1]
    # the positions that predict tokens 1 .. T - 1 of each row, side by side: [N, C] and their targets [N]
    positions = np.concatenate([hidden[b, width - len(row):-1] for b, row in enumerate(rows)])
    targets = np.concatenate([np.asarray(row[1:]) for row in rows])
    logprobs = np.empty(len(targets), np.float32)
    for start in range(0, len(targets), HEAD_ROWS):
        stop = min(start + HEAD_ROWS, len(targets))
        # the logits [n, V] live only during the call: never two of them at once
        logprobs[start:stop] = chosen_logprobs(model.unembed(positions[start:stop]), targets[start:stop])
    return np.split(logprobs, np.cumsum([len(row) - 1 for row in rows])[:-1])


def chosen_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ops.log_softmax(logits)[i, targets[i]] for each row i, the same numbers, computed in place: logits [n, V]
    (overwritten) is the largest array of scoring, and log_softmax would make three more of its size."""
    chosen = logits[np.arange(len(targets)), targets]  # [n]
    top = logits.max(axis=-1, keepdims=True)  # [n, 1]
    logits -= top
    np.exp(logits, out=logits)
    return (chosen - top[:, 0]) - np.log(logits.sum(axis=-1))


def _score_text(model, id, body: dict) -> dict:
    s = study.score(model, body["text"], window=body.get("window"), stride=body.get("stride"))
    return _score(id, -np.asarray(s.surprisal, np.float32))


def _score(id, logprobs: np.ndarray) -> dict:
    """A scoring result from the logprobs [T - 1] of a text's tokens after the first."""
    total = float(logprobs.astype(np.float64).sum())
    return {"id": id, "tokens": len(logprobs) + 1, "logprob": total, "perplexity": math.exp(-total / len(logprobs)),
            "token_logprobs": [None] + [_short(x) for x in logprobs]}


def _short(x) -> float:
    """A float32 as the shortest decimal that is exactly it (JSON lines stay short; nothing is lost)."""
    return float(str(np.float32(x)))
