"""Hypothesis fuzzing of the validators between the outside world and the domain.

Covered here (the ROS message converters are fuzzed in test_ros_convert.py):
- ``TaskSpec.from_json``: arbitrary text, bytes and JSON objects raise only TaskSpecError;
  valid specs round-trip exactly.
- ``bundle_from_bytes``: random bytes, truncations and byte flips of a valid checkpoint raise
  only CheckpointError; a mutated checkpoint that still decodes carries finite, spec-shaped
  tensors, and if it decodes to the original header it decodes to the original weights.
- ``InnerConfig`` and the checkpoint's ``inner_config_from_dict``.
- the training-config loader (``config_from_dict`` / ``load_config``).
- every node parameter validator (``PARAMS`` of each module in ``maml_ros.ros``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import pkgutil
import struct
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import maml_ros.ros
from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import (
    CheckpointError,
    PolicyBundle,
    bundle_from_bytes,
    bundle_to_bytes,
    inner_config_from_dict,
)
from maml_ros.rl.config import ConfigError, config_from_dict, load_config
from maml_ros.rl.policy import PolicySpec
from maml_ros.ros.common import ParamSpec
from maml_ros.runtime import content_sha256
from maml_ros.sim.task import TaskSpec, TaskSpecError, sample_tasks

torch.set_num_threads(1)

# ~20 s for the whole file on the shared 2-core CPU.
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_float = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | st.integers() | any_float | st.text(max_size=8)


def json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values whose objects favour ``keys`` (so validation gets deep)."""
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=8)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=5), children, max_size=8)
        ),
        max_leaves=25,
    )


# --------------------------------------------------------------------------- TaskSpec

TASK_KEYS = ["family", "goal", "joint_gain", "joint_damping", "payload_kg", "encoder_offset"]
FAMILY = st.sampled_from(["reach", "dynamics", "reach+dynamics"])


def plausible_tasks() -> st.SearchStrategy[dict[str, Any]]:
    """Task objects with every field of the right shape and values around the valid ranges."""
    vec = lambda n, lo, hi: st.lists(st.floats(lo, hi), min_size=n, max_size=n)  # noqa: E731
    return st.fixed_dictionaries(
        {"family": FAMILY},
        optional={
            "goal": vec(3, -1.5, 1.5),
            "joint_gain": vec(7, -0.5, 2.0),
            "joint_damping": vec(7, -1.0, 10.0),
            "payload_kg": st.floats(-1.0, 10.0),
            "encoder_offset": vec(7, -0.5, 0.5),
        },
    )


def _check_task_text(text: str | bytes) -> None:
    try:
        task = TaskSpec.from_json(text)
    except TaskSpecError:
        return
    assert TaskSpec.from_json(task.to_json()) == task
    assert TaskSpec.from_json(task.to_json()).to_json() == task.to_json()


@FUZZ
@given(text=st.text(max_size=300))
def test_task_from_arbitrary_text(text: str) -> None:
    _check_task_text(text)


@FUZZ
@given(data=st.binary(max_size=300))
def test_task_from_arbitrary_bytes(data: bytes) -> None:
    _check_task_text(data)


@FUZZ
@given(value=json_values(TASK_KEYS))
def test_task_from_arbitrary_json(value: Any) -> None:
    _check_task_text(json.dumps(value))


@FUZZ
@given(value=plausible_tasks())
def test_task_from_plausible_json(value: dict[str, Any]) -> None:
    _check_task_text(json.dumps(value))


def test_task_deep_nesting_and_huge_numbers_are_task_errors() -> None:
    for text in ("[" * 5000, '{"family": ' * 3000, "1" * 5000, '{"family":"reach","goal":1e999}'):
        with pytest.raises(TaskSpecError):
            TaskSpec.from_json(text)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), family=FAMILY, split=st.sampled_from(["train", "test"]))
def test_sampled_tasks_round_trip(seed: int, family: str, split: str) -> None:
    for task in sample_tasks(family, 2, split, seed):
        assert TaskSpec.from_json(task.to_json()) == task


# --------------------------------------------------------------------------- checkpoint codec


def _bundle(hidden: tuple[int, ...] = (8, 8), meta_sgd: bool = True) -> PolicyBundle:
    spec = PolicySpec(hidden=hidden)
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=gen) for k, s in spec.param_shapes().items()}
    return PolicyBundle(
        spec=spec,
        params=params,
        obs_mean=torch.randn(spec.obs_dim, generator=gen),
        obs_std=torch.rand(spec.obs_dim, generator=gen) + 0.5,
        inner=InnerConfig(lr=0.1, steps=1),
        lrs={k: torch.full_like(v, 0.1) for k, v in params.items()} if meta_sgd else None,
        version=7,
        run_id="fuzz",
        metadata={"note": "fuzz"},
    )


