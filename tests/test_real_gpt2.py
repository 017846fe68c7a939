"""Opt-in: the real GPT-2 (124M) against transformers, when its weights are already in the local Hugging Face
cache (fetch them once with `npgpt download gpt2`). Skipped otherwise; never touches the network."""

import socket

import pytest

import npgpt

# transformers' greedy generate with openai-community/gpt2 on "The dog": the prompt [464, 3290], then 18 tokens.
THE_DOG = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262, 13, 198, 198, 464,
           3290]


def no_network(*args, **kwargs):
    raise AssertionError("the real-GPT-2 test must not use the network")


@pytest.fixture(scope="module")
def gpt2():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", no_network)
        try:
            return npgpt.load("gpt2", offline=True)
        except npgpt.HubError as e:
            pytest.skip(f"the real GPT-2 weights are not in the local Hugging Face cache ({e})")


def test_greedy_the_dog_matches_transformers(gpt2):
    prompt = gpt2.tokenizer.encode("The dog")
    assert prompt == THE_DOG[:2]
    got = gpt2.generate(prompt, max_new_tokens=len(THE_DOG) - len(prompt))
    assert prompt + list(got) == THE_DOG
    assert gpt2.generate("The dog", max_new_tokens=len(THE_DOG) - len(prompt)) == gpt2.tokenizer.decode(THE_DOG[2:])
