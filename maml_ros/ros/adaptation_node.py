"""adaptation_node: on-robot MAML adaptation of the arm policy after a task change.

On start it loads the meta-trained checkpoint and publishes it (latched) on ``policy``. It joins
``joint_states``, ``<controller>/actions`` and ``reward`` on their stamp into control steps
(:class:`StepJoiner`). On a task change it acknowledges the task on ``task_ack``, waits until the
driver confirms on ``active_task`` that it runs that task (else the adaptation ``failed``, the
policy unchanged), and only uses steps stamped from the confirmation on; a change of the
driver's task or session under it ends the adaptation ``failed`` with the policy it started
from. Then it evaluates the policy, collects K exploring rollouts
through the driver's ``reset`` service, runs the inner update (``maml_ros.rl.adapt_policy``),
publishes the adapted policy, evaluates it and rolls back when it is worse. All of that runs in
one worker thread; the subscription callbacks only validate and buffer.

Status (``~/status``, JSON, also published on every phase change): ``phase`` (idle,
confirming_task, evaluating_pre, collecting, adapting, evaluating_post, done, rolled_back,
cancelled, failed), ``adaptation_id`` (one per accepted task change), ``task_id``,
``task_family``, ``rollouts_collected``,
``rollouts_discarded``, ``inner_loss``, ``return_pre``/``success_pre``,
``return_post``/``success_post``, ``adapt_latency_ms``, timings on the node's clock
(``task_to_first_rollout_step_ms``, ``collect_ms``, ``policy_active_after_rollouts_ms``: the
last rollout step to the controller reporting the adapted version, and
``task_to_policy_active_ms``), ``inner_device``, ``policy_version``,
``run_id``, ``reason`` (why a rollback or failure happened), ``cancellations``, ``ready``
(the warm-up update is done) and the drop counters by kind (joint_states, actions, reward,
task, step, rollout, controller_status, buffer_dump).

Each adaptation starts from the meta-trained weights (``reset_to_meta``, MAML's protocol): if an
adapted policy is active, the meta weights are republished first as a new version.

Actions in the rollouts and in ``buffer_dump`` are the controller's echoed actions in policy
units (before clamping), which is what the policy-gradient loss needs.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import Vector3Stamped
from rclpy.client import Client
from rclpy.qos import HistoryPolicy, QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import String, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger

from maml_ros.rl.adapt import adapt_policy, warm_up
from maml_ros.rl.checkpoint import CheckpointError, PolicyBundle, load_bundle
from maml_ros.rl.pg import Rollouts
from maml_ros.rl.policy import probe_problem
from maml_ros.ros.common import (
    AUTOSTART,
    ManagedNode,
    NodeStatus,
    ParamSpec,
    ValidatedParameters,
    run_node,
)
from maml_ros.ros.convert import (
    ActiveTask,
    TaskChange,
    action_from_msg,
    active_task_from_msg,
    check_stamp_near_clock,
    joint_state_to_arrays,
    policy_to_msg,
    reward_from_msg,
)
from maml_ros.ros.interfaces import (
    ACTIVE_TASK_TOPIC,
    DEFAULT_CONTROLLER,
    EXPLORATION_SERVICE,
    JOINT_STATES_QOS,
    JOINT_STATES_TOPIC,
    LATCHED_QOS,
    POLICY_TOPIC,
    RESET_SERVICE,
    REWARD_TOPIC,
    STREAM_QOS,
    TASK_TOPIC,
    actions_topic,
)
from maml_ros.ros.tasks import TaskInbox
from maml_ros.sim import TaskSpec, observation_from_joint_state

JOINT_STATE_BUFFER_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=JOINT_STATES_QOS.reliability,
    durability=JOINT_STATES_QOS.durability,
)
"""The sensor-data profile of ``joint_states`` with a deeper local queue: a step whose state is
lost cannot be used, so this node keeps up to 100 states while its process is descheduled."""
SHIPPED_CHECKPOINT = "models/arm_maml.safetensors"
"""Path of the meta-trained checkpoint inside share/maml_ros."""
DEFAULT_JOINT_NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
"""The simulated KUKA iiwa's joints (``ArmEnv.joint_names``)."""
PHASES = (
    "idle",
    "confirming_task",
    "evaluating_pre",
    "collecting",
    "adapting",
    "evaluating_post",
    "done",
    "rolled_back",
    "cancelled",
    "failed",
)


# ---------------------------------------------------------------------------------------------
# Joining the three streams into control steps (no ROS in here; unit-testable).


@dataclass(frozen=True)
class Step:
    """One control step: the state it was taken from, the action, its reward; one stamp."""

    stamp_ns: int
    positions: np.ndarray
    velocities: np.ndarray
    action: np.ndarray
    reward: float
    success: bool
    episode: int
    generation: int
    """Driver generation: increases whenever the joint-state stamps go backwards (restart)."""
    task_label: str = ""
    """``<task id>@<driver session>`` the reward was earned under ("" when not named)."""


MAX_CONTROLLER_STATUS_CHARS = 64 * 1024
"""Longer controller status messages are dropped before parsing."""
TASK_SWITCH_GRACE_S = 1.0
"""How long a driver's switch to another task (same session) waits for the task message that
explains it (then the adaptation is cancelled, not failed)."""
PERIOD_WINDOW = 64
"""The control period is the median of the last this many joint-state stamp deltas."""
PERIOD_BOUNDS_NS = (100_000, 10_000_000_000)
"""Stamp deltas outside [0.1 ms, 10 s] are not control periods (a stray or duplicated state,
a pause) and never enter the estimate."""

