"""launch_testing: adapt.launch.py brings up the three nodes; a task change gets adapted to.

Skips cleanly where the launch stack (launch, launch_ros, launch_testing) is not installed;
launch_testing's pytest plugin imports every test module while collecting, so nothing here
may fail at import time. Needs the package installed (``make setup`` or colcon).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import unittest
from pathlib import Path

import pytest

pytest.importorskip("launch_testing")
pytest.importorskip("launch_ros")
launch = pytest.importorskip("launch")
if not hasattr(launch, "LaunchDescription"):  # the repo's own launch/ folder shadowing it
    pytest.skip("the launch package is not installed", allow_module_level=True)

import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
import yaml  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from std_msgs.msg import String, UInt8MultiArray  # noqa: E402

from maml_ros.ros.convert import policy_from_msg  # noqa: E402
from maml_ros.ros.interfaces import COMMAND_QOS, LATCHED_QOS  # noqa: E402
from maml_ros.sim import sample_tasks  # noqa: E402

SHARE = Path(get_package_share_directory("maml_ros"))
SHIPPED = SHARE / "models" / "arm_maml.safetensors"
FINAL = ("done", "rolled_back", "failed")


def fast_params_file() -> str:
    """The installed config with a fast simulated arm and a small adaptation budget."""
    params = yaml.safe_load((SHARE / "config" / "adapt.yaml").read_text())
    for key, section in params.items():
        name = key.rsplit("/", 1)[-1]
        values = section["ros__parameters"]
        if name == "sim_arm":
            values.update(real_time_factor=2.0, command_wait_s=0.5)
        elif name == "adaptation":
            values.update(rollouts=10, eval_episodes=2, device="cpu")
    handle, path = tempfile.mkstemp(prefix="adapt_fast_", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(params, out)
    return path


@pytest.mark.launch_test
def generate_test_description():
    """adapt.launch.py with the shipped checkpoint, on CPU, with a fast sim."""
    included = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(SHARE / "launch" / "adapt.launch.py")),
        launch_arguments={
            "checkpoint": str(SHIPPED),
            "device": "cpu",
            "params_file": fast_params_file(),
        }.items(),
    )
    return launch.LaunchDescription([included, launch_testing.actions.ReadyToTest()])


class TestTaskChange(unittest.TestCase):
    """A task change over DDS leads to a newer, better policy."""

    def setUp(self) -> None:
        rclpy.init()
        self.node = rclpy.create_node("launch_test_client")
        self.versions: list[int] = []
        self.status: dict = {}
        self.node.create_subscription(UInt8MultiArray, "policy", self._on_policy, LATCHED_QOS)
        self.node.create_subscription(String, "adaptation/status", self._on_status, LATCHED_QOS)
        self.task_pub = self.node.create_publisher(String, "task", COMMAND_QOS)

    def tearDown(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown()

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        self.versions.append(policy_from_msg(msg, 1 << 26).version)

    def _on_status(self, msg: String) -> None:
        self.status = json.loads(msg.data)

    def _spin_until(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.1)
            if predicate():
                return True
        return False

    def test_task_change_is_adapted_to(self) -> None:
        self.assertTrue(self._spin_until(lambda: self.versions, 60.0), "no initial policy")
        self.assertTrue(
            self._spin_until(lambda: self.node.count_subscribers("task") >= 2, 30.0),
            "the driver and the adaptation node did not subscribe to task",
        )
        first = self.versions[0]
        task = sample_tasks("reach", 1, split="test", seed=0)[0]
        self.task_pub.publish(String(data=task.to_json()))
        finished = self._spin_until(
            lambda: self.status.get("adaptation_id") == 1 and self.status.get("phase") in FINAL,
            240.0,
        )
        self.assertTrue(finished, f"adaptation did not finish: {self.status}")
        self.assertEqual(self.status["phase"], "done", self.status)
        self.assertTrue(self._spin_until(lambda: max(self.versions) > first, 10.0))
        self.assertGreater(self.status["return_post"], self.status["return_pre"], self.status)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """Every node exits cleanly on the launch's SIGINT."""

    def test_exit_codes(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
