"""Numpy-only reader of policy checkpoints: safetensors bytes with JSON metadata in the header.

It reads the files and ``policy`` messages written by :mod:`maml_ros.rl.checkpoint` and
validates what rl's decoder validates (size limit, the safetensors layout, format and format
version, required metadata, spec, parameter names and shapes, float32, finiteness,
``obs_std > 0``, version and run id), then runs the policy on probe observations
(:func:`~maml_ros.runtime.policy.probe_problem`). The learner's configs (``inner``, ``pg``) are
kept as JSON objects: rl's decoder parses them into its config classes.

Layout (safetensors): 8 bytes little-endian header length N, N bytes of JSON header (tensor
name -> dtype, shape, data_offsets; ``__metadata__``: string -> string), then the tensors'
raw little-endian bytes, contiguous and covering the rest exactly.

Checksum: ``__metadata__["sha256"]`` is the SHA-256 (hex) of the header's canonical JSON
without that key (sorted keys, no spaces) followed by the tensor bytes
(:func:`content_sha256`), so a flipped bit anywhere in the weights, the normalisation or the
metadata is refused. A file written before checksums existed has no ``sha256``: the reader
refuses it (:data:`NO_CHECKSUM_HINT` says how to add one: ``python -m maml_ros.rl.checkpoint
--add-checksum FILE``) unless it is called with ``require_checksum=False``, which only that
migration does.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maml_ros.runtime.policy import NumpyPolicy, PolicySpec, PolicySpecError, probe_problem

FORMAT_NAME = "maml_ros.policy"
FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
REQUIRED_METADATA = ("format", "format_version", "version", "run_id", "spec", "inner", "pg")
CHECKSUM_KEY = "sha256"
"""Metadata key of the content checksum (:func:`content_sha256`)."""
NO_CHECKSUM_HINT = (
    "no checksum (metadata 'sha256'): written before checksums existed, or stripped; "
    "add one with: python -m maml_ros.rl.checkpoint --add-checksum FILE"
)
MAX_HEADER_BYTES = 100_000_000
"""The safetensors parser's own header limit."""
_U64 = 2**64


class CheckpointError(ValueError):
    """A checkpoint (file or bytes) is invalid; the message says why."""


@dataclass(frozen=True)
class PolicyData:
    """A validated policy as numpy arrays (read-only float32): the torch-free PolicyBundle."""

    spec: PolicySpec
    params: Mapping[str, np.ndarray]
    obs_mean: np.ndarray
    obs_std: np.ndarray
    version: int
    run_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """The free ``extra`` metadata (``joint_names``, task, ...)."""
    inner: dict[str, Any] = field(default_factory=dict)
    pg: dict[str, Any] = field(default_factory=dict)
    lrs: Mapping[str, np.ndarray] | None = None
    policy: NumpyPolicy | None = field(default=None, compare=False, repr=False)
    """The probed inference object (built once by the reader)."""


def _header(data: bytes) -> tuple[int, dict[str, Any]]:
    """(header length, header JSON) of safetensors bytes; the safetensors parser's rules."""
    if len(data) < 8:
        raise CheckpointError(
            f"truncated: {len(data)} bytes is shorter than the 8-byte header size"
        )
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise CheckpointError(
            f"truncated: header claims {length} bytes but only {len(data) - 8} follow"
        )
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"corrupted safetensors data: header of {length} bytes")
    try:
        text = data[8 : 8 + length].decode("utf-8")
        header = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"corrupted safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError("corrupted safetensors header: not a JSON object")
    if not text.startswith("{"):
        raise CheckpointError("corrupted safetensors header: it must start with '{'")
    return length, header


def content_sha256(header: Mapping[str, Any], tensor_bytes: bytes | memoryview) -> str:
    """SHA-256 (hex) of ``header``'s canonical JSON without the checksum key (sorted keys, no
    spaces) followed by ``tensor_bytes``, the data after the header: what ``sha256`` holds."""
    stripped = dict(header)
    metadata = dict(stripped.get("__metadata__") or {})
    metadata.pop(CHECKSUM_KEY, None)
    stripped["__metadata__"] = metadata
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode("ascii"))
    digest.update(tensor_bytes)
    return digest.hexdigest()


