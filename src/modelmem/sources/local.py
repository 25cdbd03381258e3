"""A local model folder: config.json + *.safetensors (+ model.safetensors.index.json), read from headers only.

Only the first 8 + N bytes of each safetensors file are read (N capped, see `safetensors.MAX_HEADER_BYTES`);
tensor data is never touched. Pickle checkpoints (.bin/.pt/.pth/.ckpt) are never opened: a folder of them is
sized from `pytorch_model.bin.index.json` when present, otherwise from its config alone (with a note).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelmem import limits
from modelmem.errors import SourceError
from modelmem.sources.safetensors import (
    LENGTH_PREFIX_BYTES,
    SafetensorsHeader,
    dominant_float_dtype,
    header_length,
    parse_header,
    per_layer_bytes,
    stored_weights,
)
from modelmem.spec import ModelSpec, StoredWeights

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_INDEX_BYTES = limits.INDEX_BYTES.maximum
_ELEMENT_BYTES = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}


class SourceNote(UserWarning):
    """Something the user should know about how a model was sized (e.g. config only, no safetensors)."""


class MissingConfigError(SourceError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: no config.json; a model folder needs the config.json its checkpoint came with")


class PickleRefusedError(SourceError):
    """A .bin/.pt checkpoint would have to be unpickled, which can run arbitrary code; modelmem never does."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"{path}: pickle checkpoints are never loaded (unpickling runs code); "
            "pass the folder with config.json, or convert the weights to safetensors"
        )


class MissingShardError(SourceError):
    def __init__(self, index: str, shards: Sequence[str]) -> None:
        self.index = index
        self.shards = list(shards)
        super().__init__(f"{index} lists {', '.join(self.shards)}, which the folder does not have; download them")


class ShardIndexError(SourceError):
    """An index file (model.safetensors.index.json) is not valid JSON or lacks its weight_map."""


def read_header_file(path: str | Path) -> SafetensorsHeader:
    """Read one safetensors file's header: 8 bytes, then at most MAX_HEADER_BYTES more; never the tensors."""
    path = Path(path)
    size = limits.regular_file_size(path, lambda m: SourceError(f"{path}: {m}"))
    try:
        with path.open("rb") as f:
            prefix = f.read(LENGTH_PREFIX_BYTES)
            n = header_length(prefix, str(path))
            body = f.read(n)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from e
    return parse_header(prefix + body, str(path), file_size=size)


