"""The simulated arm (a ``RobotSpec``; the KUKA LBR iiwa by default): a gymnasium env in PyBullet
DIRECT mode.

Physics runs at a fixed ``physics_hz`` (240 Hz); the policy acts at ``control_hz`` (40 Hz, so six
physics sub-steps per action). An action in [-1, 1]^7 is scaled by ``max_joint_velocity`` (rad/s)
to joint velocity commands, which joint motors track within realistic torque limits
(:data:`JOINT_FORCE_LIMITS`, KUKA LBR iiwa 7 R800). The servo is stiff, like a real arm's, so a
body change shows where torque runs out: a payload slows accelerations (a 4 kg payload moves the
end effector by ~8 cm after 30 random actions) and makes a weak joint sag; a task's joint damping
is viscous friction added to the URDF's 0.5 N·m·s/rad, which the motors overcome unless the joint
is weak or back-driven (a few mm on a nominal arm; it slows a sagging joint).

The observation is exactly what ``/joint_states`` carries: joint positions (with the task's
encoder offsets added) and joint velocities; no goal, no phase.

Reward of a step: ``-distance(ee, goal) - action_cost * |a|^2`` with ``a`` the clipped action and
the distance measured after the step. ``info["success"]`` is True when that distance is below
``success_threshold`` (5 cm); an episode succeeds when any of its steps does (Meta-World's
protocol). Episodes never terminate; they are truncated after ``horizon`` steps.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pybullet as pb
import pybullet_data

from maml_ros.runtime import observation_from_joint_state
from maml_ros.runtime.robots import DEFAULT_ROBOT, KUKA_IIWA, RobotSpec, get_robot
from maml_ros.sim.task import NUM_JOINTS, TaskSpec, TaskSpecError, get_family, nominal_task

URDF = KUKA_IIWA.urdf
EE_LINK = 6
"""The iiwa's end-effector link index (lbr_iiwa_link_7); an env's own is ``env.ee_link``."""
HOME_POSE = KUKA_IIWA.home_pose
"""Home joint positions (rad); the end effector then sits near the goal cube's centre."""
JOINT_FORCE_LIMITS = KUKA_IIWA.torque_limits
"""Motor torque limits (N·m) of the KUKA LBR iiwa 7 R800 (other robots: ``RobotSpec``)."""
PAYLOAD_RADIUS = 0.05
"""The payload is a solid sphere of this radius (m) at the end-effector link's centre of mass."""
MAX_OBS_VELOCITY = 20.0
"""Joint speed bound (rad/s) of the observation space, far above any iiwa joint's speed."""
OBS_DIM = 2 * NUM_JOINTS
ACT_DIM = NUM_JOINTS
"""The default robot's sizes; an env's own: ``observation_space`` / ``action_space``."""


class PhysicsWorld:
    """A PyBullet DIRECT physics server with gravity and a fixed time step.

    One ArmEnv owns one by default. Several arms may share one (VecArmEnv's workers do, which
    saves ~30 MB per env): each arm gets its own spot on a grid (:meth:`allocate_base`, far
    enough apart that the broad phase never pairs two arms) and collides with nothing, so its
    joints move bit for bit as they would alone (end-effector positions, taken from PyBullet's
    single-precision world frame, agree to ~1e-7 m); a shared world is stepped once for all.
    """

    GRID_SPACING = 4.0
    """Metres between neighbouring arms' bases (a power of two: the offsets are exact)."""
    GRID_ROW = 16

    def __init__(self, physics_hz: int = 240) -> None:
        if isinstance(physics_hz, bool) or not isinstance(physics_hz, int) or physics_hz <= 0:
            raise ValueError(f"physics_hz must be a positive int, got {physics_hz!r}")
        self.physics_hz = physics_hz
        self.client: int | None = pb.connect(pb.DIRECT)
        cid = {"physicsClientId": self.client}
        pb.setAdditionalSearchPath(pybullet_data.getDataPath(), **cid)
        pb.setGravity(0.0, 0.0, -9.81, **cid)
        pb.setPhysicsEngineParameter(fixedTimeStep=1.0 / physics_hz, **cid)
        self._arms = 0

    def allocate_base(self) -> tuple[float, float, float]:
        """World position for the next arm's base: (0, 0, 0) first, then along a grid."""
        index = self._arms
        self._arms += 1
        row, column = divmod(index, self.GRID_ROW)
        return (self.GRID_SPACING * column, self.GRID_SPACING * row, 0.0)

    def step(self, substeps: int) -> None:
        """Advance every body in the world by ``substeps`` physics steps."""
        for _ in range(substeps):
            pb.stepSimulation(physicsClientId=self.client)

    def close(self) -> None:
        """Disconnect (idempotent)."""
        if self.client is not None:
            if pb.isConnected(self.client):
                pb.disconnect(self.client)
            self.client = None


