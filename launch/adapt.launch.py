"""Launch the simulated arm, the policy controller and the adaptation node in one namespace.

    ros2 launch maml_ros adapt.launch.py [checkpoint:=...] [device:=cpu] [namespace:=arm1]
        [use_sim_time:=true] [params_file:=...]

Then publish a task change (``maml-ros-task reach --goal 0.5 0.1 0.4``) and watch
``adaptation/status``. The driver and the controller respawn when they die; the adaptation node
republishes the current policy on a latched topic, so a respawned controller gets it back.
Importing this file has no side effects: everything happens in generate_launch_description().
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "maml_ros"


def generate_launch_description() -> LaunchDescription:
    """The three maml_ros nodes with the installed config/adapt.yaml (or params_file)."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "adapt.yaml")
    checkpoint = LaunchConfiguration("checkpoint")
    device = LaunchConfiguration("device")
    namespace = LaunchConfiguration("namespace")
    params_file = LaunchConfiguration("params_file")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)

    def node(executable: str, name: str, overrides: dict, respawn: bool) -> Node:
        return Node(
            package=PACKAGE,
            executable=executable,
            name=name,
            namespace=namespace,
            parameters=[params_file, {"use_sim_time": use_sim_time, **overrides}],
            respawn=respawn,
            respawn_delay=1.0 if respawn else None,
            output="screen",
            emulate_tty=True,
        )

    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "checkpoint",
                default_value="",
                description="Policy checkpoint; empty = the shipped models/arm_maml.safetensors",
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
            node("sim_arm_node", "sim_arm", {"publish_clock": use_sim_time}, respawn=True),
            node("policy_controller_node", "policy_controller", {}, respawn=True),
            node(
                "adaptation_node",
                "adaptation",
                {
                    "checkpoint": ParameterValue(checkpoint, value_type=str),
                    "device": ParameterValue(device, value_type=str),
                },
                respawn=False,
            ),
        ]
    )
