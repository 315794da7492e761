"""Task specifications for the simulated arm: what changes from one task to the next.

A :class:`TaskSpec` is a small frozen dataclass with a JSON form; the same JSON text is the
payload of the ROS ``task`` message (std_msgs/String). It belongs to one robot
(:mod:`maml_ros.runtime.robots`; ``"robot"`` is left out of the JSON for the default
``kuka_iiwa``, so its task messages are as they always were): joint vectors have one value per
joint of that robot and the goal must lie in its workspace. Families are plug-ins
(:class:`TaskFamily`, :func:`register_family`, at the end of this module); the built-in ones:

- ``"reach"``: a hidden end-effector goal inside the robot's goal cube; the body is nominal.
- ``"dynamics"``: the body changed (per-joint actuator gain, joint damping, a payload at the
  end effector, encoder offsets); the goal is the robot's fixed ``default_goal``, so this family
  is judged with the same reach reward as ``"reach"``.
- ``"reach+dynamics"``: both at once.

:func:`sample_tasks` draws seeded train, validation, test and out-of-range sets (:data:`SPLITS`)
from disjoint regions (:func:`task_split` tells which region any task belongs to), so
"held-out" is a property that a test can check, not a promise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from maml_ros.runtime.robots import DEFAULT_ROBOT, KUKA_IIWA, RobotSpec, RobotSpecError, get_robot

if TYPE_CHECKING:
    from maml_ros.sim.arm_env import ArmEnv

FAMILIES = ("reach", "dynamics", "reach+dynamics")
"""The built-in families (:func:`family_names` lists registered plug-ins too)."""
NUM_JOINTS = KUKA_IIWA.num_joints
"""Joints of the default robot (the KUKA iiwa); other robots: ``get_robot(name).num_joints``."""
MAX_JSON_CHARS = 4096
"""Longest accepted task JSON text (characters)."""

# The default robot's goal region (kept as module constants: the figures and tests name them).
GOAL_CUBE_CENTER = KUKA_IIWA.goal_cube_center
"""Centre of the goal cube (m, world frame); the home pose puts the end effector near it."""
GOAL_CUBE_CELLS = KUKA_IIWA.goal_cube_cells
"""Cells per axis of the goal cube; cells alternate train/test like a 3-D checkerboard."""
GOAL_CELL_SIZE = KUKA_IIWA.goal_cell_size
"""Edge of one goal cell (m): the goal cube is 0.36 m on a side."""
GOAL_MARGIN = KUKA_IIWA.goal_margin
"""Sampled goals stay this far (m) inside their cell, so train and test goals are >= 2 cm apart."""
HOME_EE = KUKA_IIWA.home_ee
"""End-effector position (m) at the arm's home pose (checked against the env in the tests)."""
MIN_GOAL_DISTANCE = KUKA_IIWA.min_goal_distance
"""Sampled goals lie at least this far (m) from HOME_EE, so no episode starts in success."""
DEFAULT_GOAL = KUKA_IIWA.default_goal
"""The fixed goal (m) of the ``"dynamics"`` family: off the home pose, so every joint matters."""

WORKSPACE_LOW = KUKA_IIWA.workspace_low
WORKSPACE_HIGH = KUKA_IIWA.workspace_high
SHOULDER = KUKA_IIWA.shoulder
MAX_REACH = KUKA_IIWA.max_reach
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
DEAD_JOINT_CANDIDATES = KUKA_IIWA.dead_joint_candidates
"""Joints the sampler may kill on the iiwa: the redundant ones. Without the shoulder (1) or the
elbow (3) most goals are out of reach, so those two are only ever weakened (each robot names
its own in ``RobotSpec.dead_joint_candidates``)."""
SAMPLE_DAMPING = (0.0, 2.0)
SAMPLE_PAYLOAD = (0.0, 3.0)
SAMPLE_ENCODER_OFFSET = 0.05
PAYLOAD_BIN = 0.5
"""Payload bins (kg) of the dynamics train/test checkerboard (affected joint x payload bin)."""
PAYLOAD_MARGIN = 0.02
"""Sampled payloads stay this far (kg) inside their bin."""

SPLITS = ("train", "validation", "test", "out_of_range")
"""What :func:`sample_tasks` draws from. ``train``: the training region. ``validation`` and
``test``: the held-out region (interleaved with the training one: interpolation), on two
independent random streams, so that choices made on validation never see a test task.
``out_of_range``: just outside what training saw (extrapolation), for families that define it."""
OUT_OF_RANGE_GOAL_BAND = (0.02, 0.06)
"""Out-of-range reach goals lie this far (m) outside one face of the goal cube."""
OUT_OF_RANGE_DAMPING = (2.0, 3.0)
OUT_OF_RANGE_PAYLOAD = (3.0, 4.5)
"""Out-of-range bodies: every joint's damping and the payload beyond the sampled ranges."""

