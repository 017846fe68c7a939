"""Loading checkpoints: the official layout and its variants, memory mapping, and clear errors."""

import json
import os
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

import npgpt
from npgpt.weights import load_weights, read_safetensors

from conftest import golden_dir


def checkpoint_copy(tmp_path, name="small"):
    """A writable copy of a golden model directory and its tensors (official names)."""
    path = tmp_path / name
    shutil.copytree(golden_dir(name), path)
    os.remove(path / "expected.safetensors")
    return path, {k: np.array(v) for k, v in read_safetensors(path / "model.safetensors").items()}


def test_official_layout_includes_mask_buffers_that_are_ignored(small):
    tensors = read_safetensors(os.path.join(golden_dir("small"), "model.safetensors"))
    assert "h.0.attn.bias" in tensors and "lm_head.weight" not in tensors
    model, _ = small
    assert model.lm_head is model.wte  # tied


def test_weights_are_memory_mapped_not_copied(small):
    model, _ = small
    for name in ("wte.weight", "h.0.attn.c_attn.weight", "ln_f.bias"):
        array = model.state[name]
        assert not array.flags.owndata and not array.flags.writeable, name
    assert model.wte.base is not None


def test_transformers_prefix_and_explicit_tied_head_load_the_same(tmp_path, small):
    path, tensors = checkpoint_copy(tmp_path)
    prefixed = {f"transformer.{k}": v for k, v in tensors.items()}
    prefixed["lm_head.weight"] = tensors["wte.weight"]
    save_file(prefixed, path / "model.safetensors")
    model, expected = small[0], small[1]
    other = npgpt.load(path)
    assert other.lm_head is other.wte
    np.testing.assert_array_equal(other(expected["single.ids"]), model(expected["single.ids"]))


def test_an_untied_lm_head_is_used(tmp_path, small):
    path, tensors = checkpoint_copy(tmp_path)
    head = np.random.default_rng(0).normal(size=tensors["wte.weight"].shape).astype(np.float32)
    save_file({**tensors, "lm_head.weight": head}, path / "model.safetensors")
    model = npgpt.load(path)
    ids = small[1]["single.ids"]
    hidden = model.forward(ids, output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(model(ids), hidden @ head.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_checkpoints_load_as_float32(tmp_path, dtype):
    path, tensors = checkpoint_copy(tmp_path)
    if dtype == "F16":
        stored = {k: v.astype(np.float16) for k, v in tensors.items()}
        expected = {k: v.astype(np.float32) for k, v in stored.items()}
        save_file(stored, path / "model.safetensors")
    else:  # bfloat16 by hand: the top 16 bits of each float32
        stored = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
        expected = {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in stored.items()}
        write_raw_safetensors(path / "model.safetensors", {k: ("BF16", v) for k, v in stored.items()})
    model = npgpt.load(path)
    for name in ("wte.weight", "h.1.mlp.c_fc.weight"):
        assert model.state[name].dtype == np.float32
        np.testing.assert_array_equal(model.state[name], expected[name])


def write_raw_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_sharded_checkpoint_with_index(tmp_path, small):
    path, tensors = checkpoint_copy(tmp_path)
    os.remove(path / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, path / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = small[1]["single.ids"]
    np.testing.assert_array_equal(npgpt.load(path)(ids), small[0](ids))


def test_missing_tensor_names_the_file_and_the_key(tmp_path):
    path, tensors = checkpoint_copy(tmp_path)
    del tensors["h.2.mlp.c_proj.bias"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(npgpt.WeightsError) as e:
        npgpt.load(path)
    assert "model.safetensors" in str(e.value) and "'h.2.mlp.c_proj.bias'" in str(e.value)


def test_wrong_shape_names_the_file_the_key_and_both_shapes(tmp_path):
    path, tensors = checkpoint_copy(tmp_path)
    tensors["h.0.attn.c_attn.weight"] = tensors["h.0.attn.c_attn.weight"].T.copy()
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(npgpt.WeightsError) as e:
        npgpt.load(path)
    message = str(e.value)
    assert "model.safetensors" in message and "'h.0.attn.c_attn.weight'" in message
    assert "[192, 64]" in message and "[64, 192]" in message


def test_config_that_does_not_match_the_weights(tmp_path):
    path, _ = checkpoint_copy(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["n_layer"] = 4
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(npgpt.WeightsError, match="missing tensor 'h.3.ln_1.weight'"):
        npgpt.load(path)


def test_truncated_file_is_reported_as_truncated(tmp_path):
    path, _ = checkpoint_copy(tmp_path)
    weights = path / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(npgpt.WeightsError, match="truncated.*download it again"):
        npgpt.load(path)


@pytest.mark.parametrize("content", [b"", b"abc", b"\xff" * 64, struct.pack("<Q", 5) + b"notjs" + b"\0" * 16,
                                     b"PK\x03\x04" + b"\0" * 100])
def test_a_file_that_is_not_safetensors(tmp_path, content):
    path, _ = checkpoint_copy(tmp_path)
    (path / "model.safetensors").write_bytes(content)
    with pytest.raises(npgpt.WeightsError, match="model.safetensors: not a safetensors file"):
        npgpt.load(path)


def test_pickle_checkpoints_are_refused_not_loaded(tmp_path):
    path, _ = checkpoint_copy(tmp_path)
    os.remove(path / "model.safetensors")
    # A pickle that would run code if it were ever unpickled.
    (path / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/npgpt-pwned'\ntR.")
    for target in (path, path / "pytorch_model.bin"):
        with pytest.raises(npgpt.WeightsError, match="pickle checkpoints are not loaded"):
            npgpt.load(target)
    assert not os.path.exists("/tmp/npgpt-pwned")


def test_missing_directory_and_missing_config(tmp_path):
    with pytest.raises(npgpt.NpgptError, match="no such model directory"):
        npgpt.load(tmp_path / "nowhere")
    path, _ = checkpoint_copy(tmp_path)
    os.remove(path / "config.json")
    with pytest.raises(npgpt.ConfigError, match="config.json: no such file"):
        npgpt.load(path)


def test_a_non_gpt2_config_is_refused(tmp_path):
    path, _ = checkpoint_copy(tmp_path)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "n_layer": 3, "n_head": 4, "n_embd": 64}))
    with pytest.raises(npgpt.ConfigError, match="GPT-2 models only"):
        npgpt.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(npgpt.ConfigError, match="not a readable JSON file"):
        npgpt.load(path)


def test_a_loaded_checkpoint_reads_the_file_it_was_given(tmp_path, small):
    path, tensors = checkpoint_copy(tmp_path)
    other = path / "other.safetensors"
    save_file({**tensors, "ln_f.bias": tensors["ln_f.bias"] + 1}, other)
    ids = small[1]["single.ids"]
    assert not np.allclose(npgpt.load(other)(ids), small[0](ids))


def test_save_round_trip_and_transformers_compatible_config(tmp_path, micro):
    micro.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"
    loaded = npgpt.load(tmp_path / "m")
    assert loaded.config == micro.config
    np.testing.assert_array_equal(loaded([1, 2, 3]), micro([1, 2, 3]))
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]  # no temporary left


def test_load_weights_reports_duplicate_names(tmp_path):
    path, tensors = checkpoint_copy(tmp_path)
    save_file({**tensors, "transformer.wte.weight": tensors["wte.weight"]}, path / "model.safetensors")
    with pytest.raises(npgpt.WeightsError, match="appears twice"):
        load_weights(str(path / "model.safetensors"), npgpt.GPT2Config.from_json(path / "config.json"))
