"""Policy bundles and their one codec: safetensors bytes with JSON metadata in the header.

The same bytes are a checkpoint file (``models/arm_maml.safetensors``) and the payload of the
ROS ``policy`` topic (std_msgs/UInt8MultiArray). Decoding validates everything (size, parse,
format version, required metadata, architecture, shapes, dtype, finiteness, obs_std > 0, finite
actions on probe observations: :func:`check_runs`) and raises :class:`CheckpointError` with
the reason. No pickle anywhere.

Tensor names: ``params/<name>`` (policy parameters, ``log_std`` included), ``obs_mean``,
``obs_std`` and, with Meta-SGD, ``lrs/<name>``. Header metadata (all strings, JSON inside):
``format``, ``format_version``, ``version``, ``run_id``, ``spec``, ``inner``, ``pg``, ``extra``
and ``sha256``, the content checksum that every load verifies
(:func:`maml_ros.runtime.reader.content_sha256`). ``python -m maml_ros.rl.checkpoint
--add-checksum FILE...`` adds it to files written before checksums existed, bytes otherwise
unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from maml_ros.meta import InnerConfig
from maml_ros.rl.pg import PGConfig
from maml_ros.rl.policy import Params, probe_problem
from maml_ros.runtime.policy import PolicySpec
from maml_ros.runtime.reader import (
    CHECKSUM_KEY,
    DEFAULT_MAX_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    policy_from_bytes,
    with_checksum,
)
from maml_ros.runtime.robots import DEFAULT_ROBOT, shipped_model_name


@dataclass
class PolicyBundle:
    """Everything needed to run and adapt a policy: weights, spec, normalisation, inner config."""

    spec: PolicySpec
    params: Params
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    inner: InnerConfig
    pg: PGConfig = field(default_factory=PGConfig)
    lrs: Params | None = None
    version: int = 0
    run_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> PolicyBundle:
        """A copy with ``changes`` applied (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Small JSON helpers for the configs stored in the header.


def inner_config_to_dict(cfg: InnerConfig) -> dict[str, Any]:
    """JSON form of an InnerConfig."""
    return dataclasses.asdict(cfg)


def inner_config_from_dict(data: Any) -> InnerConfig:
    """Validated InnerConfig from its JSON form; raises CheckpointError."""
    if not isinstance(data, dict):
        raise CheckpointError("inner config must be a JSON object")
    known = {f.name for f in dataclasses.fields(InnerConfig)}
    unknown = set(data) - known
    if unknown:
        raise CheckpointError(f"unknown inner config keys: {sorted(unknown)}")
    lr = data.get("lr", InnerConfig.lr)
    steps = data.get("steps", InnerConfig.steps)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not math.isfinite(lr):
        raise CheckpointError(f"inner lr must be a finite number, got {lr!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= 100:
        raise CheckpointError(f"inner steps must be an integer in [0, 100], got {steps!r}")
    clip = data.get("grad_clip")
    if clip is not None and (
        not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0
    ):
        raise CheckpointError(f"inner grad_clip must be a positive number or null, got {clip!r}")
    try:
        return InnerConfig(**data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid inner config: {exc}") from exc


def _pg_config_from_dict(data: Any) -> PGConfig:
    try:
        return PGConfig.from_dict(data)
    except ValueError as exc:
        raise CheckpointError(f"invalid pg config: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Validation shared by encode and decode.


def _check_tensor(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise CheckpointError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.float32:
        raise CheckpointError(f"{name}: dtype must be float32, got {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"{name}: shape must be {shape}, got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{name}: contains NaN or infinite values")


def validate_bundle(bundle: PolicyBundle) -> None:
    """Raise CheckpointError unless every tensor matches the spec (float32, shape, finite)."""
    spec = bundle.spec
    shapes = spec.param_shapes()
    if set(bundle.params) != set(shapes):
        missing, extra = set(shapes) - set(bundle.params), set(bundle.params) - set(shapes)
        raise CheckpointError(
            f"parameters do not match the architecture: missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    for name, shape in shapes.items():
        _check_tensor(f"params/{name}", bundle.params[name], shape)
    _check_tensor("obs_mean", bundle.obs_mean, (spec.obs_dim,))
    _check_tensor("obs_std", bundle.obs_std, (spec.obs_dim,))
    if not bool((bundle.obs_std > 0).all()):
        raise CheckpointError("obs_std must be > 0 everywhere")
    if bundle.lrs is not None:
        if set(bundle.lrs) != set(shapes):
            raise CheckpointError("Meta-SGD lrs must have exactly the parameter names")
        for name, shape in shapes.items():
            _check_tensor(f"lrs/{name}", bundle.lrs[name], shape)
    if not isinstance(bundle.version, int) or isinstance(bundle.version, bool):
        raise CheckpointError(f"version must be an integer, got {bundle.version!r}")
    if not 0 <= bundle.version < 2**63:
        raise CheckpointError(f"version must be in [0, 2^63), got {bundle.version}")
    if not isinstance(bundle.run_id, str) or len(bundle.run_id) > 256:
        raise CheckpointError("run_id must be a string of at most 256 characters")


def check_runs(bundle: PolicyBundle) -> None:
    """Raise CheckpointError unless the policy's actions and std are finite on the probe
    observations (:func:`maml_ros.rl.policy.probe_problem`); every decoded bundle is probed."""
    problem = probe_problem(bundle)
    if problem is not None:
        raise CheckpointError(problem)


# ---------------------------------------------------------------------------------------------
# Codec.


def bundle_to_bytes(bundle: PolicyBundle) -> bytes:
    """Encode a bundle as safetensors bytes (validated first) carrying their ``sha256``."""
    validate_bundle(bundle)
    tensors: dict[str, torch.Tensor] = {
        f"params/{k}": v.detach().cpu().contiguous() for k, v in bundle.params.items()
    }
    tensors["obs_mean"] = bundle.obs_mean.detach().cpu().contiguous()
    tensors["obs_std"] = bundle.obs_std.detach().cpu().contiguous()
    if bundle.lrs is not None:
        tensors.update({f"lrs/{k}": v.detach().cpu().contiguous() for k, v in bundle.lrs.items()})
    try:
        extra = json.dumps(bundle.metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"metadata must be JSON-able: {exc}") from exc
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "version": str(bundle.version),
        "run_id": bundle.run_id,
        "spec": json.dumps(bundle.spec.to_dict(), sort_keys=True),
        "inner": json.dumps(inner_config_to_dict(bundle.inner), sort_keys=True),
        "pg": json.dumps(bundle.pg.to_dict(), sort_keys=True),
        "extra": extra,
    }
    save = lambda meta: safetensors.torch.save(tensors, metadata=meta)  # noqa: E731
    return with_checksum(save(metadata), metadata, save)


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(
            f"truncated: {len(data)} bytes is shorter than the 8-byte header size"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise CheckpointError(
            f"truncated: header claims {header_len} bytes but only {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupted safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError("corrupted safetensors header: not a JSON object")
    return header


def read_safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of safetensors bytes; raises CheckpointError, e.g. when
    truncated."""
    metadata = _read_header(data).get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError("corrupted safetensors header: __metadata__ is not an object")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # the Rust parser raises SafetensorError and others
        raise CheckpointError(f"corrupted safetensors data: {exc}") from exc
    return tensors, metadata


def bundle_from_bytes(
    data: bytes | bytearray | memoryview,
    max_bytes: int = DEFAULT_MAX_BYTES,
    require_checksum: bool = True,
) -> PolicyBundle:
    """Decode and validate safetensors bytes; raises CheckpointError with the reason.

    The runtime's reader (:func:`maml_ros.runtime.policy_from_bytes`) does every check, the
    probe and the checksum included; this adds the learner's side: torch tensors and the
    inner / PG configs."""
    policy = policy_from_bytes(data, max_bytes, require_checksum=require_checksum)
    as_tensors = lambda arrays: {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}  # noqa: E731
    return PolicyBundle(
        spec=policy.spec,
        params=as_tensors(policy.params),
        obs_mean=torch.from_numpy(policy.obs_mean.copy()),
        obs_std=torch.from_numpy(policy.obs_std.copy()),
        inner=inner_config_from_dict(policy.inner),
        pg=_pg_config_from_dict(policy.pg),
        lrs=None if policy.lrs is None else as_tensors(policy.lrs),
        version=policy.version,
        run_id=policy.run_id,
        metadata=policy.metadata,
    )


def save_bundle(path: str | os.PathLike[str], bundle: PolicyBundle) -> Path:
    """Write a bundle atomically (temp file in the same folder, then os.replace)."""
    return atomic_write_bytes(path, bundle_to_bytes(bundle))


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises CheckpointError otherwise.

    The file is checked with ``os.stat`` before it is opened (a device such as /dev/zero, a
    FIFO or a directory is refused, never read), opened non-blocking (a FIFO swapped in after
    the check cannot hang the caller) and read up to ``max_bytes + 1`` bytes at most."""
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(
                f"{path}: not a regular file (a device, FIFO, socket or directory); not read"
            )
        if info.st_size > max_bytes:
            raise CheckpointError(
                f"{path}: oversized: {info.st_size} bytes exceeds the limit {max_bytes}"
            )
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise CheckpointError(f"{path}: not a regular file; not read")
            data = handle.read(max_bytes + 1)
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if len(data) > max_bytes:
        raise CheckpointError(f"{path}: oversized: more than the limit of {max_bytes} bytes")
    return data


def load_bundle(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> PolicyBundle:
    """Read (:func:`read_regular_file`) and validate a bundle file; raises CheckpointError."""
    path = Path(path)
    data = read_regular_file(path, max_bytes)
    try:
        return bundle_from_bytes(data, max_bytes=max_bytes)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def add_checksum(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> bool:
    """Adds the ``sha256`` checksum to a valid policy file written before checksums existed
    (atomically; tensors and every other metadata field unchanged). False when it has one
    already (then it is verified, not rewritten); raises CheckpointError for an invalid file."""
    data = read_regular_file(path, max_bytes)
    try:
        bundle_from_bytes(data, max_bytes, require_checksum=False)  # every other check
        tensors, metadata = read_safetensors(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if CHECKSUM_KEY in metadata:
        return False
    save = lambda meta: safetensors.torch.save(tensors, metadata=meta)  # noqa: E731
    atomic_write_bytes(path, with_checksum(save(metadata), metadata, save))
    load_bundle(path, max_bytes)
    return True


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (True when that cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, someone else's
        return True
    return True


def _remove_orphans(path: Path) -> None:
    """Deletes the temporary files of ``path`` (``.<name>.<pid>.*.tmp``) whose writer process
    is gone: a process killed mid-write (SIGKILL, or SIGTERM without a handler) runs no cleanup,
    so the next write of the same file sweeps up after it. A live writer's file is kept."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, os.replace.

    The temp file is removed on any exception (KeyboardInterrupt included); one left by a
    killed process is removed by the next write of ``path`` (:func:`_remove_orphans`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary shared file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_shipped_model(name: str = shipped_model_name(DEFAULT_ROBOT)) -> Path:
    """Path of a shipped model: ``models/`` in the source tree, else the installed
    ``share/maml_ros/models``; raises FileNotFoundError naming both places."""
    repo_path = Path(__file__).resolve().parents[2] / "models" / name
    if repo_path.is_file():
        return repo_path
    tried = [str(repo_path)]
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        try:
            share_path = Path(get_package_share_directory("maml_ros")) / "models" / name
            if share_path.is_file():
                return share_path
            tried.append(str(share_path))
        except PackageNotFoundError:
            tried.append("share/maml_ros (package not installed)")
    except ImportError:
        tried.append("share/maml_ros (ament_index_python not available)")
    raise FileNotFoundError(f"shipped model {name!r} not found; looked in: {', '.join(tried)}")


def clone_params(params: Params) -> Params:
    """Detached float32 CPU copies."""
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in params.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m maml_ros.rl.checkpoint --add-checksum FILE...``: 0, or 2 with the reason."""
    parser = argparse.ArgumentParser(prog="python -m maml_ros.rl.checkpoint")
    parser.add_argument("--add-checksum", nargs="+", metavar="FILE", required=True)
    args = parser.parse_args(argv)
    for path in args.add_checksum:
        try:
            added = add_checksum(path)
        except CheckpointError as exc:
            print(f"error: {exc}")
            return 2
        print(f"{path}: {'checksum added' if added else 'already has a valid checksum'}")
    return 0


__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "CheckpointError",
    "PolicyBundle",
    "add_checksum",
    "atomic_write_bytes",
    "bundle_from_bytes",
    "bundle_to_bytes",
    "check_runs",
    "clone_params",
    "find_shipped_model",
    "inner_config_from_dict",
    "load_bundle",
    "read_regular_file",
    "read_safetensors",
    "save_bundle",
    "validate_bundle",
]


if __name__ == "__main__":
    raise SystemExit(main())