_FIELDS = (
    "family",
    "goal",
    "joint_gain",
    "joint_damping",
    "payload_kg",
    "encoder_offset",
    "robot",
)


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


def task_robot(name: Any) -> RobotSpec:
    """The robot called ``name``, or TaskSpecError naming the known ones."""
    try:
        return get_robot(name)
    except RobotSpecError as exc:
        raise TaskSpecError(str(exc)) from None


@dataclass(frozen=True)
class TaskSpec:
    """One task of one robot: a goal for the end effector and the state of the arm's body.

    Fields not given keep their nominal value (``goal`` = the robot's ``default_goal``, gains
    1, damping 0, payload 0, offsets 0; joint vectors sized by the robot). The family's rule
    (:class:`TaskFamily`) says what it may change: ``"reach"`` tasks keep the nominal body
    and ``"dynamics"`` tasks the default goal; ``"reach+dynamics"`` may change both.
    Construction validates everything and raises :class:`TaskSpecError` with the reason.
    """

    family: str
    goal: tuple[float, float, float] | None = None
    joint_gain: tuple[float, ...] | None = None
    joint_damping: tuple[float, ...] | None = None
    payload_kg: float = 0.0
    encoder_offset: tuple[float, ...] | None = None
    robot: str = DEFAULT_ROBOT

    def __post_init__(self) -> None:
        family = get_family(self.family)
        robot = task_robot(self.robot)
        n = robot.num_joints
        goal = _as_vector("goal", robot.default_goal if self.goal is None else self.goal, 3)
        gain = _as_vector(
            "joint_gain", (1.0,) * n if self.joint_gain is None else self.joint_gain, n
        )
        damping = _as_vector(
            "joint_damping", (0.0,) * n if self.joint_damping is None else self.joint_damping, n
        )
        payload = _as_float("payload_kg", self.payload_kg)
        offset = _as_vector(
            "encoder_offset", (0.0,) * n if self.encoder_offset is None else self.encoder_offset, n
        )
        for i, (v, low, high) in enumerate(
            zip(goal, robot.workspace_low, robot.workspace_high, strict=True)
        ):
            if not low <= v <= high:
                raise TaskSpecError(f"goal[{i}] = {v} is outside the workspace [{low}, {high}]")
        if math.dist(goal, robot.shoulder) > robot.max_reach:
            raise TaskSpecError(
                f"goal {goal} is out of reach (more than {robot.max_reach} m from the shoulder)"
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
        problem = family.problem(self, robot)
        if problem:
            raise TaskSpecError(problem)

    @property
    def robot_spec(self) -> RobotSpec:
        """The description of this task's robot."""
        return get_robot(self.robot)

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
        """Plain JSON-able dict (lists, not tuples); ``robot`` only when not the default."""
        data = asdict(self)
        if data["robot"] == DEFAULT_ROBOT:
            del data["robot"]
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
        if "robot" in data and not isinstance(data["robot"], str):
            raise TaskSpecError(f"robot must be a string, got {type(data['robot']).__name__}")
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


def nominal_task(robot: str = DEFAULT_ROBOT) -> TaskSpec:
    """The nominal arm reaching for its robot's ``default_goal``."""
    return TaskSpec(family="dynamics", robot=robot)


# --- train/test split: the building blocks the built-in families use ----------------------


def goal_cell(goal: tuple[float, ...], robot: RobotSpec = KUKA_IIWA) -> tuple[int, ...] | None:
    """Index of the goal cell holding ``goal`` (None outside the cube or within the margin)."""
    size, margin = robot.goal_cell_size, robot.goal_margin
    half = robot.goal_cube_half
    cell = []
    for v, c in zip(goal, robot.goal_cube_center, strict=True):
        u = (v - (c - half)) / size
        index = math.floor(u)
        if not 0 <= index < robot.goal_cube_cells:
            return None
        inside = (u - index) * size
        if inside < margin or inside > size - margin:
            return None
        cell.append(index)
    return tuple(cell)


def goal_split(goal: tuple[float, ...], robot: RobotSpec = KUKA_IIWA) -> str | None:
    """``"train"`` / ``"test"`` checkerboard region of a goal, ``"out_of_range"`` outside the
    goal cube, None on a margin."""
    half = robot.goal_cube_half
    if any(abs(v - c) > half for v, c in zip(goal, robot.goal_cube_center, strict=True)):
        return "out_of_range"
    cell = goal_cell(goal, robot)
    if cell is None:
        return None
    return "train" if sum(cell) % 2 == 0 else "test"


def dynamics_split(task: TaskSpec) -> str | None:
    """Checkerboard over (weakest joint, payload bin); ``"out_of_range"`` when the payload or a
    joint's damping is beyond the sampled ranges; None for a nominal gain or on a margin."""
    if task.payload_kg > SAMPLE_PAYLOAD[1] or max(task.joint_damping) > SAMPLE_DAMPING[1]:
        return "out_of_range"
    gains = task.joint_gain
    weakest = min(range(len(gains)), key=lambda j: gains[j])
    if gains[weakest] >= 1.0:
        return None
    u = task.payload_kg / PAYLOAD_BIN
    payload_bin = math.floor(u)
    inside = (u - payload_bin) * PAYLOAD_BIN
    if inside < PAYLOAD_MARGIN or inside > PAYLOAD_BIN - PAYLOAD_MARGIN:
        return None
    return "train" if (weakest + payload_bin) % 2 == 0 else "test"


def task_split(task: TaskSpec) -> str | None:
    """Which region ``task`` belongs to: ``"train"``, ``"test"`` (the held-out region, which
    the validation and test splits share), ``"out_of_range"`` or None (none of them).

    The family's split rule decides. Built-in ones: reach goals on a 3x3x3 checkerboard of
    goal cells (1 cm margins), out of range outside the cube; dynamics on a checkerboard over
    (weakest joint, 0.5 kg payload bin), 0.02 kg margins, out of range beyond the sampled
    payload or damping; ``"reach+dynamics"`` needs both parts in the same region.
    """
    return get_family(task.family).split(task, task.robot_spec)


def sample_goal(
    rng: np.random.Generator, split: str, robot: RobotSpec = KUKA_IIWA
) -> tuple[float, float, float]:
    """A goal in a ``split`` (``"train"`` or ``"test"``) cell of the robot's goal cube, away from
    its home position."""
    parity = 0 if split == "train" else 1
    cells_per_axis = robot.goal_cube_cells
    cells = [
        (i, j, k)
        for i in range(cells_per_axis)
        for j in range(cells_per_axis)
        for k in range(cells_per_axis)
        if (i + j + k) % 2 == parity
    ]
    size, margin = robot.goal_cell_size, robot.goal_margin
    half = robot.goal_cube_half
    while True:  # rejection: about 1 draw in 23 falls near the home position
        cell = cells[rng.integers(len(cells))]
        low = np.array(robot.goal_cube_center) - half + np.array(cell) * size + margin
        goal = low + rng.uniform(0.0, size - 2 * margin, size=3)
        if math.dist(goal, robot.home_ee) >= robot.min_goal_distance:
            return (float(goal[0]), float(goal[1]), float(goal[2]))


def sample_goal_out_of_range(
    rng: np.random.Generator, robot: RobotSpec = KUKA_IIWA
) -> tuple[float, float, float]:
    """A valid goal just outside one face of the robot's goal cube (``OUT_OF_RANGE_GOAL_BAND``)."""
    half = robot.goal_cube_half
    center = np.array(robot.goal_cube_center)
    for _ in range(10_000):  # rejection: faces outside the workspace or reach are redrawn
        goal = center + rng.uniform(-half, half, size=3)
        axis = rng.integers(3)
        side = 1.0 if rng.random() < 0.5 else -1.0
        goal[axis] = center[axis] + side * (half + rng.uniform(*OUT_OF_RANGE_GOAL_BAND))
        if robot.goal_contains(tuple(goal)):
            return (float(goal[0]), float(goal[1]), float(goal[2]))
    raise RobotSpecError(f"{robot.name}: no valid goal just outside the goal cube")


def sample_body_out_of_range(
    rng: np.random.Generator, robot: RobotSpec = KUKA_IIWA
) -> dict[str, Any]:
    """A changed body as :func:`sample_body`'s, with every joint's damping and the payload
    beyond the sampled ranges (``OUT_OF_RANGE_DAMPING``, ``OUT_OF_RANGE_PAYLOAD``)."""
    body = sample_body(rng, "train", robot)
    body["joint_damping"] = tuple(
        float(d) for d in rng.uniform(*OUT_OF_RANGE_DAMPING, robot.num_joints)
    )
    low, high = OUT_OF_RANGE_PAYLOAD
    body["payload_kg"] = float(rng.uniform(low + PAYLOAD_MARGIN, high))
    return body


def sample_body(
    rng: np.random.Generator, split: str, robot: RobotSpec = KUKA_IIWA
) -> dict[str, Any]:
    """A changed body (one weak or dead joint, damping, payload, offsets) from ``split``
    (``"train"`` or ``"test"``)."""
    n = robot.num_joints
    parity = 0 if split == "train" else 1
    num_bins = round((SAMPLE_PAYLOAD[1] - SAMPLE_PAYLOAD[0]) / PAYLOAD_BIN)
    combos = [(j, b) for j in range(n) for b in range(num_bins) if (j + b) % 2 == parity]
    joint, payload_bin = combos[rng.integers(len(combos))]
    gain = np.ones(n)
    dead = rng.random() < SAMPLE_DEAD_PROBABILITY and joint in robot.dead_joint_candidates
    gain[joint] = 0.0 if dead else rng.uniform(*SAMPLE_WEAK_GAIN)
    payload = SAMPLE_PAYLOAD[0] + payload_bin * PAYLOAD_BIN + PAYLOAD_MARGIN
    payload += rng.uniform(0.0, PAYLOAD_BIN - 2 * PAYLOAD_MARGIN)
    return {
        "joint_gain": tuple(float(g) for g in gain),
        "joint_damping": tuple(float(d) for d in rng.uniform(*SAMPLE_DAMPING, n)),
        "payload_kg": float(payload),
        "encoder_offset": tuple(
            float(o) for o in rng.uniform(-SAMPLE_ENCODER_OFFSET, SAMPLE_ENCODER_OFFSET, n)
        ),
    }


def sample_tasks(
    family: str, n: int, split: str = "train", seed: int = 0, robot: str = DEFAULT_ROBOT
) -> list[TaskSpec]:
    """``n`` seeded tasks of ``family`` for ``robot`` from ``split`` (one of :data:`SPLITS`).

    The same (family, n, split, seed, robot) gives the same list; the first ``m`` tasks of a
    larger draw equal a draw of ``m``. The train, held-out (validation and test) and
    out-of-range regions are disjoint (see :func:`task_split`); validation and test draw from
    the held-out region on independent streams.
    """
    spec = get_family(family)
    description = task_robot(robot)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "out_of_range" and spec.sample_out_of_range is None:
        raise ValueError(f"family {family!r} has no out_of_range split")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    family_index = family_names().index(family)
    stream = {"train": 0, "test": 1, "validation": 2, "out_of_range": 3}[split]
    rng = np.random.default_rng([int(seed), family_index, stream])
    tasks = []
    for _ in range(n):
        if split == "out_of_range":
            fields = spec.sample_out_of_range(rng, description)
        else:
            fields = spec.sample(rng, "train" if split == "train" else "test", description)
        tasks.append(TaskSpec(family=family, robot=description.name, **fields))
    return tasks


# --- task families as plug-ins -------------------------------------------------------------

Sampler = Callable[[np.random.Generator, str, RobotSpec], dict[str, Any]]
OutOfRangeSampler = Callable[[np.random.Generator, RobotSpec], dict[str, Any]]
SplitRule = Callable[[TaskSpec, RobotSpec], "str | None"]
Validator = Callable[[TaskSpec, RobotSpec], "str | None"]
Applier = Callable[["ArmEnv", TaskSpec], None]

DEFAULT_METRICS = ("return", "success")
"""What evaluation reports per family and stage unless a family names its own metric keys."""


@dataclass(frozen=True)
class TaskFamily:
    """One task family: ``sample(rng, region, robot)`` returns the TaskSpec fields of a task from
    ``region`` (``"train"`` or ``"test"``, the held-out region the validation and test splits
    share); ``sample_out_of_range(rng, robot)``, when given, one from beyond the training
    ranges; ``split(task, robot)`` says which region a task is in (``"train"``, ``"test"``,
    ``"out_of_range"`` or None; they must be disjoint); ``problem(task, robot)`` says why a
    task is no valid task of the family (or None); ``apply(env, task)``, when given, runs after
    ``ArmEnv.set_task`` applied the generic fields.

    Evaluation (``rl/evaluate.py``) reads the rest: ``metrics`` are reported per stage as
    ``{name}_{metric}_{stage}`` (``"return"``, ``"success"``); ``extra_metrics`` names further
    measurements from evaluation's table (``"gap_recovered"``: the fraction of the gap to a
    per-task oracle closed by one step); ``baselines`` puts the family's tasks in the pool on
    which the fine-tune / scratch baselines pick their lr and are reported; families with the
    same non-empty ``eval_batch`` share one batched env (their episodes share waves), others
    get their own."""

    name: str
    sample: Sampler
    split: SplitRule
    problem: Validator = lambda task, robot: None
    apply: Applier | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    description: str = ""
    extra_metrics: tuple[str, ...] = ()
    baselines: bool = False
    eval_batch: str = ""
    sample_out_of_range: OutOfRangeSampler | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"a family name must be a non-empty word, got {self.name!r}")
        for key in ("sample", "split", "problem"):
            if not callable(getattr(self, key)):
                raise ValueError(f"family {self.name!r}: {key} must be callable")
        for key in ("apply", "sample_out_of_range"):
            if getattr(self, key) is not None and not callable(getattr(self, key)):
                raise ValueError(f"family {self.name!r}: {key} must be callable or None")
        if not self.metrics or not all(isinstance(m, str) and m for m in self.metrics):
            raise ValueError(f"family {self.name!r}: metrics must be non-empty strings")
        if not all(isinstance(m, str) and m for m in self.extra_metrics):
            raise ValueError(f"family {self.name!r}: extra_metrics must be non-empty strings")
        if not isinstance(self.baselines, bool) or not isinstance(self.eval_batch, str):
            raise ValueError(f"family {self.name!r}: baselines is a bool, eval_batch a string")


