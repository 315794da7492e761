"""The wire contract shared by every maml_ros node: topic names, QoS and message conventions.

Topic names are relative, so a namespace or a remapping moves them all.

- ``joint_states`` (sensor_msgs/JointState, sensor-data QoS): from sim_arm_node or the robot.
- ``reward`` (geometry_msgs/Vector3Stamped, RELIABLE depth 100): from sim_arm_node or a task node.
- ``<controller>/commands`` (std_msgs/Float64MultiArray, RELIABLE depth 10): from the controller.
- ``<controller>/actions`` (sensor_msgs/JointState, RELIABLE depth 100): the controller's actions.
- ``policy`` (std_msgs/UInt8MultiArray, RELIABLE + TRANSIENT_LOCAL depth 1): adaptation_node.
- ``task`` (std_msgs/String holding task JSON, RELIABLE depth 10): maml-ros-task or the user.
- ``~/status`` (std_msgs/String holding JSON, RELIABLE + TRANSIENT_LOCAL depth 1): every node
  publishes its counters (dropped inputs by kind and reason) and state there.
- services: ``reset`` (std_srvs/Trigger, the driver), ``<controller>/set_exploration``
  (std_srvs/SetBool, the controller).

Conventions:
- A *stamp* is the ``header.stamp`` of the joint state a message belongs to. The controller
  echoes it on its ``actions`` message, the driver puts it on the ``reward`` of the step taken
  from that state; the adaptation node joins the three streams on it, so one control step is
  (joint state, action, reward) with one stamp.
- ``reward``: ``vector.x`` is the reward of the step taken from the stamped state,
  ``vector.y`` is 1.0 when that step ended in success (else 0.0), ``vector.z`` is the
  driver's episode counter (it restarts from 0 when the driver restarts).
- ``actions``: ``name`` are the joint names, ``velocity`` is the action the policy took
  in policy units (before clamping), ``position`` is empty.
- ``commands``: joint velocities in rad/s, ordered as the controller's ``joint_names``,
  clamped to its limits (ros2_control's forward command controller convention). The
  controller labels ``layout.dim[0]`` with ``stamp_ns=<stamp>`` of the joint state it answers
  (``stamp_ns=0``: a hold that answers no state); ros2_control ignores the layout, and a
  lockstep driver pairs commands with states on it.
- ``policy``: the bytes of a safetensors file whose header metadata carries the format
  version, policy version, architecture and observation/action spec
  (see :mod:`maml_ros.rl.checkpoint`). Its metadata also holds ``run_id`` (one per
  adaptation-node process) and ``version``: a controller accepts a policy whose ``run_id``
  differs from its current one, or whose ``version`` is higher; a rollback is published as a
  new, higher version carrying the previous weights.
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
POLICY_TOPIC = "policy"
STATUS_TOPIC = "~/status"
DEFAULT_CONTROLLER = "arm_controller"
RESET_SERVICE = "reset"
EXPLORATION_SERVICE = "set_exploration"


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
