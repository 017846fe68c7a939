"""GPT-2's tokenizer, offline, from the vocabulary the package carries."""

import hashlib
import json

import numpy as np
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
    with pytest.raises(npgpt.InputError, match="token id 50257 is outside the vocabulary"):
        tok.decode([1, 50257])
    with pytest.raises(npgpt.InputError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(npgpt.InputError, match=f"token id {2**70} is outside the vocabulary"):
        tok.decode_bytes([2**70])
    with pytest.raises(npgpt.InputError, match="token id 50300 is outside"):
        tok.stream_decoder().feed(50300)


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


# --------------------------------------------------------------------------------------------- API input

@pytest.mark.parametrize("text", [b"Hello", None, 5, ["Hello"]])
def test_encode_takes_text_only(text):
    with pytest.raises(npgpt.InputError) as e:
        tok.encode(text)
    assert str(e.value).startswith(f"encode takes text (a str), not {type(text).__name__}")


@pytest.mark.parametrize("bad, shown", [
    (1.9, "1.9"), (2.0, "2.0"), ("15496", "'15496'"), (None, "None"), (True, "True"), (np.float32(3), "3.0"),
    ([15496], "[15496]"),
])
def test_ids_that_are_not_integers_are_named_not_truncated(bad, shown):
    for decode in (tok.decode, tok.decode_bytes):
        with pytest.raises(npgpt.InputError, match="is not an integer") as e:
            decode([15496, bad])
        assert str(e.value).startswith("token id ") and shown in str(e.value) and "\n" not in str(e.value)


def test_id_arrays_must_be_one_dimensional_integers():
    assert tok.decode(np.array([15496, 11], dtype=np.int64)) == tok.decode(np.array([15496, 11], np.uint16)) == "Hello,"
    with pytest.raises(npgpt.InputError, match="token id .*15496.0.* is not an integer"):
        tok.decode(np.array([15496.0, 1.9]))
    with pytest.raises(npgpt.InputError, match="1-D sequence of token ids, not an array of shape \\(2, 2\\)"):
        tok.decode(np.zeros((2, 2), np.int64))
    for ids in ("Hello", b"Hello", 15496, None, np.int64(15496)):
        with pytest.raises(npgpt.InputError, match="decode takes a"):
            tok.decode(ids)


def test_decode_can_skip_the_end_of_text_token_as_transformers_does():
    ids = tok.encode("Hello<|endoftext|> world<|endoftext|>")
    assert tok.decode(ids) == "Hello<|endoftext|> world<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world"
    with pytest.raises(npgpt.InputError):  # skipped or not, every id is checked
        tok.decode([50256, 1.5], skip_special_tokens=True)


# ---------------------------------------------------------------------------------- a model's own files

def model_dir(tmp_path, merges, vocab=None):
    (tmp_path / "merges.txt").write_bytes(merges.encode() if isinstance(merges, str) else merges)
    if vocab is not None:
        (tmp_path / "vocab.json").write_bytes(vocab.encode() if isinstance(vocab, str) else vocab)
    return str(tmp_path)


HELLO_MERGES = "#version: 0.2\nh e\nl l\nhe ll\nhell o\n"


def test_merges_without_a_version_line_and_with_windows_line_ends(tmp_path):
    for merges in ("h e\nl l\nhe ll\nhell o\n", "#version: 0.2\r\nh e\r\nl l\r\nhe ll\r\nhell o",
                   "h e\n\nl l\nhe ll\nhell o"):
        custom = npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, merges))
        assert custom.vocab_size == 261 and custom.encode("hello") == [259]


@pytest.mark.parametrize("merges, line, what", [
    ("h e\nl l\nh e\n", 3, "'he' again \\(line 1 made it first\\)"),  # a duplicated line
    ("#version: 0.2\nh e\nl l\nhe l\nhe ll\nhel l\n", 6, "'hell' again \\(line 5 made it first\\)"),  # other split
    ("h e\nhe llo\n", 2, "'llo' is not a token"),
    ("h e\nl l\nll lo\n", 3, "'lo' is not a token"),
    ("h e\nh e l\n", 2, "expected two tokens separated by a space, found 3"),
    ("h e\nhe\n", 2, "found 1"),
    ("h e\nh  e\n", 2, "found 3"),
    ("h\te\n", 1, "found 1"),
    ("h e\nl  l\n", 2, "found 3"),
    ("h e\nl l \n", 2, "found 3"),
    ("h e\n\u00e9\u00e9 x\n", 2, "'\u00e9\u00e9' is not a token"),  # é is in the alphabet; éé is no token
    ("h e\n\u20ac e\n", 2, "'\u20ac' is not a character of GPT-2's byte alphabet"),
    ("h e\nh\u00a0e x\n", 2, "'\\\\xa0' is not a character of GPT-2's byte alphabet"),  # byte 0xA0 is written 'ł'
    ("h e\nh\re x\n", 2, "'\\\\r' is not a character"),
    ("h e\n#version: 0.2\n", 2, "found 2|not a token"),  # the version line is the first line or a merge
])
def test_merges_files_that_are_not_gpt2_bpe_name_the_file_and_the_line(tmp_path, merges, line, what):
    with pytest.raises(npgpt.TokenizerError, match=f"merges.txt: line {line}: .*{what}") as e:
        npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, merges))
    assert str(tmp_path / "merges.txt") in str(e.value) and "\n" not in str(e.value)


