"""policy_controller_node: runs the current policy at the control rate on the latest joint state.

Event-driven: each valid ``joint_states`` message (reordered to ``joint_names``) becomes an
observation (``maml_ros.runtime.observation_from_joint_state``), the policy acts
(``maml_ros.runtime.NumpyPolicy``: numpy, no per-tick allocation inside the policy), and the node
publishes

- ``<controller>/commands``: joint velocities in rad/s = clip(action, -1, 1) × ``action_scale``,
  then clamped to ±``max_velocity``, carrying the joint state's stamp in ``layout.dim[0].label``
  (``stamp_ns=<ns>``, ignored by ros2_control; a lockstep driver pairs states and commands on it);
- ``<controller>/actions``: the action in policy units (before clamping), stamped with the joint
  state's stamp, so the adaptation node can join (state, action, reward) on the stamp, and
  labelled (``header.frame_id``) with whether it explored.

Until it has a policy the controller publishes nothing at all (the driver then holds the arm).

The control loop (the joint-state subscription, the tick and the watchdog) runs on a node and a
thread of its own, ``<name>_control_loop`` (:class:`maml_ros.ros.common.SubscriptionThread`):
no parameter, lifecycle or home-service callback runs before a tick, and rclpy's per-message
wait-set rebuild covers one subscription instead of this node's 28 entities. The command and
the echo are re-used messages written in place (:class:`maml_ros.ros.convert.TickMessages`).
Between the two threads, what the tick reads is swapped by reference (policy, limits,
envelope, homing); one lock orders a tick's command before deactivate's hold.

Policies arrive on ``policy`` (latched); the callback only queues the message for a decoder
thread (the newest pending message wins), so decoding never holds up a tick. A policy is accepted
when it decodes and validates (size, shapes, dtype, finiteness, and actions finite on probe
observations: ``maml_ros.runtime``'s reader), matches this controller
(observation size 2 × joints, action size = joints, and ``joint_names`` when its metadata has
them), is signed with the ``deploy_key_file`` key when one is configured (HMAC-SHA256 in
``layout.dim[0].label``: only the paired adaptation node deploys), and passes the acceptance
rule (``maml_ros.runtime.replacement_refusal``, written out in ``maml_ros.ros.interfaces``):
the same ``run_id`` with a higher ``version``, or another run, unless that would replace an
adapted policy with an unadapted one that carries no operator override. It then replaces the
current one between ticks: one reference assignment,
which the tick reads without a lock (as realtime_tools' RealtimeBuffer swaps a pointer), so the
tick never waits for the decoder or the status. A bad update is dropped and counted; the last
good policy keeps running. The node imports no torch, pybullet or gymnasium.
A policy that still computes a non-finite action on a real state never has it sent: that state
is answered with zero velocities (hold position), the policy is dropped (counted, and its run
and version refused from then on) and the policy before it runs again (``policy_fallbacks``).

Stamps: a joint state stamped more than ``stamp_tolerance_s`` ahead of or behind the node's
clock is dropped (counted), so a stream of future-stamped states cannot shut the real ones out;
one stamped at or before the previous stamp is dropped as out of order, unless
:data:`RESYNC_STATES` states in a row, each after the one before, are all before it: a clock that
went backwards (a restarted driver, a sim time reset). The controller then accepts the new
timeline and says so in its status (``clock_resyncs``, ``last_resync``).

Watchdog: when no valid joint state arrived for ``stale_timeout_s`` (wall time) while a policy
is loaded, the controller holds position: it publishes zero velocities at ``hold_rate_hz``
until states resume (labelled ``stamp_ns=0``: they answer no state), and ``~/status`` shows
``stale: true``. Going stale also forgets the last stamp, so a restarted driver whose clock
starts lower is accepted.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger

from maml_ros.ros.common import (
    AUTOSTART,
    ManagedNode,
    NextSpin,
    NodeStatus,
    ParamSpec,
    SubscriptionThread,
    ValidatedParameters,
    run_node,
    set_realtime_priority,
)
from maml_ros.ros.convert import (
    JointStateReader,
    TickMessages,
    check_stamp_near_clock,
    commands_to_msg,
    policy_data_from_msg,
)
from maml_ros.ros.interfaces import (
    COMMAND_QOS,
    DEFAULT_CONTROLLER,
    EXPLORATION_SERVICE,
    HOME_SERVICE,
    JOINT_STATES_QOS,
    JOINT_STATES_TOPIC,
    LATCHED_QOS,
    POLICY_TOPIC,
    SERVICE_QOS,
    STREAM_QOS,
    actions_topic,
    commands_topic,
)
from maml_ros.runtime import (
    DEFAULT_MAX_BYTES,
    Deployment,
    NumpyPolicy,
    PolicyData,
    deploy_key_problem,
    observation_from_joint_state,
    read_deploy_key,
    read_policy_file,
    replacement_refusal,
)
from maml_ros.runtime.robots import DEFAULT_ROBOT, get_robot, policy_mismatch, robot_problem

DEFAULT_JOINT_NAMES = list(get_robot(DEFAULT_ROBOT).joint_names)
"""The default robot's joints (the KUKA iiwa's, ``ArmEnv.joint_names``); left at this default,
``joint_names`` follows the ``robot`` parameter."""
DEFAULT_ACTION_SCALE = 1.5
"""rad/s per policy unit: ``ArmEnv``'s default ``max_joint_velocity``."""
WATCHDOG_PERIOD_S = 0.02
POLICY_TIMING_WINDOW = 1000
"""``policy_us_p50`` in the status is the median policy compute of the last this many ticks;
``tick_us_p50`` / ``tick_us_p99``: the whole callback's (state in to echo published)."""
CACHED_CLOCK_TOLERANCE_S = 1.0
"""With ``stamp_tolerance_s`` at least this, a tick checks its stamp against the clock as read
after the previous tick (at most one watchdog period old) rather than reading it: a ROS clock
read is about 50 µs on a cold cache."""
DEFAULT_STAMP_TOLERANCE_S = 600.0
"""Joint states stamped further than this from the node's clock are dropped (s)."""
RESYNC_STATES = 3
"""This many consecutive, increasing joint states all stamped before the previous stamp are a
new timeline (a restarted driver, a sim time reset): the controller resynchronises on it."""


