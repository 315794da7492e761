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
from std_msgs.msg import String

from maml_ros.ros.interfaces import COMMAND_QOS
from maml_ros.ros.task_cli import main, parse
from maml_ros.sim import DEFAULT_GOAL, TaskSpec

NAMESPACE = f"/test_{uuid.uuid4().hex[:12]}"
"""Private namespace: tests of other processes sharing the DDS domain cannot cross-talk."""
REMAP = ["--ros-args", "-r", f"__ns:={NAMESPACE}"]


def test_reach_dynamics_and_json_build_valid_tasks() -> None:
    task, args = parse(["reach", "--goal", "0.5", "0.1", "0.4"])
    assert task == TaskSpec(family="reach", goal=(0.5, 0.1, 0.4))
    assert args.topic == "task" and args.wait_s == 5.0

    gains = ["1", "1", "0.5", "1", "1", "1", "0"]
    task, _ = parse(["dynamics", "--joint-gain", *gains, "--payload-kg", "1.0"])
    assert task.family == "dynamics" and task.goal == DEFAULT_GOAL
    assert task.joint_gain == (1, 1, 0.5, 1, 1, 1, 0) and task.payload_kg == 1.0

    task, _ = parse(["dynamics", "--joint-damping", *["0.5"] * 7, "--goal", "0.5", "0.1", "0.4"])
    assert task.family == "reach+dynamics" and task.joint_damping == (0.5,) * 7

    text = TaskSpec(family="reach", goal=(0.6, -0.1, 0.5)).to_json()
    task, args = parse(["--topic", "/arm1/task", "--wait-s", "1.5", "json", text])
    assert task.to_json() == text and args.topic == "/arm1/task" and args.wait_s == 1.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reach", "--goal", "5", "0", "0"], "workspace"),
        (["reach", "--goal", "0.5", "0.1"], "--goal"),
        (["reach", "--goal", "0.5", "0.1", "nan"], "finite"),
        (["reach"], "--goal"),
        (["dynamics"], "at least one"),
        (["dynamics", "--payload-kg", "-1"], "payload_kg"),
        (["dynamics", "--joint-gain", "1", "1"], "--joint-gain"),
        (["json", "{not json"], "JSON"),
        (["json", '{"family": "fly"}'], "family"),
        (["--wait-s", "0", "reach", "--goal", "0.5", "0.1", "0.4"], "wait-s"),
        (["--topic", "/", "reach", "--goal", "0.5", "0.1", "0.4"], "topic"),
        (["teleport"], "invalid choice"),
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


@pytest.fixture
def listener() -> Iterator[tuple[list[str], list[str]]]:
    """Subscribers on ``task`` and ``other/task`` in a private context, in NAMESPACE."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("task_listener", context=context, namespace=NAMESPACE)
    default: list[str] = []
    other: list[str] = []
    node.create_subscription(String, "task", lambda m: default.append(m.data), COMMAND_QOS)
    node.create_subscription(String, "other/task", lambda m: other.append(m.data), COMMAND_QOS)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield default, other
    executor.shutdown(timeout_sec=5.0)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    thread.join(timeout=5.0)


def test_executable_publishes_once_and_prints_the_json(listener) -> None:
    default, other = listener
    executable = shutil.which("maml-ros-task")
    assert executable, "maml-ros-task is not on PATH: run `make setup` and `source tools/env.sh`"
    proc = subprocess.run(
        [executable, "--wait-s", "20", "reach", "--goal", "0.5", "0.1", "0.4", *REMAP],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.strip().splitlines()[-1]
    assert TaskSpec.from_json(printed) == TaskSpec(family="reach", goal=(0.5, 0.1, 0.4))
    wait_until(lambda: default)  # acknowledged by DDS; the callback may still be pending
    time.sleep(0.2)
    assert default == [printed] and other == []  # sent exactly once, on the default topic

    assert main(["--topic", f"{NAMESPACE}/other/task", "--wait-s", "20", "json", printed]) == 0
    wait_until(lambda: other)
    assert other == [printed]
    assert json.loads(printed)["goal"] == [0.5, 0.1, 0.4]


def test_no_subscriber_exits_1(capsys) -> None:
    goal = ["--goal", "0.5", "0.1", "0.4"]
    assert main(["--topic", f"{NAMESPACE}/nobody", "--wait-s", "0.3", "reach", *goal]) == 1
    assert "nobody subscribed" in capsys.readouterr().err
