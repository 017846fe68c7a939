"""Reading and writing GPT-2 checkpoints in the safetensors format, mapped into memory rather than copied.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw bytes. We parse the header ourselves so that float32 tensors become read-only NumPy views
of a memory map (no copy of the weights, pages read on demand) and so that a damaged file is reported precisely.

Names follow OpenAI's checkpoint as published on the hub: `wte.weight`, `h.0.attn.c_attn.weight`, ...; the
`transformer.` prefix that transformers' `save_pretrained` writes is accepted and removed, the causal-mask buffers
(`h.N.attn.bias`, `h.N.attn.masked_bias`) are ignored, and `lm_head.weight` is optional (GPT-2 ties it to `wte`).
Pickle checkpoints (.bin, .pt, ...) are refused: unpickling a downloaded file can run arbitrary code.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct

import numpy as np

from .config import GPT2Config
from .errors import WeightsError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 * 1024 * 1024
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 checkpoint must hold, with its shape (Conv1D weights are stored [in, out])."""
    c, f = config.n_embd, config.mlp_size
    shapes = {"wte.weight": (config.vocab_size, c), "wpe.weight": (config.n_positions, c)}
    for i in range(config.n_layer):
        shapes.update({
            f"h.{i}.ln_1.weight": (c,), f"h.{i}.ln_1.bias": (c,),
            f"h.{i}.attn.c_attn.weight": (c, 3 * c), f"h.{i}.attn.c_attn.bias": (3 * c,),
            f"h.{i}.attn.c_proj.weight": (c, c), f"h.{i}.attn.c_proj.bias": (c,),
            f"h.{i}.ln_2.weight": (c,), f"h.{i}.ln_2.bias": (c,),
            f"h.{i}.mlp.c_fc.weight": (c, f), f"h.{i}.mlp.c_fc.bias": (f,),
            f"h.{i}.mlp.c_proj.weight": (f, c), f"h.{i}.mlp.c_proj.bias": (c,),
        })
    shapes.update({"ln_f.weight": (c,), "ln_f.bias": (c,)})
    return shapes


def refuse_pickle(path: str) -> None:
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise WeightsError(
            f"{path}: pickle checkpoints are not loaded (unpickling can run arbitrary code); "
            "use the model's model.safetensors instead")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only array; float32 ones are views of a memory map."""
    path = os.fspath(path)
    refuse_pickle(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                hint = " (it looks like a zip/pickle checkpoint)" if head.startswith(b"PK") else ""
                raise WeightsError(f"{path}: not a safetensors file or truncated: bad header length {n}{hint}")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise WeightsError(f"{path}: not a safetensors file: its header is not JSON") from None
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + n else b""
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file: its header is not a JSON object")
    start, data_size = 8 + n, size - 8 - n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_view(path, name, info, buffer, start, data_size)
    return tensors


def _tensor_view(path, name, info, buffer, start, data_size) -> np.ndarray:
    try:
        dtype_name, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise WeightsError(f"{path}: tensor {name!r} has a malformed header entry") from None
    if dtype_name not in _DTYPES:
        raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
    dtype = np.dtype(_DTYPES[dtype_name])
    count = int(np.prod(shape, dtype=np.int64))
    if any(s < 0 for s in shape) or not 0 <= begin <= end or end - begin != count * dtype.itemsize:
        raise WeightsError(f"{path}: tensor {name!r}: byte range {begin}..{end} does not fit shape {shape}")
    if end > data_size:
        raise WeightsError(f"{path}: truncated: tensor {name!r} ends at byte {start + end}, "
                           f"the file has {start + data_size}; download it again")
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin).reshape(shape)
    if dtype_name == "BF16":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif not array.flags.aligned:  # BLAS wants aligned data; safetensors writers normally align
        array = array.copy()
    return array


def canonical_name(key: str) -> str | None:
    """The official checkpoint's name for a tensor, or None for the causal-mask buffers to ignore."""
    key = key.removeprefix("transformer.")
    return None if _IGNORED.match(key) else key


def find_checkpoint(model_dir: str) -> list[str]:
    """The safetensors file(s) of a model directory (one file, or the shards its index lists)."""
    if not os.path.isdir(model_dir):
        raise WeightsError(f"{model_dir}: no such model directory")
    single = os.path.join(model_dir, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(model_dir, INDEX_NAME)
    if os.path.isfile(index):
        return [os.path.join(model_dir, s) for s in shard_names(index)]
    pickles = sorted(n for n in os.listdir(model_dir) if n.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        refuse_pickle(os.path.join(model_dir, pickles[0]))
    raise WeightsError(f"{model_dir}: no {WEIGHTS_NAME} in this directory")


def shard_names(index_path: str) -> list[str]:
    """The shard files a model.safetensors.index.json lists (plain file names in its directory)."""
    try:
        with open(index_path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise WeightsError(f"{index_path}: not a valid safetensors index") from None
    for shard in shards:
        if not isinstance(shard, str) or os.path.basename(shard) != shard or not shard.endswith(".safetensors") \
                or shard.startswith("."):
            raise WeightsError(f"{index_path}: refusing shard name {shard!r}")
    return shards


def load_weights(files: str | list[str], config: GPT2Config) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under their official names, checked against the configuration.

    Returns a dict with every key of `expected_shapes(config)`, plus `lm_head.weight` only when the file has one
    that differs from `wte.weight` (an untied head). Arrays are float32 and, where the file allows, memory-mapped.
    """
    files = [files] if isinstance(files, (str, os.PathLike)) else files
    state, origin = {}, {}
    for path in files:
        for key, array in read_safetensors(path).items():
            name = canonical_name(key)
            if name is None:
                continue
            if name in state:
                raise WeightsError(f"{path}: tensor {name!r} appears twice (as {origin[name]!r} and {key!r})")
            state[name], origin[name] = array, key
    where = files[0] if len(files) == 1 else os.path.dirname(files[0]) or "."
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name not in state:
            raise WeightsError(f"{where}: missing tensor {name!r} (expected shape {list(shape)})")
        if tuple(state[name].shape) != shape:
            raise WeightsError(f"{where}: tensor {origin[name]!r} has shape {list(state[name].shape)}, "
                               f"expected {list(shape)} for this config.json")
    unknown = sorted(set(state) - set(expected) - {"lm_head.weight"})
    if unknown:
        raise WeightsError(f"{where}: unexpected tensor {origin[unknown[0]]!r}; is this a GPT-2 checkpoint?")
    head = state.pop("lm_head.weight", None)
    if head is not None:
        if head.shape != expected["wte.weight"]:
            raise WeightsError(f"{where}: tensor 'lm_head.weight' has shape {list(head.shape)}, "
                               f"expected {list(expected['wte.weight'])}")
        if not np.array_equal(head, state["wte.weight"]):
            state["lm_head.weight"] = head
    for name, array in state.items():
        if array.dtype != np.float32:
            if not np.issubdtype(array.dtype, np.floating):
                raise WeightsError(f"{where}: tensor {origin[name]!r} has dtype {array.dtype}, expected floats")
            state[name] = array.astype(np.float32)
    return state


def save_weights(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write tensors in the official layout; the file appears only once it is complete."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
