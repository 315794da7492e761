"""``ros2 launch maml_ros adapt.launch.py`` as a user runs it: a launch that cannot work ends at
once, non-zero, with the reason last; Ctrl-C stops every node cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from launch_support import StatusClient, fast_params_file, require_launch_stack

require_launch_stack()


def ros2_launch(*arguments: str) -> subprocess.Popen:
    """``ros2 launch maml_ros adapt.launch.py ARGUMENTS`` in a session of its own (as a
    terminal runs it: Ctrl-C then goes to its whole process group)."""
    ros2 = shutil.which("ros2")
    assert ros2, "ros2 is not on PATH: source tools/env.sh (make shell)"
    return subprocess.Popen(
        [ros2, "launch", "maml_ros", "adapt.launch.py", "device:=cpu", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout_s: float) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the launch was still running after {timeout_s} s:\n{output[-3000:]}")
    return proc.returncode, output


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["checkpoint:=/nonexistent/policy.safetensors"], "cannot read checkpoint"),
        (["params_file:=/nonexistent/adapt.yaml"], "does not exist"),
        (["robot:=xarm6"], "no trained policy ships for robot 'xarm6'"),
    ],
)
def test_a_launch_that_cannot_work_ends_non_zero_with_the_reason(arguments, reason) -> None:
    code, output = finish(ros2_launch(*arguments), 90.0)
    assert code != 0, output
    assert reason in output, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert errors and "launch" in errors[-1], output  # the launch's own error comes last
    assert "respawn" not in output.lower() or "process started" not in output.split(reason)[-1]


def test_ctrl_c_stops_every_node_cleanly() -> None:
    proc = ros2_launch(f"params_file:={fast_params_file()}")
    client = StatusClient()
    try:
        client.ready()
    finally:
        client.close()
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    code, output = finish(proc, 60.0)
    assert code == 0, output
    assert "process has died" not in output, output
    assert output.count("process has finished cleanly") == 3, output
