"""Checkpoint codec: round trip, atomic files, and every rejection path."""

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from maml_ros.meta import InnerConfig, init_meta_sgd_lrs
from maml_ros.rl.checkpoint import (
    CheckpointError,
    PolicyBundle,
    add_checksum,
    bundle_from_bytes,
    bundle_to_bytes,
    load_bundle,
    main,
    save_bundle,
)
from maml_ros.rl.pg import PGConfig
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec
from maml_ros.runtime import CHECKSUM_KEY, policy_from_bytes, read_policy_file
from maml_ros.runtime.reader import NO_CHECKSUM_HINT, with_checksum


def make_bundle(with_lrs: bool = False) -> PolicyBundle:
    spec = PolicySpec(hidden=(16, 16))
    params = GaussianMLPPolicy(spec).params()
    lrs = None
    if with_lrs:
        lrs = {k: v.detach() for k, v in init_meta_sgd_lrs(params, 0.05).items()}
    return PolicyBundle(
        spec=spec,
        params=params,
        obs_mean=torch.linspace(-1, 1, 14),
        obs_std=torch.linspace(0.5, 2, 14),
        inner=InnerConfig(lr=0.1, steps=2),
        pg=PGConfig(gamma=0.95, gae_lambda=0.9),
        lrs=lrs,
        version=7,
        run_id="abc",
        metadata={"task_family": "reach", "note": [1, 2]},
    )


def raw_parts(bundle: PolicyBundle) -> tuple[dict, dict]:
    """The tensors and header metadata (without its checksum) of a valid encoding, for
    crafting bad ones with :func:`encode`."""
    data = bundle_to_bytes(bundle)
    (n,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + n])["__metadata__"]
    del metadata[CHECKSUM_KEY]
    return dict(safetensors.torch.load(data)), metadata


def encode(tensors: dict, metadata: dict) -> bytes:
    """Safetensors bytes of crafted parts with a valid checksum, so that the check under test
    (not the checksum) is the one that refuses them."""
    save = lambda meta: safetensors.torch.save(tensors, metadata=meta)  # noqa: E731
    return with_checksum(save(metadata), metadata, save)


@pytest.mark.parametrize("with_lrs", [False, True])
def test_round_trip_preserves_everything(with_lrs):
    bundle = make_bundle(with_lrs)
    back = bundle_from_bytes(bundle_to_bytes(bundle))
    assert back.spec == bundle.spec
    assert back.inner == bundle.inner
    assert back.pg == bundle.pg
    assert (back.version, back.run_id, back.metadata) == (7, "abc", bundle.metadata)
    for name, value in bundle.params.items():
        assert torch.equal(back.params[name], value)
    assert torch.equal(back.obs_std, bundle.obs_std)
    assert (back.lrs is None) == (not with_lrs)
    if with_lrs:
        assert all(torch.equal(back.lrs[k], v) for k, v in bundle.lrs.items())


def test_save_and_load_file_is_atomic(tmp_path):
    path = tmp_path / "sub" / "policy.safetensors"
    save_bundle(path, make_bundle())
    save_bundle(path, make_bundle().replace(version=8))
    assert load_bundle(path).version == 8
    assert [p.name for p in path.parent.iterdir()] == ["policy.safetensors"]


def test_load_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_bundle(tmp_path / "nope.safetensors")


def test_rejects_truncated():
    data = bundle_to_bytes(make_bundle())
    for cut in (4, 100, len(data) - 10):
        with pytest.raises(CheckpointError, match=r"truncated|corrupted"):
            bundle_from_bytes(data[:cut])


def test_rejects_corrupted_header():
    data = bytearray(bundle_to_bytes(make_bundle()))
    data[8:16] = b"\xff\xfe{{{{{{"
    with pytest.raises(CheckpointError, match="corrupted"):
        bundle_from_bytes(bytes(data))


def test_rejects_garbage():
    with pytest.raises(CheckpointError):
        bundle_from_bytes(b"\x00" * 64)


def test_rejects_oversized():
    data = bundle_to_bytes(make_bundle())
    with pytest.raises(CheckpointError, match="oversized"):
        bundle_from_bytes(data, max_bytes=len(data) - 1)