_REGISTRY: dict[str, TaskFamily] = {}


def register_family(family: TaskFamily, *, replace: bool = False) -> TaskFamily:
    """Add ``family`` (ValueError when its name is taken and not ``replace``)."""
    if not isinstance(family, TaskFamily):
        raise TypeError(f"expected a TaskFamily, got {type(family).__name__}")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"task family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a registered plug-in family (the built-in ones stay)."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in family")
    _REGISTRY.pop(name, None)


def family_names() -> tuple[str, ...]:
    """Registered family names, built-in ones first."""
    return tuple(_REGISTRY)


def get_family(name: Any) -> TaskFamily:
    """The family called ``name``; TaskSpecError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise TaskSpecError(f"unknown family {name!r}; expected one of {family_names()}")
    return _REGISTRY[name]


def family_metric_keys(name: str) -> tuple[str, ...]:
    """The metric keys evaluation reports for family ``name``."""
    return get_family(name).metrics


# --- the built-in families ------------------------------------------------------------------


def _reach_problem(task: TaskSpec, robot: RobotSpec) -> str | None:
    if not task.nominal_body:
        return "family 'reach' keeps the nominal body; use 'reach+dynamics' to change it"
    return None


def _dynamics_problem(task: TaskSpec, robot: RobotSpec) -> str | None:
    if task.goal != robot.default_goal:
        return (
            f"family 'dynamics' uses the fixed goal {robot.default_goal}; "
            "use 'reach+dynamics' for another goal"
        )
    return None


def _both_split(task: TaskSpec, robot: RobotSpec) -> str | None:
    region = goal_split(task.goal, robot)
    return region if region == dynamics_split(task) else None


REACH = TaskFamily(
    name="reach",
    sample=lambda rng, split, robot: {"goal": sample_goal(rng, split, robot)},
    split=lambda task, robot: goal_split(task.goal, robot),
    sample_out_of_range=lambda rng, robot: {"goal": sample_goal_out_of_range(rng, robot)},
    problem=_reach_problem,
    metrics=("success", "return"),  # the order of the shipped report's keys
    description="a hidden goal in the goal cube; nominal body",
    baselines=True,
    eval_batch="reach/dynamics",  # evaluated together, as for the README's numbers
)
DYNAMICS = TaskFamily(
    name="dynamics",
    sample=lambda rng, split, robot: sample_body(rng, split, robot),
    split=lambda task, robot: dynamics_split(task),
    sample_out_of_range=sample_body_out_of_range,
    problem=_dynamics_problem,
    description="a changed body (weak or dead joint, damping, payload, encoder offsets); "
    "the robot's fixed default goal",
    extra_metrics=("gap_recovered",),
    eval_batch="reach/dynamics",
)
REACH_DYNAMICS = TaskFamily(
    name="reach+dynamics",
    sample=lambda rng, split, robot: {
        "goal": sample_goal(rng, split, robot),
        **sample_body(rng, split, robot),
    },
    split=_both_split,
    sample_out_of_range=lambda rng, robot: {
        "goal": sample_goal_out_of_range(rng, robot),
        **sample_body_out_of_range(rng, robot),
    },
    description="both: a hidden goal and a changed body",
)
BUILTIN = ("reach", "dynamics", "reach+dynamics")
for _family in (REACH, DYNAMICS, REACH_DYNAMICS):
    register_family(_family)
