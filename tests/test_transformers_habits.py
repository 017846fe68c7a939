"""transformers' keywords in generate, with transformers' meanings; GenerationConfig; from-scratch config names;
generation past the context as seed notebook 003 does it."""

import json

import numpy as np
import pytest

import npgpt
from npgpt import ops


def test_max_length_counts_the_prompt(micro):
    ids = [15496, 11, 314, 716]
    out = micro.generate(ids, max_length=10, eos_token_id=None)
    assert len(out) == 6 and list(out) == list(micro.generate(ids, max_new_tokens=6, eos_token_id=None))
    batch = micro.generate([ids, ids[:2]], max_length=10, eos_token_id=None)
    assert [len(r) for r in batch] == [6, 6]  # as transformers: the padded width counts for every row
    assert len(micro.generate(ids, max_length=3)) == 0


def test_length_settings_that_contradict_name_both(micro):
    with pytest.raises(npgpt.SettingsError, match="max_length and max_new_tokens"):
        micro.generate("Hi", max_length=10, max_new_tokens=5)
    with pytest.raises(npgpt.SettingsError, match="stop and stop_strings"):
        micro.generate("Hi", stop=["a"], stop_strings=["b"])


def end_text_model(micro_config):
    """A model whose end-of-text logit is raised so that it ends early: eos rules then matter."""
    model = npgpt.GPT2.random(micro_config, seed=0)
    state = dict(model.state)
    state["wte.weight"] = state["wte.weight"].copy()
    state["wte.weight"][50256] *= 40.0
    return npgpt.GPT2(micro_config, state)


def test_eos_token_id_an_id_a_list_or_none(micro_config):
    model = end_text_model(micro_config)
    plain = model.generate("Hello", max_new_tokens=10)
    assert plain.finish_reason == "eos"
    never = model.generate("Hello", max_new_tokens=10, eos_token_id=None)
    assert never.finish_reason == "length" and 50256 in never.ids
    first = never.ids[0]
    listed = model.generate("Hello", max_new_tokens=10, eos_token_id=[first, 50256])
    assert listed.finish_reason == "eos" and listed.ids == []


def test_min_length_counts_the_prompt_and_holds_eos_back(micro_config):
    model = end_text_model(micro_config)
    prompt = model.tokenizer.encode("Hello there")
    out = model.generate(prompt, max_new_tokens=10, min_length=len(prompt) + 4)
    assert len(out) >= 4 and 50256 not in out[:4]


def test_pad_token_id_is_accepted_and_nothing_is_padded(micro):
    ids = [15496, 11, 314, 716]
    assert micro.generate(ids, pad_token_id=50256, max_new_tokens=5) == micro.generate(ids, max_new_tokens=5)
    with pytest.raises(npgpt.SettingsError, match="pad_token_id"):
        micro.generate(ids, pad_token_id=-1)


def test_attention_mask_marks_the_padding_of_a_batch_of_ids(micro):
    a, b = [15496, 11, 314, 716], [40, 716]
    padded = np.array([a, [50256, 50256] + b])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert micro.generate(padded, attention_mask=mask, max_new_tokens=6) == micro.generate([a, b], max_new_tokens=6)
    with pytest.raises(npgpt.SettingsError, match="attention_mask must match"):
        micro.generate(padded, attention_mask=mask[:, 1:])


def test_do_sample_false_decodes_greedily_whatever_the_temperature(micro):
    assert micro.generate("Hi", do_sample=False, temperature=0.7, top_k=5) == micro.generate("Hi")


def test_stop_strings_is_stop(micro):
    text = micro.generate("Hi", max_new_tokens=12)
    stop = text[3:6]
    assert micro.generate("Hi", max_new_tokens=12, stop_strings=[stop]) == micro.generate("Hi", max_new_tokens=12,
                                                                                          stop=[stop])


def test_keywords_npgpt_does_not_need_say_what_to_use(micro):
    with pytest.raises(npgpt.SettingsError, match="output_scores is not needed.*logprobs=True"):
        micro.generate("Hi", output_scores=True)
    with pytest.raises(npgpt.SettingsError, match="did you mean num_beams"):
        micro.generate("Hi", num_beam=3)