def test_a_duplicated_merge_no_longer_shifts_every_id(tmp_path):
    # This file used to load with "he" at id 258, so "re" (none of its tokens) hit the id of <|endoftext|>.
    with pytest.raises(npgpt.TokenizerError, match="line 3"):
        npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, "#version: 0.2\nh e\nh e\nr e\n"))


@pytest.mark.parametrize("merges", ["", "#version: 0.2\n", "\n\n", b""])
def test_an_empty_merges_file_is_refused(tmp_path, merges):
    with pytest.raises(npgpt.TokenizerError, match="merges.txt: has no merges .*download"):
        npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, merges))


def test_merges_that_are_not_utf8(tmp_path):
    with pytest.raises(npgpt.TokenizerError, match="merges.txt: not UTF-8 text"):
        npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, b"h e\n\xff\xfe x\n"))


def test_the_tokenizer_must_not_have_more_ids_than_the_model(tmp_path):
    path = model_dir(tmp_path, HELLO_MERGES)  # 261 ids
    assert npgpt.Tokenizer.for_model_dir(path, vocab_size=261).vocab_size == 261
    assert npgpt.Tokenizer.for_model_dir(path, vocab_size=320).vocab_size == 261  # a padded vocab_size is fine
    with pytest.raises(npgpt.TokenizerError, match="merges.txt: gives 261 tokens but the model's vocab_size is 260"):
        npgpt.Tokenizer.for_model_dir(path, vocab_size=260)
    gpt2_dir = tmp_path / "gpt2"
    gpt2_dir.mkdir()
    (gpt2_dir / "merges.txt").write_bytes(bundled_merges())
    assert npgpt.Tokenizer.for_model_dir(str(gpt2_dir), vocab_size=50304) is tok  # nanoGPT pads 50257 to 50304
    with pytest.raises(npgpt.TokenizerError, match="gives 50257 tokens but the model's vocab_size is 1000"):
        npgpt.Tokenizer.for_model_dir(str(gpt2_dir), vocab_size=1000)
    # Without tokenizer files a model uses GPT-2's, whatever its size (the small test models do).
    assert npgpt.Tokenizer.for_model_dir(str(tmp_path / "nowhere"), vocab_size=1000) is tok


def vocab_of(merges):
    return json.dumps(encoder_json_from_ranks(ranks_from_merges(merges)))


def test_a_matching_vocab_json_with_or_without_end_of_text(tmp_path):
    vocab = json.loads(vocab_of(HELLO_MERGES))
    assert vocab["<|endoftext|>"] == 261 - 1
    for v in (vocab, {k: i for k, i in vocab.items() if k != "<|endoftext|>"}):
        assert npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, HELLO_MERGES, json.dumps(v))).vocab_size == 261


@pytest.mark.parametrize("vocab, what", [
    ("[1, 2]", "not a vocabulary"), ("{not json", "not a readable JSON file"), (b"\xff\xfe", "not a readable JSON"),
    ("[" * 100_000, "not a readable JSON"), ('"he"', "not a vocabulary"),
    ('{"h": 1}', "does not match"),
    (vocab_of(HELLO_MERGES).replace('"<|endoftext|>": 260', '"<|endoftext|>": 0'), "does not match"),
])
def test_a_vocab_json_that_is_not_the_merges_vocabulary(tmp_path, vocab, what):
    with pytest.raises(npgpt.TokenizerError, match=f"vocab.json: {what}") as e:
        npgpt.Tokenizer.for_model_dir(model_dir(tmp_path, HELLO_MERGES, vocab))
    assert str(tmp_path / "vocab.json") in str(e.value) and "\n" not in str(e.value)
