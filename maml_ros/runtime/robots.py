"""Robot descriptions: everything that is specific to one arm, as plain data.

A :class:`RobotSpec` names the URDF (a path under ``pybullet_data`` or an absolute path), the
arm's joints in policy order (finger and fixed joints excluded), the end-effector link, the
home pose, the joint position / velocity / torque limits, the reachable goal region and its
train/test checkerboard, and the joints the dynamics sampler may disable. The simulator
(:mod:`maml_ros.sim`) builds the env and the task samplers from it; the ROS nodes take the
joint names and limits from it without importing the simulator: this module uses the
standard library only.

:data:`ROBOTS` is the registry; :func:`get_robot` looks a name up with a clear error, and
:func:`register_robot` adds a description (validated) at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Vector = tuple[float, ...]
Point = tuple[float, float, float]


class RobotSpecError(ValueError):
    """A robot description is invalid or unknown; the message says why."""


def _vector(name: str, value: Any, length: int | None = None) -> Vector:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise RobotSpecError(f"{name} must be a list of numbers, got {value!r}") from None
    if length is not None and len(values) != length:
        raise RobotSpecError(f"{name} must have {length} values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise RobotSpecError(f"{name} must be finite, got {values}")
    return values


@dataclass(frozen=True)
class RobotSpec:
    """One arm (see the module docstring). Construction validates every field.

    Goal region: a cube of ``goal_cube_cells``³ cells of ``goal_cell_size`` m centred at
    ``goal_cube_center``; cells alternate train/test like a 3-D checkerboard and sampled goals
    stay ``goal_margin`` inside their cell and ``min_goal_distance`` from ``home_ee``. A valid
    task goal lies in the box ``workspace_low``..``workspace_high`` and within ``max_reach`` of
    ``shoulder``. ``default_goal`` is the fixed goal of the ``dynamics`` family.
    """

    name: str
    urdf: str
    joint_names: tuple[str, ...]
    ee_link: str
    home_pose: Vector
    position_lower: Vector
    position_upper: Vector
    velocity_limits: Vector
    torque_limits: Vector
    goal_cube_center: Point
    goal_cell_size: float
    home_ee: Point
    min_goal_distance: float
    default_goal: Point
    workspace_low: Point
    workspace_high: Point
    shoulder: Point
    max_reach: float
    dead_joint_candidates: tuple[int, ...]
    goal_cube_cells: int = 3
    goal_margin: float = 0.01
    fixed_joints: dict[str, float] = field(default_factory=dict)
    """Non-arm joints (fingers) held at these positions (rad or m) by position motors."""
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise RobotSpecError(f"robot name must be an identifier, got {self.name!r}")
        if not isinstance(self.urdf, str) or not self.urdf.endswith(".urdf"):
            raise RobotSpecError(f"{self.name}: urdf must name a .urdf file, got {self.urdf!r}")
        names = tuple(self.joint_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise RobotSpecError(f"{self.name}: joint_names must be non-empty strings")
        if len(set(names)) != len(names):
            raise RobotSpecError(f"{self.name}: joint_names must be unique")
        n = len(names)
        object.__setattr__(self, "joint_names", names)
        for key in (
            "home_pose",
            "position_lower",
            "position_upper",
            "velocity_limits",
            "torque_limits",
        ):
            object.__setattr__(self, key, _vector(f"{self.name}.{key}", getattr(self, key), n))
        for key in (
            "goal_cube_center",
            "home_ee",
            "default_goal",
            "workspace_low",
            "workspace_high",
            "shoulder",
        ):
            object.__setattr__(self, key, _vector(f"{self.name}.{key}", getattr(self, key), 3))
        for i, (lo, q, hi) in enumerate(
            zip(self.position_lower, self.home_pose, self.position_upper, strict=True)
        ):
            if not lo <= q <= hi:
                raise RobotSpecError(
                    f"{self.name}: home_pose[{i}] = {q} is outside the joint limits [{lo}, {hi}]"
                )
        if not all(v > 0 for v in self.velocity_limits + self.torque_limits):
            raise RobotSpecError(f"{self.name}: velocity and torque limits must be positive")
        for key in ("goal_cell_size", "min_goal_distance", "max_reach", "goal_margin"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise RobotSpecError(f"{self.name}: {key} must be a positive number, got {value}")
        if not 2 * self.goal_margin < self.goal_cell_size:
            raise RobotSpecError(f"{self.name}: goal_margin must be under half a goal cell")
        if isinstance(self.goal_cube_cells, bool) or not (
            isinstance(self.goal_cube_cells, int) and self.goal_cube_cells >= 2
        ):
            raise RobotSpecError(f"{self.name}: goal_cube_cells must be an int >= 2")
        if not all(isinstance(j, int) and 0 <= j < n for j in self.dead_joint_candidates):
            raise RobotSpecError(f"{self.name}: dead_joint_candidates must be joint indices")
        object.__setattr__(self, "dead_joint_candidates", tuple(self.dead_joint_candidates))
        if set(self.fixed_joints) & set(names):
            raise RobotSpecError(f"{self.name}: a fixed joint cannot also be an arm joint")
        half = self.goal_cube_half
        for i in range(3):
            lo, hi = self.goal_cube_center[i] - half, self.goal_cube_center[i] + half
            if not self.workspace_low[i] <= lo < hi <= self.workspace_high[i]:
                raise RobotSpecError(f"{self.name}: the goal cube leaves the workspace box")
        corners = [
            tuple(c + s * half for c, s in zip(self.goal_cube_center, signs, strict=True))
            for signs in ((a, b, c) for a in (-1, 1) for b in (-1, 1) for c in (-1, 1))
        ]
        if max(math.dist(p, self.shoulder) for p in corners) > self.max_reach:
            raise RobotSpecError(f"{self.name}: the goal cube is not within max_reach")
        if not self.goal_contains(self.default_goal):
            raise RobotSpecError(f"{self.name}: default_goal is not a valid goal")

    @property
    def goal_cube_half(self) -> float:
        """Half the goal cube's edge (m): its faces lie this far from ``goal_cube_center``."""
        return self.goal_cube_cells * self.goal_cell_size / 2

    @property
    def num_joints(self) -> int:
        """Arm joints (the action size; the observation has two values per joint)."""
        return len(self.joint_names)

    def goal_contains(self, goal: Any) -> bool:
        """True when ``goal`` lies in the workspace box and within ``max_reach``."""
        inside = all(
            lo <= v <= hi
            for v, lo, hi in zip(goal, self.workspace_low, self.workspace_high, strict=True)
        )
        return inside and math.dist(goal, self.shoulder) <= self.max_reach

    def to_dict(self) -> dict[str, Any]:
        """The joint order and limits a policy's metadata carries (JSON-able)."""
        return {
            "name": self.name,
            "joint_names": list(self.joint_names),
            "position_lower": list(self.position_lower),
            "position_upper": list(self.position_upper),
            "velocity_limits": list(self.velocity_limits),
            "home_pose": list(self.home_pose),
        }


