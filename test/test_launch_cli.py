"""``ros2 launch maml_ros adapt.launch.py`` as a user runs it: a launch that cannot work ends at
once, non-zero, with the reason last; Ctrl-C stops every node cleanly."""

from __future__ import annotations

import time

import pytest
from launch_support import StatusClient, fast_params_file, require_launch_stack, ros2_launch

require_launch_stack()


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["checkpoint:=/nonexistent/policy.safetensors"], "cannot read checkpoint"),
        (["params_file:=/nonexistent/adapt.yaml"], "does not exist"),
        (["robot:=xarm6"], "no trained policy ships for robot 'xarm6'"),
    ],
)
def test_a_launch_that_cannot_work_ends_non_zero_with_the_reason(arguments, reason) -> None:
    code, output = ros2_launch(*arguments).finish(90.0)
    assert code != 0, output
    assert reason in output, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert errors and "launch" in errors[-1], output  # the launch's own error comes last
    assert "respawn" not in output.lower() or "process started" not in output.split(reason)[-1]


def test_ctrl_c_stops_every_node_cleanly() -> None:
    session = ros2_launch(f"params_file:={fast_params_file()}")
    client = StatusClient()
    try:
        client.ready()
    finally:
        client.close()
        time.sleep(0.5)
        session.ctrl_c()
    code, output = session.finish(60.0)
    assert code == 0, output
    assert "process has died" not in output, output
    assert output.count("process has finished cleanly") == 3, output