VALID = _bundle()
VALID_BYTES = bundle_to_bytes(VALID)
HEADER_END = 8 + struct.unpack("<Q", VALID_BYTES[:8])[0]


def _assert_decodes_sanely(data: bytes) -> None:
    """Either CheckpointError, or a bundle that is valid and (header intact) identical."""
    try:
        bundle = bundle_from_bytes(data)
    except CheckpointError:
        return
    shapes = bundle.spec.param_shapes()
    assert set(bundle.params) == set(shapes)
    for name, tensor in bundle.params.items():
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == shapes[name]
        assert bool(torch.isfinite(tensor).all())
    assert bool((bundle.obs_std > 0).all())
    if data == VALID_BYTES:
        assert same_bundle(bundle, VALID)


def same_bundle(a: PolicyBundle, b: PolicyBundle) -> bool:
    """Equal spec, configs, version, metadata and every tensor bit for bit."""

    def tensors(x: PolicyBundle) -> dict[str, torch.Tensor]:
        lrs = {f"lrs/{k}": v for k, v in (x.lrs or {}).items()}
        return {**x.params, **lrs, "obs_mean": x.obs_mean, "obs_std": x.obs_std}

    ta, tb = tensors(a), tensors(b)
    return (
        (a.spec, a.inner, a.pg, a.version, a.run_id, a.metadata)
        == (b.spec, b.inner, b.pg, b.version, b.run_id, b.metadata)
        and ta.keys() == tb.keys()
        and all(torch.equal(ta[k], tb[k]) for k in ta)
    )


def test_valid_checkpoint_round_trips() -> None:
    bundle = bundle_from_bytes(VALID_BYTES)
    assert same_bundle(bundle, VALID)
    assert same_bundle(bundle_from_bytes(bundle_to_bytes(bundle)), VALID)
    changed = bundle.replace(params={**bundle.params, "log_std": bundle.params["log_std"] + 1})
    assert not same_bundle(changed, VALID)  # the comparison can fail


@FUZZ
@given(data=st.binary(max_size=600))
def test_checkpoint_random_bytes(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        bundle_from_bytes(data)


@FUZZ
@given(cut=st.integers(0, len(VALID_BYTES) - 1))
def test_checkpoint_truncations_are_rejected(cut: int) -> None:
    with pytest.raises(CheckpointError):
        bundle_from_bytes(VALID_BYTES[:cut])


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(0, HEADER_END - 1), st.integers(0, 7)), min_size=1, max_size=3
    )
)
def test_checkpoint_header_bit_flips(flips: list[tuple[int, int]]) -> None:
    raw = bytearray(VALID_BYTES)
    for position, bit in flips:
        raw[position] ^= 1 << bit
    _assert_decodes_sanely(bytes(raw))


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(HEADER_END, len(VALID_BYTES) - 1), st.integers(0, 7)),
        min_size=1,
        max_size=3,
    )
)
def test_checkpoint_payload_bit_flips_change_weights_or_fail(flips: list[tuple[int, int]]) -> None:
    """Flipped weight bits are caught by the checksum: the bytes decode only when the flips
    cancel out, and then to the very same bundle."""
    raw = bytearray(VALID_BYTES)
    for position, bit in flips:
        raw[position] ^= 1 << bit
    try:
        bundle = bundle_from_bytes(bytes(raw))
    except CheckpointError as exc:
        assert bytes(raw) != VALID_BYTES and "checksum mismatch" in str(exc)
        return
    assert bytes(raw) == VALID_BYTES and same_bundle(bundle, VALID)


@FUZZ_SLOW
@given(
    key=st.sampled_from(["format", "format_version", "version", "run_id", "spec", "inner", "pg"]),
    value=json_values(["lr", "steps", "hidden", "obs_dim", "gamma", "first_order"]),
)
def test_checkpoint_metadata_values(key: str, value: Any) -> None:
    """Any JSON in one metadata field: CheckpointError or a fully valid bundle."""
    header = json.loads(VALID_BYTES[8:HEADER_END])
    header["__metadata__"][key] = json.dumps(value)
    # A valid checksum of the altered header, so the field's own validation is what is fuzzed.
    header["__metadata__"]["sha256"] = content_sha256(header, VALID_BYTES[HEADER_END:])
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    _assert_decodes_sanely(struct.pack("<Q", len(blob)) + blob + VALID_BYTES[HEADER_END:])


# --------------------------------------------------------------------------- InnerConfig

INNER_KEYS = ["lr", "steps", "first_order", "grad_clip", "on_nonfinite"]


