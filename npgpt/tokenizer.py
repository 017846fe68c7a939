"""GPT-2's byte-level BPE tokenizer, run by tiktoken, built offline from the vocabulary the package carries.

The package carries OpenAI's `vocab.bpe` (gzipped). The merges define everything: the 256 single bytes get ranks
0..255 in GPT-2's byte order, and the i-th merge creates token 256 + i. `encoder.json` (Hugging Face's
`vocab.json`) is exactly that mapping written out, so it is not shipped; a test rebuilds it byte for byte from
the merges and checks both of OpenAI's published hashes.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import json
import os
from importlib import resources

import numpy as np
import tiktoken

from .errors import InputError, TokenizerError

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, whitespace (from OpenAI's encoder.py,
# in the possessive form tiktoken uses for speed; it splits text identically).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character, used to write tokens as text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return mapping


def ranks_from_merges(merges_text: str, source: str = "merges") -> dict[bytes, int]:
    """Token bytes -> id: the single bytes first, in GPT-2's order, then one token per merge line.

    An optional first line `#version: ...` and blank lines are skipped. Every other line must join two tokens
    that already exist into one that does not (so ids stay in merge order, as GPT-2's vocab.json has them);
    anything else is a TokenizerError naming `source` and the line.
    """
    ranks = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}  # dict order is GPT-2's byte order
    made_on = []  # the line number of each merge, for messages

    def bad(number: int, what: str) -> TokenizerError:
        return TokenizerError(f"{source}: line {number}: {what}; this is not a valid GPT-2 BPE merges file")

    for number, line in enumerate(merges_text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if number == 1 and line.startswith("#version") or not line:
            continue
        parts = line.split(" ")  # exactly one space, as Hugging Face's tokenizers reads it
        if len(parts) != 2:
            raise bad(number, f"expected two tokens separated by a space, found {len(parts)}")
        try:  # this loop runs 50,000 times for GPT-2, so the byte conversion is str.translate, not a genexpr
            first = parts[0].translate(_ALPHABET_TO_LATIN1).encode("latin-1")
            second = parts[1].translate(_ALPHABET_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:
            stray = next(c for c in line.replace(" ", "") if c not in _ALPHABET)
            raise bad(number, f"{stray!r} is not a character of GPT-2's byte alphabet") from None
        for part, token in zip(parts, (first, second)):
            if token not in ranks:
                raise bad(number, f"{part!r} is not a token (a single byte or made by an earlier line)")
        if first + second in ranks:
            earlier = made_on[ranks[first + second] - 256]
            raise bad(number, f"{line!r} makes {''.join(parts)!r} again (line {earlier} made it first)")
        ranks[first + second] = len(ranks)
        made_on.append(number)
    return ranks


_ALPHABET = frozenset(bytes_to_unicode().values())
# A str.translate table from each character of the alphabet to the Latin-1 character of its byte. The other
# characters below 256 become U+FFFF, so that Latin-1 cannot encode them, as it cannot encode any above 255.
_ALPHABET_TO_LATIN1 = str.maketrans({**{chr(c): "\uffff" for c in range(256)},
                                     **{ch: chr(b) for b, ch in bytes_to_unicode().items()}})


def encoder_json_from_ranks(ranks: dict[bytes, int]) -> dict[str, int]:
    """The `encoder.json` / `vocab.json` mapping (token written with bytes_to_unicode -> id)."""
    byte_to_char = bytes_to_unicode()
    vocab = {"".join(byte_to_char[b] for b in token): i for token, i in ranks.items()}
    vocab[EOT_TOKEN] = len(ranks)
    return vocab


def bundled_merges() -> bytes:
    """The bytes of OpenAI's vocab.bpe, as carried in the package (checked against its published sha256)."""
    data = gzip.decompress(resources.files("npgpt").joinpath("data/vocab.bpe.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != VOCAB_BPE_SHA256:
        raise TokenizerError("npgpt's bundled vocab.bpe is damaged (sha256 mismatch); reinstall npgpt")
    return data


class Tokenizer:
    """Text <-> GPT-2 token ids. `<|endoftext|>` is id 50256, in text as in ids."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.eot_id = encoding.eot_token
        self.vocab_size = encoding.n_vocab

    @classmethod
    @functools.cache
    def gpt2(cls) -> "Tokenizer":
        """GPT-2's tokenizer, from the vocabulary inside the package (no download)."""
        return cls.from_merges(bundled_merges().decode("utf-8"), name="gpt2")

    @classmethod
    def from_merges(cls, merges_text: str, name: str = "gpt2-custom") -> "Tokenizer":
        return cls.from_ranks(ranks_from_merges(merges_text), name)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], name: str = "gpt2-custom") -> "Tokenizer":
        """The tokenizer of `ranks_from_merges`'s ranks, with `<|endoftext|>` as the next id."""
        encoding = tiktoken.Encoding(name=name, pat_str=PATTERN, mergeable_ranks=ranks,
                                     special_tokens={EOT_TOKEN: len(ranks)}, explicit_n_vocab=len(ranks) + 1)
        return cls(encoding)

    @classmethod
    def for_model_dir(cls, model_dir: str, vocab_size: int | None = None) -> "Tokenizer":
        """The tokenizer of a model directory: its merges.txt if it carries one, GPT-2's otherwise.

        vocab_size, the model's (config.json's), is checked against the directory's merges.txt:
        - a merges.txt with no merges is refused: it is empty or cut short, and would give 257 tokens;
        - a tokenizer with more ids than the model is refused: ids past vocab_size would have no embedding;
        - a tokenizer with fewer ids is accepted: checkpoints often pad vocab_size (50257 up to 50304) for speed,
          and generation never picks the ids the tokenizer cannot decode.
        A vocab.json next to the merges must give the same ids (npgpt derives ids from merge order). When the
        merges are GPT-2's, byte for byte, GPT-2's tokenizer is used as is and vocab.json is not read. Without a
        merges.txt, GPT-2's tokenizer is used whatever vocab_size is (small test models share it; the model
        refuses prompt ids it has no embedding for).
        """
        merges_path = os.path.join(model_dir, "merges.txt")
        if not os.path.isfile(merges_path):
            return cls.gpt2()
        data = _read_bytes(merges_path)
        if hashlib.sha256(data).hexdigest() == VOCAB_BPE_SHA256:
            tokenizer = cls.gpt2()
        else:
            try:
                merges = data.decode("utf-8")
            except UnicodeDecodeError:
                raise TokenizerError(f"{merges_path}: not UTF-8 text, so not a GPT-2 BPE merges file") from None
            ranks = ranks_from_merges(merges, source=merges_path)
            if len(ranks) == 256:
                raise TokenizerError(f"{merges_path}: has no merges (the file is empty or cut short); "
                                     "download the model's merges.txt again")
            vocab_path = os.path.join(model_dir, "vocab.json")
            if os.path.isfile(vocab_path):
                _check_vocab_json(vocab_path, merges_path, ranks)
            tokenizer = cls.from_ranks(ranks, name=os.path.basename(model_dir.rstrip("/")))
        if vocab_size is not None and tokenizer.vocab_size > vocab_size:
            raise TokenizerError(f"{merges_path}: gives {tokenizer.vocab_size} tokens but the model's vocab_size is "
                                 f"{vocab_size}; use the merges.txt the model was trained with")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; the literal text `<|endoftext|>` becomes id 50256 (as transformers does)."""
        if not isinstance(text, str):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise InputError(f"encode takes text (a str), not {type(text).__name__}{hint}")
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of the ids. Never raises on ids that cut a UTF-8 character: the cut bytes become U+FFFD.

        skip_special_tokens: leave `<|endoftext|>` out of the text, as transformers' tokenizers do.
        """
        ids = self._checked_ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i != self.eot_id]
        return self.encoding.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        return self.encoding.decode_bytes(self._checked_ids(ids))

    def _checked_ids(self, ids) -> list[int]:
        """The ids as Python ints, or an InputError naming the first that is not an integer id of the vocabulary.

        Floats are refused rather than truncated (1.9 is not token 1), and so are bools.
        """
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise InputError(f"decode takes a sequence of token ids, not {type(ids).__name__}")
        if isinstance(ids, np.ndarray) and ids.ndim != 1:
            raise InputError(f"decode takes a 1-D sequence of token ids, not an array of shape {ids.shape}")
        checked = []
        for i in ids:
            if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
                raise InputError(f"token id {_short_repr(i)} is not an integer; token ids are ints "
                                 f"0..{self.vocab_size - 1}")
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            checked.append(int(i))
        return checked

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])

    def token_text(self, token_id: int) -> str:
        """One token as text (a token that is part of a multi-byte character shows as U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror or e})") from None


def _check_vocab_json(vocab_path: str, merges_path: str, ranks: dict[bytes, int]) -> None:
    """A vocab.json must give every token the id its merges.txt gives it (and `<|endoftext|>` the next one)."""
    try:
        vocab = json.loads(_read_bytes(vocab_path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TokenizerError(f"{vocab_path}: not a readable JSON file; download the model's vocab.json again") \
            from None
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{vocab_path}: not a vocabulary (a JSON object of token -> id); "
                             "download the model's vocab.json again")
    expected = encoder_json_from_ranks(ranks)
    if EOT_TOKEN not in vocab:  # a vocab.json may leave the special token out
        del expected[EOT_TOKEN]
    if vocab != expected:
        raise TokenizerError(f"{vocab_path}: does not match {merges_path}; npgpt needs ids in merge order")


def _short_repr(value, limit: int = 40) -> str:
    """repr on one line, cut to `limit` characters (an array's repr can be long and span lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class StreamDecoder:
    """Turns token ids, fed one at a time, into text pieces as soon as they are whole UTF-8 characters.

    A token that ends in the middle of a character yields "" and its bytes wait for the next token, so a stream
    of valid text never shows a replacement character. `flush()` gives what is left (as U+FFFD if incomplete).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