def _joint_names_problem(value: Any) -> str | None:
    names = list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        return "joint_names must be a non-empty list of non-empty strings"
    if len(set(names)) != len(names):
        return "joint_names must be unique"
    return None


def _effective_joint_names(robot: str, joint_names: Any) -> list[str]:
    """``joint_names``, or the robot's own when left at the default (the iiwa's)."""
    names = list(joint_names)
    return list(get_robot(robot).joint_names) if names == DEFAULT_JOINT_NAMES else names


def _robot_vector(robot: str, joint_names: list[str], field: str) -> np.ndarray | None:
    """The robot description's per-joint ``field`` (home_pose, position_lower, ...) in the
    order of ``joint_names``; None when those are not the robot's joints."""
    spec = get_robot(robot)
    values = dict(zip(spec.joint_names, getattr(spec, field), strict=True))
    if set(joint_names) != set(values):
        return None
    return np.array([values[name] for name in joint_names], dtype=np.float64)


@dataclass
class _Homing:
    """One call of the home service: the tick drives the arm to ``target`` until it is within
    the tolerance or ``deadline`` (monotonic) passes, then sets ``result`` and ``done``."""

    target: np.ndarray
    deadline: float
    done: threading.Event
    result: tuple[bool, str] | None = None


def _positive_finite_problem(name: str, value: Any) -> str | None:
    values = list(value)
    if not values or not all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values):
        return f"{name} must be a non-empty list of finite positive numbers"
    return None


def _finite_problem(name: str, value: Any) -> str | None:
    values = list(value)
    if not values or not all(isinstance(v, float) and math.isfinite(v) for v in values):
        return f"{name} must be a non-empty list of finite numbers"
    return None


DEFAULT_HOME_POSE = [float(q) for q in get_robot(DEFAULT_ROBOT).home_pose]
"""The default robot's home pose; left at this default, ``home_pose`` follows ``robot``."""
PER_JOINT_PARAMS = ("max_velocity", "envelope_lower", "envelope_upper")
"""Parameters holding one value for all joints or one per joint."""


