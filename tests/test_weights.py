"""Loading checkpoints: the official layout and its variants, memory mapping, and clear errors."""

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import npgpt
import npgpt.weights
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


# ------------------------------------------------------------------------------- damaged safetensors headers

def write_header(path, header, data_size):
    """A safetensors file with this header, followed by data_size zero bytes."""
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + bytes(data_size))


def one_line_error_naming(path, tensor, match=None):
    with pytest.raises(npgpt.WeightsError, match=match) as e:
        read_safetensors(path)
    message = str(e.value)
    assert str(path) in message and repr(tensor) in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("entry", [
    {"data_offsets": ["0", "8"]}, {"data_offsets": [0.0, 8.0]}, {"data_offsets": [0, 8.5]},
    {"data_offsets": [0]}, {"data_offsets": [0, 8, 8]}, {"data_offsets": "0..8"}, {"data_offsets": [False, 8]},
    {"shape": ["2"]}, {"shape": [2.5]}, {"shape": [True, 2]}, {"shape": 2}, {"shape": [-2]}, {"shape": None},
    {"dtype": 7}, {"dtype": None},
])
def test_malformed_header_entries_are_refused(tmp_path, entry):
    # Each of these used to be accepted (int() of "2", 2.5 or True) or to crash without naming the file.
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **entry}}
    write_header(tmp_path / "x.safetensors", header, 8)
    one_line_error_naming(tmp_path / "x.safetensors", "w", match="malformed header entry")


@pytest.mark.parametrize("entry", [None, [], "F32", {"dtype": "F32", "shape": [2]}])
def test_a_header_entry_that_is_not_a_tensor_description(tmp_path, entry):
    write_header(tmp_path / "x.safetensors", {"w": entry}, 8)
    one_line_error_naming(tmp_path / "x.safetensors", "w", match="needs dtype, shape and data_offsets")


@pytest.mark.parametrize("shape", [[10**30], [2**32, 2**32], [2**62, 4], [2**64 + 2]])
def test_absurd_shapes_are_refused_without_overflow(tmp_path, shape):
    write_header(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}, 8)
    message = one_line_error_naming(tmp_path / "x.safetensors", "w", match="needs")
    assert str(4 * np.prod(shape, dtype=object)) in message  # the exact byte count, computed with Python ints


def f32(begin, end):
    return {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}


