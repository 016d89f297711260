"""Reading and validating a Hugging Face checkpoint directory.

A checkpoint is `config.json`, one `model.safetensors` or several shards
listed by `model.safetensors.index.json`, and `tokenizer.json`. Safetensors
headers are parsed here (8-byte little-endian length, JSON header, then raw
bytes) so that every tensor can be checked against the configuration and
read straight into its destination without an intermediate copy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from aegaeon.errors import CheckpointError
from aegaeon.models.config import ArchConfig, load_arch_config

SAFETENSORS_DTYPES = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorSource:
    name: str
    file: Path
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    dtype: str  # torch dtype name
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    config: ArchConfig
    tensors: dict[str, TensorSource]

    @property
    def file_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_checkpoint(path: str | Path, name: str | None = None) -> Checkpoint:
    """Validate a checkpoint directory; errors name the model and the problem."""
    path = Path(path)
    name = name or path.name
    if not path.is_dir():
        raise CheckpointError(f"model {name}: {path} is not a directory")
    try:
        config = load_arch_config(path)
        tensors: dict[str, TensorSource] = {}
        for file in _shard_files(path):
            tensors.update(read_safetensors_header(file))
        _check_tensors(config, tensors)
    except CheckpointError as err:
        raise CheckpointError(f"model {name}: {err}") from None
    return Checkpoint(name, path, config, tensors)


def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as bad:
            raise CheckpointError(f"{index}: not a safetensors index ({bad})") from None
        files = sorted({path / shard for shard in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files")
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the index but missing")
    return files


def read_safetensors_header(file: Path) -> dict[str, TensorSource]:
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: truncated before its header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{file}: header length {header_len} exceeds the file of {size} bytes"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as bad:
            raise CheckpointError(f"{file}: header is not JSON ({bad})") from None
    data_start = 8 + header_len
    sources = {}
    for tensor_name, entry in header.items():
        if tensor_name == "__metadata__":
            continue
        sources[tensor_name] = _source(file, tensor_name, entry, data_start, size)
    return sources


def _source(file: Path, name: str, entry: dict, data_start: int, size: int) -> TensorSource:
    try:
        dtype, itemsize = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = (int(x) for x in entry["data_offsets"])
        shape = tuple(int(d) for d in entry["shape"])
    except KeyError:
        raise CheckpointError(
            f"{file}: tensor {name} has dtype {entry.get('dtype')!r}: use one of {sorted(SAFETENSORS_DTYPES)}"
        ) from None
    except (TypeError, ValueError) as bad:
        raise CheckpointError(
            f"{file}: tensor {name} has a malformed header entry ({bad})"
        ) from None
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * itemsize or begin < 0:
        raise CheckpointError(
            f"{file}: tensor {name} spans {end - begin} bytes, not {numel * itemsize} for {shape}"
        )
    if data_start + end > size:
        raise CheckpointError(
            f"{file}: truncated: tensor {name} ends at byte {data_start + end} of {size}"
        )
    return TensorSource(name, file, data_start + begin, end - begin, dtype, shape)


def _check_tensors(config: ArchConfig, tensors: dict[str, TensorSource]) -> None:
    expected = config.parameter_shapes()
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing, first {missing[0]}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise CheckpointError(
                f"tensor {name} has shape {tensors[name].shape}, the config implies {shape}"
            )