def test_generation_config_has_transformers_defaults(micro):
    config = npgpt.GenerationConfig()
    assert config.max_length is None and config.top_k == 50 and config.do_sample is False
    ids = [15496, 11, 314, 716]
    assert list(micro.generate(ids, generation_config=config)) == list(micro.generate(ids, max_new_tokens=20))
    at_20 = npgpt.GenerationConfig(max_length=20)  # counts the prompt
    assert list(micro.generate(ids, generation_config=at_20)) == list(micro.generate(ids, max_new_tokens=16))
    sampled = npgpt.GenerationConfig(do_sample=True, max_new_tokens=5)
    probs_rules = npgpt.settings.Settings.parse(micro, sampled.settings({})).sampler.rules(4)
    assert [repr(r) for r in probs_rules] == ["TopK(k=50)"]  # transformers' top_k=50 when sampling
    # keywords beside a config win over it
    assert len(micro.generate(ids, generation_config=config, max_new_tokens=3)) == 3


def test_generation_config_round_trips_and_is_read_from_the_model_dir(micro, micro_dir, tmp_path):
    config = npgpt.GenerationConfig.from_dict({"do_sample": True, "top_p": 0.9, "transformers_version": "4.0"})
    assert npgpt.GenerationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(npgpt.SettingsError, match="unknown generation config field 'top_q'; did you mean top_p"):
        npgpt.GenerationConfig.from_dict({"top_q": 0.9})
    assert npgpt.load(micro_dir).generation_config is None
    with open(f"{micro_dir}/generation_config.json", "w") as f:
        json.dump({"bos_token_id": 50256, "eos_token_id": 50256, "max_length": 12}, f)
    loaded = npgpt.load(micro_dir)
    assert loaded.generation_config.max_length == 12
    assert len(loaded.generate([1, 2, 3], generation_config=loaded.generation_config, eos_token_id=None)) == 9


def test_gpt2_config_takes_the_names_of_from_scratch_tutorials():
    seed_003 = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
                "drop_rate": 0.1, "qkv_bias": False}
    assert npgpt.GPT2Config(**seed_003) == npgpt.GPT2Config.preset("gpt2")
    small = npgpt.GPT2Config(**dict(seed_003, context_length=256, n_layers=2))
    assert (small.n_positions, small.n_layer) == (256, 2)
    assert npgpt.GPT2Config.from_dict(dict(seed_003, context_length=256)).n_positions == 256
    with pytest.raises(npgpt.ConfigError, match="n_layers and n_layer are the same setting"):
        npgpt.GPT2Config(n_layer=3, n_layers=2)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Seed notebook 003's loop, transcribed to NumPy: crop to the context, argmax of the last position."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        logits = model(idx_cond)[:, -1, :]  # [B, V]
        probas = ops.softmax(logits)
        idx_next = np.argmax(probas, axis=-1)[:, None]  # [B, 1]
        idx = np.concatenate([idx, idx_next], axis=1)
    return idx


def test_sliding_window_generates_past_the_context_as_the_seed_loop():
    config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=16)
    model = npgpt.GPT2.random(config, seed=1)
    state = {k: v * 6 if k.endswith("weight") and ".ln_" not in k and not k.startswith("ln_") else v
             for k, v in model.state.items()}
    model = npgpt.GPT2(config, state)  # sharper than an untrained model, so that the tokens vary
    batch = np.array([[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])
    n = config.n_positions
    expected = generate_text_simple(model, batch, 2 * n, n)[:, 4:]
    assert len(set(expected[0].tolist())) > 3
    out = model.generate(list(batch), max_new_tokens=2 * n, sliding_window=True, eos_token_id=None)
    assert [list(r) for r in out] == expected.tolist()
    assert all(r.finish_reason == "length" for r in out)
    plain = model.generate(list(batch), max_new_tokens=2 * n, eos_token_id=None)
    assert plain[0].finish_reason == "context" and len(plain[0]) == n - 4
