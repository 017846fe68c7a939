"""Parity at full size: a randomly initialised 124M GPT-2 from transformers, written in the official layout,
loaded by npgpt. Needs torch and transformers (the `golden` extra); skipped with a reason without them."""

import numpy as np
import pytest

import npgpt

from conftest import import_reference, max_abs, reference_available

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not reference_available(), reason="needs torch and transformers: pip install -e '.[golden]'"),
]

LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    reference = import_reference()
    # GPT-2 124M's shape; logits of standard deviation ~2, far from uniform.
    torch_model = reference.build(seed=124, logit_std=2.0, n_layer=12, n_head=12, n_embd=768, n_positions=1024,
                                  vocab_size=50257)
    model_dir = tmp_path_factory.mktemp("gpt2-124M-random")
    reference.save_official(torch_model, str(model_dir))
    return reference, torch_model, npgpt.load(model_dir)


def test_logits_over_256_tokens_match_transformers(pair):
    reference, torch_model, model = pair
    assert model.n_params == 124_439_808
    ids = np.random.default_rng(0).integers(0, 50257, size=(1, 256))
    want, _, _ = reference.forward(torch_model, ids)
    got = model(ids)
    assert want.std() > 1.5  # far from uniform
    error = max_abs(got, want)
    print(f"124M parity: max |logits difference| over 256 tokens = {error:.2e}")
    assert error <= LOGITS_ATOL


def test_64_greedy_tokens_match_transformers_generate(pair):
    reference, torch_model, model = pair
    prompt = model.tokenizer.encode("The capital of France is")
    want = reference.greedy(torch_model, np.array([prompt]), 64)[0].tolist()
    assert len(want) == 64 and len(set(want)) > 8  # a real continuation, not one token repeated
    got = model.generate(prompt, max_new_tokens=64)
    assert got == want