DEFAULT_ROBOT = "kuka_iiwa"
"""The robot of every checkpoint, task and node that names none."""

KUKA_IIWA = RobotSpec(
    name="kuka_iiwa",
    description="KUKA LBR iiwa 7 R800 (pybullet_data kuka_iiwa/model.urdf)",
    urdf="kuka_iiwa/model.urdf",
    joint_names=tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8)),
    ee_link="lbr_iiwa_link_7",
    home_pose=(0.0, 0.5, 0.0, -1.6, 0.0, 1.0, 0.0),
    position_lower=(-2.96706, -2.0944, -2.96706, -2.0944, -2.96706, -2.0944, -3.05433),
    position_upper=(2.96706, 2.0944, 2.96706, 2.0944, 2.96706, 2.0944, 3.05433),
    velocity_limits=(1.71, 1.71, 1.75, 2.27, 2.44, 3.14, 3.14),
    torque_limits=(176.0, 176.0, 110.0, 110.0, 110.0, 40.0, 40.0),
    goal_cube_center=(0.55, 0.0, 0.45),
    goal_cell_size=0.12,
    home_ee=(0.550, 0.0, 0.446),
    min_goal_distance=0.08,
    default_goal=(0.64, 0.12, 0.34),
    workspace_low=(0.25, -0.45, 0.10),
    workspace_high=(0.85, 0.45, 0.85),
    shoulder=(0.0, 0.0, 0.36),
    max_reach=0.85,
    dead_joint_candidates=(0, 2, 4, 5, 6),
)

FRANKA_PANDA = RobotSpec(
    name="franka_panda",
    description="Franka Emika Panda, fingers held open (pybullet_data franka_panda/panda.urdf)",
    urdf="franka_panda/panda.urdf",
    joint_names=tuple(f"panda_joint{i}" for i in range(1, 8)),
    ee_link="panda_grasptarget",
    home_pose=(0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785),
    position_lower=(-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671),
    position_upper=(2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671),
    velocity_limits=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
    torque_limits=(87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0),
    goal_cube_center=(0.48, 0.0, 0.41),
    goal_cell_size=0.10,
    home_ee=(0.484, 0.0, 0.411),
    min_goal_distance=0.07,
    default_goal=(0.555, 0.10, 0.32),
    workspace_low=(0.20, -0.40, 0.10),
    workspace_high=(0.80, 0.40, 0.80),
    shoulder=(0.0, 0.0, 0.333),
    max_reach=0.855,
    dead_joint_candidates=(0, 2, 4, 5, 6),
    fixed_joints={"panda_finger_joint1": 0.04, "panda_finger_joint2": 0.04},
)

