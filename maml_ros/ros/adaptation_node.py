"""adaptation_node: on-robot MAML adaptation of the arm policy after a task change.

A thin ROS shell around :class:`maml_ros.ros.protocol.AdaptationProtocol`, which holds the
protocol itself (confirm the task, evaluate, collect K rollouts, update, check, publish,
evaluate, roll back) as plain Python. This module declares the parameters (:data:`PARAMS`),
loads the checkpoint, joins ``joint_states``, ``<controller>/actions`` and ``reward`` on their
stamp into control steps (:class:`~maml_ros.ros.protocol.StepJoiner`), and gives the protocol
the driver's ``reset`` service, the controller's ``set_exploration`` service and the latched
``policy`` topic (:class:`ServiceRobot`), or, with ``reset_mode: homing`` for a driver without a
reset service, the controller's ``home`` service instead of ``reset`` (:class:`HomingRobot`).
The subscription callbacks only validate and buffer; the protocol runs on a worker thread of
its own.

On a task change it acknowledges the task on ``task_ack``, waits until the driver confirms on
``active_task`` that it runs that task (else the adaptation ``failed``, the policy unchanged),
and only uses steps stamped from the confirmation on; a change of the driver's task or session
under it ends the adaptation ``failed`` with the policy it started from.

Status (``~/status``, JSON, also published on every phase change): ``phase`` (idle,
confirming_task, evaluating_pre, collecting, adapting, evaluating_post, done, rolled_back,
cancelled, failed), ``adaptation_id`` (one per accepted task change), ``task_id``,
``task_family``, ``rollouts_collected``,
``rollouts_discarded``, ``inner_loss``, ``return_pre``/``success_pre``,
``return_post``/``success_post`` (of the policy kept last), ``round`` and ``round_returns``
(the rounds run and the returns of those kept, ``adaptation_rounds``), ``adapt_latency_ms``,
timings on the node's clock
(``task_to_first_rollout_step_ms``, ``collect_ms``, ``policy_active_after_rollouts_ms``: the
last rollout step to the controller reporting the adapted version, and
``task_to_policy_active_ms``), ``inner_device``, ``envelope_discards`` (rollouts discarded
because the controller reported leaving its safety envelope), ``policy_version``,
``run_id``, ``reason`` (why a rollback or failure happened), ``cancellations``, ``ready``
(the warm-up update is done), ``resumed`` (the state file was resumed), ``starved`` (the
inputs that did not arrive when a rollout last timed out), ``exploration_mismatches`` (episodes
discarded because their actions' exploration was not what the protocol asked for) and the drop
counters by kind (joint_states, actions, reward, task, step, rollout, controller_status,
buffer_dump, state_file).

Pairing: with ``deploy_key_file`` every policy message is signed (HMAC-SHA256 of its bytes
under the key, in ``layout.dim[0].label``), so a controller reading the same key file takes
policies from this node only. Restarts: with ``state_file`` the last good policy is saved
atomically before every publication; a restarted node resumes it (``resume``, default) under
the same run id with later versions, or starts from the checkpoint (``resume:=false``) with the
operator's override on its first policy. A saved state descending from another checkpoint is
refused (configure fails).

Each adaptation starts from the meta-trained weights (``reset_to_meta``, MAML's protocol): if an
adapted policy is active, the meta weights are republished first as a new version.

Actions in the rollouts and in ``buffer_dump`` are the controller's echoed actions in policy
units (before clamping), which is what the policy-gradient loss needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from geometry_msgs.msg import Vector3Stamped
from rclpy.client import Client
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import String, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger

from maml_ros.rl.checkpoint import (
    CheckpointError,
    PolicyBundle,
    find_shipped_model,
    load_bundle,
    read_regular_file,
)
from maml_ros.ros.common import (
    AUTOSTART,
    ManagedNode,
    NodeStatus,
    ParamSpec,
    ValidatedParameters,
    run_node,
)
from maml_ros.ros.convert import (
    action_exploring,
    action_from_msg,
    active_task_from_msg,
    check_stamp_near_clock,
    joint_state_to_arrays,
    policy_to_msg,
    reward_from_msg,
)
from maml_ros.ros.interfaces import (
    ACTIVE_TASK_TOPIC,
    ADAPTATION_ROUNDS_RANGE,
    DEFAULT_CONTROLLER,
    EXPLORATION_SERVICE,
    HOME_SERVICE,
    JOINT_STATES_QOS,
    JOINT_STATES_TOPIC,
    LATCHED_QOS,
    POLICY_TOPIC,
    RESET_SERVICE,
    REWARD_TOPIC,
    SERVICE_QOS,
    STREAM_QOS,
    TASK_TOPIC,
    actions_topic,
)
from maml_ros.ros.protocol import (
    CLEARED_RESULTS,
    AdaptationProtocol,
    CheckCancel,
    PartialRollout,
    StateFile,
    StepJoiner,
)
from maml_ros.ros.tasks import TaskInbox
from maml_ros.runtime import deploy_key_problem, read_deploy_key
from maml_ros.runtime.robots import (
    DEFAULT_ROBOT,
    get_robot,
    no_shipped_model_message,
    policy_mismatch,
    robot_problem,
    shipped_model_name,
)

JOINT_STATE_BUFFER_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=JOINT_STATES_QOS.reliability,
    durability=JOINT_STATES_QOS.durability,
)
"""The sensor-data profile of ``joint_states`` with a deeper local queue: a step whose state is
lost cannot be used, so this node keeps up to 100 states while its process is descheduled."""
DEFAULT_JOINT_NAMES = list(get_robot(DEFAULT_ROBOT).joint_names)
"""The default robot's joints (the KUKA iiwa's); left at this default, ``joint_names`` follows
the ``robot`` parameter."""
MAX_CONTROLLER_STATUS_CHARS = 64 * 1024
"""Longer controller status messages are dropped before parsing."""


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
    """Why ``value`` cannot be the buffer_dump file (:func:`_writable_file_problem`)."""
    return _writable_file_problem("buffer_dump", value)


def _check_state_file(value: Any) -> str | None:
    """Why ``value`` cannot be the state_file (:func:`_writable_file_problem`)."""
    return _writable_file_problem("state_file", value)


def _writable_file_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the file of parameter ``name``: longer than the file system
    allows, a directory, a special file (a FIFO would block the worker), a missing or
    unwritable folder. Never raises."""
    if not value:
        return None
    if "\0" in value:
        return f"{name} must not contain a NUL character"
    path = Path(value)
    try:
        path_max, name_max = _fs_limits(path.parent)
        if len(os.fsencode(os.path.abspath(path))) >= path_max:
            return f"{name} path is longer than the file system allows ({path_max} bytes)"
        if any(len(os.fsencode(part)) > name_max for part in path.parts):
            return f"a name in {name} is longer than the file system allows ({name_max} bytes)"
        if path.is_dir():
            return f"{name} {value!r:.120} is a directory, not a file"
        if not path.parent.is_dir():
            return f"{name} folder {str(path.parent)!r:.120} does not exist"
        if path.exists() and not path.is_file():
            return f"{name} {value!r:.120} exists and is not a regular file"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"{name} folder {str(path.parent)!r:.120} is not writable"
    except (OSError, ValueError) as err:  # ELOOP, EACCES, an embedded NUL ...
        why = getattr(err, "strerror", None) or str(err)
        return f"{name} {value!r:.120} is not usable: {type(err).__name__}: {why}"
    return None