def with_checksum(data: bytes, metadata: Mapping[str, str], save: Any) -> bytes:
    """Safetensors bytes carrying their ``sha256``: ``data`` is ``save(metadata)``'s output
    without one; the tensor bytes and the header's other fields do not depend on it."""
    length, header = _header(data)
    checksum = content_sha256(header, memoryview(data)[8 + length :])
    return save({**metadata, CHECKSUM_KEY: checksum})


def _check_checksum(data: bytes, length: int, header: dict[str, Any], required: bool) -> None:
    metadata = header.get("__metadata__") or {}
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        if required:
            raise CheckpointError(NO_CHECKSUM_HINT)
        return
    actual = content_sha256(header, memoryview(data)[8 + length :])
    if stored != actual:
        raise CheckpointError(
            f"checksum mismatch: metadata sha256 {str(stored)[:16]}... but the content hashes "
            f"to {actual[:16]}... (corrupted or altered)"
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return out


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def _tensors(data: bytes, length: int, header: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor of the header as a read-only float32 view of ``data`` (layout checked;
    the caller has refused dtypes other than F32)."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if (
            not isinstance(info, dict)
            or not {"dtype", "shape", "data_offsets"} <= set(info)
            or info["dtype"] != "F32"
            or not isinstance(info["shape"], list)
            or not all(_is_index(d) for d in info["shape"])
            or not isinstance(info["data_offsets"], list)
            or len(info["data_offsets"]) != 2
            or not all(_is_index(o) for o in info["data_offsets"])
        ):
            raise CheckpointError(f"corrupted safetensors data: bad tensor entry {name!r:.80}")
        entries.append((tuple(info["data_offsets"]), name, info))
    entries.sort(key=lambda e: e[0])
    end = 0
    for (start, stop), name, info in entries:
        if start != end or stop < start:
            raise CheckpointError(f"corrupted safetensors data: invalid offsets of {name!r:.80}")
        count = 1
        for dim in info["shape"]:
            count *= dim
        if count * 4 >= _U64:
            raise CheckpointError(f"corrupted safetensors data: {name!r:.80} overflows")
        if stop - start != count * 4:
            raise CheckpointError(f"corrupted safetensors data: {name!r:.80} has a wrong size")
        end = stop
    if 8 + length + end != len(data):
        raise CheckpointError("corrupted safetensors data: the tensors do not cover the buffer")
    buffer = np.frombuffer(data, dtype=np.uint8, offset=8 + length)
    tensors = {}
    for (start, stop), name, info in entries:
        view = buffer[start:stop].view("<f4").reshape(info["shape"])
        tensors[name] = view.astype(np.float32, copy=False)
    return tensors


def _json_field(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"metadata '{key}' is not valid JSON: {exc}") from exc


def _check_array(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise CheckpointError(f"{name}: shape must be {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise CheckpointError(f"{name}: contains NaN or infinite values")


def policy_from_bytes(
    data: bytes | bytearray | memoryview,
    max_bytes: int = DEFAULT_MAX_BYTES,
    require_checksum: bool = True,
) -> PolicyData:
    """Decode and validate policy bytes; raises CheckpointError with the reason.

    The ``sha256`` checksum must be there and match (``require_checksum=False``: it must match
    when it is there; only the migration that adds one reads without it)."""
    data = bytes(data)
    if len(data) > max_bytes:
        raise CheckpointError(f"oversized: {len(data)} bytes exceeds the limit of {max_bytes}")
    length, header = _header(data)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        raise CheckpointError("missing metadata: the safetensors header has no __metadata__")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("corrupted safetensors data: metadata values must be strings")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise CheckpointError(f"missing metadata keys: {missing}")
    if metadata["format"] != FORMAT_NAME:
        raise CheckpointError(f"not a maml_ros policy: format is {metadata['format']!r}")
    if metadata["format_version"] != str(FORMAT_VERSION):
        raise CheckpointError(
            f"unsupported format version {metadata['format_version']!r} "
            f"(this build reads version {FORMAT_VERSION})"
        )
    _check_checksum(data, length, header, require_checksum)
    for name, info in header.items():
        if name != "__metadata__" and (not isinstance(info, dict) or info.get("dtype") != "F32"):
            dtype = info.get("dtype") if isinstance(info, dict) else None
            raise CheckpointError(f"{name}: dtype must be float32 (F32), got {dtype!r}")
    tensors = _tensors(data, length, header)
    try:
        version = int(metadata["version"])
    except ValueError as exc:
        raise CheckpointError(f"version must be an integer, got {metadata['version']!r}") from exc
    try:
        spec = PolicySpec.from_dict(_json_field(metadata, "spec"))
    except (PolicySpecError, TypeError) as exc:
        raise CheckpointError(f"invalid policy spec: {exc}") from exc
    configs = {key: _json_field(metadata, key) for key in ("inner", "pg")}
    for key, value in configs.items():
        if not isinstance(value, dict):
            raise CheckpointError(f"{key} config must be a JSON object")
    extra = _json_field(metadata, "extra") if "extra" in metadata else {}
    if not isinstance(extra, dict):
        raise CheckpointError("metadata 'extra' must be a JSON object")
    params = {k.removeprefix("params/"): v for k, v in tensors.items() if k.startswith("params/")}
    lrs = {k.removeprefix("lrs/"): v for k, v in tensors.items() if k.startswith("lrs/")}
    known = {f"params/{k}" for k in params} | {f"lrs/{k}" for k in lrs} | {"obs_mean", "obs_std"}
    unexpected = set(tensors) - known
    if unexpected:
        raise CheckpointError(f"unexpected tensors: {sorted(unexpected)}")
    for name in ("obs_mean", "obs_std"):
        if name not in tensors:
            raise CheckpointError(f"missing tensor {name!r}")
    policy = checked_policy(
        spec, params, tensors["obs_mean"], tensors["obs_std"], lrs or None, version=version
    )
    run_id = metadata["run_id"]
    if not 0 <= version < 2**63:
        raise CheckpointError(f"version must be in [0, 2^63), got {version}")
    if len(run_id) > 256:
        raise CheckpointError("run_id must be a string of at most 256 characters")
    return PolicyData(
        spec=spec,
        params=params,
        obs_mean=tensors["obs_mean"],
        obs_std=tensors["obs_std"],
        version=version,
        run_id=run_id,
        metadata=extra,
        inner=configs["inner"],
        pg=configs["pg"],
        lrs=lrs or None,
        policy=policy,
    )


def checked_policy(
    spec: PolicySpec,
    params: Mapping[str, np.ndarray],
    obs_mean: np.ndarray,
    obs_std: np.ndarray,
    lrs: Mapping[str, np.ndarray] | None = None,
    version: int = 0,
) -> NumpyPolicy:
    """The policy's inference object, once its arrays match ``spec`` (names, shapes, finite,
    ``obs_std > 0``) and it passed the probe; raises CheckpointError.

    Every loader (this reader and rl's decoder) calls it, so they refuse the same policies.
    """
    shapes = spec.param_shapes()
    if set(params) != set(shapes):
        missing, extra = set(shapes) - set(params), set(params) - set(shapes)
        raise CheckpointError(
            f"parameters do not match the architecture: missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    for name, shape in shapes.items():
        _check_array(f"params/{name}", params[name], shape)
    _check_array("obs_mean", obs_mean, (spec.obs_dim,))
    _check_array("obs_std", obs_std, (spec.obs_dim,))
    if not (obs_std > 0).all():
        raise CheckpointError("obs_std must be > 0 everywhere")
    if lrs is not None:
        if set(lrs) != set(shapes):
            raise CheckpointError("Meta-SGD lrs must have exactly the parameter names")
        for name, shape in shapes.items():
            _check_array(f"lrs/{name}", lrs[name], shape)
    policy = NumpyPolicy(spec, params, obs_mean, obs_std, version=version)
    problem = probe_problem(policy)
    if problem:
        raise CheckpointError(f"policy probe: {problem}")
    return policy


def read_file_bytes(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises CheckpointError.

    It refuses special files (a FIFO, ``/dev/zero``) before opening them and never reads more
    than ``max_bytes + 1`` bytes, so a file that grows cannot exhaust memory.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise CheckpointError(
                f"{path}: oversized: {info.st_size} bytes exceeds the limit {max_bytes}"
            )
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if len(data) > max_bytes:
        raise CheckpointError(f"{path}: oversized: more than {max_bytes} bytes")
    return data


def read_policy_file(
    path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> PolicyData:
    """Read and validate a policy file (checksum included); raises CheckpointError (also for
    unreadable files)."""
    data = read_file_bytes(path, max_bytes)
    try:
        return policy_from_bytes(data, max_bytes=max_bytes)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