@pytest.mark.parametrize("header, data_size, match", [
    ({"a": f32(0, 8), "b": f32(0, 8)}, 8, "'b'.* overlaps tensor 'a'"),  # one byte range for two tensors
    ({"a": f32(0, 8), "b": f32(4, 12)}, 12, "'b'.* overlaps tensor 'a'"),
    ({"a": f32(0, 12), "b": f32(4, 8)}, 12, "'b'.* overlaps tensor 'a'"),  # one inside the other
    ({"a": f32(0, 8), "b": f32(12, 20)}, 20, "bytes 8..12 before tensor 'b' belong to no tensor"),
    ({"a": f32(4, 12)}, 12, "bytes 0..4 before tensor 'a' belong to no tensor"),
    ({"a": f32(0, 8)}, 12, "bytes 8..12 at the end belong to no tensor"),
    ({"__metadata__": {"format": "pt"}}, 8, "bytes 0..8 at the end belong to no tensor"),
    ({"a": f32(0, 8), "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}}, 8, "'e'.* overlaps tensor 'a'"),
])
def test_byte_ranges_must_tile_the_data_as_the_safetensors_library_requires(tmp_path, header, data_size, match):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = tmp_path / "x.safetensors"
    write_header(path, header, data_size)
    with pytest.raises(npgpt.WeightsError, match=match) as e:
        read_safetensors(path)
    assert str(path) in str(e.value)
    with pytest.raises(SafetensorError):  # the rule is the library's: npgpt accepts exactly the files it accepts
        load_file(path)


def test_byte_ranges_may_come_in_any_order_and_be_empty(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "x.safetensors"
    empty = {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}
    write_header(path, {"z": f32(8, 16), "a": f32(0, 8), "e": empty, "__metadata__": {"format": "pt"}}, 16)
    tensors = read_safetensors(path)
    assert {k: v.shape for k, v in tensors.items()} == {"z": (2,), "a": (2,), "e": (0, 3)}
    assert {k: v.shape for k, v in load_file(path).items()} == {k: v.shape for k, v in tensors.items()}


def test_a_header_nested_too_deeply_is_not_json_to_us(tmp_path):
    raw = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(npgpt.WeightsError, match="not a safetensors file"):
        read_safetensors(tmp_path / "x.safetensors")


# ------------------------------------------------------------------------------------- non-finite weights

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_weights_are_found_at_load_with_the_tensor_named(tmp_path, value, dtype):
    path, tensors = checkpoint_copy(tmp_path)
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    tensors["h.1.attn.c_attn.weight"][3, 5] = value
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(npgpt.WeightsError) as e:
        npgpt.load(path)
    assert str(e.value) == (f"{path / 'model.safetensors'}: tensor 'h.1.attn.c_attn.weight' has NaN or infinite "
                            "values; the checkpoint is damaged")


def test_non_finite_values_in_an_untied_head_or_a_shard_name_their_file(tmp_path):
    path, tensors = checkpoint_copy(tmp_path)
    head = tensors["wte.weight"].copy()
    head[0, 0] = np.nan
    os.remove(path / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "ln_f.bias"}, path / "model-00001-of-00002.safetensors")
    save_file({"ln_f.bias": tensors["ln_f.bias"], "lm_head.weight": head}, path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tensors}
    weight_map.update(dict.fromkeys(["ln_f.bias", "lm_head.weight"], "model-00002-of-00002.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(npgpt.WeightsError, match="model-00002-of-00002.safetensors: tensor 'lm_head.weight' has NaN"):
        npgpt.load(path)


def test_large_finite_weights_whose_sum_overflows_still_load(tmp_path, small):
    path, tensors = checkpoint_copy(tmp_path)
    tensors["ln_f.bias"][:] = np.finfo(np.float32).max  # their float32 sum is inf, yet every value is finite
    save_file(tensors, path / "model.safetensors")
    model = npgpt.load(path)
    assert np.all(model.state["ln_f.bias"] == np.finfo(np.float32).max)
    assert not model.state["wte.weight"].flags.owndata  # the check copied nothing


# ------------------------------------------------------------------------------------------------- saving

def test_saved_files_are_what_the_safetensors_library_and_transformers_read(tmp_path, micro):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    micro.save(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses safetensors without it
    stored = load_file(path)
    assert sorted(stored) == sorted(micro.state)
    for name, array in micro.state.items():
        assert stored[name].dtype == np.float32
        np.testing.assert_array_equal(stored[name], array)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0  # the data start 8-byte aligned, so every float32 tensor is memory-mapped in place


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_behind(tmp_path, micro, monkeypatch):
    micro.save(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def disk_full(state, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(npgpt.weights, "write_safetensors", disk_full)
    with pytest.raises(npgpt.WeightsError) as e:
        micro.save(tmp_path / "m")
    assert str(e.value) == (f"{tmp_path / 'm' / 'model.safetensors'}: cannot write the weights (No space left on "
                            "device); free some space or choose another directory")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]  # no temporary left
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before  # the earlier file is intact


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_real_failed_write_is_an_os_error_we_report(tmp_path, micro):
    # A limit on file size makes the kernel fail the write (EFBIG), as a full disk would (ENOSPC). The
    # safetensors library would report it as a SafetensorError; npgpt writes the file itself to get the OSError.
    micro.save(tmp_path / "m")
    code = ("import resource, signal, sys, npgpt\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "try:\n"
            "    npgpt.load(sys.argv[1]).save(sys.argv[2])\n"
            "except npgpt.WeightsError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (f"{tmp_path / 'out' / 'model.safetensors'}: cannot write the weights (File too large); "
                          "free some space or choose another directory\n")
    assert os.listdir(tmp_path / "out") == []  # the config is written last: no half-saved model that would load
