"""launch_testing: ``adapt.launch.py use_sim_time:=true``: every node runs on the driver's
/clock (``ros2 param get`` says so), and a task change is still adapted to."""

from __future__ import annotations

import shutil
import subprocess
import unittest

import pytest
from launch_support import (
    StatusClient,
    fast_params_file,
    require_launch_stack,
    run_task_cli,
    share,
    task_id_of,
)

require_launch_stack()

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402


@pytest.mark.launch_test
def generate_test_description():
    """adapt.launch.py on simulated time, the shipped checkpoint, CPU, a fast sim."""
    included = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share() / "launch" / "adapt.launch.py")),
        launch_arguments={
            "use_sim_time": "true",
            "device": "cpu",
            "params_file": fast_params_file(),
        }.items(),
    )
    return launch.LaunchDescription([included, launch_testing.actions.ReadyToTest()])


class TestSimTime(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.client = StatusClient()
        cls.client.ready()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()

    def test_every_node_uses_sim_time_and_clock_is_published(self) -> None:
        ros2 = shutil.which("ros2")
        for name in StatusClient.NODES:
            got = subprocess.run(
                [
                    ros2,
                    "param",
                    "get",
                    f"/{name}",
                    "use_sim_time",
                    "--no-daemon",
                    "--spin-time",
                    "5",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertIn("True", got.stdout, f"{name}: {got.stdout}")
        self.assertEqual(self.client.node.count_publishers("/clock"), 1)

    def test_a_task_is_adapted_to_on_sim_time(self) -> None:
        cli = run_task_cli("reach", "--goal", "0.5", "0.1", "0.4")
        self.assertEqual(cli.returncode, 0, cli.stderr)
        status = self.client.adapted(1)
        self.assertEqual((status["phase"], status["task_id"]), ("done", task_id_of(cli)), status)
        self.assertGreater(status["return_post"], status["return_pre"], status)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
