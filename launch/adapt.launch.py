"""Launch the simulated arm, the policy controller and the adaptation node in one namespace.

    ros2 launch maml_ros adapt.launch.py [robot:=franka_panda] [checkpoint:=...] [device:=cpu]
        [namespace:=arm1] [use_sim_time:=true] [params_file:=...] [deploy_key_file:=...]
        [state_file:=...] [resume:=true|false] [reset_mode:=service|homing]
        [offer_reset:=true|false]

Then deliver a task change (``ros2 run maml_ros maml-ros-task reach --goal 0.5 0.1 0.4``) and
watch ``adaptation/status``. The driver and the controller respawn when they crash; the
adaptation node republishes the current policy on a latched topic, so a respawned controller
gets it back. The controller and the adaptation node are lifecycle nodes (launch_ros
``LifecycleNode``) that configure and activate themselves as they start (their ``autostart``
parameter), a respawned one included; ``ros2 lifecycle get /policy_controller`` then says
``active``, and ``ros2 lifecycle set /policy_controller deactivate`` makes the arm hold position.
(Driving configure from the launch with ``ChangeState`` events was tried: after a respawn the
dead process's ``change_state`` service is still discovered, the request is lost, and
launch_ros waits for its answer until shutdown, leaving the new controller unconfigured.)
The launch fails loudly: a ``params_file`` that does
not exist, a node that cannot start or configure (invalid parameters, an unreadable checkpoint,
no CUDA) or a node without respawn that dies ends the whole launch with an error and a
non-zero exit code.
The controller and the adaptation node are paired: both read one deploy key, with which the
adaptation node signs every policy and without which the controller takes none. By default the
launch generates a fresh key for itself (32 random bytes, hex) in a private temporary folder
(mode 0700, the file 0600) and removes it at shutdown; ``deploy_key_file:=FILE`` uses yours
(mode 600), ``deploy_key_file:=none`` pairs nothing (any publisher deploys; both nodes warn).
``state_file:=FILE`` makes the adaptation survive a restart (``resume:=false`` starts from the
checkpoint instead). ``robot:=NAME`` sets all three nodes' robot description; the adaptation
node then loads that robot's shipped ``models/<robot>_maml.safetensors`` (``arm_maml`` for the
default kuka_iiwa) unless ``checkpoint:=`` names one, and exits with a clear error when none
ships. ``reset_mode:=homing offer_reset:=false`` rehearses a real arm's driver, which has no
``reset`` service: the controller drives the arm home between episodes. Every other parameter,
the safety envelope included, comes from ``params_file``.
Importing this file has no side effects: everything happens in generate_launch_description().
"""

import functools
import os
import shutil
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnShutdown
from launch.events.process import ProcessExited
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from maml_ros.ros.interfaces import ADAPTATION_ROUNDS_RANGE
from maml_ros.runtime.deployment import create_deploy_key
from maml_ros.runtime.robots import robot_names

PACKAGE = "maml_ros"
STARTUP_ERROR = 2
"""The exit code of a maml_ros node that cannot start (maml_ros.ros.common.run_node)."""


class LaunchFailure(RuntimeError):
    """Ends the launch with an error: launch logs it last and returns a non-zero exit code."""


def _on_node_exit(event: ProcessExited, context: LaunchContext, respawn: bool) -> None:
    """A start-up error, or the death of a node that does not respawn, ends the launch."""
    if context.is_shutdown or event.returncode == 0:
        return
    name = getattr(event.action, "node_name", None) or event.process_name
    if event.returncode == STARTUP_ERROR:
        raise LaunchFailure(
            f"{name} could not start (exit code {STARTUP_ERROR}; its FATAL line above says "
            "why): shutting the launch down"
        )
    if not respawn:
        raise LaunchFailure(f"{name} died (exit code {event.returncode}): shutting down")


NO_KEY = "none"
"""``deploy_key_file:=none``: the controller and the adaptation node are not paired."""


def _per_launch_key() -> tuple[str, list]:
    """A fresh deploy key in a private temporary folder, and the handler removing it at
    shutdown."""
    folder = tempfile.mkdtemp(prefix="maml_ros_deploy_key_")  # mode 0700
    path = create_deploy_key(folder)
    remove = OnShutdown(on_shutdown=lambda *_: shutil.rmtree(folder, ignore_errors=True))
    return str(path), [RegisterEventHandler(remove)]