PARAMS = (
    AUTOSTART,
    ParamSpec(
        "controller",
        DEFAULT_CONTROLLER,
        "Controller name: publishes <controller>/commands and <controller>/actions",
        validator=lambda v: None if v.strip("/") else "controller must not be empty",
        read_only=True,
    ),
    ParamSpec(
        "robot",
        DEFAULT_ROBOT,
        "Robot description (maml_ros.runtime.robots): policies for another robot are refused",
        validator=robot_problem,
        read_only=True,
    ),
    ParamSpec(
        "joint_names",
        DEFAULT_JOINT_NAMES,
        "Joint order of the observation, the action and the commands (the default follows robot)",
        validator=_joint_names_problem,
        read_only=True,
    ),
    ParamSpec(
        "action_scale",
        DEFAULT_ACTION_SCALE,
        "rad/s per policy unit (the driver's max joint velocity)",
        float_range=(1e-6, 100.0),
    ),
    ParamSpec(
        "max_velocity",
        [DEFAULT_ACTION_SCALE],
        "Commanded velocity limits (rad/s): one for all joints or one per joint",
        validator=lambda v: _positive_finite_problem("max_velocity", v),
    ),
    ParamSpec("explore", True, "Add the policy's Gaussian exploration noise"),
    ParamSpec("seed", 0, "Seed of the exploration noise", int_range=(0, 2**31 - 1)),
    ParamSpec(
        "stale_timeout_s",
        0.2,
        "Hold position when no valid joint state arrived for this long (wall s)",
        float_range=(0.01, 60.0),
    ),
    ParamSpec(
        "stamp_tolerance_s",
        DEFAULT_STAMP_TOLERANCE_S,
        "Drop joint states stamped further than this ahead of or behind the node's "
        "clock (s; 0 = no check; from 1 s up, the clock as read after the previous tick, at "
        "most 20 ms old). With real_time_factor 0 and no use_sim_time the "
        "simulated arm's stamps run ahead of the wall clock: use use_sim_time or 0",
        float_range=(0.0, 1e9),
    ),
    ParamSpec(
        "hold_rate_hz",
        10.0,
        "Rate of the zero-velocity commands while joint states are stale",
        float_range=(0.1, 1000.0),
    ),
    ParamSpec(
        "policy_max_bytes",
        DEFAULT_MAX_BYTES,
        "Largest policy message accepted (bytes)",
        int_range=(1024, 1 << 30),
    ),
    ParamSpec(
        "initial_policy",
        "",
        "Checkpoint loaded at start-up ('' = wait for the policy topic)",
        read_only=True,
    ),
    ParamSpec(
        "deploy_key_file",
        "",
        "File (mode 600) holding the key policies must be signed with: only the adaptation node "
        "reading the same file deploys ('' = any publisher deploys, with a warning)",
        validator=deploy_key_problem,
        read_only=True,
    ),
    ParamSpec(
        "envelope_margin",
        0.05,
        "Safety envelope: this far (rad) inside the robot's joint position limits",
        float_range=(0.0, 1.0),
    ),
    ParamSpec(
        "envelope_lower",
        [-100.0],
        "Safety envelope: joint-space box lower bounds (rad; one for all joints or one per "
        "joint), intersected with the joint limits",
        validator=lambda v: _finite_problem("envelope_lower", v),
    ),
    ParamSpec(
        "envelope_upper",
        [100.0],
        "Safety envelope: joint-space box upper bounds (rad; one for all joints or one per joint)",
        validator=lambda v: _finite_problem("envelope_upper", v),
    ),
    ParamSpec(
        "home_pose",
        DEFAULT_HOME_POSE,
        "Joint positions the home service drives to (rad; the default follows robot)",
        validator=lambda v: _finite_problem("home_pose", v),
    ),
    ParamSpec(
        "homing_gain",
        2.0,
        "Homing P gain (1/s): velocity = gain x (home - position), clamped to max_velocity",
        float_range=(0.01, 100.0),
    ),
    ParamSpec(
        "homing_tolerance",
        0.02,
        "Homing ends when every joint is this close to home (rad)",
        float_range=(1e-4, 1.0),
    ),
    ParamSpec(
        "homing_timeout_s",
        10.0,
        "Homing fails (zero velocities) when home is not reached within this long (s)",
        float_range=(0.1, 600.0),
    ),
    ParamSpec(
        "realtime_priority",
        0,
        "SCHED_FIFO priority of the node's threads (0: normal scheduling); needs "
        "CAP_SYS_NICE or an rtprio limit, like ros2_control's thread_priority",
        int_range=(0, 98),
        read_only=True,
    ),
)
"""The controller's parameters (config/adapt.yaml and the README table are generated from it)."""