RESET_MODES = ("service", "homing")


def _check_reset_mode(value: Any) -> str | None:
    if value not in RESET_MODES:
        return f"reset_mode must be one of {', '.join(RESET_MODES)}, got {value!r}"
    return None


PARAMS = (
    AUTOSTART,
    ParamSpec(
        "checkpoint",
        "",
        "Policy checkpoint (safetensors); '' = the robot's shipped share/maml_ros/models/"
        "<robot>_maml.safetensors (kuka_iiwa: arm_maml.safetensors)",
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
    ParamSpec(
        "adaptation_rounds",
        1,
        "Rounds per task change, each an update on K fresh rollouts of the policy the round "
        "before kept (the shipped iiwa model is meta-trained for 2)",
        int_range=ADAPTATION_ROUNDS_RANGE,
    ),
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
        "reset_mode",
        "service",
        "How an episode starts: service (the driver's reset service) or homing (the "
        "controller's home service drives the arm home; no driver support needed)",
        _check_reset_mode,
        read_only=True,
    ),
    ParamSpec(
        "homing_wait_s",
        15.0,
        "reset_mode homing: how long to wait for the controller's home service to answer",
        float_range=(0.1, 600.0),
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
        "robot",
        DEFAULT_ROBOT,
        "Robot description (maml_ros.runtime.robots): a checkpoint for another robot is refused",
        robot_problem,
        read_only=True,
    ),
    ParamSpec(
        "joint_names",
        DEFAULT_JOINT_NAMES,
        "Joint order of the policy's observation and action (the default follows robot)",
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
    ParamSpec(
        "deploy_key_file",
        "",
        "File (mode 600) holding the key every published policy is signed with; the controller "
        "reads the same file ('' = unsigned policies, with a warning)",
        deploy_key_problem,
        read_only=True,
    ),
    ParamSpec(
        "state_file",
        "",
        "Policy file saving the last good policy, its run id and next version before every "
        "publication, so a restarted node resumes it ('' = off)",
        _check_state_file,
        read_only=True,
    ),
    ParamSpec(
        "resume",
        True,
        "With state_file: resume the saved policy (true) or start from the checkpoint, "
        "overriding an adapted policy the controller runs (false)",
        read_only=True,
    ),
)


def shipped_checkpoint(robot: str) -> Path:
    """The meta-trained checkpoint installed with the package for ``robot``; ValueError saying
    how to train one when none ships."""
    try:
        return find_shipped_model(shipped_model_name(robot))
    except FileNotFoundError as err:
        raise ValueError(f"{no_shipped_model_message(robot, 'adaptation')} ({err})") from err


# ---------------------------------------------------------------------------------------------
# The robot, through ROS.


class ServiceRobot:
    """The protocol's :class:`~maml_ros.ros.protocol.Robot` over ROS: the driver's ``reset``
    service, the controller's ``set_exploration`` service and the latched ``policy`` topic."""

    def __init__(self, node: Node, controller: str, deploy_key: bytes | None = None) -> None:
        self._deploy_key = deploy_key
        self._reset = node.create_client(Trigger, RESET_SERVICE, qos_profile=SERVICE_QOS)
        self._explore = node.create_client(
            SetBool, f"{controller}/{EXPLORATION_SERVICE}", qos_profile=SERVICE_QOS
        )
        self._policy_pub = node.create_publisher(UInt8MultiArray, POLICY_TOPIC, LATCHED_QOS)

    def services_ready(self) -> bool:
        """Whether both services are discovered."""
        return self._reset.service_is_ready() and self._explore.service_is_ready()

    def reset(self, timeout_s: float, check_cancel: CheckCancel) -> tuple[bool, str]:
        """Calls the driver's reset."""
        response = _call(self._reset, Trigger.Request(), timeout_s, check_cancel)
        return response.success, response.message

    def set_exploration(
        self, on: bool, timeout_s: float, check_cancel: CheckCancel
    ) -> tuple[bool, str]:
        """Calls the controller's set_exploration."""
        response = _call(self._explore, SetBool.Request(data=on), timeout_s, check_cancel)
        return response.success, response.message

    def publish_policy(self, bundle: PolicyBundle) -> None:
        """Publishes ``bundle`` on the latched ``policy`` topic (signed with the deploy key)."""
        self._policy_pub.publish(policy_to_msg(bundle, self._deploy_key))


class HomingRobot(ServiceRobot):
    """The protocol's Robot for an arm whose driver has no ``reset`` service: an episode starts
    when the controller's ``<controller>/home`` service has driven the arm home, and is the
    steps stamped after the stamp its answer names (``stamp_ns=<ns>``); the driver's episode
    counter is not used."""

    def __init__(
        self, node: Node, controller: str, wait_s: float, deploy_key: bytes | None = None
    ) -> None:
        super().__init__(node, controller, deploy_key)
        node.destroy_client(self._reset)
        self._reset = node.create_client(
            Trigger, f"{controller}/{HOME_SERVICE}", qos_profile=SERVICE_QOS
        )
        self._wait_s = wait_s

    def reset(self, timeout_s: float, check_cancel: CheckCancel) -> tuple[bool, str]:
        """Calls the controller's home service (waiting up to ``homing_wait_s`` for it)."""
        response = _call(self._reset, Trigger.Request(), max(timeout_s, self._wait_s), check_cancel)
        return response.success, response.message


def _call(client: Client, request: Any, timeout_s: float, check_cancel: CheckCancel) -> Any:
    """Calls a service from the worker thread, cancellably; a service that is missing (a driver
    or controller being restarted) or does not answer in ``timeout_s`` (it died with the
    request) raises PartialRollout: it only loses this rollout."""
    deadline = time.monotonic() + timeout_s
    while not client.service_is_ready():
        check_cancel()
        if time.monotonic() > deadline:
            raise PartialRollout(f"service '{client.srv_name}' is not available")
        time.sleep(0.02)
    deadline = time.monotonic() + timeout_s
    future = client.call_async(request)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    try:
        while not done.wait(0.05):
            check_cancel()
            if time.monotonic() > deadline:
                raise PartialRollout(f"{client.srv_name} timed out after {timeout_s} s")
    except Exception:  # Cancelled or PartialRollout: the answer is no longer awaited
        client.remove_pending_request(future)
        raise
    return future.result()


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
        self._worker: threading.Thread | None = None
        self.status = NodeStatus(self)
        self.params = ValidatedParameters(self, PARAMS, self._on_parameter_change)
        self.robot = self.params["robot"]
        self.joint_names = list(self.params["joint_names"])
        if self.joint_names == DEFAULT_JOINT_NAMES:
            self.joint_names = list(get_robot(self.robot).joint_names)
        torch.set_num_threads(self.params["torch_threads"])
        controller = self.params["controller_name"]
        key_file = self.params["deploy_key_file"]
        deploy_key = read_deploy_key(key_file) if key_file else None
        if deploy_key is None:
            self.get_logger().warning(
                "no deploy_key_file: policies are published unsigned (any publisher can deploy)"
            )
        self.joiner = StepJoiner(self.params["buffer_capacity"], self.status.drop)
        robot = (
            HomingRobot(self, controller, self.params["homing_wait_s"], deploy_key)
            if self.params["reset_mode"] == "homing"
            else ServiceRobot(self, controller, deploy_key)
        )
        self.protocol = AdaptationProtocol(
            robot=robot,
            joiner=self.joiner,
            status=self.status,
            logger=self.get_logger(),
            config=lambda: {p.name: self.params[p.name] for p in PARAMS},
            run_id=uuid.uuid4().hex,
        )
        self.create_subscription(
            JointState, JOINT_STATES_TOPIC, self._on_joint_state, JOINT_STATE_BUFFER_QOS
        )
        self.create_subscription(JointState, actions_topic(controller), self._on_action, STREAM_QOS)
        self.create_subscription(Vector3Stamped, REWARD_TOPIC, self._on_reward, STREAM_QOS)
        self.create_subscription(String, ACTIVE_TASK_TOPIC, self._on_active_task, LATCHED_QOS)
        self.task_inbox = TaskInbox(self, self.status, self.protocol.submit, self.robot)
        self.create_subscription(
            String, self.params["controller_status_topic"], self._on_controller_status, LATCHED_QOS
        )
        self.status.set(
            phase="idle",
            task_id=None,
            task_family=None,
            run_id=self.protocol.run_id,
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
        if self.protocol.meta_bundle is not None:
            return  # configured before (a cleanup keeps what was loaded)
        path = self.params["checkpoint"] or str(shipped_checkpoint(self.robot))
        max_bytes = self.params["policy_max_bytes"]
        try:
            bundle = load_bundle(path, max_bytes=max_bytes)
            parent_sha256 = hashlib.sha256(read_regular_file(path, max_bytes)).hexdigest()
        except CheckpointError as err:
            raise ValueError(f"cannot load checkpoint: {err}") from err
        n = len(self.joint_names)
        if bundle.spec.act_dim != n or bundle.spec.obs_dim != 2 * n:
            raise ValueError(
                f"checkpoint {path} has obs_dim {bundle.spec.obs_dim} / act_dim "
                f"{bundle.spec.act_dim}; {n} joints need {2 * n} / {n}"
            )
        mismatch = policy_mismatch(bundle.metadata, self.robot, self.joint_names)
        if mismatch:
            raise ValueError(f"checkpoint {path}: {mismatch}")
        resumed, override = None, False
        if self.params["state_file"]:
            self.protocol.state = StateFile(self.params["state_file"], parent_sha256, max_bytes)
            if self.params["resume"]:
                try:
                    resumed = self.protocol.state.load()
                except CheckpointError as err:
                    raise ValueError(f"cannot resume: {err}") from err
            else:
                override = True
        self.protocol.load(bundle, resumed, override=override)
        if resumed is not None:
            self.get_logger().info(
                f"resumed {self.params['state_file']}: version {resumed[0].version} of run "
                f"{resumed[0].run_id} (task {resumed[0].metadata.get('task_id')})"
            )
        self.status.set(
            checkpoint=str(path), resumed=resumed is not None, run_id=self.protocol.run_id
        )
        self._worker = threading.Thread(target=self.protocol.serve, name="adaptation", daemon=True)
        self._worker.start()
        self.get_logger().info(f"loaded {path} (run_id {self.protocol.run_id})")

    def activate_node(self) -> None:
        """Publishes the policy (the meta-trained one first) and takes tasks."""
        self.protocol.activate()
        self.get_logger().info(f"active: waiting for a task on '{TASK_TOPIC}'")

    def deactivate_node(self) -> None:
        """Refuses tasks; a running adaptation is cancelled and the good policy kept."""
        self.protocol.deactivate()

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
            exploring = action_exploring(msg)
            self._check_stamp(stamp_ns)
        except ValueError as err:
            self.status.drop("actions", str(err))
            return
        self.joiner.add_action(stamp_ns, action, exploring)

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

    def _on_active_task(self, msg: String) -> None:
        try:
            active = active_task_from_msg(msg)
        except ValueError as err:
            self.status.drop("active_task", str(err))
            return
        self.protocol.on_active_task(active)

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
        violation = data.get("envelope_violation") if isinstance(data, dict) else None
        if isinstance(violation, dict):
            stamp, reason = violation.get("stamp_ns"), violation.get("reason")
            if isinstance(stamp, int) and not isinstance(stamp, bool) and isinstance(reason, str):
                self.protocol.on_envelope_violation(stamp, reason[:500])
            else:
                self.status.drop("controller_status", "envelope_violation without stamp/reason")
        try:
            run_id, version = data["run_id"], data["policy_version"]
        except (KeyError, TypeError, IndexError):
            return  # a controller without these fields: acknowledgement falls back to a timeout
        if isinstance(run_id, str) and isinstance(version, int):
            self.protocol.on_controller_ack(run_id, version)

    def destroy_node(self) -> None:
        """Stops the worker (cancelling any adaptation) before the node goes."""
        protocol = getattr(self, "protocol", None)  # absent when a parameter failed validation
        if protocol is not None:
            protocol.stop()
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