def _nodes(context: LaunchContext) -> list:
    """The three nodes and their exit handlers, once ``params_file`` is known to exist."""
    params_file = LaunchConfiguration("params_file").perform(context)
    if not os.path.isfile(params_file):
        raise LaunchFailure(f"params_file:={params_file} does not exist (or is not a file)")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    key_file, key_actions = LaunchConfiguration("deploy_key_file").perform(context), []
    if not key_file:
        key_file, key_actions = _per_launch_key()
    elif key_file == NO_KEY:
        key_file = ""
    paired = {"deploy_key_file": key_file}
    robot = {"robot": ParameterValue(LaunchConfiguration("robot"), value_type=str)}

    def node(
        executable: str, name: str, overrides: dict, respawn: bool, lifecycle: bool = True
    ) -> list:
        action = (LifecycleNode if lifecycle else Node)(
            package=PACKAGE,
            executable=executable,
            name=name,
            namespace=LaunchConfiguration("namespace"),
            parameters=[params_file, {"use_sim_time": use_sim_time, **overrides}],
            respawn=respawn,
            respawn_delay=1.0 if respawn else None,
            output="screen",
            emulate_tty=True,
        )
        on_exit = functools.partial(_on_node_exit, respawn=respawn)
        return [action, RegisterEventHandler(OnProcessExit(target_action=action, on_exit=on_exit))]

    return [
        *key_actions,
        *node(
            "sim_arm_node",
            "sim_arm",
            {
                "publish_clock": use_sim_time,
                "offer_reset": ParameterValue(LaunchConfiguration("offer_reset"), value_type=bool),
                **robot,
            },
            respawn=True,
            lifecycle=False,
        ),
        *node("policy_controller_node", "policy_controller", {**paired, **robot}, respawn=True),
        *node(
            "adaptation_node",
            "adaptation",
            {
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "state_file": ParameterValue(LaunchConfiguration("state_file"), value_type=str),
                "resume": ParameterValue(LaunchConfiguration("resume"), value_type=bool),
                "reset_mode": ParameterValue(LaunchConfiguration("reset_mode"), value_type=str),
                "adaptation_rounds": ParameterValue(
                    LaunchConfiguration("adaptation_rounds"), value_type=int
                ),
                **paired,
                **robot,
            },
            respawn=False,
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    """The three maml_ros nodes with the installed config/adapt.yaml (or params_file)."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "adapt.yaml")
    low_rounds, high_rounds = ADAPTATION_ROUNDS_RANGE
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "checkpoint",
                default_value="",
                description="Policy checkpoint; empty = the robot's shipped model "
                "(models/<robot>_maml.safetensors, arm_maml for kuka_iiwa)",
            ),
            DeclareLaunchArgument(
                "robot",
                default_value="kuka_iiwa",
                choices=list(robot_names()),
                description="Robot description of all three nodes (maml_ros.runtime.robots)",
            ),
            DeclareLaunchArgument(
                "device",
                default_value="auto",
                choices=["auto", "cpu", "cuda"],
                description="Device of the inner update",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="Namespace of all three nodes"
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                choices=["true", "false"],
                description="Use the simulated arm's /clock (the driver publishes it then)",
            ),
            DeclareLaunchArgument(
                "deploy_key_file",
                default_value="",
                description="Key file (mode 600) pairing the controller and the adaptation node; "
                "empty = a fresh key per launch, 'none' = unpaired (any publisher deploys)",
            ),
            DeclareLaunchArgument(
                "state_file",
                default_value="",
                description="Adaptation state file surviving restarts; empty = off",
            ),
            DeclareLaunchArgument(
                "resume",
                default_value="true",
                choices=["true", "false"],
                description="With state_file: resume the saved policy or start from the checkpoint",
            ),
            DeclareLaunchArgument(
                "reset_mode",
                default_value="service",
                choices=["service", "homing"],
                description="How an episode starts: the driver's reset service, or homing "
                "(the controller drives the arm home; no driver support needed)",
            ),
            DeclareLaunchArgument(
                "adaptation_rounds",
                default_value="1",
                choices=[str(n) for n in range(low_rounds, high_rounds + 1)],
                description="Adaptation rounds per task change, each on K fresh rollouts of "
                "the policy the round before kept",
            ),
            DeclareLaunchArgument(
                "offer_reset",
                default_value="true",
                choices=["true", "false"],
                description="Whether the simulated driver offers a reset service "
                "(false: like a real arm; use with reset_mode:=homing)",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="Parameter file of sim_arm, policy_controller and adaptation",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
