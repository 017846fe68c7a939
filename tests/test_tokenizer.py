"""GPT-2's tokenizer, offline, from the vocabulary the package carries."""

import hashlib
import json

import pytest
from hypothesis import given, settings, strategies as st

import npgpt
from npgpt.tokenizer import VOCAB_BPE_SHA256, bundled_merges, encoder_json_from_ranks, ranks_from_merges

# The hashes OpenAI publishes for GPT-2's vocabulary (also what tiktoken checks).
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

tok = npgpt.Tokenizer.gpt2()


def test_bundled_vocabulary_is_openais_byte_for_byte():
    merges = bundled_merges()
    assert hashlib.sha256(merges).hexdigest() == VOCAB_BPE_SHA256 == \
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
    # encoder.json (vocab.json) is not shipped: the merges determine it, byte for byte.
    rebuilt = json.dumps(encoder_json_from_ranks(ranks_from_merges(merges.decode()))).encode()
    assert hashlib.sha256(rebuilt).hexdigest() == ENCODER_JSON_SHA256


def test_known_encodings():
    assert tok.encode("Hello, I am") == [15496, 11, 314, 716]
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert tok.encode("Every day holds a") == [6109, 1110, 6622, 257]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256


def test_end_of_text_is_50256_in_text_and_in_ids():
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert tok.decode([50256]) == "<|endoftext|>"


def test_decoding_ids_that_split_a_character_never_raises():
    ids = tok.encode("日本語 🙂")
    assert tok.decode(ids) == "日本語 🙂"
    pieces = [tok.decode([i]) for i in ids]  # some single tokens are parts of characters
    assert any("\ufffd" in p for p in pieces)
    for cut in range(len(ids) + 1):
        tok.decode(ids[:cut])


def test_out_of_range_ids_are_a_clear_error():
    with pytest.raises(npgpt.NpgptError, match="token id 50257 is outside the vocabulary"):
        tok.decode([1, 50257])
    with pytest.raises(npgpt.NpgptError, match="outside the vocabulary"):
        tok.decode([-1])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_encode_decode_round_trip(text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_stream_decoder_yields_whole_characters_only(text):
    decoder = tok.stream_decoder()
    pieces = [decoder.feed(i) for i in tok.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces)


def test_a_model_directory_with_gpt2s_merges_uses_the_bundled_tokenizer(tmp_path):
    (tmp_path / "merges.txt").write_bytes(bundled_merges())
    assert npgpt.Tokenizer.for_model_dir(str(tmp_path)) is tok


def test_a_model_directory_with_its_own_merges(tmp_path):
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\nl l\nhe ll\nhell o\n")
    custom = npgpt.Tokenizer.for_model_dir(str(tmp_path))
    assert custom.vocab_size == 261 and custom.eot_id == 260
    assert custom.encode("hello") == [259]  # merge i makes token 256 + i
    assert custom.encode("hell") == [258] and custom.encode("he") == [256]
    assert custom.decode(custom.encode("hello there")) == "hello there"
