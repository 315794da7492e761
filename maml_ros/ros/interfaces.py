"""The wire contract shared by every maml_ros node: topic names, QoS and message conventions.

Topic names are relative, so a namespace or a remapping moves them all.

- ``joint_states`` (sensor_msgs/JointState, sensor-data QoS): from sim_arm_node or the robot.
- ``reward`` (geometry_msgs/Vector3Stamped, RELIABLE depth 100): from sim_arm_node or a task node.
- ``<controller>/commands`` (std_msgs/Float64MultiArray, RELIABLE depth 10): from the controller.
- ``<controller>/actions`` (sensor_msgs/JointState, RELIABLE depth 100): the controller's actions.
- ``policy`` (std_msgs/UInt8MultiArray, RELIABLE + TRANSIENT_LOCAL depth 1): adaptation_node.
- ``task`` (std_msgs/String holding task JSON, RELIABLE depth 10): maml-ros-task or the user.
- ``task_ack`` (std_msgs/String holding JSON, RELIABLE depth 100): every node that reads
  ``task`` answers each task message there, accepted or refused.
- ``active_task`` (std_msgs/String holding JSON, RELIABLE + TRANSIENT_LOCAL depth 1): the
  driver (or a real robot's task node) confirms the task it now runs.
- ``~/status`` (std_msgs/String holding JSON, RELIABLE + TRANSIENT_LOCAL depth 1): every node
  publishes its counters (dropped inputs by kind and reason) and state there.
- services: ``reset`` (std_srvs/Trigger, the driver), ``<controller>/set_exploration``
  (std_srvs/SetBool, the controller), both with :data:`SERVICE_QOS` (100 requests queued).
  Every call is answered: a service that cannot serve it now says so at once with
  ``success: false, message: "busy"`` (the driver's ``reset`` while another reset is still
  waiting for its physics thread) instead of holding the caller. A caller that makes many
  concurrent calls should use :data:`SERVICE_QOS` too: with Fast DDS every client of a service
  reads every response, and rmw's default depth (10) drops its own in a burst of more.
- ``<controller>/home`` (std_srvs/Trigger, the controller, :data:`SERVICE_QOS`): a reset that
  needs no driver support (the adaptation node's ``reset_mode: homing``). From the next joint
  state on, the controller's tick commands a P-law on the joint positions towards its home pose
  (``home_pose``, by default the robot description's), clamped to ``max_velocity``, instead of
  the policy; it answers ``success: true`` with ``message`` ending ``stamp_ns=<stamp>``, the
  stamp of the joint state found within ``homing_tolerance`` of home (answered with zero
  velocities), once home is reached, or ``success: false`` with the reason after
  ``homing_timeout_s`` (or at once: ``"busy"`` while homing, or not active). The policy
  commands again from the state after that stamp, so an episode of ``reset_mode: homing`` is
  the ``horizon`` steps stamped after it (the driver's episode counter, ``vector.z``, does not
  change without a reset and is not used then).
- **Safety envelope** (the controller): every joint state is checked against the robot's
  joint position limits moved ``envelope_margin`` inwards, intersected with the joint-space box
  ``envelope_lower`` .. ``envelope_upper`` (a joint-space envelope: the numpy runtime has no
  forward kinematics for a Cartesian one). A state outside it is answered with zero velocities
  and no ``actions`` echo, and so is every state after it until homing succeeds or a state is
  back inside (a driver's reset); ``~/status`` says ``envelope_violation: {"stamp_ns",
  "reason"}`` (null when inside) and counts ``envelope_violations``. The adaptation node
  discards a rollout during which the envelope was left (counted, with the reason).

Conventions:
- A *stamp* is the ``header.stamp`` of the joint state a message belongs to. The controller
  echoes it on its ``actions`` message, the driver puts it on the ``reward`` of the step taken
  from that state; the adaptation node joins the three streams on it, so one control step is
  (joint state, action, reward) with one stamp.
- ``reward``: ``vector.x`` is the reward of the step taken from the stamped state,
  ``vector.y`` is 1.0 when that step ended in success (else 0.0), ``vector.z`` is the
  driver's episode counter (it restarts from 0 when the driver restarts), ``header.frame_id``
  is ``<task id>@<driver_session>`` of the task the step ran under (empty: not named). The
  adaptation node fails an adaptation on a step labelled with another task or session, which
  catches a restarted driver whose steps arrive before its ``active_task``.
- ``actions``: ``name`` are the joint names, ``velocity`` is the action the policy took
  in policy units (before clamping), ``position`` is empty, and ``header.frame_id`` says
  whether the action explored: ``"explore"`` (:data:`ACTION_EXPLORING`: the policy's
  Gaussian noise was added), ``"mean"`` (:data:`ACTION_DETERMINISTIC`: the policy's mean), or
  empty (a controller that does not say; not checked). The adaptation node discards an
  evaluation episode with an exploring step and a collected rollout with a deterministic one
  (someone else switched ``set_exploration`` under it), and says so in its status.
- ``commands``: joint velocities in rad/s, ordered as the controller's ``joint_names``,
  clamped to its limits (ros2_control's forward command controller convention). The
  controller labels ``layout.dim[0]`` with ``stamp_ns=<stamp>`` of the joint state it answers
  (``stamp_ns=0``: a hold that answers no state); ros2_control ignores the layout, and a
  lockstep driver pairs commands with states on it.
- ``task``: the task's JSON (:class:`maml_ros.sim.TaskSpec`) with an optional ``"id"``
  (1-64 of ``[A-Za-z0-9_.:-]``). A message without one gets ``"sha-"`` + the first 12 hex
  digits of the SHA-256 of the task's canonical JSON, so every node derives the same id and a
  plain ``ros2 topic pub`` works. A task with the id of the task a node is already running
  (the driver) or adapting to (the adaptation node) is acknowledged again and changes nothing,
  so a sender may repeat a message until every node has acknowledged it.
- ``task_ack``: ``{"node": <fully qualified node name>, "id": <task id or null>,
  "accepted": bool, "reason": <why it was refused, or null>}``.
- ``active_task``: ``{"id", "family", "since_stamp_ns", "driver_session"}``: the driver runs
  task ``id`` from the joint state stamped ``since_stamp_ns`` on; ``driver_session`` is new
  in every driver process. The adaptation node collects rollouts for a task only once the
  driver confirms its id, only from steps stamped at or after ``since_stamp_ns``, and fails
  the adaptation (policy unchanged) when the confirmation never comes or the driver's
  ``id`` or ``driver_session`` changes under it.
- ``policy``: the bytes of a safetensors file whose header metadata carries the format
  version, policy version, architecture and observation/action spec and a ``sha256``
  checksum of the content, which every reader verifies (see :mod:`maml_ros.rl.checkpoint`).
  Its metadata also holds ``run_id`` (one per adaptation run: a restarted adaptation node that
  resumes its saved state keeps it) and ``version``, and its free ``extra`` metadata says
  ``adapted`` (true: weights adapted on the robot; false or absent: a meta-trained checkpoint)
  and may say ``override`` (true: the operator chose to start from the checkpoint).

  **Who may deploy.** With a ``deploy_key_file`` (the same file for the controller and the
  adaptation node; ``adapt.launch.py`` makes one per launch) the adaptation node labels
  ``layout.dim[0]`` with ``hmac-sha256=<hex>``, the HMAC-SHA256 of the message's bytes under
  the key, and the controller refuses (counted as a ``policy`` drop with the reason) a message
  that is unsigned or signed with another key before it parses it. This authenticates the
  sender of a policy against anyone on the DDS domain without the key (ROS 2 has no access
  control without SROS2) and, with the checksum, detects any altered byte. It does not hide
  the policy (no encryption), does not authenticate the other topics (rewards, tasks, joint
  states), and does not stop a replay of an older message signed with the same key; the version
  rule below refuses a replay within the run, a per-launch key refuses a previous launch's. For
  authentication and encryption of every topic and service use SROS2 (DDS Security:
  ``ros2 security create_enclave``, ``ROS_SECURITY_ENABLE=true``, ``ROS_SECURITY_STRATEGY=
  Enforce``). Without a key the controller takes any policy (today's behaviour) and both nodes
  log a warning.

  **Which policy replaces which** (the acceptance rule, applied after the signature, the
  decode, the probe and the joint-name check): a controller with no policy takes any; a policy
  of the current ``run_id`` replaces the current one when its ``version`` is higher; one of
  another ``run_id`` replaces it unless the current policy is ``adapted`` and the new one is
  neither ``adapted`` nor an ``override``. So a restarted adaptation node that lost its state
  and republishes the checkpoint never downgrades an adapted policy, unless the operator
  started it from the checkpoint (``resume:=false``, which marks its first policy
  ``override``). A rollback is published as a new, higher version of the run carrying the
  previous weights. Every policy is also run on probe observations when decoded and refused
  unless its actions are finite; one that still computes a non-finite action is dropped, its
  (``run_id``, ``version``) refused from then on, and the controller goes back to the policy it
  ran before.
- ``reward`` sources: the adaptation node uses a step only when its reward is labelled with
  the ``<task id>@<driver_session>`` the driver confirmed on ``active_task`` (an unlabelled one
  is dropped, another label fails the adaptation); two different rewards for one stamp (a
  sender racing the driver) invalidate that step, and a rollout that used it is discarded,
  instead of the first reward winning.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

JOINT_STATES_TOPIC = "joint_states"
REWARD_TOPIC = "reward"
TASK_TOPIC = "task"
TASK_ACK_TOPIC = "task_ack"
ACTIVE_TASK_TOPIC = "active_task"
POLICY_TOPIC = "policy"
STATUS_TOPIC = "~/status"
DEFAULT_CONTROLLER = "arm_controller"
RESET_SERVICE = "reset"
EXPLORATION_SERVICE = "set_exploration"
HOME_SERVICE = "home"
"""``<controller>/home`` (std_srvs/Trigger): the controller drives the arm to its home pose."""
ACTION_EXPLORING = "explore"
"""``header.frame_id`` of an ``actions`` message whose action had exploration noise."""
ACTION_DETERMINISTIC = "mean"
"""``header.frame_id`` of an ``actions`` message whose action was the policy's mean."""
ADAPTATION_ROUNDS_RANGE = (1, 5)
"""The adaptation node's ``adaptation_rounds`` bounds, inclusive (also the launch argument's
choices and ``maml-ros-demo --adaptation-rounds``'s check)."""


def commands_topic(controller: str = DEFAULT_CONTROLLER) -> str:
    """ros2_control forward-command topic of ``controller``."""
    return f"{controller}/commands"


def actions_topic(controller: str = DEFAULT_CONTROLLER) -> str:
    """Topic on which the controller echoes every action it took."""
    return f"{controller}/actions"


JOINT_STATES_QOS = qos_profile_sensor_data
LATCHED_QOS = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
STREAM_QOS = QoSProfile(
    depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
)
COMMAND_QOS = QoSProfile(
    depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
)
SERVICE_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
"""The ``reset`` and ``set_exploration`` services (servers and clients): rmw's services
default keeps 10 requests, so a burst of concurrent calls lost all but the first ~10."""
TASK_QOS = COMMAND_QOS
"""RELIABLE, depth 10: the ``task`` topic."""
TASK_ACK_QOS = STREAM_QOS
"""RELIABLE, depth 100: the ``task_ack`` topic."""