CLEARED_RESULTS = {
    "rollouts_collected": 0,
    "rollouts_discarded": 0,
    "inner_loss": None,
    "return_pre": None,
    "success_pre": None,
    "return_post": None,
    "success_post": None,
    "adapt_latency_ms": None,
    "task_to_first_rollout_step_ms": None,
    "collect_ms": None,
    "policy_active_after_rollouts_ms": None,
    "task_to_policy_active_ms": None,
}
"""Status fields of one adaptation, as they read before it has results."""


class StepJoiner:
    """Bounded buffers joining joint states, actions and rewards on their stamp.

    A step completes when all three parts of a stamp have arrived; parts of older stamps that
    are still incomplete then can never complete (each stream is FIFO) and are dropped through
    ``on_drop("step", reason)``. Completed steps wait in a bounded queue for :meth:`wait_step`.
    Joint-state stamps that go backwards mean the driver restarted: pending parts are discarded
    and ``generation`` increases. The control period (:attr:`period_ns`) is the median of the
    recent stamp deltas within :data:`PERIOD_BOUNDS_NS`, so one state stamped 1 ns after
    another cannot poison it.
    """

    def __init__(self, capacity: int, on_drop: Callable[[str, str], None]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._on_drop = on_drop
        self._pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._completed: deque[Step] = deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._newest_state_ns: int | None = None
        self._last_completed_ns: int | None = None
        self.generation = 0
        self._deltas: deque[int] = deque(maxlen=PERIOD_WINDOW)
        self.last_episode: int | None = None
        self.steps_joined = 0

    def add_state(self, stamp_ns: int, positions: np.ndarray, velocities: np.ndarray) -> None:
        """Buffers the joint state of ``stamp_ns``."""
        with self._cond:
            if self._newest_state_ns is not None and stamp_ns < self._newest_state_ns:
                self.generation += 1
                self._pending.clear()
                self._last_completed_ns = None
            elif self._newest_state_ns is not None and stamp_ns > self._newest_state_ns:
                delta = stamp_ns - self._newest_state_ns
                if PERIOD_BOUNDS_NS[0] <= delta <= PERIOD_BOUNDS_NS[1]:
                    self._deltas.append(delta)
            self._newest_state_ns = stamp_ns
            self._add(stamp_ns, "state", (positions, velocities))

    @property
    def period_ns(self) -> int | None:
        """Control period: the median of the last :data:`PERIOD_WINDOW` stamp deltas within
        :data:`PERIOD_BOUNDS_NS` (None before the first)."""
        with self._cond:
            deltas = sorted(self._deltas)
        return deltas[(len(deltas) - 1) // 2] if deltas else None

    def add_action(self, stamp_ns: int, action: np.ndarray) -> None:
        """Buffers the action taken from the state of ``stamp_ns``."""
        with self._cond:
            self._add(stamp_ns, "action", action)

    def add_reward(
        self, stamp_ns: int, reward: float, success: bool, episode: int, task_label: str = ""
    ) -> None:
        """Buffers the reward of the step taken from the state of ``stamp_ns``, earned under
        ``task_label`` (:func:`~maml_ros.ros.convert.task_label`; "" when not named)."""
        with self._cond:
            self.last_episode = episode
            self._add(stamp_ns, "reward", (reward, success, episode, task_label))

    def wait_step(self, timeout_s: float) -> Step | None:
        """The oldest completed step, waiting up to ``timeout_s``; None on timeout."""
        with self._cond:
            if not self._completed:
                self._cond.wait(timeout_s)
            return self._completed.popleft() if self._completed else None

    def clear(self) -> None:
        """Forgets every completed step (pending parts stay: they may still complete)."""
        with self._cond:
            self._completed.clear()

    def _add(self, stamp_ns: int, part: str, value: Any) -> None:
        if self._last_completed_ns is not None and stamp_ns <= self._last_completed_ns:
            self._on_drop("step", f"late or duplicate {part} for stamp {stamp_ns}")
            return
        entry = self._pending.get(stamp_ns)
        if entry is None:
            entry = self._pending[stamp_ns] = {}
            if len(self._pending) > self._capacity:
                old_stamp, old = self._pending.popitem(last=False)
                self._drop_incomplete(old_stamp, old, "buffer full")
        if part in entry:
            self._on_drop("step", f"duplicate {part} for stamp {stamp_ns}")
            return
        entry[part] = value
        if len(entry) == 3:
            del self._pending[stamp_ns]
            self._last_completed_ns = stamp_ns
            for old_stamp in [s for s in self._pending if s < stamp_ns]:
                self._drop_incomplete(old_stamp, self._pending.pop(old_stamp), "never completed")
            (positions, velocities), action = entry["state"], entry["action"]
            reward, success, episode, task_label = entry["reward"]
            self._completed.append(
                Step(
                    stamp_ns=stamp_ns,
                    positions=positions,
                    velocities=velocities,
                    action=action,
                    reward=float(reward),
                    success=bool(success),
                    episode=int(episode),
                    generation=self.generation,
                    task_label=task_label,
                )
            )
            self.steps_joined += 1
            self._cond.notify_all()

    def _drop_incomplete(self, stamp_ns: int, entry: dict[str, Any], why: str) -> None:
        missing = sorted({"state", "action", "reward"} - set(entry))
        self._on_drop("step", f"stamp {stamp_ns} {why}: missing {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# Small pure helpers.


class Cancelled(Exception):
    """The adaptation in progress was cancelled by a newer task change."""


class PartialRollout(Exception):
    """A rollout could not be completed (driver restart, timeout, failed reset); discard it."""


class AdaptationFailed(RuntimeError):
    """The adaptation cannot go on (services missing, too many partial rollouts)."""


def episode_from_reset_message(message: str) -> int | None:
    """The episode number a driver's reset response names ("... episode 3 ..."), if any."""
    match = re.search(r"episode\D{0,8}?(\d+)", message, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def episode_return(steps: Sequence[Step]) -> tuple[float, bool]:
    """(sum of rewards, success at any step) of one episode."""
    return float(sum(s.reward for s in steps)), any(s.success for s in steps)


def update_problem(
    old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], max_ratio: float
) -> str | None:
    """Why an inner update must be rolled back (non-finite or exploding), or None if it is fine.

    ``old`` and ``new`` are parameter dicts of tensors; exploding means the update's global L2
    norm exceeds ``max_ratio`` times the parameters' norm.
    """
    if set(old) != set(new):
        return "the update changed the parameter names"
    delta_sq, norm_sq = 0.0, 0.0
    for name, before in old.items():
        after = new[name]
        if not bool(torch.isfinite(after).all()):
            return f"non-finite values in {name} after the update"
        delta_sq += float((after.double() - before.double()).pow(2).sum())
        norm_sq += float(before.double().pow(2).sum())
    ratio = math.sqrt(delta_sq) / max(math.sqrt(norm_sq), 1e-12)
    if not math.isfinite(ratio) or ratio > max_ratio:
        return f"exploding update: |delta|/|params| = {ratio:.3g} > {max_ratio}"
    return None


def _check_device(value: Any) -> str | None:
    if value not in ("auto", "cpu", "cuda"):
        return f"device must be auto, cpu or cuda, got {value!r}"
    if value == "cuda" and not torch.cuda.is_available():
        return "device is cuda but CUDA is not available"
    return None


def _check_name(value: Any) -> str | None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_/]*", value):
        return f"controller_name must be a ROS name (letters, digits, _ and /), got {value!r}"
    return None


def _check_joint_names(value: Any) -> str | None:
    names = list(value)
    if not names or any(not isinstance(n, str) or not n for n in names):
        return "joint_names must be a non-empty list of non-empty strings"
    if len(set(names)) != len(names):
        return "joint_names must be unique"
    return None


def _fs_limits(folder: Path) -> tuple[int, int]:
    """(PATH_MAX, NAME_MAX) of the file system holding ``folder`` (Linux's when unknown)."""
    try:
        return os.pathconf(folder, "PC_PATH_MAX"), os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 4096, 255


def _check_dump(value: Any) -> str | None:
    """Why ``value`` cannot be the buffer_dump file: longer than the file system allows, a
    directory, a special file (a FIFO would block the worker), a missing or unwritable folder.
    Never raises."""
    if not value:
        return None
    if "\0" in value:
        return "buffer_dump must not contain a NUL character"
    path = Path(value)
    try:
        path_max, name_max = _fs_limits(path.parent)
        if len(os.fsencode(os.path.abspath(path))) >= path_max:
            return f"buffer_dump path is longer than the file system allows ({path_max} bytes)"
        if any(len(os.fsencode(part)) > name_max for part in path.parts):
            return f"a name in buffer_dump is longer than the file system allows ({name_max} bytes)"
        if path.is_dir():
            return f"buffer_dump {value!r:.120} is a directory, not a file"
        if not path.parent.is_dir():
            return f"buffer_dump folder {str(path.parent)!r:.120} does not exist"
        if path.exists() and not path.is_file():
            return f"buffer_dump {value!r:.120} exists and is not a regular file"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"buffer_dump folder {str(path.parent)!r:.120} is not writable"
    except (OSError, ValueError) as err:  # ELOOP, EACCES, an embedded NUL ...
        why = getattr(err, "strerror", None) or str(err)
        return f"buffer_dump {value!r:.120} is not usable: {type(err).__name__}: {why}"
    return None


PARAMS = (
    AUTOSTART,
    ParamSpec(
        "checkpoint",
        "",
        "Policy checkpoint (safetensors); '' = the shipped share/maml_ros/" + SHIPPED_CHECKPOINT,
        read_only=True,
    ),
    ParamSpec(
        "device",
        "auto",
        "Device of the inner update: auto (cuda if available), cpu or cuda",
        _check_device,
    ),
    ParamSpec(
        "rollouts", 20, "K: exploring rollouts collected per adaptation", int_range=(1, 1000)
    ),
    ParamSpec(
        "horizon", 50, "Control steps per rollout and evaluation episode", int_range=(1, 10000)
    ),
    ParamSpec("inner_steps", 1, "Inner gradient steps on the K rollouts", int_range=(1, 100)),
    ParamSpec("eval_episodes", 3, "Deterministic episodes per evaluation", int_range=(1, 100)),
    ParamSpec(
        "rollback_margin",
        1.0,
        "Roll back when the post-update return is below pre-update return minus this",
        float_range=(0.0, 1e9),
    ),
    ParamSpec(
        "max_update_ratio",
        1.0,
        "Roll back an update whose norm exceeds this times the parameters' norm",
        float_range=(1e-6, 1e6),
    ),
    ParamSpec(
        "step_timeout_s",
        2.0,
        "A rollout is discarded when no complete control step arrives for this long",
        float_range=(0.01, 600.0),
    ),
    ParamSpec(
        "stamp_tolerance_s",
        600.0,
        "Drop joint states, actions and rewards stamped further than this ahead of or behind "
        "the node's clock (s; 0 = no check)",
        float_range=(0.0, 1e9),
    ),
    ParamSpec(
        "service_timeout_s",
        5.0,
        "How long to wait for the reset and set_exploration services",
        float_range=(0.1, 600.0),
    ),
    ParamSpec(
        "max_discarded_rollouts",
        20,
        "Give up an adaptation after this many discarded rollouts in a row",
        int_range=(1, 10000),
    ),
    ParamSpec(
        "reset_to_meta",
        True,
        "Each adaptation starts from the meta-trained policy (MAML), not the last adapted one",
    ),
    ParamSpec(
        "controller_name",
        DEFAULT_CONTROLLER,
        "Controller whose actions and set_exploration service are used",
        _check_name,
        read_only=True,
    ),
    ParamSpec(
        "controller_status_topic",
        "policy_controller/status",
        "Controller status (JSON with policy_version, run_id): confirms a policy arrived",
        read_only=True,
    ),
    ParamSpec(
        "task_confirm_timeout_s",
        5.0,
        "How long to wait for the driver to confirm (active_task) that it runs a new task",
        float_range=(0.01, 600.0),
    ),
    ParamSpec(
        "policy_ack_timeout_s",
        3.0,
        "How long to wait for the controller to confirm a published policy",
        float_range=(0.0, 600.0),
    ),
    ParamSpec(
        "joint_names",
        DEFAULT_JOINT_NAMES,
        "Joint order of the policy's observation and action",
        _check_joint_names,
        read_only=True,
    ),
    ParamSpec(
        "buffer_capacity",
        4096,
        "Bound of each step buffer",
        int_range=(16, 10_000_000),
        read_only=True,
    ),
    ParamSpec(
        "policy_max_bytes",
        16 * 1024 * 1024,
        "Largest checkpoint / policy message accepted",
        int_range=(1024, 1 << 30),
    ),
    ParamSpec(
        "torch_threads",
        1,
        "torch intra-op threads of the inner update (1 is fastest for small policies)",
        int_range=(1, 256),
        read_only=True,
    ),
    ParamSpec(
        "buffer_dump",
        "",
        "JSON-lines file receiving every collected rollout's steps ('' = off)",
        _check_dump,
    ),
)


def shipped_checkpoint() -> Path:
    """The meta-trained checkpoint installed with the package."""
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("maml_ros")) / SHIPPED_CHECKPOINT


# ---------------------------------------------------------------------------------------------
# The node.


class AdaptationNode(ManagedNode):
    """Adapts the controller's policy to each new task from a few rollouts (see module doc).

    Lifecycle: constructing it declares and validates the parameters and creates its topics;
    ``configure`` loads the checkpoint and starts the worker (its warm-up update); ``activate``
    publishes the policy and accepts tasks; ``deactivate`` refuses tasks, cancels a running
    adaptation and keeps (republishes) the last good policy."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("adaptation", **node_kwargs)
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._wake = threading.Condition()
        self.status = NodeStatus(self)
        self.params = ValidatedParameters(self, PARAMS, self._on_parameter_change)
        self.joint_names = list(self.params["joint_names"])
        torch.set_num_threads(self.params["torch_threads"])
        self.run_id = uuid.uuid4().hex
        self.meta_bundle: PolicyBundle | None = None  # configure loads it
        self.current: PolicyBundle | None = None
        self.good: PolicyBundle | None = None  # what deactivate keeps
        self._accepting = False  # active: tasks are taken
        self._next_version = 0
        self.rollouts_discarded = 0
        self._controller_ack: tuple[str, int] | None = None
        self._ack_cond = threading.Condition()

        self.joiner = StepJoiner(self.params["buffer_capacity"], self.status.drop)
        self._pending_task: TaskChange | None = None
        self._pending_since = self._task_since = time.monotonic()  # when a task came in
        self._first_rollout_step_pending = False
        self._adapting_id: str | None = None
        self._active_task: ActiveTask | None = None
        self._confirmed: ActiveTask | None = None
        self._active_cond = threading.Condition()
        self._cancel = threading.Event()
        self.adaptations = 0
        self.adaptation_id = 0
        self.cancellations = 0

        controller = self.params["controller_name"]
        self._reset = self.create_client(Trigger, RESET_SERVICE)
        self._explore = self.create_client(SetBool, f"{controller}/{EXPLORATION_SERVICE}")
        self._policy_pub = self.create_publisher(UInt8MultiArray, POLICY_TOPIC, LATCHED_QOS)
        self.create_subscription(
            JointState,
            JOINT_STATES_TOPIC,
            self._on_joint_state,
            JOINT_STATE_BUFFER_QOS,
        )
        self.create_subscription(
            JointState,
            actions_topic(controller),
            self._on_action,
            STREAM_QOS,
        )
        self.create_subscription(Vector3Stamped, REWARD_TOPIC, self._on_reward, STREAM_QOS)
        self.create_subscription(String, ACTIVE_TASK_TOPIC, self._on_active_task, LATCHED_QOS)
        self.task_inbox = TaskInbox(self, self.status, self._on_task)
        self.create_subscription(
            String, self.params["controller_status_topic"], self._on_controller_status, LATCHED_QOS
        )

        self.status.set(
            phase="idle",
            task_id=None,
            task_family=None,
            run_id=self.run_id,
            checkpoint=None,
            device=self.params["device"],
            **CLEARED_RESULTS,
            ready=False,
            adaptation_id=0,
            adaptations=0,
            cancellations=0,
            reason=None,
        )
        self.autostart()

    # -- lifecycle ---------------------------------------------------------------------------

    def configure_node(self) -> None:
        """Loads the checkpoint (it must fit the joints) and starts the worker's warm-up."""
        if self.meta_bundle is not None:
            return  # configured before (a cleanup keeps what was loaded)
        path = self.params["checkpoint"] or str(shipped_checkpoint())
        try:
            bundle = load_bundle(path, max_bytes=self.params["policy_max_bytes"])
        except CheckpointError as err:
            raise ValueError(f"cannot load checkpoint: {err}") from err
        n = len(self.joint_names)
        if bundle.spec.act_dim != n or bundle.spec.obs_dim != 2 * n:
            raise ValueError(
                f"checkpoint {path} has obs_dim {bundle.spec.obs_dim} / act_dim "
                f"{bundle.spec.act_dim}; {n} joints need {2 * n} / {n}"
            )
        self.meta_bundle = bundle.replace(run_id=self.run_id)
        self._next_version = bundle.version
        self.status.set(checkpoint=str(path))
        self._worker = threading.Thread(target=self._worker_loop, name="adaptation", daemon=True)
        self._worker.start()
        self.get_logger().info(f"loaded {path} (run_id {self.run_id})")

    def activate_node(self) -> None:
        """Publishes the policy (the meta-trained one first) and takes tasks."""
        if self.current is None:
            self.good = self._publish_policy(self.meta_bundle)
        self._accepting = True
        self.get_logger().info(f"active: waiting for a task on '{TASK_TOPIC}'")

    def deactivate_node(self) -> None:
        """Refuses tasks; a running adaptation is cancelled and the good policy kept."""
        with self._wake:
            self._accepting = False
            self._pending_task = None
            self._cancel.set()
            self._wake.notify_all()
        if self._adapting_id is None:
            self._keep_good_policy()

    def _keep_good_policy(self) -> None:
        """Republishes the last good policy when another one is deployed."""
        good = self.good
        if good is not None and self.current is not None and self.current.params is not good.params:
            self.good = self._publish_policy(good)

    def _on_parameter_change(self, name: str, value: Any) -> None:
        if name == "device":
            self.status.set(device=value)
        self.get_logger().info(f"parameter {name} = {value!r} (used from the next adaptation)")

    # -- subscription callbacks: validate and buffer only -------------------------------------

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            positions, velocities, stamp_ns = joint_state_to_arrays(msg, self.joint_names)
            self._check_stamp(stamp_ns)
        except ValueError as err:
            self.status.drop("joint_states", str(err))
            return
        self.joiner.add_state(stamp_ns, positions, velocities)

    def _on_action(self, msg: JointState) -> None:
        try:
            stamp_ns, action = action_from_msg(msg, self.joint_names)
            self._check_stamp(stamp_ns)
        except ValueError as err:
            self.status.drop("actions", str(err))
            return
        self.joiner.add_action(stamp_ns, action)

    def _on_reward(self, msg: Vector3Stamped) -> None:
        try:
            stamp_ns, reward, success, episode, label = reward_from_msg(msg)
            self._check_stamp(stamp_ns)
        except ValueError as err:
            self.status.drop("reward", str(err))
            return
        self.joiner.add_reward(stamp_ns, reward, success, episode, label)

    def _check_stamp(self, stamp_ns: int) -> None:
        """ValueError for a stamp too far from this node's clock (``stamp_tolerance_s``): a
        future-stamped state would otherwise look like a driver restart to the joiner."""
        now_ns = self.get_clock().now().nanoseconds
        check_stamp_near_clock(stamp_ns, now_ns, self.params["stamp_tolerance_s"])

    def _on_task(self, change: TaskChange) -> str | None:
        """Takes a task change; the id being adapted to already is acknowledged, no more."""
        with self._wake:
            if not self._accepting:
                return "not active (lifecycle): activate the node first"
            if change.id in (self._adapting_id, getattr(self._pending_task, "id", None)):
                return None
            self._pending_task = change
            self._pending_since = time.monotonic()
            self._cancel.set()
            self._wake.notify_all()
        self.get_logger().info(f"task change: {change.id} ({change.task.family})")
        return None

    def _on_active_task(self, msg: String) -> None:
        try:
            active = active_task_from_msg(msg)
        except ValueError as err:
            self.status.drop("active_task", str(err))
            return
        with self._active_cond:
            self._active_task = active
            self._active_cond.notify_all()

    def _on_controller_status(self, msg: String) -> None:
        if len(msg.data) > MAX_CONTROLLER_STATUS_CHARS:
            self.status.drop(
                "controller_status",
                f"{len(msg.data)} characters, over the limit of {MAX_CONTROLLER_STATUS_CHARS}",
            )
            return
        try:
            data = json.loads(msg.data)
        except (ValueError, RecursionError) as err:  # RecursionError: deep nesting
            self.status.drop("controller_status", f"invalid JSON: {type(err).__name__}: {err}")
            return
        try:
            run_id, version = data["run_id"], data["policy_version"]
        except (KeyError, TypeError, IndexError):
            return  # a controller without these fields: acknowledgement falls back to a timeout
        if isinstance(run_id, str) and isinstance(version, int):
            with self._ack_cond:
                self._controller_ack = (run_id, version)
                self._ack_cond.notify_all()

    # -- policy publishing ---------------------------------------------------------------------

    def _publish_policy(self, bundle: PolicyBundle) -> PolicyBundle:
        """Publishes ``bundle``'s weights as the next version; returns the published bundle."""
        published = bundle.replace(version=self._next_version, run_id=self.run_id)
        self._policy_pub.publish(policy_to_msg(published))
        self._next_version += 1
        self.current = published
        self.status.set(policy_version=published.version)
        self.status.publish()
        return published

    def _wait_policy_ack(self, version: int) -> bool:
        """Waits until the controller reports ``version`` of this run: True, or False after the
        ack timeout."""
        deadline = time.monotonic() + self.params["policy_ack_timeout_s"]
        with self._ack_cond:
            while True:
                ack = self._controller_ack
                if ack is not None and ack[0] == self.run_id and ack[1] >= version:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ack_cond.wait(min(left, 0.05))
                self._check_cancel()
        self.get_logger().warning(
            f"controller did not confirm policy version {version} within "
            f"{self.params['policy_ack_timeout_s']} s; going on",
            throttle_duration_sec=10.0,
        )
        return False

    # -- the worker ----------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Readies the first adaptation: one throw-away inner update of the real shape (no
        one-time start-up cost, the CUDA graph captured), then the driver's and controller's
        services discovered (up to ``service_timeout_s``; a task can come before, it waits)."""
        t0 = time.perf_counter()
        cfg = self.params
        try:
            warm_up(
                self.meta_bundle, cfg["device"], cfg["rollouts"], cfg["horizon"], cfg["inner_steps"]
            )
        except (ValueError, RuntimeError) as err:
            self.get_logger().warning(f"warm-up update failed: {err}")
        warm_up_ms = (time.perf_counter() - t0) * 1e3
        deadline = time.monotonic() + cfg["service_timeout_s"]
        clients = (self._reset, self._explore)
        while not all(c.service_is_ready() for c in clients) and time.monotonic() < deadline:
            if self._stopping.wait(0.02) or self._pending_task is not None:
                break
        services_ready = all(c.service_is_ready() for c in clients)
        self.status.set(ready=True, warm_up_ms=warm_up_ms, services_ready=services_ready)
        self.status.publish()

    def _worker_loop(self) -> None:
        self._warm_up()
        while True:
            with self._wake:
                while self._pending_task is None and not self._stopping.is_set():
                    self._wake.wait()
                if self._stopping.is_set():
                    return
                change, self._pending_task = self._pending_task, None
                self._task_since = self._pending_since
                self._adapting_id = change.id
                self._cancel.clear()
            try:
                self._adapt_to(change)
            except Cancelled:
                if self._stopping.is_set():
                    return
                self.cancellations += 1
                why = "a newer task change" if self._accepting else "deactivate"
                if not self._accepting:
                    self._keep_good_policy()
                self.status.set(phase="cancelled", cancellations=self.cancellations, reason=why)
                self.status.publish()
                self.get_logger().info(f"adaptation cancelled by {why}")
            except AdaptationFailed as err:
                if self._stopping.is_set():
                    return
                self.status.set(phase="failed", reason=str(err))
                self.status.publish()
                self.get_logger().error(f"adaptation failed: {err}")
            except Exception as err:  # a bug must not kill the node silently
                if self._stopping.is_set():
                    return
                self.status.set(phase="failed", reason=f"{type(err).__name__}: {err}")
                self.status.publish()
                self.get_logger().error(f"adaptation failed: {type(err).__name__}: {err}")
            finally:
                with self._wake:
                    self._adapting_id = None

    def _phase(self, phase: str, **fields: Any) -> None:
        self._check_cancel()
        self.status.set(phase=phase, **fields)
        self.status.publish()

    def _check_cancel(self) -> None:
        if self._cancel.is_set() or self._stopping.is_set():
            raise Cancelled

    def _adapt_to(self, change: TaskChange) -> None:
        cfg = {p.name: self.params[p.name] for p in PARAMS}
        task = change.task
        self.rollouts_discarded = 0
        self.adaptation_id += 1
        self._phase(
            "confirming_task",
            adaptation_id=self.adaptation_id,
            task_id=change.id,
            task_family=task.family,
            **CLEARED_RESULTS,
            reason=None,
        )
        self._confirmed = self._wait_task_confirmation(change.id, cfg)
        self._phase("evaluating_pre")
        start = self.current
        if cfg["reset_to_meta"] and self.current.params is not self.meta_bundle.params:
            start = self._publish_policy(self.meta_bundle)
        try:
            self._adapt_from(start, task, cfg)
        except AdaptationFailed:
            if self.current.params is not start.params:
                self._publish_policy(start)  # never leave a policy adapted to another task
            raise

    def _wait_task_confirmation(self, task_id: str, cfg: dict[str, Any]) -> ActiveTask:
        """The driver's confirmation that it runs ``task_id``; AdaptationFailed when it does
        not come within ``task_confirm_timeout_s`` (nothing has changed yet then)."""
        deadline = time.monotonic() + cfg["task_confirm_timeout_s"]
        with self._active_cond:
            while self._active_task is None or self._active_task.id != task_id:
                left = deadline - time.monotonic()
                if left <= 0:
                    running = self._active_task.id if self._active_task else "nothing confirmed"
                    raise AdaptationFailed(
                        f"the driver did not confirm task {task_id} on '{ACTIVE_TASK_TOPIC}' "
                        f"within {cfg['task_confirm_timeout_s']} s (it runs: {running}); "
                        "policy unchanged"
                    )
                self._active_cond.wait(min(left, 0.05))
                self._check_cancel()
            return self._active_task

    def _check_task_unchanged(self, step: Step | None = None) -> None:
        """Raises AdaptationFailed when the driver's task or session changed under us: on its
        ``active_task``, or on the task label of ``step``'s reward (which can arrive before
        a restarted driver's ``active_task`` does)."""
        confirmed = self._confirmed
        if step is not None and step.task_label and step.task_label != confirmed.label:
            session = step.task_label.partition("@")[2]
            now = f"'{step.task_label}' (task@session, on a reward)"
        elif self._active_task.label != confirmed.label:
            session = self._active_task.driver_session
            now = f"task {self._active_task.id} (session {session})"
        else:
            return
        # The driver may read a newer task message before this node does: a switch within
        # the same session is a cancellation when that message follows within the grace.
        if session == confirmed.driver_session:
            self._cancel.wait(TASK_SWITCH_GRACE_S)
            self._check_cancel()
        raise AdaptationFailed(
            f"the driver switched from task {confirmed.id} (session "
            f"{confirmed.driver_session}) to {now}: a restart or another sender; no steps of "
            "two tasks are mixed"
        )

    def _adapt_from(self, start: PolicyBundle, task: TaskSpec, cfg: dict[str, Any]) -> None:
        """Evaluates ``start``, collects, updates, publishes, evaluates and maybe rolls back."""
        self._wait_policy_ack(start.version)
        return_pre, success_pre = self._evaluate(cfg)
        self._phase("collecting", return_pre=return_pre, success_pre=success_pre)
        collect_start = time.monotonic()
        rollouts = self._collect(cfg)
        rollouts_done = time.monotonic()
        self.status.set(collect_ms=(rollouts_done - collect_start) * 1e3)

        self._phase("adapting")
        t0 = time.perf_counter()
        try:
            adapted, info = adapt_policy(start, rollouts, cfg["inner_steps"], cfg["device"])
            problem = update_problem(start.params, adapted.params, cfg["max_update_ratio"])
            problem = problem or probe_problem(adapted)
            if problem is None and not math.isfinite(info["inner_loss"]):
                problem = f"non-finite inner loss {info['inner_loss']}"
        except (ValueError, RuntimeError) as err:  # NonFiniteError, RolloutError, ...
            adapted, info, problem = None, {}, f"{type(err).__name__}: {err}"
        latency_ms = (time.perf_counter() - t0) * 1e3
        inner_loss = info.get("inner_loss")
        self.status.set(inner_device=info.get("device"))
        self.adaptations += 1
        self.status.set(
            adapt_latency_ms=latency_ms,
            inner_loss=inner_loss if inner_loss is not None and math.isfinite(inner_loss) else None,
            adaptations=self.adaptations,
        )
        if problem is not None:
            self.status.set(phase="rolled_back", reason=problem)
            self.status.publish()
            self.get_logger().warning(f"update rolled back, policy kept: {problem}")
            return
        self._check_cancel()
        published = self._publish_policy(adapted)
        self._phase("evaluating_post")
        if self._wait_policy_ack(published.version):
            active = time.monotonic()
            self.status.set(
                policy_active_after_rollouts_ms=(active - rollouts_done) * 1e3,
                task_to_policy_active_ms=(active - self._task_since) * 1e3,
            )
        return_post, success_post = self._evaluate(cfg)
        self.status.set(return_post=return_post, success_post=success_post)
        if return_post < return_pre - cfg["rollback_margin"]:
            reason = (
                f"post-update return {return_post:.3f} is worse than pre-update "
                f"{return_pre:.3f} by more than {cfg['rollback_margin']}"
            )
            self.good = self._publish_policy(start)
            self.status.set(phase="rolled_back", reason=reason)
            self.get_logger().warning(f"rolled back: {reason}")
        else:
            self.good = published
            self.status.set(phase="done")
            self.get_logger().info(
                f"adapted to {task.family} in {latency_ms:.1f} ms: return "
                f"{return_pre:.3f} -> {return_post:.3f}, success {success_pre} -> {success_post}"
            )
        self.status.publish()

    def _evaluate(self, cfg: dict[str, Any]) -> tuple[float, float]:
        """Mean return and success rate of ``eval_episodes`` deterministic episodes."""
        results = [
            episode_return(steps)
            for steps in self._episodes(cfg, cfg["eval_episodes"], collecting=False)
        ]
        return (
            float(np.mean([r for r, _ in results])),
            float(np.mean([s for _, s in results])),
        )

    def _collect(self, cfg: dict[str, Any]) -> Rollouts:
        """K exploring rollouts as ``maml_ros.rl.pg.Rollouts``."""
        self._first_rollout_step_pending = True
        episodes = self._episodes(cfg, cfg["rollouts"], collecting=True)
        obs = np.array(
            [
                [observation_from_joint_state(s.positions, s.velocities) for s in ep]
                for ep in episodes
            ],
            dtype=np.float32,
        )
        actions = np.array([[s.action for s in ep] for ep in episodes], dtype=np.float32)
        rewards = np.array([[s.reward for s in ep] for ep in episodes], dtype=np.float32)
        return Rollouts.from_numpy(obs, actions, rewards)

    def _episodes(self, cfg: dict[str, Any], count: int, collecting: bool) -> list[list[Step]]:
        """``count`` complete episodes; partial ones are discarded (counted) and retried.

        Collected episodes explore, others do not; the controller is told so before every
        episode (a restarted controller starts without exploration). Collected episodes are
        counted in the status and go to ``buffer_dump``.
        """
        episodes: list[list[Step]] = []
        discarded_in_a_row = 0
        while len(episodes) < count:
            try:
                self._set_exploration(collecting, cfg)
                steps = self._run_episode(cfg)
            except PartialRollout as err:
                self.status.drop("rollout", str(err))
                self.rollouts_discarded += 1
                self.status.set(rollouts_discarded=self.rollouts_discarded)
                discarded_in_a_row += 1
                if discarded_in_a_row >= cfg["max_discarded_rollouts"]:
                    raise AdaptationFailed(
                        f"{discarded_in_a_row} rollouts in a row were discarded; last: {err}"
                    ) from err
                continue
            discarded_in_a_row = 0
            episodes.append(steps)
            if collecting:
                if cfg["buffer_dump"]:
                    self._dump(cfg["buffer_dump"], steps)
                self.status.set(rollouts_collected=len(episodes))
                self.status.publish()
        return episodes

    def _run_episode(self, cfg: dict[str, Any]) -> list[Step]:
        """Resets the driver and gathers the next ``horizon`` steps of the new episode."""
        self._wait_for_service(self._reset, cfg)
        self.joiner.clear()
        episode_before = self.joiner.last_episode
        response = self._call(self._reset, Trigger.Request(), cfg)
        if not response.success:
            raise PartialRollout(f"reset failed: {response.message}")
        target = episode_from_reset_message(response.message)
        steps: list[Step] = []
        # Steps of the previous episode still in flight are skipped, for step_timeout_s at most.
        start_deadline = time.monotonic() + cfg["step_timeout_s"]
        while len(steps) < cfg["horizon"]:
            step = self._next_step(cfg)
            if not steps:
                stale = (
                    step.episode != target
                    if target is not None
                    else episode_before is not None and step.episode == episode_before
                )
                if stale:
                    if time.monotonic() > start_deadline:
                        raise PartialRollout(
                            f"episode {target} never started after the reset "
                            f"(still seeing episode {step.episode})"
                        )
                    continue
            elif step.episode != steps[0].episode or step.generation != steps[0].generation:
                raise PartialRollout(
                    f"episode changed from {steps[0].episode} to {step.episode} after "
                    f"{len(steps)} steps (driver restart?)"
                )
            else:
                period = self.joiner.period_ns
                gap = step.stamp_ns - steps[-1].stamp_ns
                if period and gap > 1.5 * period:
                    raise PartialRollout(
                        f"{round(gap / period) - 1} control step(s) missing after "
                        f"{len(steps)} steps (lost messages)"
                    )
            steps.append(step)
            if self._first_rollout_step_pending:
                self._first_rollout_step_pending = False
                since_task = (time.monotonic() - self._task_since) * 1e3
                self.status.set(task_to_first_rollout_step_ms=since_task)
        return steps

    def _next_step(self, cfg: dict[str, Any]) -> Step:
        """The next complete step taken under the confirmed task."""
        deadline = time.monotonic() + cfg["step_timeout_s"]
        while True:
            self._check_cancel()
            self._check_task_unchanged()
            left = deadline - time.monotonic()
            if left <= 0:
                raise PartialRollout(f"no complete control step for {cfg['step_timeout_s']} s")
            step = self.joiner.wait_step(min(left, 0.05))
            if step is None:
                continue
            if step.stamp_ns < self._confirmed.since_stamp_ns:
                self.status.drop("step", f"stamp {step.stamp_ns} is from before the task change")
                continue
            self._check_task_unchanged(step)
            return step

    def _set_exploration(self, on: bool, cfg: dict[str, Any]) -> None:
        response = self._call(self._explore, SetBool.Request(data=on), cfg)
        if not response.success:
            raise AdaptationFailed(f"set_exploration({on}) refused: {response.message}")

    def _wait_for_service(self, client: Client, cfg: dict[str, Any]) -> None:
        """Waits (cancellably) for a service; a missing one (a driver or controller being
        restarted) only loses this rollout."""
        deadline = time.monotonic() + cfg["service_timeout_s"]
        while not client.service_is_ready():
            self._check_cancel()
            if time.monotonic() > deadline:
                message = f"service '{client.srv_name}' is not available"
                raise PartialRollout(message)
            time.sleep(0.02)

    def _call(self, client: Client, request: Any, cfg: dict[str, Any]) -> Any:
        """Calls a service from the worker thread, cancellable; a timeout (the server died
        with the request) only loses this rollout."""
        self._wait_for_service(client, cfg)
        deadline = time.monotonic() + cfg["service_timeout_s"]
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        while not done.wait(0.05):
            if self._cancel.is_set() or self._stopping.is_set() or time.monotonic() > deadline:
                client.remove_pending_request(future)
                self._check_cancel()
                raise PartialRollout(
                    f"{client.srv_name} timed out after {cfg['service_timeout_s']} s"
                )
        return future.result()

    def _dump(self, path: str, steps: Sequence[Step]) -> None:
        """Appends the rollout to ``buffer_dump``; a failed write is counted, never fatal."""
        lines = []
        for s in steps:
            record = {
                "stamp_ns": s.stamp_ns,
                "episode": s.episode,
                "positions": [float(x) for x in s.positions],
                "velocities": [float(x) for x in s.velocities],
                "action": [float(x) for x in s.action],
                "reward": s.reward,
                "success": s.success,
            }
            lines.append(json.dumps(record) + "\n")
        try:
            # O_NONBLOCK: a FIFO put there since the parameter was checked fails, never blocks.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
            with open(fd, "a", encoding="utf-8") as out:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{path} is not a regular file")
                out.write("".join(lines))
        except (OSError, ValueError) as err:
            self.status.drop("buffer_dump", f"rollout not written: {type(err).__name__}: {err}")

    def destroy_node(self) -> None:
        """Stops the worker (cancelling any adaptation) before the node goes."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._worker is not None and self._worker.is_alive():
            # Waits are cancellable within 50 ms; an inner update in progress is not, and the
            # daemon worker must not hold up a launch's SIGINT-then-SIGTERM shutdown.
            self._worker.join(timeout=1.0)
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``adaptation_node`` executable."""
    return run_node(AdaptationNode, args=args)


if __name__ == "__main__":
    raise SystemExit(main())
