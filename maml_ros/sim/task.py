"""Task specifications for the simulated arm: what changes from one task to the next.

A :class:`TaskSpec` is a small frozen dataclass with a JSON form; the same JSON text is the
payload of the ROS ``task`` message (std_msgs/String). Families:

- ``"reach"``: a hidden end-effector goal inside the goal cube; the body is nominal.
- ``"dynamics"``: the body changed (per-joint actuator gain, joint damping, a payload at the
  end effector, encoder offsets); the goal is the fixed :data:`DEFAULT_GOAL`, so this family is
  judged with the same reach reward as ``"reach"``.
- ``"reach+dynamics"``: both at once.

:func:`sample_tasks` draws seeded meta-train and held-out meta-test sets from disjoint regions
(:func:`task_split` tells which region any task belongs to), so "held-out" is a property that
a test can check, not a promise.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FAMILIES = ("reach", "dynamics", "reach+dynamics")
NUM_JOINTS = 7
MAX_JSON_CHARS = 4096
"""Longest accepted task JSON text (characters)."""

GOAL_CUBE_CENTER = (0.55, 0.0, 0.45)
"""Centre of the goal cube (m, world frame); the home pose puts the end effector near it."""
GOAL_CUBE_CELLS = 3
"""Cells per axis of the goal cube; cells alternate train/test like a 3-D checkerboard."""
GOAL_CELL_SIZE = 0.12
"""Edge of one goal cell (m): the goal cube is 0.36 m on a side."""
GOAL_MARGIN = 0.01
"""Sampled goals stay this far (m) inside their cell, so train and test goals are >= 2 cm apart."""
HOME_EE = (0.550, 0.0, 0.446)
"""End-effector position (m) at the arm's home pose (checked against the env in the tests)."""
MIN_GOAL_DISTANCE = 0.08
"""Sampled goals lie at least this far (m) from HOME_EE, so no episode starts in success."""
DEFAULT_GOAL = (0.64, 0.12, 0.34)
"""The fixed goal (m) of the ``"dynamics"`` family: off the home pose, so every joint matters."""

WORKSPACE_LOW = (0.25, -0.45, 0.10)
WORKSPACE_HIGH = (0.85, 0.45, 0.85)
SHOULDER = (0.0, 0.0, 0.36)
MAX_REACH = 0.85
"""A valid goal lies in the workspace box and within MAX_REACH (m) of the shoulder joint."""

GAIN_RANGE = (0.0, 1.0)
"""Actuator gain: 1 nominal, 0 dead (braked), in between weak (velocity and torque scaled)."""
DAMPING_RANGE = (0.0, 10.0)
"""Joint damping (N·m·s/rad)."""
PAYLOAD_RANGE = (0.0, 10.0)
"""Payload mass (kg) at the end effector."""
ENCODER_OFFSET_RANGE = (-0.3, 0.3)
"""Encoder offset (rad) added to the observed joint position."""

# Sampling ranges of the "dynamics" family (a subset of the valid ranges above).
SAMPLE_WEAK_GAIN = (0.4, 0.9)
SAMPLE_DEAD_PROBABILITY = 0.3
DEAD_JOINT_CANDIDATES = (0, 2, 4, 5, 6)
"""Joints the sampler may kill: the redundant ones. Without the shoulder (1) or the elbow (3)
most goals are out of reach, so those two are only ever weakened."""
SAMPLE_DAMPING = (0.0, 2.0)
SAMPLE_PAYLOAD = (0.0, 3.0)
SAMPLE_ENCODER_OFFSET = 0.05
PAYLOAD_BIN = 0.5
"""Payload bins (kg) of the dynamics train/test checkerboard (affected joint x payload bin)."""
PAYLOAD_MARGIN = 0.02
"""Sampled payloads stay this far (kg) inside their bin."""

_FIELDS = ("family", "goal", "joint_gain", "joint_damping", "payload_kg", "encoder_offset")


class TaskSpecError(ValueError):
    """A task specification is invalid; the message says why."""


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TaskSpecError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise TaskSpecError(f"{name} must be finite, got {number}")
    return number


def _as_vector(name: str, value: Any, length: int) -> tuple[float, ...]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise TaskSpecError(f"{name} must be a list of {length} numbers")
    if len(value) != length:
        raise TaskSpecError(f"{name} must have {length} values, got {len(value)}")
    return tuple(_as_float(f"{name}[{i}]", v) for i, v in enumerate(value))


def _check_range(name: str, values: tuple[float, ...], bounds: tuple[float, float]) -> None:
    low, high = bounds
    for i, v in enumerate(values):
        if not low <= v <= high:
            raise TaskSpecError(f"{name}[{i}] = {v} is outside [{low}, {high}]")


