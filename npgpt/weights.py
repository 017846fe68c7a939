"""Reading and writing GPT-2 checkpoints in the safetensors format, mapped into memory rather than copied.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw bytes. We parse the header ourselves so that float32 tensors become read-only NumPy views
of a memory map (no copy of the weights) and so that a damaged file is reported precisely; we accept the same files
the safetensors library does. Loading reads every weight once, to refuse NaN or infinite values. We write the
format ourselves too, so that a failed write is an ordinary OSError we can report.

Names follow OpenAI's checkpoint as published on the hub: `wte.weight`, `h.0.attn.c_attn.weight`, ...; the
`transformer.` prefix that transformers' `save_pretrained` writes is accepted and removed, the causal-mask buffers
(`h.N.attn.bias`, `h.N.attn.masked_bias`) are ignored, and `lm_head.weight` is optional (GPT-2 ties it to `wte`).
Pickle checkpoints (.bin, .pt, ...) are refused: unpickling a downloaded file can run arbitrary code.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import struct
from typing import NamedTuple

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
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # deep nesting overflows
                raise WeightsError(f"{path}: not a safetensors file: its header is not JSON") from None
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the file has >= 8 bytes
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file: its header is not a JSON object")
    entries = {name: _header_entry(path, name, info) for name, info in header.items() if name != "__metadata__"}
    start, data_size = 8 + n, size - 8 - n
    _check_layout(path, entries, start, data_size)
    return {name: _tensor_view(entry, buffer, start) for name, entry in entries.items()}


class _Entry(NamedTuple):
    """One tensor's header entry, checked: its dtype name, shape and byte range within the data."""
    dtype: str
    shape: list[int]
    begin: int
    end: int


def _is_count(value) -> bool:
    """A non-negative JSON integer. `type(...) is int` refuses floats, strings and bools (True is an int)."""
    return type(value) is int and value >= 0


def _header_entry(path: str, name: str, info) -> _Entry:
    """The checked header entry of one tensor. Sizes are Python ints, so absurd shapes cannot overflow."""
    def bad(what: str) -> WeightsError:
        return WeightsError(f"{path}: tensor {name!r} has a malformed header entry ({what}); "
                            "the file is damaged, download or export it again")

    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise bad("it needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise bad(f"dtype {dtype!r} is not a name")
    if dtype not in _DTYPES:
        raise WeightsError(f"{path}: tensor {name!r} has unsupported dtype {dtype}; "
                           f"npgpt reads {', '.join(_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"data_offsets {offsets!r} is not two non-negative integers")
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    if end < begin or end - begin != nbytes:
        raise WeightsError(f"{path}: tensor {name!r}: its shape {shape} needs {nbytes} bytes but its byte range "
                           f"{begin}..{end} holds {end - begin}; the file is damaged, download it again")
    return _Entry(dtype, shape, begin, end)


def _check_layout(path: str, entries: dict[str, _Entry], start: int, data_size: int) -> None:
    """The byte ranges must tile the data: sorted, each begins where the previous ends, and the last ends the file.

    This is the rule the safetensors library enforces (`safetensors.numpy.load_file` refuses overlapping or shared
    ranges, holes between tensors, and bytes after the last one), so npgpt accepts exactly the files it accepts.
    A file cut short is the common case and gets its own message, before any other layout problem.
    """
    last = max(entries, key=lambda name: entries[name].end, default=None)
    if last is not None and entries[last].end > data_size:
        raise WeightsError(f"{path}: truncated: tensor {last!r} ends at byte {start + entries[last].end}, "
                           f"the file has {start + data_size}; download it again")
    position, previous = 0, None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < position:
            raise WeightsError(f"{path}: tensor {name!r} (bytes {entry.begin}..{entry.end}) overlaps tensor "
                               f"{previous!r}; the file is damaged, download or export it again")
        if entry.begin > position:
            raise WeightsError(f"{path}: bytes {position}..{entry.begin} before tensor {name!r} belong to no "
                               "tensor; the file is damaged, download or export it again")
        position, previous = entry.end, name
    if position != data_size:
        raise WeightsError(f"{path}: bytes {position}..{data_size} at the end belong to no tensor; "
                           "the file is damaged, download or export it again")


def _tensor_view(entry: _Entry, buffer, start: int) -> np.ndarray:
    dtype = np.dtype(_DTYPES[entry.dtype])
    count = math.prod(entry.shape)  # the layout check has put begin..end inside the file
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + entry.begin).reshape(entry.shape)
    if entry.dtype == "BF16":  # bfloat16 is the top half of a float32
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
    state, origin, source = {}, {}, {}
    for path in files:
        for key, array in read_safetensors(path).items():
            name = canonical_name(key)
            if name is None:
                continue
            if name in state:
                raise WeightsError(f"{path}: tensor {name!r} appears twice (as {origin[name]!r} and {key!r})")
            state[name], origin[name], source[name] = array, key, os.fspath(path)
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
        if not _all_finite(state[name]):
            raise WeightsError(f"{source[name]}: tensor {origin[name]!r} has NaN or infinite values; "
                               "the checkpoint is damaged")
    return state


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value is finite, in one read of the array and without a copy of it.

    A sum is NaN or infinite when any value is, so a finite sum settles it. A sum of large finite values can
    overflow as well, so only then is each value checked (that makes a temporary bool array, but rarely).
    Note the sum reads every page of a memory-mapped array once, which is most of what this check costs.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = array.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(array).all())


def save_weights(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write tensors in the official layout; the file appears only once it is complete.

    A failed write (disk full, no permission, ...) leaves no temporary file behind and any earlier file intact.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write_safetensors(state, f)
        os.replace(tmp, path)
    except OSError as e:
        raise WeightsError(f"{path}: cannot write the weights ({e.strerror or e}); "
                           "free some space or choose another directory") from None
    finally:
        with contextlib.suppress(OSError):  # after os.replace there is no temporary to remove
            os.remove(tmp)


def write_safetensors(state: dict[str, np.ndarray], f) -> None:
    """Write float32 tensors to an open binary file as safetensors, with the metadata transformers expects.

    We write the format ourselves, as we read it, because the safetensors library reports a failed write as a
    SafetensorError with the OS error folded into its text; here a full disk is an OSError with its errno.
    The arrays are written from memory as they are (a memory-mapped checkpoint is not copied first).
    """
    arrays = {name: np.asarray(array, dtype="<f4", order="C") for name, array in state.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data start 8-byte aligned, as the safetensors library does
    f.write(struct.pack("<Q", len(raw)) + raw)
    for array in arrays.values():
        f.write(array)  # a C-contiguous array is a bytes-like object