def test_rejects_wrong_shape():
    tensors, metadata = raw_parts(make_bundle())
    tensors["params/mlp.0.weight"] = torch.zeros(16, 13)
    with pytest.raises(CheckpointError, match=r"mlp\.0\.weight.*shape"):
        bundle_from_bytes(encode(tensors, metadata))


def test_rejects_missing_and_unexpected_tensors():
    tensors, metadata = raw_parts(make_bundle())
    del tensors["params/log_std"]
    with pytest.raises(CheckpointError, match="log_std"):
        bundle_from_bytes(encode(tensors, metadata))
    tensors, metadata = raw_parts(make_bundle())
    tensors["extra"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="unexpected"):
        bundle_from_bytes(encode(tensors, metadata))


def test_rejects_wrong_dtype():
    tensors, metadata = raw_parts(make_bundle())
    tensors["params/log_std"] = tensors["params/log_std"].double()
    with pytest.raises(CheckpointError, match="float32"):
        bundle_from_bytes(encode(tensors, metadata))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rejects_non_finite_weights(bad):
    tensors, metadata = raw_parts(make_bundle())
    tensors["params/mlp.1.bias"][3] = bad
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        bundle_from_bytes(encode(tensors, metadata))


def test_rejects_non_positive_obs_std():
    tensors, metadata = raw_parts(make_bundle())
    tensors["obs_std"][0] = 0.0
    with pytest.raises(CheckpointError, match="obs_std"):
        bundle_from_bytes(encode(tensors, metadata))


def test_rejects_unsupported_version():
    tensors, metadata = raw_parts(make_bundle())
    metadata["format_version"] = "99"
    with pytest.raises(CheckpointError, match="unsupported format version"):
        bundle_from_bytes(encode(tensors, metadata))


@pytest.mark.parametrize("key", ["spec", "inner", "version", "run_id", "format"])
def test_rejects_missing_metadata(key):
    tensors, metadata = raw_parts(make_bundle())
    del metadata[key]
    with pytest.raises(CheckpointError, match="missing metadata"):
        bundle_from_bytes(encode(tensors, metadata))


def test_rejects_no_metadata_at_all():
    tensors, _ = raw_parts(make_bundle())
    with pytest.raises(CheckpointError, match="missing metadata"):
        bundle_from_bytes(safetensors.torch.save(tensors))


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("spec", "{not json", "not valid JSON"),
        ("spec", json.dumps({"obs_dim": 14, "act_dim": 7, "hidden": [32, 16]}), "shape"),
        ("spec", json.dumps({"obs_dim": 14, "wings": 2}), "unknown"),
        ("inner", json.dumps({"lr": -1.0}), "lr"),
        ("inner", json.dumps({"lr": 0.1, "momentum": 0.9}), "unknown"),
        ("pg", json.dumps({"gamma": 2.0}), "gamma"),
        ("version", "seven", "integer"),
        ("format", "someone.else", "not a maml_ros policy"),
    ],
)
def test_rejects_bad_metadata_values(key, value, reason):
    tensors, metadata = raw_parts(make_bundle())
    metadata[key] = value
    with pytest.raises(CheckpointError, match=reason):
        bundle_from_bytes(encode(tensors, metadata))