def read_index(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint's index: {"metadata": {"total_size": …}, "weight_map": {tensor: shard file}}."""
    path = Path(path)
    size = limits.regular_file_size(path, lambda m: ShardIndexError(f"{path}: {m}"))
    if size > MAX_INDEX_BYTES:
        raise ShardIndexError(f"{path}: {limits.INDEX_BYTES.problem(size)}")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except OSError as e:
        raise ShardIndexError(f"{path}: cannot read ({e.strerror or e})") from e
    return check_index(limits.loads_json(data, lambda m: ShardIndexError(f"{path}: {m}")), str(path))


def check_index(index: Any, where: str) -> dict[str, Any]:
    """An index's shape: {"metadata": {…}, "weight_map": {tensor: shard file name}}, shard names plain file names."""
    if not isinstance(index, dict) or not isinstance(index.get("weight_map", {}), dict):
        raise ShardIndexError(f"{where}: expected an object with a weight_map")
    if not isinstance(index.get("metadata", {}), dict):
        raise ShardIndexError(f"{where}: metadata must be an object, got {type(index['metadata']).__name__}")
    files = set()
    for tensor, shard in index.get("weight_map", {}).items():
        # transformers joins the folder and this name; a list, a path or "" cannot name a shard in the folder.
        if not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard or shard in (".", ".."):
            raise ShardIndexError(f"{where}: weight_map[{tensor[:80]!r}] is {str(shard)[:80]!r}, expected a shard "
                                  "file name such as model-00001-of-00002.safetensors")
        files.add(shard)
    limits.check_int(limits.SHARDS, len(files), lambda m: ShardIndexError(f"{where}: {m}"))
    return index


def shard_names(index: Mapping[str, Any]) -> list[str]:
    return sorted(set(index.get("weight_map", {}).values()))


def spec_from_folder(path: str | Path) -> ModelSpec:
    """The spec of a local checkpoint folder, with `stored` = exact bytes from its safetensors headers.

    `path` may also be a .safetensors file or model.safetensors.index.json: its folder is read. A pickle file
    (.bin/.pt/.pth/.ckpt/.pkl) raises PickleRefusedError.
    """
    folder = Path(path)
    if folder.is_file():
        if folder.suffix in PICKLE_SUFFIXES:
            raise PickleRefusedError(str(folder))
        if folder.suffix == ".safetensors" or folder.name == SAFETENSORS_INDEX:
            folder = folder.parent  # one shard or the index stands for the checkpoint folder it is in
        else:
            raise SourceError(f"{folder}: expected a model folder (config.json + *.safetensors), got a file")
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder")
    config_path = folder / "config.json"
    if not config_path.exists():  # a FIFO or folder by that name is refused by the reader, by name
        raise MissingConfigError(str(folder))
    from modelmem.sources.config import load_config_file

    spec = dataclasses.replace(load_config_file(config_path), source=str(folder))
    files = _safetensors_files(folder)
    if files:
        return with_headers(spec, [read_header_file(f) for f in files])
    if (folder / PICKLE_INDEX).is_file():
        return dataclasses.replace(spec, stored=stored_from_pickle_index(folder / PICKLE_INDEX, spec))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    what = f"only pickle files ({', '.join(pickles[:3])}), never loaded" if pickles else "no weight files"
    warnings.warn(SourceNote(f"{folder}: {what}; sized from config.json alone"), stacklevel=2)
    return spec


def _safetensors_files(folder: Path) -> list[Path]:
    # An index wins: Mistral repos ship consolidated.safetensors beside the HF shards, and only the index's
    # files are the checkpoint transformers loads.
    if (folder / SAFETENSORS_INDEX).is_file():
        names = shard_names(read_index(folder / SAFETENSORS_INDEX))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise MissingShardError(str(folder / SAFETENSORS_INDEX), missing)
        return [folder / n for n in names]
    if (folder / SAFETENSORS_SINGLE).is_file():
        return [folder / SAFETENSORS_SINGLE]
    files = sorted(folder.glob("*.safetensors"))
    limits.check_int(limits.SHARDS, len(files), lambda m: SourceError(f"{folder}: {m}"))
    return files


def stored_from_pickle_index(index_path: str | Path, spec: ModelSpec) -> StoredWeights | None:
    """Bytes from a pytorch_model.bin.index.json's metadata.total_size; the pickles themselves are never opened."""
    total = read_index(index_path).get("metadata", {}).get("total_size")
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0 or total > limits.CHECKPOINT_BYTES.maximum:
        warnings.warn(SourceNote(f"{index_path}: no metadata.total_size; sized from config.json alone"), stacklevel=3)
        return None
    element = _ELEMENT_BYTES.get(spec.dtype, 2)
    # The index gives bytes only; parameters assume one dtype throughout (pickle checkpoints are never opened).
    return StoredWeights(
        total_bytes=total,
        num_params=total // element,
        bytes_by_dtype={spec.dtype: total},
        source=f"{index_path} metadata.total_size",
    )


def _declares_dtype(config: Mapping[str, Any]) -> bool:
    text = config.get("text_config")
    nested = text if isinstance(text, Mapping) else {}
    return any(c.get(k) is not None for c in (config, nested) for k in ("torch_dtype", "dtype"))


def quantization_config(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The checkpoint's quantization_config (top level, or under text_config for some VLMs)."""
    for c in (config, config.get("text_config")):
        if isinstance(c, Mapping) and isinstance(c.get("quantization_config"), Mapping):
            return c["quantization_config"]
    return None


def with_headers(spec: ModelSpec, headers: Sequence[SafetensorsHeader]) -> ModelSpec:
    """Attach what the safetensors headers say is stored to a spec built from config.json.

    Shared by the local and Hub readers. Every tensor is counted as stored, so vision towers, projectors and
    MTP heads of multimodal checkpoints are in `stored` even where the text config does not describe them.
    """
    quant = spec.quantization or quantization_config(spec.config)
    where = spec.source or spec.name
    stored = stored_weights(headers, quant, source=f"{where} safetensors headers ({len(headers)} files)")
    stored = dataclasses.replace(stored, per_layer_bytes=per_layer_bytes(headers, spec.num_layers))
    changes: dict[str, Any] = {"stored": stored, "quantization": quant}
    if not _declares_dtype(spec.config):
        changes["dtype"] = dominant_float_dtype(stored) or spec.dtype
    return dataclasses.replace(spec, **changes)
