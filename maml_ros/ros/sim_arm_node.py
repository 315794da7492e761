"""sim_arm_node: the simulated KUKA iiwa behaving as a robot driver.

It is the only node that knows the hidden task. Each control tick (the env's 40 Hz, with 240 Hz
physics inside) a worker thread:

1. applies a pending task change (``task`` topic) or reset (``reset`` service); a task change
   is confirmed on the latched ``active_task`` with the stamp of the first state under it
   (the contract is in :mod:`maml_ros.ros.interfaces`);
2. advances the simulated clock by exactly one control period and publishes the arm's
   ``joint_states`` with that stamp (encoder offsets included);
3. in lockstep mode, waits up to ``command_wait_s`` for the command answering that state, so
   the executed action is the one the controller computed for it;
4. steps the env with the latest command (rad/s divided by the env's ``max_joint_velocity``);
5. publishes the step's ``reward`` stamped with the state's stamp (x reward, y success,
   z episode) and appends the transition to ``transition_log`` when one is set: one JSON line
   ``{stamp_ns, episode, positions, velocities, action, reward, success, answered}`` with the
   published state the step was taken from, the action in env units as executed (clipped to
   [-1, 1]) and whether it was the answer to that state;
6. sleeps so that sim time runs at ``real_time_factor`` times wall-clock time (0: no sleep).

Commands: the latest valid command is held (ros2_control forward-command behaviour) until it is
older than ``command_timeout_s`` of wall time, then the arm holds still (zero velocity). A reset
clears the held command. A command answers a state when it carries that state's stamp
(``layout.dim[0].label == "stamp_ns=<ns>"``, see :func:`maml_ros.ros.convert.commands_to_msg`;
``stamp_ns=0`` answers none, e.g. a controller's hold) or, for an unstamped command from any
other publisher, when it arrived after the state was published. So a late answer is never
taken for a later state. When no answer arrives within ``command_wait_s`` (counted in
``lockstep_misses``) the held command is executed.

``reset`` never holds the executor: its callback (a coroutine in a callback group of its own)
waits for the physics thread to apply it, and a call while another reset is still pending is
answered at once with ``success: false, message: "busy"`` (counted as ``reset`` in the
status).

Episodes: ``reset`` puts the arm back home (plus the env's small reset noise) and starts episode
counter + 1 (the first episode, from start-up, is 0). After ``episode_steps`` steps in an
episode, with ``hold_after_episode`` on (default), the driver holds the arm still (zero velocity,
commands ignored) and keeps publishing states and rewards until the next reset; nothing in the
messages marks the end (learners count steps from the reset), only ``~/status`` shows
``episode_over``. With ``hold_after_episode`` off the commands keep being executed.
With ``offer_reset`` off the driver has no ``reset`` service (a real arm under a plain
velocity controller): the episode counter stays 0, commands are always executed, and the
adaptation node's ``reset_mode: homing`` has the controller drive the arm home instead.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from geometry_msgs.msg import Vector3Stamped
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from maml_ros.ros.common import (
    NextSpin,
    NodeStatus,
    ParamSpec,
    ValidatedParameters,
    ns_to_stamp,
    run_node,
)
from maml_ros.ros.convert import (
    TaskChange,
    active_task_to_msg,
    arrays_to_joint_state,
    command_stamp_ns,
    commands_from_msg,
    reward_to_msg,
    task_id_of,
    task_label,
)
from maml_ros.ros.interfaces import (
    ACTIVE_TASK_TOPIC,
    COMMAND_QOS,
    DEFAULT_CONTROLLER,
    JOINT_STATES_QOS,
    JOINT_STATES_TOPIC,
    LATCHED_QOS,
    RESET_SERVICE,
    REWARD_TOPIC,
    SERVICE_QOS,
    STREAM_QOS,
    commands_topic,
)
from maml_ros.ros.tasks import TaskInbox
from maml_ros.runtime.robots import DEFAULT_ROBOT, robot_problem
from maml_ros.sim import ArmEnv, TaskSpec, TaskSpecError, nominal_task

CLOCK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
"""Reliable, so both reliable and best-effort (rclpy's TimeSource) subscribers match."""
RESET_TIMEOUT_S = 5.0
BUSY = "busy"
"""The reset's answer while another reset is waiting for the physics thread."""


def _task_json_problem(text: str) -> str | None:
    if text == "":
        return None
    try:
        TaskSpec.from_json(text)
    except (TaskSpecError, OverflowError) as exc:
        return f"initial_task: {exc}"
    return None


def _log_path_problem(path: str) -> str | None:
    return "transition_log must not contain NUL" if "\0" in path else None


PARAMS = [
    ParamSpec(
        "controller",
        DEFAULT_CONTROLLER,
        "Controller whose <controller>/commands drive the arm",
        validator=lambda v: None if v.strip("/") else "controller must not be empty",
        read_only=True,
    ),
    ParamSpec(
        "real_time_factor",
        1.0,
        "Sim time per wall time (1 = real time, >1 faster, 0 = as fast as lockstep allows)",
        float_range=(0.0, 1000.0),
    ),
    ParamSpec(
        "lockstep",
        True,
        "Wait (up to command_wait_s) for the command answering each published state",
    ),
    ParamSpec(
        "command_wait_s",
        0.02,
        "Lockstep: longest wait for the command answering a state (s)",
        float_range=(0.0, 10.0),
    ),
    ParamSpec(
        "command_timeout_s",
        0.5,
        "A command older than this (wall s) is dropped and the arm holds still (0 = never)",
        float_range=(0.0, 60.0),
    ),
    ParamSpec(
        "episode_steps",
        50,
        "Steps per episode; after them the arm holds still until reset (hold_after_episode)",
        int_range=(1, 1_000_000),
    ),
    ParamSpec(
        "hold_after_episode",
        True,
        "After episode_steps steps, hold still (ignore commands) until the next reset",
    ),
    ParamSpec(
        "offer_reset",
        True,
        "Offer the reset service; false: a driver without one, like a real arm under a plain "
        "velocity controller (episodes never end: hold_after_episode does not apply)",
        read_only=True,
    ),
    ParamSpec("publish_clock", False, "Publish rosgraph_msgs/Clock on /clock with the sim time"),
    ParamSpec(
        "initial_task",
        "",
        "Task JSON applied at start-up ('' = the nominal arm reaching the default goal)",
        validator=_task_json_problem,
        read_only=True,
    ),
    ParamSpec("seed", 0, "Seed of the env's reset noise", int_range=(0, 2**31 - 1), read_only=True),
    ParamSpec(
        "robot",
        DEFAULT_ROBOT,
        "Robot description (maml_ros.runtime.robots) the simulated arm is built from",
        validator=robot_problem,
        read_only=True,
    ),
    ParamSpec(
        "transition_log",
        "",
        "Append one JSON line per executed step to this file ('' = off)",
        validator=_log_path_problem,
        read_only=True,
    ),
]


@dataclass(frozen=True)
class _Command:
    """A valid command in env units, with its arrival time, arrival number and stamp."""

    action: np.ndarray
    received: float
    seq: int
    stamp_ns: int | None
    """The joint state it answers (None: an unstamped command, 0: a hold answering none)."""

    def answers(self, stamp_ns: int, seq_before: int) -> bool:
        """True when this command answers the state ``stamp_ns`` published at ``seq_before``."""
        return self.seq > seq_before and self.stamp_ns in (None, stamp_ns)


@dataclass
class _ResetRequest:
    done: threading.Event = field(default_factory=threading.Event)
    episode: int = -1


class SimArmNode(Node):
    """The simulated arm as a ROS driver (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_arm", **kwargs)
        # Everything destroy_node touches exists before anything below can raise.
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._pending_resets: list[_ResetRequest] = []
        self._worker: threading.Thread | None = None
        self._log: TextIO | None = None
        self.env: ArmEnv | None = None
        self.params = ValidatedParameters(self, PARAMS, self._on_parameter_change)
        self.status = NodeStatus(self)
        task = (
            TaskSpec.from_json(self.params["initial_task"])
            if self.params["initial_task"]
            else nominal_task(self.params["robot"])
        )
        if task.robot != self.params["robot"]:
            raise ValueError(
                f"initial_task is for robot {task.robot!r}, this arm is {self.params['robot']!r}"
            )
        self.env = ArmEnv(task, robot=self.params["robot"])
        self._session = uuid.uuid4().hex[:12]
        self._task = TaskChange(task_id_of(task), task)
        self.env.reset(seed=self.params["seed"])
        self.joint_names = list(self.env.joint_names)
        self._period_ns = round(1e9 / self.env.control_hz)
        self._sim_ns = time.time_ns()
        self._episode = 0
        self._step = 0
        self._ticks = 0
        self._lockstep_misses = 0
        if self.params["transition_log"]:
            try:
                self._log = open(self.params["transition_log"], "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ValueError(f"cannot open transition_log: {exc}") from exc

        self._seq = 0
        self._latest: _Command | None = None  # any command (the one held)
        self._answer: _Command | None = None  # the latest command that may answer a state
        self._pending_task: TaskChange | None = None

        controller = self.params["controller"].strip("/")
        self._state_pub = self.create_publisher(JointState, JOINT_STATES_TOPIC, JOINT_STATES_QOS)
        self._reward_pub = self.create_publisher(Vector3Stamped, REWARD_TOPIC, STREAM_QOS)
        self._active_task_pub = self.create_publisher(String, ACTIVE_TASK_TOPIC, LATCHED_QOS)
        self._clock_pub = None
        self._on_parameter_change("publish_clock", self.params["publish_clock"])
        self.create_subscription(
            Float64MultiArray,
            commands_topic(controller),
            self._on_command,
            COMMAND_QOS,
        )
        self.task_inbox = TaskInbox(self, self.status, self._on_task, self.params["robot"])
        # The reset callback is a coroutine in a group of its own: while it waits for the
        # physics thread, the executor goes on (commands, and other reset calls: busy).
        self._wake = self.create_guard_condition(lambda: None)
        if self.params["offer_reset"]:
            self.create_service(
                Trigger,
                RESET_SERVICE,
                self._on_reset,
                qos_profile=SERVICE_QOS,
                callback_group=ReentrantCallbackGroup(),
            )
        self._confirm_task(self._sim_ns + self._period_ns)
        self._update_status()
        self._worker = threading.Thread(target=self._run, name="sim_arm_physics", daemon=True)
        self._worker.start()

    # --- inputs (executor threads) --------------------------------------------------------

    def _on_command(self, msg: Float64MultiArray) -> None:
        try:
            velocities = commands_from_msg(msg, len(self.joint_names))
            stamp_ns = command_stamp_ns(msg)
        except ValueError as exc:
            self.status.drop("command", str(exc))
            return
        with self._cond:
            self._seq += 1
            command = _Command(
                velocities / self.env.max_joint_velocity, time.monotonic(), self._seq, stamp_ns
            )
            self._latest = command
            if stamp_ns != 0:
                self._answer = command
            self._cond.notify_all()

    def _on_parameter_change(self, name: str, value: object) -> None:
        """/clock is advertised only while publish_clock is on."""
        if name != "publish_clock":
            return
        if value and self._clock_pub is None:
            self._clock_pub = self.create_publisher(Clock, "/clock", CLOCK_QOS)
        elif not value and self._clock_pub is not None:
            publisher, self._clock_pub = self._clock_pub, None
            self.destroy_publisher(publisher)

    def _on_task(self, change: TaskChange) -> str | None:
        """Takes a task change (applied at the next tick); the id it already runs is a no-op."""
        with self._cond:
            latest = self._pending_task or self._task
            if change.id == latest.id:
                return None
            self._pending_task = change
            self._cond.notify_all()
        self.get_logger().info(f"task {change.id} ({change.task.family}) received")
        return None

    async def _on_reset(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        """Queues a reset and answers once the physics thread applied it, without holding the
        executor; a call while another reset is pending is answered "busy" at once."""
        reset = _ResetRequest()
        with self._cond:
            busy = bool(self._pending_resets)
            if not busy:
                self._pending_resets.append(reset)
                self._cond.notify_all()
        if busy:
            self.status.drop("reset", "busy: another reset is waiting for the physics thread")
            response.success = False
            response.message = BUSY
            return response
        deadline = time.monotonic() + RESET_TIMEOUT_S
        while not reset.done.is_set() and time.monotonic() < deadline:
            await NextSpin()  # resumed at the executor's next wake-up (self._wake: at once)
        if not reset.done.is_set() or reset.episode < 0:
            response.success = False
            response.message = "reset timed out: the physics loop is not running"
            return response
        response.success = True
        response.message = f"arm reset to home; episode {reset.episode}"
        return response

    # --- the physics loop (worker thread) -------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set() and self.context.ok():
            try:
                self._tick()
            except Exception as exc:  # keep the driver alive; the status shows the failure
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: the context went first (SIGINT), nothing to publish
                self.status.drop("tick_error", f"{type(exc).__name__}: {exc}")
                self.get_logger().error(f"physics tick failed: {exc!r}")
                self._stop.wait(0.1)
            rtf = self.params["real_time_factor"]
            if rtf > 0:
                next_tick += self._period_ns / 1e9 / rtf
                delay = next_tick - time.monotonic()
                if delay > 0:
                    with self._cond:  # a reset starts its episode at once, not at the next tick
                        reset = self._cond.wait_for(
                            lambda: bool(self._pending_resets) or self._stop.is_set(), delay
                        )
                    if reset:
                        next_tick = time.monotonic()
                elif delay < -0.5:  # far behind (e.g. a debugger pause): do not try to catch up
                    next_tick = time.monotonic()

    def _apply_requests(self) -> None:
        with self._cond:
            change, self._pending_task = self._pending_task, None
            resets, self._pending_resets = self._pending_resets, []
        if change is not None:
            self.env.set_task(change.task)
            self._task = change
            self._confirm_task(self._sim_ns + self._period_ns)
        if resets:
            self.env.reset()
            self._episode += 1
            self._step = 0
            with self._cond:
                self._latest = self._answer = None
            self._update_status()  # the status shows the new episode before the reset returns
            for reset in resets:
                reset.episode = self._episode
                reset.done.set()
            self._wake.trigger()  # the waiting reset callback answers now

    def _tick(self) -> None:
        self._apply_requests()
        self._sim_ns += self._period_ns
        stamp_ns = self._sim_ns
        positions, velocities = self.env.joint_state()
        with self._cond:
            seq_before = self._seq
        self._state_pub.publish(
            arrays_to_joint_state(stamp_ns, self.joint_names, positions, velocities)
        )
        clock_pub = self._clock_pub
        if clock_pub is not None:
            clock_pub.publish(Clock(clock=ns_to_stamp(stamp_ns)))

        holding = (
            self.params["offer_reset"]  # without a reset nothing would end the hold
            and self.params["hold_after_episode"]
            and self._step >= self.params["episode_steps"]
        )
        action, answered = self._action_for_state(stamp_ns, seq_before, wait=not holding)
        if self._stop.is_set():
            return  # shutting down: do not execute a command nobody answered
        if holding:  # the episode is over: hold still whatever was commanded
            action, answered = np.zeros_like(action), False
        _, reward, _, _, info = self.env.step(action)
        success = bool(info["success"])
        label = task_label(self._task.id, self._session)
        self._reward_pub.publish(reward_to_msg(stamp_ns, reward, success, self._episode, label))
        if self._log is not None:
            record = {
                "stamp_ns": stamp_ns,
                "episode": self._episode,
                "positions": positions.tolist(),
                "velocities": velocities.tolist(),
                "action": np.clip(action, -1.0, 1.0).tolist(),
                "reward": reward,
                "success": success,
                "answered": answered,
            }
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()
        self._step += 1
        self._ticks += 1
        self._update_status()

    def _action_for_state(
        self, stamp_ns: int, seq_before: int, wait: bool
    ) -> tuple[np.ndarray, bool]:
        """(the command to execute for the state just published, in env units; answered).

        ``answered``: a command answering this state arrived (stamped with its stamp, or
        unstamped and received after the state was published). Otherwise the held command
        is executed, or zero velocity when there is none or it timed out.
        """
        lockstep = wait and self.params["lockstep"]

        def answered() -> bool:
            return self._answer is not None and self._answer.answers(stamp_ns, seq_before)

        with self._cond:
            if lockstep:  # a reset request pre-empts the wait (its caller blocks meanwhile)
                self._cond.wait_for(
                    lambda: answered() or self._stop.is_set() or bool(self._pending_resets),
                    timeout=self.params["command_wait_s"],
                )
            is_answered = answered()
            command = self._answer if is_answered else self._latest
            pre_empted = bool(self._pending_resets)
        if is_answered:
            return command.action.copy(), True
        if lockstep and not self._stop.is_set() and not pre_empted:
            self._lockstep_misses += 1
        timeout = self.params["command_timeout_s"]
        if command is None or (timeout > 0 and time.monotonic() - command.received > timeout):
            return np.zeros(len(self.joint_names)), False
        return command.action.copy(), False

    def _confirm_task(self, since_stamp_ns: int) -> None:
        """Publishes (latched) that the current task runs from the state ``since_stamp_ns``."""
        self._active_task_pub.publish(active_task_to_msg(self._task, since_stamp_ns, self._session))
        self.get_logger().info(
            f"running task {self._task.id} ({self._task.task.family}) from stamp {since_stamp_ns}"
        )

    def _update_status(self) -> None:
        self.status.set(
            task_id=self._task.id,
            driver_session=self._session,
            episode=self._episode,
            step=self._step,
            episode_over=self._step >= self.params["episode_steps"],
            task_family=self.env.task.family,
            sim_time_ns=self._sim_ns,
            ticks=self._ticks,
            lockstep_misses=self._lockstep_misses,
            commands_received=self._seq,
        )

    # --- shutdown -------------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stops the physics loop, then closes the env and the transition log."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=5.0)
        with self._cond:
            for reset in self._pending_resets:
                reset.done.set()
            self._pending_resets.clear()
        if self.env is not None:
            self.env.close()
            self.env = None
        if self._log is not None:
            self._log.close()
            self._log = None
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``sim_arm_node`` executable."""
    # One executor thread: the physics runs on its own thread, and rclpy's SingleThreadedExecutor
    # delivers commands faster than the multi-threaded one. A reset request (whose coroutine
    # callback waits, without blocking the executor, until the physics thread has applied it)
    # pre-empts the lockstep wait.
    return run_node(SimArmNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