class PolicyControllerNode(ManagedNode):
    """Runs the latest accepted policy on each joint state (see the module docstring).

    Lifecycle: constructing it declares and validates the parameters and creates its topics
    and services; ``configure`` loads ``initial_policy`` and asks for real-time scheduling;
    ``activate`` starts commanding the arm; ``deactivate`` stops and holds position (zero
    velocities at ``hold_rate_hz``). Policies are received and validated in every state."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("policy_controller", **kwargs)
        self.params = ValidatedParameters(
            self, PARAMS, on_change=self._on_param_change, cross_check=self._max_velocity_problem
        )
        self.robot = self.params["robot"]
        self.joint_names = _effective_joint_names(self.robot, self.params["joint_names"])
        n = len(self.joint_names)
        key_file = self.params["deploy_key_file"]
        self._deploy_key = read_deploy_key(key_file) if key_file else None
        if self._deploy_key is None:
            self.get_logger().warning(
                "no deploy_key_file: any publisher on 'policy' can replace the policy"
            )
        self._obs = np.empty(2 * n, dtype=np.float32)
        self._ticks = 0
        self._policy_ns = np.zeros(POLICY_TIMING_WINDOW, dtype=np.int64)  # ring, per tick
        self._tick_ns = np.zeros(POLICY_TIMING_WINDOW, dtype=np.int64)  # the whole callback
        self.status = NodeStatus(self, refresh=self._tick_fields)
        self._active: _ActivePolicy | None = None
        self._swap_lock = threading.Lock()  # between the decoder's and a fallback's swaps
        self._fallback: _ActivePolicy | None = None  # the last good one before the active one
        self._refused: tuple[str, int] | None = None  # (run_id, version) that went non-finite
        self._fallbacks = 0
        self._rng = np.random.default_rng(self.params["seed"])
        self._set_limits(self.params["max_velocity"])
        self._envelope: tuple[np.ndarray, np.ndarray] = self._envelope_bounds()
        self._violation: dict[str, Any] | None = None  # set by the tick, cleared by homing
        self._violations = 0
        self._homing: _Homing | None = None  # swapped by the home service, read by the tick
        self._homings = 0
        self._homing_failures = 0
        self.status.set(envelope_violation=None, envelope_violations=0, homing=False)
        self._action = np.empty(n, dtype=np.float32)
        self._out = TickMessages(self.joint_names)  # the tick's command and echo, re-used
        self._reader = JointStateReader(self.joint_names)
        self._read_clock()  # self._clock_ns: the reading a tick's stamp check may use
        self._zeros = np.zeros(n)
        self._last_stamp_ns: int | None = None
        self._behind_ns: int | None = None  # the last of the states stamped before it, in a row
        self._behind_count = 0
        self._resyncs = 0
        self.status.set(clock_resyncs=0, last_resync=None)
        self._last_valid = time.monotonic()
        self._last_hold = -math.inf
        self._stale = False
        self._updates = 0
        self._commanding = False  # active: the policy drives the arm
        self._holding = False  # deactivated after being active: zero velocities
        self._policy_cond = threading.Condition()
        self._pending_policy: UInt8MultiArray | None = None
        self._closing = False
        self._decoder = threading.Thread(
            target=self._decode_policies, name="policy_decoder", daemon=True
        )

        controller = self.params["controller"].strip("/")
        self._commands_pub = self.create_publisher(
            Float64MultiArray, commands_topic(controller), COMMAND_QOS
        )
        self._actions_pub = self.create_publisher(JointState, actions_topic(controller), STREAM_QOS)
        # The tick and the watchdog: a node and a thread of their own (SubscriptionThread).
        self._control_loop = SubscriptionThread(
            self,
            JointState,
            JOINT_STATES_TOPIC,
            self._on_joint_state,
            JOINT_STATES_QOS,
            idle=self._watchdog,
            idle_period_s=WATCHDOG_PERIOD_S,
        )
        self._command_lock = threading.Lock()  # a tick's commanding vs deactivate's hold
        self.create_subscription(
            UInt8MultiArray,
            POLICY_TOPIC,
            self._on_policy,
            LATCHED_QOS,
        )
        self.create_service(
            SetBool,
            f"{controller}/{EXPLORATION_SERVICE}",
            self._on_set_exploration,
            qos_profile=SERVICE_QOS,
        )
        self._home_wake = self.create_guard_condition(lambda: None)
        self.create_service(
            Trigger,
            f"{controller}/{HOME_SERVICE}",
            self._on_home,
            qos_profile=SERVICE_QOS,
            callback_group=ReentrantCallbackGroup(),
        )
        self._update_status()
        self._decoder.start()
        self._control_loop.start()
        self.autostart()

    # --- lifecycle ------------------------------------------------------------------------

    def configure_node(self) -> None:
        """initial_policy loaded and probed; real-time scheduling asked for."""
        if self.params["initial_policy"]:
            bundle = read_policy_file(
                self.params["initial_policy"], self.params["policy_max_bytes"]
            )
            problem = self._incompatibility(bundle)
            if problem:
                raise ValueError(f"initial_policy: {problem}")
            self._install(bundle)
        self._set_realtime(self.params["realtime_priority"])

    def activate_node(self) -> None:
        """The policy drives the arm from the next joint state on."""
        self._holding = False
        self._commanding = True

    def deactivate_node(self) -> None:
        """Stops commanding; holds position (zero velocities now, then at hold_rate_hz)."""
        with self._command_lock:  # no tick's command can follow this hold
            self._commanding = False
            homing = self._homing
            if homing is not None:
                self._end_homing(homing, False, "homing stopped: the controller was deactivated")
            self._holding = True
            self._last_hold = time.monotonic()
            self._commands_pub.publish(commands_to_msg(self._zeros, stamp=0))

    def _set_realtime(self, priority: int) -> None:
        """Real-time scheduling for the control path, when asked and allowed."""
        if priority == 0:
            self.status.set(realtime_priority=0)
            return
        problem = set_realtime_priority(priority)
        if problem:
            self.get_logger().warning(
                f"realtime_priority {priority} refused ({problem}); normal scheduling"
            )
        self.status.set(realtime_priority=0 if problem else priority)

    # --- parameters -----------------------------------------------------------------------

    def _max_velocity_problem(self, name: str, value: Any) -> str | None:
        """max_velocity and the envelope bounds have one value, or one per joint; home_pose
        one per joint (joint_names is read-only)."""
        if name not in (*PER_JOINT_PARAMS, "home_pose"):
            return None
        n = len(
            _effective_joint_names(
                self.get_parameter("robot").value, self.get_parameter("joint_names").value
            )
        )
        if name == "home_pose":
            if list(value) != DEFAULT_HOME_POSE and len(value) != n:
                return f"home_pose must have {n} (joint count) values, got {len(value)}"
            return None
        if len(value) not in (1, n):
            return f"{name} must have 1 or {n} (joint count) values, got {len(value)}"
        return None

    def _envelope_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper): the robot's joint limits moved ``envelope_margin`` inwards,
        intersected with the ``envelope_lower`` / ``envelope_upper`` box."""
        n = len(self.joint_names)
        lower = np.broadcast_to(np.asarray(self.params["envelope_lower"], float), n).copy()
        upper = np.broadcast_to(np.asarray(self.params["envelope_upper"], float), n).copy()
        margin = self.params["envelope_margin"]
        low_limit = _robot_vector(self.robot, self.joint_names, "position_lower")
        high_limit = _robot_vector(self.robot, self.joint_names, "position_upper")
        if low_limit is not None and high_limit is not None:
            np.maximum(lower, low_limit + margin, out=lower)
            np.minimum(upper, high_limit - margin, out=upper)
        return lower, upper

    def _home_target(self) -> np.ndarray:
        """``home_pose``, or the robot description's home pose when left at the default."""
        values = list(self.params["home_pose"])
        if values == DEFAULT_HOME_POSE:
            robot_home = _robot_vector(self.robot, self.joint_names, "home_pose")
            if robot_home is not None:
                return robot_home
        return np.asarray(values, dtype=np.float64)

    def _set_limits(self, values: Any) -> None:
        n = len(self.joint_names)  # a new array: the tick (another thread) reads it unlocked
        self._limits = np.broadcast_to(np.asarray(values, dtype=np.float64), n).copy()

    def _on_param_change(self, name: str, value: Any) -> None:
        if name == "max_velocity":
            self._set_limits(value)
        elif name == "seed":
            self._rng = np.random.default_rng(value)
        elif name in ("envelope_margin", "envelope_lower", "envelope_upper"):
            self._envelope = self._envelope_bounds()  # one reference swap
        self._update_status()

    # --- control: joint states in, commands out ------------------------------------------

    def _on_joint_state(self, msg: JointState) -> None:
        started_ns = time.perf_counter_ns()
        try:
            positions, velocities, stamp_ns = self._reader.read(msg)
            obs = observation_from_joint_state(positions, velocities, self._obs)
            self._check_stamp(stamp_ns)
        except ValueError as exc:
            self.status.drop("joint_state", str(exc))
            return
        self._last_stamp_ns = stamp_ns
        self._last_valid = time.monotonic()
        if self._stale:
            self._stale = False
            self.get_logger().info("joint states resumed")
            self._update_status()
        with self._command_lock:  # uncontended but for a deactivate: it never waits long
            if self._commanding:
                self._answer_state(positions, obs, stamp_ns, msg, started_ns)

    def _answer_state(
        self,
        positions: np.ndarray,
        obs: np.ndarray,
        stamp_ns: int,
        msg: JointState,
        started_ns: int,
    ) -> None:
        """The tick's answer to a valid state while active: homing, hold, or the policy."""
        homing = self._homing  # one reference read: the home service swaps it
        if homing is not None:
            self._home_tick(homing, positions, msg)
            return
        if self._outside_envelope(positions, stamp_ns, msg):
            return
        active = self._active  # one reference read: the decoder swaps it, nobody locks it
        if active is None:
            return
        started = time.perf_counter_ns()
        explore = self.params["explore"]
        action = active.policy.act(obs, explore, self._rng, out=self._action)
        self._policy_ns[self._ticks % POLICY_TIMING_WINDOW] = time.perf_counter_ns() - started
        if not np.isfinite(action).all():  # np.clip lets NaN through: never send one
            self._hold_and_fall_back(active, msg)
            return
        out, limits = self._out, self._limits  # one read of the swapped limits
        command = out.velocities
        np.clip(action, -1.0, 1.0, out=command)
        np.multiply(command, self.params["action_scale"], out=command)
        np.clip(command, -limits, limits, out=command)
        self._commands_pub.publish(out.command(stamp_ns))  # the command first: the robot waits
        np.copyto(out.action, action)
        self._actions_pub.publish(out.echo(msg.header.stamp, explore))
        self._tick_ns[self._ticks % POLICY_TIMING_WINDOW] = time.perf_counter_ns() - started_ns
        self._ticks += 1  # the status reads it when it publishes

    def _outside_envelope(self, positions: np.ndarray, stamp_ns: int, msg: JointState) -> bool:
        """True when the policy must not command now: this state left the safety envelope
        (recorded, reported), or an earlier one did and the arm is not back inside. Either way
        this state is answered with zero velocities (hold), and no action is echoed."""
        lower, upper = self._envelope
        outside = np.flatnonzero((positions < lower) | (positions > upper))
        if outside.size == 0 and self._violation is None:
            return False
        if outside.size == 0:  # back inside (a driver reset): the policy commands again
            self._violation = None
            self.get_logger().info("back inside the safety envelope: commanding again")
            self.status.set(envelope_violation=None)
            self.status.publish()
            return False
        self._commands_pub.publish(commands_to_msg(self._zeros, stamp=msg.header.stamp))
        if self._violation is None:
            j = int(outside[0])
            reason = (
                f"joint {self.joint_names[j]} at {positions[j]:.4f} rad left the safety "
                f"envelope [{lower[j]:.4f}, {upper[j]:.4f}]: holding (zero velocities) until "
                "homing or a reset brings the arm back"
            )
            self._violation = {"stamp_ns": stamp_ns, "reason": reason}
            self._violations += 1
            self.status.set(
                envelope_violation=self._violation, envelope_violations=self._violations
            )
            self.get_logger().error(reason)
            self.status.publish()
        return True

    def _home_tick(self, homing: _Homing, positions: np.ndarray, msg: JointState) -> None:
        """One step of homing: a P-law towards the target clamped to max_velocity, until within
        ``homing_tolerance`` (success, the envelope violation cleared) or the deadline."""
        command, limits = self._out.velocities, self._limits
        np.subtract(homing.target, positions, out=command)
        error = float(np.max(np.abs(command)))
        stamp_ns = self._last_stamp_ns
        if error <= self.params["homing_tolerance"]:
            self._commands_pub.publish(commands_to_msg(self._zeros, stamp=msg.header.stamp))
            if self._violation is not None:
                self._violation = None
                self.status.set(envelope_violation=None)
            self._end_homing(homing, True, f"home reached at stamp_ns={stamp_ns}")
            return
        if time.monotonic() > homing.deadline:
            self._commands_pub.publish(commands_to_msg(self._zeros, stamp=msg.header.stamp))
            self._end_homing(
                homing,
                False,
                f"homing timed out after {self.params['homing_timeout_s']} s, "
                f"{error:.4f} rad from home (stamp_ns={stamp_ns})",
            )
            return
        np.multiply(command, self.params["homing_gain"], out=command)
        np.clip(command, -limits, limits, out=command)
        self._commands_pub.publish(self._out.command(stamp_ns))

    def _end_homing(self, homing: _Homing, ok: bool, message: str) -> None:
        """Answers a home call (the waiting service callback reads ``result``)."""
        if self._homing is homing:
            self._homing = None
        if homing.result is None:
            homing.result = (ok, message)
            if not ok:
                self._homing_failures += 1
            self.status.set(homing=False, homing_failures=self._homing_failures)
            homing.done.set()
            self._home_wake.trigger()

    async def _on_home(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        """Drives the arm home (see :meth:`_home_tick`) and answers when it is there (the
        message names the stamp of the state that reached it: ``stamp_ns=<ns>``) or why not;
        never holds the executor. A call while homing is in progress is answered "busy"."""
        if not self._commanding:
            response.success, response.message = False, "not active (lifecycle): not homing"
            return response
        if self._homing is not None:
            self.status.drop("home", "busy: homing is already in progress")
            response.success, response.message = False, "busy"
            return response
        timeout = self.params["homing_timeout_s"]
        homing = _Homing(self._home_target(), time.monotonic() + timeout, threading.Event())
        self._homings += 1
        self.status.set(homing=True, homings=self._homings)
        self._homing = homing  # the tick takes it from the next joint state on
        while not homing.done.is_set() and time.monotonic() < homing.deadline + 0.5:
            await NextSpin()  # resumed at the executor's next wake-up (self._home_wake: at once)
        with self._command_lock:  # the tick may be ending it at this moment
            if homing.result is None:  # no joint state came to end it
                self._end_homing(homing, False, f"homing got no joint states for {timeout} s")
        response.success, response.message = homing.result
        self.status.publish()
        return response

    def _check_stamp(self, stamp_ns: int) -> None:
        """Raises ValueError for a stamp too far from the node's clock or not after the previous
        one; resynchronises on a new, earlier timeline (:data:`RESYNC_STATES` in a row)."""
        tolerance = self.params["stamp_tolerance_s"]
        if tolerance > 0:
            now_ns = self._clock_ns if tolerance >= CACHED_CLOCK_TOLERANCE_S else self._read_clock()
            check_stamp_near_clock(stamp_ns, now_ns, tolerance)
        last = self._last_stamp_ns
        if last is not None and stamp_ns <= last:
            consecutive = self._behind_ns is not None and stamp_ns > self._behind_ns
            self._behind_count = self._behind_count + 1 if consecutive else 1
            self._behind_ns = stamp_ns
            if self._behind_count < RESYNC_STATES:
                raise ValueError(f"stamp {stamp_ns} ns is not after the previous stamp {last} ns")
            self._resyncs += 1
            reason = (
                f"joint-state stamps went back from {last} ns to {stamp_ns} ns for "
                f"{RESYNC_STATES} states in a row (a restarted driver or a sim time reset): "
                "resynchronised on the new timeline"
            )
            self.status.set(clock_resyncs=self._resyncs, last_resync=reason)
            self.get_logger().warning(reason)
            self.status.publish()
        self._behind_ns, self._behind_count = None, 0

    def _hold_and_fall_back(self, bad: _ActivePolicy, msg: JointState) -> None:
        """The active policy computed a non-finite action: this state is answered with zero
        velocities (hold position), the policy is dropped (its run and version are refused from
        now on) and the last good policy before it runs again, if there is one."""
        self._commands_pub.publish(commands_to_msg(self._zeros, stamp=msg.header.stamp))
        with self._swap_lock:
            fallback = self._fallback if self._active is bad else self._active
            self._active, self._fallback = fallback, None
        self._refused = (bad.run_id, bad.version)
        self._fallbacks += 1
        back_to = (
            f"back to version {fallback.version} of run {fallback.run_id!r}"
            if fallback
            else "no earlier policy: publishing nothing (the driver holds the arm)"
        )
        self.status.drop(
            "policy",
            f"non-finite action from version {bad.version} of run {bad.run_id!r}: "
            f"held position, policy dropped, {back_to}",
        )
        self.get_logger().error(f"policy produced a non-finite action; {back_to}")
        self._update_status()
        self.status.publish()

    def _read_clock(self) -> int:
        self._clock_ns = self.get_clock().now().nanoseconds
        return self._clock_ns

    def _watchdog(self) -> None:
        """After each tick and every WATCHDOG_PERIOD_S: the clock reading for the next tick's
        stamp check, and the hold when joint states went stale."""
        self._read_clock()
        now = time.monotonic()
        if self._holding:
            self._hold(now)
            return
        has_policy = self._active is not None and self._commanding
        if not has_policy or now - self._last_valid <= self.params["stale_timeout_s"]:
            return
        if not self._stale:
            self._stale = True
            self._last_stamp_ns = None  # accept a restarted driver's clock
            self.get_logger().warning(
                f"no valid joint state for {self.params['stale_timeout_s']} s: holding position"
            )
            self._update_status()
        self._hold(now)

    def _hold(self, now: float) -> None:
        """Zero velocities, at most at hold_rate_hz (labelled stamp_ns=0: they answer no state)."""
        if now - self._last_hold >= 1.0 / self.params["hold_rate_hz"]:
            self._last_hold = now
            self._commands_pub.publish(commands_to_msg(self._zeros, stamp=0))

    # --- policy updates (decoder thread) and services ------------------------------------

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        """Hands a policy message to the decoder thread (the newest pending one wins)."""
        if len(msg.data) > self.params["policy_max_bytes"]:  # cheap check before queueing
            self.status.drop(
                "policy",
                f"oversized policy: {len(msg.data)} bytes, limit {self.params['policy_max_bytes']}",
            )
            self.status.publish()
            return
        with self._policy_cond:
            if self._pending_policy is not None:
                self.status.drop("policy", "superseded by a newer message before decoding")
            self._pending_policy = msg
            self._policy_cond.notify()

    def _decode_policies(self) -> None:
        """Decoder thread: validates and installs queued policies off the control path."""
        while True:
            with self._policy_cond:
                self._policy_cond.wait_for(
                    lambda: self._pending_policy is not None or self._closing
                )
                if self._closing:
                    return
                msg, self._pending_policy = self._pending_policy, None
            try:
                self.handle_policy(msg)
            except Exception as exc:  # keep decoding later updates; the status shows it
                self.status.drop("policy", f"{type(exc).__name__}: {exc}")
                self.get_logger().error(f"policy update failed: {exc!r}")

    def handle_policy(self, msg: UInt8MultiArray) -> bool:
        """Validates a policy message and swaps it in; a bad one is dropped. True if taken."""
        try:
            bundle = policy_data_from_msg(
                msg, self.params["policy_max_bytes"], deploy_key=self._deploy_key
            )
            problem = self._incompatibility(bundle) or self._not_newer(bundle)
            if problem:
                raise ValueError(problem)
        except ValueError as exc:
            self.status.drop("policy", str(exc))
            self.status.publish()
            return False
        self._install(bundle)
        self.get_logger().info(f"policy version {bundle.version} (run {bundle.run_id!r}) active")
        return True

    def _incompatibility(self, bundle: PolicyData) -> str | None:
        """Why ``bundle`` cannot drive these joints, or None."""
        n = len(self.joint_names)
        if bundle.spec.obs_dim != 2 * n or bundle.spec.act_dim != n:
            return (
                f"policy spec obs_dim={bundle.spec.obs_dim}, act_dim={bundle.spec.act_dim} does "
                f"not match {n} joints (expected {2 * n} and {n})"
            )
        return policy_mismatch(bundle.metadata, self.robot, self.joint_names)

    def _not_newer(self, bundle: PolicyData) -> str | None:
        """Why ``bundle`` does not replace the current policy (the acceptance rule), or None."""
        active = self._active
        if (bundle.run_id, bundle.version) == self._refused:
            return (
                f"refused: version {bundle.version} of run {bundle.run_id!r} computed a "
                "non-finite action"
            )
        new = Deployment.of(bundle.run_id, bundle.version, bundle.metadata)
        return replacement_refusal(active.deployment if active else None, new)

    def _install(self, bundle: PolicyData) -> None:
        deployment = Deployment.of(bundle.run_id, bundle.version, bundle.metadata)
        active = _ActivePolicy(bundle.policy, bundle.version, bundle.run_id, deployment)
        with self._swap_lock:  # held for the swap alone; the tick reads without it
            self._active, self._fallback = active, self._active or self._fallback
        self._updates += 1
        self._update_status()
        self.status.publish()

    def _on_set_exploration(
        self, request: SetBool.Request, response: SetBool.Response
    ) -> SetBool.Response:
        result = self.set_parameters([Parameter("explore", value=bool(request.data))])[0]
        response.success = result.successful
        response.message = (
            f"exploration {'on' if request.data else 'off'}" if result.successful else result.reason
        )
        return response

    # --- status ---------------------------------------------------------------------------

    def _tick_fields(self) -> dict[str, Any]:
        """The tick's counters, read when the status is built (the tick takes no lock)."""
        ticks = self._ticks
        if not ticks:
            return {"ticks": 0, "policy_us_p50": None, "tick_us_p50": None, "tick_us_p99": None}
        n = min(ticks, POLICY_TIMING_WINDOW)
        tick_p50, tick_p99 = np.percentile(self._tick_ns[:n], [50, 99]) / 1e3
        return {
            "ticks": ticks,
            "policy_us_p50": float(np.median(self._policy_ns[:n])) / 1e3,
            "tick_us_p50": float(tick_p50),
            "tick_us_p99": float(tick_p99),
        }

    def _update_status(self) -> None:
        active = self._active
        self.status.set(
            policy_version=active.version if active else None,
            run_id=active.run_id if active else None,
            policy_adapted=active.deployment.adapted if active else None,
            has_policy=active is not None,
            policy_updates=self._updates,
            policy_fallbacks=self._fallbacks,
            exploring=self.params["explore"],
            stale=self._stale,
        )

    def destroy_node(self) -> None:
        """Stops the control loop and the policy decoder thread, then destroys the node."""
        if hasattr(self, "_control_loop"):  # construction may have failed before it existed
            self._control_loop.close()
        if hasattr(self, "_policy_cond"):  # construction may have failed before it existed
            with self._policy_cond:
                self._closing = True
                self._policy_cond.notify_all()
            if self._decoder.is_alive():
                self._decoder.join(timeout=5.0)
        super().destroy_node()


@dataclass(frozen=True)
class _ActivePolicy:
    policy: NumpyPolicy
    version: int
    run_id: str
    deployment: Deployment


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``policy_controller_node`` executable."""
    return run_node(PolicyControllerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
