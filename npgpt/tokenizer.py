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

import tiktoken

from .errors import NpgptError

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


def ranks_from_merges(merges_text: str) -> dict[bytes, int]:
    """Token bytes -> id: the single bytes first, in GPT-2's order, then one token per merge line."""
    byte_order = bytes_to_unicode()  # dict order is the single-byte tokens' id order
    char_to_byte = {ch: b for b, ch in byte_order.items()}
    ranks = {bytes([b]): i for i, b in enumerate(byte_order)}
    lines = merges_text.split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    for line in lines:
        if not line.strip():
            continue
        first, second = line.split()
        token = bytes(char_to_byte[c] for c in first + second)
        ranks[token] = len(ranks)
    return ranks


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
        raise NpgptError("npgpt's bundled vocab.bpe is damaged (sha256 mismatch); reinstall npgpt")
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
        ranks = ranks_from_merges(merges_text)
        encoding = tiktoken.Encoding(name=name, pat_str=PATTERN, mergeable_ranks=ranks,
                                     special_tokens={EOT_TOKEN: len(ranks)}, explicit_n_vocab=len(ranks) + 1)
        return cls(encoding)

    @classmethod
    def for_model_dir(cls, model_dir: str) -> "Tokenizer":
        """GPT-2's tokenizer, unless the directory carries a different merges.txt, which is then used."""
        merges_path = os.path.join(model_dir, "merges.txt")
        if not os.path.isfile(merges_path):
            return cls.gpt2()
        with open(merges_path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() == VOCAB_BPE_SHA256:
            return cls.gpt2()
        try:
            merges = data.decode("utf-8")
            ranks = ranks_from_merges(merges)
        except (UnicodeDecodeError, ValueError, KeyError):
            raise NpgptError(f"{merges_path}: not a GPT-2 BPE merges file") from None
        vocab_path = os.path.join(model_dir, "vocab.json")
        if os.path.isfile(vocab_path):
            with open(vocab_path, encoding="utf-8") as f:
                vocab = json.load(f)
            vocab.pop(EOT_TOKEN, None)
            expected = encoder_json_from_ranks(ranks)
            expected.pop(EOT_TOKEN)
            if vocab != expected:
                raise NpgptError(f"{vocab_path}: does not match {merges_path}; npgpt needs ids in merge order")
        return cls.from_merges(merges, name=os.path.basename(model_dir.rstrip("/")))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; the literal text `<|endoftext|>` becomes id 50256 (as transformers does)."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        """Text of the ids. Never raises on ids that cut a UTF-8 character: the cut bytes become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise NpgptError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self.encoding.decode_bytes(ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])

    def token_text(self, token_id: int) -> str:
        """One token as text (a token that is part of a multi-byte character shows as U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


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
