"""Prompts as generation takes them: text or token ids, one prompt or a batch, checked before any work.

    "text" | [ids] | np.ndarray [T]           one prompt
    ["text", [ids], ...] | np.ndarray [B, T]  a batch
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import ContextLengthError, InputError, SettingsError


def prompt_ids(tokenizer, prompt, vocab_size: int | None = None) -> list[int]:
    """Token ids of one prompt given as text or ids; an empty prompt starts from <|endoftext|>.

    Ids must be integers (not floats, not bools) within the vocabulary (`vocab_size`, default the tokenizer's).
    """
    if isinstance(prompt, str):
        return tokenizer.encode(prompt) or [tokenizer.eot_id]
    return check_ids(prompt, tokenizer.vocab_size if vocab_size is None else vocab_size) or [tokenizer.eot_id]


def check_ids(ids, vocab_size: int) -> list[int]:
    """A sequence of token ids as a list of ints, or an InputError that says what is wrong with it."""
    if isinstance(ids, (bytes, bytearray)):
        raise InputError("a prompt is text (str) or a list of token ids, got bytes; decode it first, "
                         "e.g. prompt.decode('utf-8')")
    if not isinstance(ids, (list, tuple, np.ndarray)):
        raise InputError(f"a prompt is text (str) or a list of token ids, got {type(ids).__name__} {ids!r:.40}")
    array = np.asarray(ids, dtype=object if not isinstance(ids, np.ndarray) else None)
    if array.ndim != 1:
        raise InputError(f"a prompt's token ids must be a flat list, got shape {list(array.shape)}")
    if array.dtype == object:  # a Python list: each element must be an int (bool and float are not ids)
        bad = next((i for i in array if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_))),
                   None)
        if bad is not None:
            raise InputError(f"token ids must be integers, got {bad!r} ({type(bad).__name__})")
    elif not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"token ids must be integers, got an array of {array.dtype}")
    out = [int(i) for i in array]
    bad = next((i for i in out if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InputError(f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})")
    return out


def split_prompts(prompt) -> tuple[list, bool]:
    """(prompts, batched): a str or a sequence of ids is one prompt; a list of those is a batch."""
    if isinstance(prompt, str):
        return [prompt], False
    if isinstance(prompt, np.ndarray):
        return (list(prompt), True) if prompt.ndim == 2 else ([prompt], False)
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (str, list, tuple, np.ndarray))
                                                            for p in prompt):
        return list(prompt), True
    return [prompt], False


def fit_to_context(ids: list[int], n_positions: int, max_new_tokens: int, truncate: bool) -> tuple[list[int], str]:
    """(the ids to run, a note saying what was cut: "" when nothing was). A prompt longer than the context is an
    error unless `truncate`; then its last tokens are kept, leaving room for max_new_tokens when possible."""
    if len(ids) <= n_positions:
        return ids, ""
    if not truncate:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens; the model's context is {n_positions}; "
                                 "shorten it or pass truncate_prompt=True to keep its last tokens")
    keep = n_positions - max_new_tokens
    if keep < n_positions // 2:  # max_new_tokens would leave almost no prompt: keep half the window instead
        keep = n_positions // 2
    note = (f"the prompt was {len(ids)} tokens; its last {keep} were kept (the context is {n_positions} "
            f"tokens, and at most {n_positions - keep} can then be generated)")
    return ids[-keep:], note


def left_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths -> ids [B, T] padded on the left, attention mask [B, T] (1 = token)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def check_position(position, length: int) -> int:
    """A position in a prompt of `length` tokens, counted from the end when negative, as an index 0..length-1."""
    if not isinstance(position, numbers.Integral) or not -length <= position < length:
        raise SettingsError(f"position must be an integer in {-length}..{length - 1} (the prompt has {length} "
                            f"tokens), got {position!r}")
    return int(position) % length
