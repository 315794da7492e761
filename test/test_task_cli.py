"""maml-ros-task: argument validation (exit 2), building tasks, and publishing over DDS."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

from maml_ros.ros.common import NodeStatus
from maml_ros.ros.convert import TaskChange
from maml_ros.ros.task_cli import main, parse
from maml_ros.ros.tasks import TaskInbox
from maml_ros.sim import DEFAULT_GOAL, TaskSpec

NAMESPACE = f"/test_{uuid.uuid4().hex[:12]}"
"""Private namespace: tests of other processes sharing the DDS domain cannot cross-talk."""
REMAP = ["--ros-args", "-r", f"__ns:={NAMESPACE}"]


def test_reach_dynamics_and_json_build_valid_tasks() -> None:
    task, args = parse(["reach", "--goal", "0.5", "0.1", "0.4"])
    assert task == TaskSpec(family="reach", goal=(0.5, 0.1, 0.4))
    assert args.topic == "task" and args.wait_s == 10.0
    assert args.require == ["sim_arm", "adaptation"]

    gains = ["1", "1", "0.5", "1", "1", "1", "0"]
    task, _ = parse(["dynamics", "--joint-gain", *gains, "--payload-kg", "1.0"])
    assert task.family == "dynamics" and task.goal == DEFAULT_GOAL
    assert task.joint_gain == (1, 1, 0.5, 1, 1, 1, 0) and task.payload_kg == 1.0

    task, _ = parse(["dynamics", "--joint-damping", *["0.5"] * 7, "--goal", "0.5", "0.1", "0.4"])
    assert task.family == "reach+dynamics" and task.joint_damping == (0.5,) * 7

    text = TaskSpec(family="reach", goal=(0.6, -0.1, 0.5)).to_json()
    task, args = parse(["--topic", "/arm1/task", "--wait-s", "1.5", "json", text])
    assert task.to_json() == text and args.topic == "/arm1/task" and args.wait_s == 1.5

    # --robot sizes the joint vectors and goes into the task (before or after the subcommand).
    task, _ = parse(["--robot", "xarm6", "dynamics", "--joint-gain", *["1"] * 5, "0.5"])
    assert task.robot == "xarm6" and task.joint_gain == (1, 1, 1, 1, 1, 0.5)
    task, _ = parse(["reach", "--goal", "0.45", "0.05", "0.4", "--robot", "franka_panda"])
    assert task.robot == "franka_panda" and json.loads(task.to_json())["robot"] == "franka_panda"

    # The options also come after the subcommand, as the usage line shows them.
    task, args = parse(["reach", "--goal", "0.5", "0.1", "0.4", "--topic", "t", "--require", "a"])
    assert args.topic == "t" and args.require == ["a"] and args.wait_s == 10.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reach", "--goal", "5", "0", "0"], "workspace"),
        (["reach", "--goal", "0.5", "0.1"], "--goal"),
        (["reach", "--goal", "0.5", "0.1", "nan"], "finite"),
        (["reach"], "--goal"),
        (["dynamics"], "at least one"),
        (["dynamics", "--payload-kg", "-1"], "payload_kg"),
        (["dynamics", "--joint-gain", "1", "1"], "joint_gain must have 7 values"),
        (["--robot", "xarm6", "dynamics", "--joint-gain", *["1"] * 7], "must have 6 values"),
        (["--robot", "ur5", "reach", "--goal", "0.5", "0.1", "0.4"], "invalid choice"),
        (["--robot", "xarm6", "json", '{"family": "reach", "goal": [0.5, 0.1, 0.4]}'], "xarm6"),
        (["json", "{not json"], "JSON"),
        (["json", '{"family": "fly"}'], "family"),
        (["--wait-s", "0", "reach", "--goal", "0.5", "0.1", "0.4"], "wait-s"),
        (["--topic", "/", "reach", "--goal", "0.5", "0.1", "0.4"], "topic"),
        (["teleport"], "invalid choice"),
        (["reach", "--goal", "0.5", "0.1", "0.4", "--require", "/"], "--require"),
        (["json", '{"family": "dynamics", "payload_kg": ' + "9" * 400 + "}"], "invalid task"),
    ],
)
def test_bad_input_exits_2_with_the_reason(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.01)


class Receivers:
    """Nodes named like adapt.launch.py's task readers, each with a real TaskInbox, in
    NAMESPACE; ``refuse`` maps a node name to the reason it refuses every task with."""

    def __init__(self, names: list[str], refuse: dict[str, str] | None = None) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.received: dict[str, list[TaskChange]] = {name: [] for name in names}
        self.nodes = []
        for name in names:
            node = rclpy.create_node(name, context=self.context, namespace=NAMESPACE)

            def on_task(change: TaskChange, name: str = name) -> str | None:
                self.received[name].append(change)
                return (refuse or {}).get(name)

            TaskInbox(node, NodeStatus(node), on_task)
            self.executor.add_node(node)
            self.nodes.append(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    nodes = Receivers(["sim_arm", "adaptation"])
    yield nodes
    nodes.close()


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    executable = shutil.which("maml-ros-task")
    assert executable, "maml-ros-task is not on PATH: run `make setup` and `source tools/env.sh`"
    return subprocess.run([executable, *argv, *REMAP], capture_output=True, text=True, timeout=60)


def test_executable_delivers_to_both_nodes_and_says_so(receivers) -> None:
    proc = run_cli("reach", "--goal", "0.5", "0.1", "0.4", "--wait-s", "20")
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.strip().splitlines()[-1]
    assert TaskSpec.from_json(printed) == TaskSpec(family="reach", goal=(0.5, 0.1, 0.4))
    assert f"{NAMESPACE}/sim_arm" in proc.stdout and f"{NAMESPACE}/adaptation" in proc.stdout
    ids = {name: {c.id for c in got} for name, got in receivers.received.items()}
    assert ids["sim_arm"] == ids["adaptation"] and len(ids["sim_arm"]) == 1, ids
    (task_id,) = ids["sim_arm"]
    assert task_id.startswith("cli-") and task_id in proc.stdout
    assert json.loads(printed)["goal"] == [0.5, 0.1, 0.4]


def test_a_missing_node_fails_and_is_named(capsys) -> None:
    nodes = Receivers(["sim_arm"])  # no adaptation node
    try:
        goal = ["--goal", "0.5", "0.1", "0.4"]
        assert main(["--wait-s", "2", "reach", *goal, *REMAP]) == 1
    finally:
        nodes.close()
    err = capsys.readouterr().err
    assert f"{NAMESPACE}/adaptation did not subscribe" in err and "nothing sent" in err
    assert not nodes.received["sim_arm"], "half-delivered: the driver got a task alone"


def test_a_refusal_fails_with_the_reason(capsys) -> None:
    nodes = Receivers(["sim_arm", "adaptation"], refuse={"adaptation": "not ready"})
    try:
        assert main(["--wait-s", "5", "reach", "--goal", "0.5", "0.1", "0.4", *REMAP]) == 1
    finally:
        nodes.close()
    err = capsys.readouterr().err
    assert f"{NAMESPACE}/adaptation refused" in err and "not ready" in err


def test_a_task_for_another_robot_is_refused_by_the_inbox(capsys) -> None:
    nodes = Receivers(["sim_arm", "adaptation"])  # their TaskInbox serves the default robot
    try:
        argv = ["--wait-s", "5", "--robot", "franka_panda", "reach", "--goal", "0.45", "0.05"]
        assert main([*argv, "0.4", *REMAP]) == 1
    finally:
        nodes.close()
    err = capsys.readouterr().err
    assert f"{NAMESPACE}/sim_arm refused" in err and "robot 'franka_panda'" in err
    assert not any(nodes.received.values()), "a task for another robot reached on_task"


def test_no_subscriber_exits_1(capsys) -> None:
    goal = ["--goal", "0.5", "0.1", "0.4"]
    assert main(["--topic", f"{NAMESPACE}/nobody", "--wait-s", "0.3", "reach", *goal]) == 1
    assert "nothing sent" in capsys.readouterr().err