@FUZZ
@given(kwargs=st.dictionaries(st.sampled_from(INNER_KEYS), scalars, max_size=5))
def test_inner_config_constructor(kwargs: dict[str, Any]) -> None:
    try:
        cfg = InnerConfig(**kwargs)
    except ValueError:
        return
    assert math.isfinite(cfg.lr) and cfg.lr > 0
    assert isinstance(cfg.steps, int) and cfg.steps >= 0
    assert cfg.grad_clip is None or (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0)


@FUZZ
@given(value=json_values(INNER_KEYS))
def test_inner_config_from_dict(value: Any) -> None:
    try:
        cfg = inner_config_from_dict(value)
    except CheckpointError:
        return
    assert inner_config_from_dict(json.loads(json.dumps(cfg.__dict__))) == cfg


# --------------------------------------------------------------------------- training config

CONFIG_KEYS = [
    "seed",
    "iterations",
    "max_minutes",
    "env",
    "policy",
    "inner",
    "pg",
    "outer",
    "pretrain",
    "name",
    "workers",
    "num_envs",
    "families",
    "family_weights",
    "hidden",
    "lr",
    "steps",
    "meta_batch",
    "gamma",
]


@FUZZ
@given(value=json_values(CONFIG_KEYS))
def test_training_config_from_arbitrary_mapping(value: Any) -> None:
    try:
        cfg = config_from_dict(value)
    except ConfigError:
        return
    assert config_from_dict(cfg.to_dict()) == cfg


SECTION_FIELDS = {
    "env": ["name", "workers", "num_envs", "horizon", "families", "family_weights"],
    "policy": ["hidden", "init_log_std"],
    "inner": ["lr", "steps", "first_order", "grad_clip", "meta_sgd"],
    "outer": ["algo", "meta_batch", "rollouts_per_task", "epochs", "lr", "clip_eps"],
    "pg": ["gamma", "gae_lambda", "normalize_advantages", "baseline_reg"],
}


@FUZZ
@given(
    section=st.sampled_from(sorted(SECTION_FIELDS)),
    data=st.data(),
)
def test_training_config_one_bad_field(section: str, data: st.DataObject) -> None:
    """The default config with one field of one section replaced by arbitrary JSON."""
    with open("config/train.yaml") as handle:
        base = yaml.safe_load(handle)
    key = data.draw(st.sampled_from(SECTION_FIELDS[section]))
    base.setdefault(section, {})[key] = data.draw(json_values(["reach", "arm"]))
    try:
        cfg = config_from_dict(base)
    except ConfigError:
        return
    assert config_from_dict(cfg.to_dict()) == cfg


@FUZZ_SLOW
@given(text=st.text(max_size=200))
def test_training_config_loader_arbitrary_yaml(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "train.yaml"
    path.write_text(text)
    with contextlib.suppress(ConfigError):
        load_config(path)


def test_default_training_config_loads() -> None:
    cfg = load_config("config/train.yaml")
    assert config_from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- node parameters


def _node_param_specs() -> list[ParamSpec]:
    """Every ParamSpec in a ``PARAMS`` table of a maml_ros.ros module."""
    specs: list[ParamSpec] = []
    for info in pkgutil.iter_modules(maml_ros.ros.__path__):
        module = importlib.import_module(f"maml_ros.ros.{info.name}")
        table = getattr(module, "PARAMS", None)
        if isinstance(table, list | tuple):
            specs.extend(s for s in table if isinstance(s, ParamSpec))
    return specs


PARAM_SPECS = _node_param_specs()


def _values_like(default: Any) -> st.SearchStrategy[Any]:
    """Values of the parameter's declared ROS type (rclpy enforces the type before the check)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-(2**63), 2**63 - 1)
    if isinstance(default, float):
        return any_float
    if isinstance(default, str):
        long_name = "/tmp/" + "x" * 300
        special = ["", "/", "\0", "a\0b", "/nonexistent/x", "/tmp", "/dev/null", long_name]
        return st.text(max_size=40) | st.sampled_from(
            [*special, long_name + "/y", "/" + "d/" * 3000 + "y"]
        )
    if isinstance(default, list | tuple):
        return st.lists(st.text(max_size=10), max_size=10)
    raise AssertionError(f"no strategy for a parameter of type {type(default).__name__}")


def test_node_parameter_tables_found() -> None:
    assert len(PARAM_SPECS) >= 10
    for spec in PARAM_SPECS:
        assert spec.check(spec.default) is None, f"default of {spec.name} is rejected"


@FUZZ
@given(data=st.data())
def test_node_parameter_validators(data: st.DataObject) -> None:
    """A validator answers None or a reason string for any value of the declared type."""
    spec = data.draw(st.sampled_from(PARAM_SPECS), label="spec")
    value = data.draw(_values_like(spec.default), label=spec.name)
    reason = spec.check(value)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is None and isinstance(value, float):
        assert math.isfinite(value)