class ArmEnv(gym.Env):
    """KUKA iiwa reaching with a hidden goal and a possibly changed body (see module doc)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 40}

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        control_hz: int = 40,
        physics_hz: int = 240,
        horizon: int = 50,
        max_joint_velocity: float = 1.5,
        action_cost: float = 0.01,
        success_threshold: float = 0.05,
        reset_noise: float = 0.01,
        render_mode: str | None = None,
        world: PhysicsWorld | None = None,
        robot: str | RobotSpec = DEFAULT_ROBOT,
    ) -> None:
        self.robot = get_robot(robot)
        if world is not None:
            if world.client is None:
                raise ValueError("world is closed")
            physics_hz = world.physics_hz
        if control_hz <= 0 or physics_hz <= 0 or physics_hz % control_hz:
            raise ValueError(
                f"physics_hz ({physics_hz}) must be a positive multiple of control_hz "
                f"({control_hz})"
            )
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        for name, value in (
            ("max_joint_velocity", max_joint_velocity),
            ("success_threshold", success_threshold),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name, value in (("action_cost", action_cost), ("reset_noise", reset_noise)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.control_hz = control_hz
        self.physics_hz = physics_hz
        self.substeps = physics_hz // control_hz
        self.horizon = horizon
        self.max_joint_velocity = float(max_joint_velocity)
        self.action_cost = float(action_cost)
        self.success_threshold = float(success_threshold)
        self.reset_noise = float(reset_noise)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": control_hz}

        self._owns_world = world is None
        self._world = world if world is not None else PhysicsWorld(physics_hz)
        self._client = self._world.client
        self._cid = {"physicsClientId": self._client}
        self._base = self._world.allocate_base()
        spec = self.robot
        n = spec.num_joints
        self._n = n
        self._robot = pb.loadURDF(spec.urdf, self._base, useFixedBase=True, **self._cid)
        total = pb.getNumJoints(self._robot, **self._cid)
        for link in range(-1, total):  # collides with nothing, not even other arms
            pb.setCollisionFilterGroupMask(self._robot, link, 0, 0, **self._cid)
        by_name = {}
        links = {}
        self._movable: list[int] = []  # PyBullet's degrees of freedom, in index order
        for j in range(total):
            info = pb.getJointInfo(self._robot, j, **self._cid)
            if info[2] != pb.JOINT_FIXED:
                self._movable.append(j)
            by_name[info[1].decode()] = j
            links[info[12].decode()] = j
        missing = [name for name in (*spec.joint_names, *spec.fixed_joints) if name not in by_name]
        if missing or spec.ee_link not in links:
            raise ValueError(
                f"robot {spec.name!r}: {spec.urdf} has no joint(s) {missing} or no link "
                f"{spec.ee_link!r}"
            )
        self._joints = [by_name[name] for name in spec.joint_names]
        self._ee_link = links[spec.ee_link]
        for name, position in spec.fixed_joints.items():  # fingers: held where they are
            j = by_name[name]
            pb.resetJointState(self._robot, j, position, 0.0, **self._cid)
            pb.setJointMotorControl2(
                self._robot, j, pb.POSITION_CONTROL, targetPosition=position, **self._cid
            )
        infos = [pb.getJointInfo(self._robot, j, **self._cid) for j in self._joints]
        self.joint_names: tuple[str, ...] = tuple(info[1].decode() for info in infos)
        self.joint_lower = np.array([info[8] for info in infos])
        self.joint_upper = np.array([info[9] for info in infos])
        ee_dynamics = pb.getDynamicsInfo(self._robot, self._ee_link, **self._cid)
        self._base_damping = np.array([info[6] for info in infos])  # 0.5 in the URDF
        self._ee_mass = float(ee_dynamics[0])
        self._ee_inertia = np.array(ee_dynamics[2], dtype=float)
        self._force_limits = np.array(spec.torque_limits)

        position_margin = 0.5  # encoder offsets and joint-limit overshoot
        low = np.concatenate([self.joint_lower - position_margin, [-MAX_OBS_VELOCITY] * n])
        high = np.concatenate([self.joint_upper + position_margin, [MAX_OBS_VELOCITY] * n])
        self.observation_space = gym.spaces.Box(
            low.astype(np.float32), high.astype(np.float32), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)

        self._steps = 0
        self._goal_marker: int | None = None
        self.set_task(task if task is not None else nominal_task(spec.name))
        self._reset_joints(np.array(spec.home_pose))

    # --- task -----------------------------------------------------------------------------

    @property
    def task(self) -> TaskSpec:
        """The current task."""
        return self._task

    @property
    def goal(self) -> np.ndarray:
        """The current (hidden) end-effector goal, m."""
        return self._goal.copy()

    def set_task(self, task: TaskSpec) -> None:
        """Apply ``task`` now: goal, actuator gains, damping, payload and encoder offsets."""
        if not isinstance(task, TaskSpec):
            raise TypeError(f"task must be a TaskSpec, got {type(task).__name__}")
        if task.robot != self.robot.name:
            raise TaskSpecError(
                f"task is for robot {task.robot!r}, this arm is {self.robot.name!r}"
            )
        self._task = task
        self._goal = np.array(task.goal, dtype=float)
        self._goal_tuple = task.goal
        gain = np.array(task.joint_gain, dtype=float)
        dead = gain == 0.0
        # A weak joint tracks gain * command within gain * torque limit; a dead joint is braked:
        # it holds position with the nominal torque limit.
        self._velocity_scale = self.max_joint_velocity * gain
        self._forces = np.where(dead, self._force_limits, self._force_limits * gain)
        self._offsets = np.array(task.encoder_offset, dtype=float)
        damping = self._base_damping + np.array(task.joint_damping)  # extra viscous friction
        for i, j in enumerate(self._joints):  # damping[i] is arm joint i, not PyBullet index i
            pb.changeDynamics(self._robot, j, jointDamping=float(damping[i]), **self._cid)
        payload = task.payload_kg
        sphere_inertia = 0.4 * payload * PAYLOAD_RADIUS**2
        pb.changeDynamics(
            self._robot,
            self._ee_link,
            mass=self._ee_mass + payload,
            localInertiaDiagonal=list(self._ee_inertia + sphere_inertia),
            **self._cid,
        )
        self._command(np.zeros(self._n))
        family = get_family(task.family)
        if family.apply is not None:
            family.apply(self, task)

    # --- gymnasium API --------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Back to the home pose (plus uniform noise of ``reset_noise`` rad), at rest.

        ``options={"task": TaskSpec | str}`` switches the task first (a str is task JSON).
        """
        super().reset(seed=seed)
        if options and options.get("task") is not None:
            task = options["task"]
            self.set_task(TaskSpec.from_json(task) if isinstance(task, str) else task)
        noise = self.np_random.uniform(-self.reset_noise, self.reset_noise, self._n)
        self._reset_joints(np.array(self.robot.home_pose) + noise)
        self._steps = 0
        positions, velocities = self.joint_state()
        ee = self.ee_position()
        distance = float(np.linalg.norm(ee - self._goal))
        info = {"success": distance < self.success_threshold, "distance": distance, "ee_pos": ee}
        return observation_from_joint_state(positions, velocities, self._new_obs()), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one action for ``substeps`` physics steps; see the module doc for the reward."""
        if not self._owns_world:
            raise RuntimeError("this arm shares its world: step the world once for all its arms")
        clipped = self._command_action(action)
        self._world.step(self.substeps)
        return self._finish_step(clipped)

    def _command_action(self, action: Any) -> np.ndarray:
        """Validate, clip and command ``action`` (first half of a step); returns it clipped."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self._n,):
            raise ValueError(f"action must have shape ({self._n},), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError("action holds a non-finite value")
        action = np.minimum(np.maximum(action, -1.0), 1.0)
        self._command(action * self._velocity_scale)
        return action

    def _finish_step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Observation, reward and info after the world moved (second half of step)."""
        self._steps += 1
        states = pb.getJointStates(self._robot, self._joints, **self._cid)
        positions = np.fromiter((s[0] for s in states), float, self._n) + self._offsets
        velocities = np.fromiter((s[1] for s in states), float, self._n)
        ee = self._ee_tuple()
        distance = math.dist(ee, self._goal_tuple)
        reward = -distance - self.action_cost * float(action @ action)
        info = {
            "success": distance < self.success_threshold,
            "distance": distance,
            "ee_pos": np.array(ee),
        }
        obs = observation_from_joint_state(positions, velocities, self._new_obs())
        return obs, reward, False, self._steps >= self.horizon, info

    def render(self) -> np.ndarray | None:
        """RGB image (H, W, 3) uint8 from TinyRenderer when ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        from maml_ros.sim.render import render_rgb

        return render_rgb(self)

    def close(self) -> None:
        """Disconnect from the physics server if this env owns it (idempotent)."""
        if getattr(self, "_client", None) is not None:
            if self._owns_world:
                self._world.close()
            self._client = None

    # --- state ----------------------------------------------------------------------------

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Observed joint positions (true + encoder offset, rad) and velocities (rad/s)."""
        states = pb.getJointStates(self._robot, self._joints, **self._cid)
        positions = np.fromiter((s[0] for s in states), float, self._n) + self._offsets
        velocities = np.fromiter((s[1] for s in states), float, self._n)
        return positions, velocities

    def true_joint_positions(self) -> np.ndarray:
        """Joint positions without encoder offsets (rad): for tests and diagnostics."""
        states = pb.getJointStates(self._robot, self._joints, **self._cid)
        return np.array([s[0] for s in states])

    def ee_position(self) -> np.ndarray:
        """World position (m) of the end-effector point."""
        return np.array(self._ee_tuple())

    def _ee_tuple(self) -> tuple[float, float, float]:
        # Without computeForwardKinematics the link state lags one physics step behind.
        state = pb.getLinkState(
            self._robot, self._ee_link, computeForwardKinematics=True, **self._cid
        )
        x, y, z = state[4]
        bx, by, bz = self._base
        return (x - bx, y - by, z - bz)

    @property
    def physics_client(self) -> int:
        """PyBullet client id of this env's physics server (for rendering)."""
        return self._client

    @property
    def base_position(self) -> tuple[float, float, float]:
        """World position of the arm's base; goals and ``ee_pos`` are relative to it."""
        return self._base

    def _new_obs(self) -> np.ndarray:
        return np.empty(2 * self._n, dtype=np.float32)

    @property
    def dof_joints(self) -> tuple[int, ...]:
        """PyBullet indices of every movable joint (arm and fingers), in index order."""
        return tuple(self._movable)

    @property
    def arm_joints(self) -> tuple[int, ...]:
        """PyBullet indices of the arm joints, in policy order."""
        return tuple(self._joints)

    @property
    def ee_link(self) -> int:
        """PyBullet link index of the end-effector point."""
        return self._ee_link

    @property
    def robot_id(self) -> int:
        """PyBullet body id of the arm."""
        return self._robot

    def _command(self, joint_velocities: np.ndarray) -> None:
        pb.setJointMotorControlArray(
            self._robot,
            self._joints,
            pb.VELOCITY_CONTROL,
            targetVelocities=joint_velocities,
            forces=self._forces,
            **self._cid,
        )

    def _reset_joints(self, positions: np.ndarray) -> None:
        for j, q in zip(self._joints, positions, strict=True):
            pb.resetJointState(self._robot, j, float(q), 0.0, **self._cid)
        self._command(np.zeros(self._n))