@dataclass(frozen=True)
class TaskSpec:
    """One task: a goal for the end effector and the state of the arm's body.

    Fields not given keep their nominal value (``goal`` = :data:`DEFAULT_GOAL`, gains 1,
    damping 0, payload 0, offsets 0). ``"reach"`` tasks must keep the nominal body and
    ``"dynamics"`` tasks the default goal; ``"reach+dynamics"`` may change both.
    Construction validates everything and raises :class:`TaskSpecError` with the reason.
    """

    family: str
    goal: tuple[float, float, float] = DEFAULT_GOAL
    joint_gain: tuple[float, ...] = (1.0,) * NUM_JOINTS
    joint_damping: tuple[float, ...] = (0.0,) * NUM_JOINTS
    payload_kg: float = 0.0
    encoder_offset: tuple[float, ...] = (0.0,) * NUM_JOINTS

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or self.family not in FAMILIES:
            raise TaskSpecError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        goal = _as_vector("goal", self.goal, 3)
        gain = _as_vector("joint_gain", self.joint_gain, NUM_JOINTS)
        damping = _as_vector("joint_damping", self.joint_damping, NUM_JOINTS)
        payload = _as_float("payload_kg", self.payload_kg)
        offset = _as_vector("encoder_offset", self.encoder_offset, NUM_JOINTS)
        for i, (v, low, high) in enumerate(zip(goal, WORKSPACE_LOW, WORKSPACE_HIGH, strict=True)):
            if not low <= v <= high:
                raise TaskSpecError(f"goal[{i}] = {v} is outside the workspace [{low}, {high}]")
        if math.dist(goal, SHOULDER) > MAX_REACH:
            raise TaskSpecError(
                f"goal {goal} is out of reach (more than {MAX_REACH} m from the shoulder)"
            )
        _check_range("joint_gain", gain, GAIN_RANGE)
        _check_range("joint_damping", damping, DAMPING_RANGE)
        _check_range("payload_kg", (payload,), PAYLOAD_RANGE)
        _check_range("encoder_offset", offset, ENCODER_OFFSET_RANGE)
        for name, value in (
            ("goal", goal),
            ("joint_gain", gain),
            ("joint_damping", damping),
            ("payload_kg", payload),
            ("encoder_offset", offset),
        ):
            object.__setattr__(self, name, value)
        if self.family == "reach" and not self.nominal_body:
            raise TaskSpecError(
                "family 'reach' keeps the nominal body; use 'reach+dynamics' to change it"
            )
        if self.family == "dynamics" and goal != DEFAULT_GOAL:
            raise TaskSpecError(
                f"family 'dynamics' uses the fixed goal {DEFAULT_GOAL}; "
                "use 'reach+dynamics' for another goal"
            )

    @property
    def nominal_body(self) -> bool:
        """True when gains, damping, payload and offsets are all nominal."""
        return (
            all(g == 1.0 for g in self.joint_gain)
            and all(d == 0.0 for d in self.joint_damping)
            and self.payload_kg == 0.0
            and all(o == 0.0 for o in self.encoder_offset)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples)."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def to_json(self) -> str:
        """Compact JSON text, the payload of the ROS ``task`` message."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> TaskSpec:
        """Build from a parsed JSON object; unknown keys and a missing family are errors."""
        if not isinstance(data, dict):
            raise TaskSpecError(f"a task must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS), key=str)
        if unknown:
            raise TaskSpecError(f"unknown key(s) {unknown}; allowed keys are {list(_FIELDS)}")
        if "family" not in data:
            raise TaskSpecError("missing key 'family'")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskSpec:
        """Parse and validate task JSON (at most :data:`MAX_JSON_CHARS` characters)."""
        if isinstance(text, bytes):
            if len(text) > MAX_JSON_CHARS:
                raise TaskSpecError(f"task JSON is too long ({len(text)} > {MAX_JSON_CHARS})")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskSpecError(f"task JSON is not UTF-8: {exc}") from None
        if not isinstance(text, str):
            raise TaskSpecError(f"task JSON must be text, got {type(text).__name__}")
        if len(text) > MAX_JSON_CHARS:
            raise TaskSpecError(f"task JSON is too long ({len(text)} > {MAX_JSON_CHARS} chars)")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise TaskSpecError(f"task is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def nominal_task() -> TaskSpec:
    """The nominal arm reaching for :data:`DEFAULT_GOAL`."""
    return TaskSpec(family="dynamics")


# --- train/test split ---------------------------------------------------------------------


def _goal_cell(goal: tuple[float, ...]) -> tuple[int, ...] | None:
    """Index of the goal cell holding ``goal`` (None outside the cube or within the margin)."""
    half = GOAL_CUBE_CELLS * GOAL_CELL_SIZE / 2
    cell = []
    for v, c in zip(goal, GOAL_CUBE_CENTER, strict=True):
        u = (v - (c - half)) / GOAL_CELL_SIZE
        index = math.floor(u)
        if not 0 <= index < GOAL_CUBE_CELLS:
            return None
        inside = (u - index) * GOAL_CELL_SIZE
        if inside < GOAL_MARGIN or inside > GOAL_CELL_SIZE - GOAL_MARGIN:
            return None
        cell.append(index)
    return tuple(cell)


def _goal_split(goal: tuple[float, ...]) -> str | None:
    cell = _goal_cell(goal)
    if cell is None:
        return None
    return "train" if sum(cell) % 2 == 0 else "test"


def _dynamics_split(task: TaskSpec) -> str | None:
    """Checkerboard over (weakest joint, payload bin); None for a nominal gain or on a margin."""
    gains = task.joint_gain
    weakest = min(range(NUM_JOINTS), key=lambda j: gains[j])
    if gains[weakest] >= 1.0:
        return None
    u = task.payload_kg / PAYLOAD_BIN
    payload_bin = math.floor(u)
    inside = (u - payload_bin) * PAYLOAD_BIN
    if inside < PAYLOAD_MARGIN or inside > PAYLOAD_BIN - PAYLOAD_MARGIN:
        return None
    return "train" if (weakest + payload_bin) % 2 == 0 else "test"


def task_split(task: TaskSpec) -> str | None:
    """Which region ``task`` belongs to: ``"train"``, ``"test"`` or None (neither).

    Reach goals: a 3x3x3 checkerboard of 12 cm cells over the goal cube, 1 cm margins.
    Dynamics: a checkerboard over (weakest joint, 0.5 kg payload bin), 0.02 kg margins.
    ``"reach+dynamics"`` needs both parts in the same region.
    """
    if task.family == "reach":
        return _goal_split(task.goal)
    if task.family == "dynamics":
        return _dynamics_split(task)
    goal_split = _goal_split(task.goal)
    return goal_split if goal_split == _dynamics_split(task) else None


def _sample_goal(rng: np.random.Generator, split: str) -> tuple[float, float, float]:
    parity = 0 if split == "train" else 1
    cells = [
        (i, j, k)
        for i in range(GOAL_CUBE_CELLS)
        for j in range(GOAL_CUBE_CELLS)
        for k in range(GOAL_CUBE_CELLS)
        if (i + j + k) % 2 == parity
    ]
    half = GOAL_CUBE_CELLS * GOAL_CELL_SIZE / 2
    while True:  # rejection: about 1 draw in 23 falls near the home position
        cell = cells[rng.integers(len(cells))]
        low = np.array(GOAL_CUBE_CENTER) - half + np.array(cell) * GOAL_CELL_SIZE + GOAL_MARGIN
        goal = low + rng.uniform(0.0, GOAL_CELL_SIZE - 2 * GOAL_MARGIN, size=3)
        if math.dist(goal, HOME_EE) >= MIN_GOAL_DISTANCE:
            return (float(goal[0]), float(goal[1]), float(goal[2]))


def _sample_body(rng: np.random.Generator, split: str) -> dict[str, Any]:
    parity = 0 if split == "train" else 1
    num_bins = round((SAMPLE_PAYLOAD[1] - SAMPLE_PAYLOAD[0]) / PAYLOAD_BIN)
    combos = [(j, b) for j in range(NUM_JOINTS) for b in range(num_bins) if (j + b) % 2 == parity]
    joint, payload_bin = combos[rng.integers(len(combos))]
    gain = np.ones(NUM_JOINTS)
    dead = rng.random() < SAMPLE_DEAD_PROBABILITY and joint in DEAD_JOINT_CANDIDATES
    gain[joint] = 0.0 if dead else rng.uniform(*SAMPLE_WEAK_GAIN)
    payload = SAMPLE_PAYLOAD[0] + payload_bin * PAYLOAD_BIN + PAYLOAD_MARGIN
    payload += rng.uniform(0.0, PAYLOAD_BIN - 2 * PAYLOAD_MARGIN)
    return {
        "joint_gain": tuple(float(g) for g in gain),
        "joint_damping": tuple(float(d) for d in rng.uniform(*SAMPLE_DAMPING, NUM_JOINTS)),
        "payload_kg": float(payload),
        "encoder_offset": tuple(
            float(o) for o in rng.uniform(-SAMPLE_ENCODER_OFFSET, SAMPLE_ENCODER_OFFSET, NUM_JOINTS)
        ),
    }


def sample_tasks(family: str, n: int, split: str = "train", seed: int = 0) -> list[TaskSpec]:
    """``n`` seeded tasks of ``family`` from the ``split`` ("train" or "test") region.

    The same (family, n, split, seed) gives the same list; the first ``m`` tasks of a larger
    draw equal a draw of ``m``. Train and test regions are disjoint (see :func:`task_split`).
    """
    if family not in FAMILIES:
        raise TaskSpecError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    family_index = FAMILIES.index(family)
    rng = np.random.default_rng([int(seed), family_index, 0 if split == "train" else 1])
    tasks = []
    for _ in range(n):
        fields: dict[str, Any] = {"family": family}
        if family != "dynamics":
            fields["goal"] = _sample_goal(rng, split)
        if family != "reach":
            fields.update(_sample_body(rng, split))
        tasks.append(TaskSpec(**fields))
    return tasks