def test_encode_validates_too():
    bundle = make_bundle()
    bundle.params["log_std"] = torch.full((7,), float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        bundle_to_bytes(bundle)
    with pytest.raises(CheckpointError, match="JSON"):
        bundle_to_bytes(make_bundle().replace(metadata={"x": object()}))


def test_saved_files_are_world_readable(tmp_path):
    path = save_bundle(tmp_path / "p.safetensors", make_bundle())
    assert path.stat().st_mode & 0o777 == 0o644


def overflowing_bundle() -> PolicyBundle:
    """Every tensor finite, but the first layer computes inf - inf away from the centre."""
    bundle = make_bundle()
    weight = torch.zeros_like(bundle.params["mlp.0.weight"])
    weight[0, 0], weight[0, 1] = 3e38, -3e38
    return bundle.replace(
        params={**bundle.params, "mlp.0.weight": weight},
        obs_mean=torch.zeros(14),
        obs_std=torch.ones(14),
    )


def test_rejects_a_policy_whose_actions_are_not_finite(tmp_path):
    bundle = overflowing_bundle()
    data = bundle_to_bytes(bundle)  # the tensor checks pass
    with pytest.raises(
        CheckpointError, match=r"policy probe: non-finite action on probe observation"
    ):
        bundle_from_bytes(data)
    path = tmp_path / "overflow.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="non-finite action"):
        load_bundle(path)
    tiny_std = make_bundle().replace(obs_std=torch.full((14,), 1e-45))  # 1/std overflows
    with pytest.raises(CheckpointError, match="1 / obs_std overflows"):
        bundle_from_bytes(bundle_to_bytes(tiny_std))


def test_special_files_are_refused_without_reading_them(tmp_path):
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    for path in ("/dev/zero", fifo, tmp_path):
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_bundle(path)
    big = tmp_path / "big.safetensors"
    big.write_bytes(bundle_to_bytes(make_bundle()))
    with pytest.raises(CheckpointError, match="oversized"):
        load_bundle(big, max_bytes=100)


KILLED_MID_WRITE = """
import os, signal, sys
import maml_ros.rl.checkpoint as checkpoint
from test_rl_checkpoint import make_bundle
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed after writing, no cleanup
checkpoint.save_bundle(sys.argv[1], make_bundle())
"""


def test_a_write_killed_midway_leaves_no_orphan_once_the_file_is_written_again(tmp_path):
    target = tmp_path / "policy.safetensors"
    save_bundle(target, make_bundle())
    before = target.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, str(Path(__file__).parent)])}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_MID_WRITE, str(target)], env=env, timeout=120
        )
        assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == before  # the checkpoint itself is intact
    # A kill leaves its temporary file; the next write (the second kill's) swept the first.
    assert len(list(tmp_path.glob(".policy.safetensors.*.tmp"))) == 1
    save_bundle(target, make_bundle())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.safetensors"]
    load_bundle(target)


# --------------------------------------------------------------------------- checksum


def test_every_encoding_carries_a_checksum_that_both_readers_verify(tmp_path):
    data = bytearray(bundle_to_bytes(make_bundle()))
    (n,) = struct.unpack("<Q", data[:8])
    assert len(json.loads(data[8 : 8 + n])["__metadata__"][CHECKSUM_KEY]) == 64
    # One flipped bit in a weight: still finite, the right shape, probes fine; only the
    # checksum tells.
    flipped = bytearray(data)
    flipped[8 + n + 40] ^= 0x01
    for decode in (bundle_from_bytes, policy_from_bytes):
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            decode(bytes(flipped))
    # A changed metadata value (a version number, the spec) is caught the same way.
    altered = bytes(data).replace(b'"version":"7"', b'"version":"8"')
    assert altered != bytes(data)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        policy_from_bytes(altered)
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(flipped))
    for load in (load_bundle, read_policy_file):
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            load(path)


def old_file(tmp_path: Path) -> Path:
    """A policy file as written before checksums existed."""
    tensors, metadata = raw_parts(make_bundle())
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    return path


def test_a_file_without_checksum_is_refused_until_the_migration_adds_one(tmp_path, capsys):
    path = old_file(tmp_path)
    for load in (load_bundle, read_policy_file):
        with pytest.raises(CheckpointError, match="no checksum") as err:
            load(path)
        assert NO_CHECKSUM_HINT in str(err.value)
    tensors_before = safetensors.torch.load(path.read_bytes())
    assert main(["--add-checksum", str(path)]) == 0
    assert "checksum added" in capsys.readouterr().out
    back = load_bundle(path)
    assert (back.version, back.run_id, back.metadata) == (7, "abc", make_bundle().metadata)
    after = safetensors.torch.load(path.read_bytes())
    assert all(torch.equal(after[k], v) for k, v in tensors_before.items())
    assert add_checksum(path) is False  # verified, not rewritten
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["--add-checksum", str(bad)]) == 2
