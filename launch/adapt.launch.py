"""Launch the simulated arm, the policy controller and the adaptation node in one namespace.

    ros2 launch maml_ros adapt.launch.py [checkpoint:=...] [device:=cpu] [namespace:=arm1]
        [use_sim_time:=true] [params_file:=...]

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
Importing this file has no side effects: everything happens in generate_launch_description().
"""

import functools
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

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


def _nodes(context: LaunchContext) -> list:
    """The three nodes and their exit handlers, once ``params_file`` is known to exist."""
    params_file = LaunchConfiguration("params_file").perform(context)
    if not os.path.isfile(params_file):
        raise LaunchFailure(f"params_file:={params_file} does not exist (or is not a file)")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
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
        *node(
            "sim_arm_node",
            "sim_arm",
            {"publish_clock": use_sim_time, **robot},
            respawn=True,
            lifecycle=False,
        ),
        *node("policy_controller_node", "policy_controller", robot, respawn=True),
        *node(
            "adaptation_node",
            "adaptation",
            {
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                **robot,
            },
            respawn=False,
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    """The three maml_ros nodes with the installed config/adapt.yaml (or params_file)."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "adapt.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "checkpoint",
                default_value="",
                description="Policy checkpoint; empty = the shipped models/arm_maml.safetensors",
            ),
            DeclareLaunchArgument(
                "robot",
                default_value="kuka_iiwa",
                choices=list(robot_names()),
                description="Robot description of all three nodes (maml_ros.runtime.robots); "
                "only kuka_iiwa has a shipped checkpoint",
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
                "params_file",
                default_value=default_params,
                description="Parameter file of sim_arm, policy_controller and adaptation",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
