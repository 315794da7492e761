"""launch_testing: ``ros2 launch maml_ros adapt.launch.py namespace:=robot1`` with the simulated
arm; the README's task commands are adapted to, in that namespace only; a SIGKILLed controller
respawns with the latched policy; every node exits 0 on the launch's SIGINT."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
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

NAMESPACE = "/robot1"


def lifecycle(verb: str, node: str, *args: str) -> str:
    """``ros2 lifecycle VERB /robot1/NODE ARGS``: the state label it prints (get) or its output."""
    ros2 = shutil.which("ros2")
    for _ in range(5):  # a loaded machine may not have discovered the node yet
        done = subprocess.run(
            [ros2, "lifecycle", verb, f"{NAMESPACE}/{node}", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0:
            break
        time.sleep(2.0)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[0] if verb == "get" else done.stdout


SYSTEM_TOPICS = {"/rosout", "/parameter_events"}


@pytest.mark.launch_test
def generate_test_description():
    """adapt.launch.py in namespace robot1, the shipped checkpoint, CPU, a fast sim."""
    included = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share() / "launch" / "adapt.launch.py")),
        launch_arguments={
            "namespace": NAMESPACE.strip("/"),
            "device": "cpu",
            "params_file": fast_params_file(),
        }.items(),
    )
    return launch.LaunchDescription([included, launch_testing.actions.ReadyToTest()])


class TestAdaptInANamespace(unittest.TestCase):
    """Run in name order: each test builds on the adaptations before it."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.client = StatusClient(NAMESPACE)
        cls.client.ready()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()

    def _adapt_through_the_cli(self, adaptation_id: int, family: str, *argv: str) -> None:
        cli = run_task_cli(*argv, namespace=NAMESPACE)
        self.assertEqual(cli.returncode, 0, cli.stderr)
        task_id = task_id_of(cli)
        self.assertIn(f"{NAMESPACE}/sim_arm", cli.stdout)
        self.assertIn(f"{NAMESPACE}/adaptation", cli.stdout)
        status = self.client.adapted(adaptation_id)
        self.assertEqual((status["phase"], status["task_id"]), ("done", task_id), status)
        self.assertGreater(status["return_post"], status["return_pre"], status)
        # The driver's status is a 1 Hz snapshot, and a fast sim can adapt within a second.
        driver = self.client.spin_until(
            lambda: (d := self.client.status["sim_arm"]).get("task_id") == task_id and d,
            5.0,
            "the driver does not report the task",
        )
        self.assertEqual(driver["task_family"], family, driver)
        self.client.spin_until(
            lambda: (
                self.client.status["policy_controller"].get("policy_version")
                == status["policy_version"]
            ),
            10.0,
            "the controller does not run the adapted policy",
        )
        self.assertEqual(self.client.status["policy_controller"]["run_id"], status["run_id"])

    def test_1_reach_task_from_the_readme(self) -> None:
        self._adapt_through_the_cli(1, "reach", "reach", "--goal", "0.5", "0.1", "0.4")

    def test_2_dynamics_task_from_the_readme(self) -> None:
        gains = ["1", "0.5", "1", "1", "1", "1", "1"]
        argv = ("dynamics", "--joint-gain", *gains, "--payload-kg", "2")
        self._adapt_through_the_cli(2, "dynamics", *argv)

    def test_3_everything_is_in_the_namespace(self) -> None:
        node = self.client.node
        topics = {name for name, _ in node.get_topic_names_and_types()} - SYSTEM_TOPICS
        self.assertTrue(topics, "no topics")
        outside = sorted(t for t in topics if not t.startswith(NAMESPACE + "/"))
        self.assertEqual(outside, [], "topics outside the namespace (/clock is off too)")
        nodes = set(node.get_node_names_and_namespaces())
        for name in StatusClient.NODES:
            self.assertIn((name, NAMESPACE), nodes)

    def test_4_a_killed_controller_respawns_with_the_latched_policy(self) -> None:
        deployed = self.client.status["adaptation"]["policy_version"]
        old_pid = self.client.status["policy_controller"]["pid"]
        os.kill(old_pid, signal.SIGKILL)
        controller = self.client.spin_until(
            lambda: (
                (c := self.client.status["policy_controller"]).get("pid") != old_pid
                and c.get("policy_version") == deployed
                and c
            ),
            60.0,
            "the respawned controller did not get the latched policy",
        )
        self.assertEqual(controller["run_id"], self.client.status["adaptation"]["run_id"])
        self.assertEqual(lifecycle("get", "policy_controller"), "active")  # the launch did it

    def test_5_ros2_lifecycle_reports_and_changes_the_states(self) -> None:
        for name in ("policy_controller", "adaptation"):
            self.assertEqual(lifecycle("get", name), "active")
        lifecycle("set", "policy_controller", "deactivate")
        self.client.spin_until(
            lambda: self.client.status["policy_controller"].get("lifecycle") == "inactive",
            20.0,
            "the controller did not deactivate",
        )
        self.assertEqual(lifecycle("get", "policy_controller"), "inactive")
        lifecycle("set", "policy_controller", "activate")
        self.assertEqual(lifecycle("get", "policy_controller"), "active")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """Every node exits 0 on the launch's SIGINT (the respawned controller included)."""

    def test_exit_codes(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