XARM6 = RobotSpec(
    name="xarm6",
    description="UFACTORY xArm 6 (pybullet_data xarm/xarm6_robot.urdf)",
    urdf="xarm/xarm6_robot.urdf",
    joint_names=tuple(f"joint{i}" for i in range(1, 7)),
    ee_link="link6",
    home_pose=(0.0, -0.3, -0.8, 0.0, 1.1, 0.0),
    position_lower=(-6.28319, -2.059, -3.92699, -6.28319, -1.69297, -6.28319),
    position_upper=(6.28319, 2.0944, 0.191986, 6.28319, 3.14159, 6.28319),
    velocity_limits=(3.14,) * 6,
    torque_limits=(50.0, 50.0, 32.0, 32.0, 32.0, 20.0),
    goal_cube_center=(0.38, 0.0, 0.37),
    goal_cell_size=0.08,
    home_ee=(0.383, 0.0, 0.371),
    min_goal_distance=0.06,
    default_goal=(0.44, 0.08, 0.30),
    workspace_low=(0.15, -0.35, 0.05),
    workspace_high=(0.65, 0.35, 0.65),
    shoulder=(0.0, 0.0, 0.267),
    max_reach=0.70,
    dead_joint_candidates=(3, 5),
)

ROBOTS: dict[str, RobotSpec] = {r.name: r for r in (KUKA_IIWA, FRANKA_PANDA, XARM6)}
"""The registry: robot name -> description."""


def robot_names() -> tuple[str, ...]:
    """The registered robot names, in registration order."""
    return tuple(ROBOTS)


def get_robot(name: str | RobotSpec) -> RobotSpec:
    """The description called ``name`` (a RobotSpec is returned as is); RobotSpecError if none."""
    if isinstance(name, RobotSpec):
        return name
    if not isinstance(name, str) or name not in ROBOTS:
        raise RobotSpecError(f"unknown robot {name!r}; known robots: {list(ROBOTS)}")
    return ROBOTS[name]


def register_robot(spec: RobotSpec, *, replace: bool = False) -> RobotSpec:
    """Add ``spec`` to the registry (RobotSpecError when the name is taken and not ``replace``)."""
    if not isinstance(spec, RobotSpec):
        raise RobotSpecError(f"expected a RobotSpec, got {type(spec).__name__}")
    if spec.name in ROBOTS and not replace:
        raise RobotSpecError(f"robot {spec.name!r} is already registered")
    ROBOTS[spec.name] = spec
    return spec


def robot_problem(name: Any) -> str | None:
    """A node parameter validator: why ``name`` is no registered robot, or None."""
    return (
        None
        if isinstance(name, str) and name in ROBOTS
        else (f"unknown robot {name!r}; known robots: {list(ROBOTS)}")
    )


def policy_mismatch(
    metadata: dict[str, Any], robot: str, joint_names: list[str] | tuple[str, ...]
) -> str | None:
    """Why a policy with ``metadata`` cannot drive ``robot`` with ``joint_names``, or None.

    A policy names its robot (``metadata["robot"]``; none: the default robot, as every
    checkpoint from before robots had names) and may name its joint order
    (``metadata["joint_names"]``, compared as is when present).
    """
    policy_robot = metadata.get("robot", DEFAULT_ROBOT)
    if policy_robot != robot:
        return f"policy is for robot {policy_robot!r}, this node drives {robot!r}"
    names = metadata.get("joint_names")
    if names is not None and names != list(joint_names):  # any JSON value: compare as is
        return f"policy joint_names {names} differ from this node's {list(joint_names)}"
    return None


MODEL_KINDS = ("maml", "multitask", "fomaml")
"""The models a robot may ship (``models/<robot>_<kind>.safetensors``)."""


def shipped_model_name(robot: str, kind: str = "maml") -> str:
    """The file name under ``models/`` of ``robot``'s shipped ``kind`` model (``maml``: the
    meta-trained policy; ``multitask``, ``fomaml``: the baselines): ``<robot>_<kind>.safetensors``,
    ``arm_<kind>.safetensors`` for the default robot (its name from before robots had names)."""
    if kind not in MODEL_KINDS:
        raise RobotSpecError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    return f"{'arm' if robot == DEFAULT_ROBOT else robot}_{kind}.safetensors"


def no_shipped_model_message(robot: str, prog: str) -> str:
    """What ``prog`` says when asked for ``robot`` without a shipped model: how to train one."""
    return (
        f"{prog}: no trained policy ships for robot {robot!r} (no models/"
        f"{shipped_model_name(robot)}); train one with `make train ROBOT={robot}` "
        f"(maml-ros-train --robot {robot}) and pass its runs/train/policy_best.safetensors"
    )
