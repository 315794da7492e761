"""The README's "Use it in a ROS 2 workspace", for real: the package copied into a scratch
workspace, ``colcon build``, ``source install/setup.bash``, then ``ros2 pkg executables`` and a
short ``ros2 launch`` from the install space. The slowest test (marked slow)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from launch_support import TerminalSession, require_launch_stack

require_launch_stack()

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ["package.xml", "setup.py", "setup.cfg", "resource", "maml_ros", "launch"]
PACKAGE_FILES += ["config", "models"]
EXECUTABLES = {"sim_arm_node", "policy_controller_node", "adaptation_node", "maml-ros-task"}


def bash(script: str, cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """``script`` in a login-free bash that has the project environment (the underlay)."""
    env_sh = REPO / "tools" / "env.sh"
    return subprocess.run(
        ["bash", "-c", f"set -e; source {env_sh}; {script}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.slow
def test_colcon_build_then_ros2_from_the_install_space(tmp_path: Path) -> None:
    if not shutil.which("colcon"):
        pytest.fail("colcon is not installed: make setup LAUNCH_WHEELS=DIR installs it")
    source = tmp_path / "ws" / "src" / "maml_ros"
    source.mkdir(parents=True)
    for name in PACKAGE_FILES:
        path = REPO / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    ws = tmp_path / "ws"
    built = bash("colcon build --packages-select maml_ros", ws, 300)
    assert built.returncode == 0, built.stdout + built.stderr

    overlay = f"source {ws}/install/setup.bash"
    listed = bash(f"{overlay}; ros2 pkg prefix maml_ros; ros2 pkg executables maml_ros", ws, 60)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == str(ws / "install" / "maml_ros"), "not the install space's package"
    assert {line.split()[-1] for line in lines[1:]} >= EXECUTABLES, listed.stdout

    # A short launch from the install space: a params_file that does not exist must end it
    # with the launch file's own error; then the real thing runs until the nodes are up.
    failed = bash(f"{overlay}; ros2 launch maml_ros adapt.launch.py params_file:=/nope", ws, 60)
    assert failed.returncode != 0
    assert "params_file:=/nope does not exist" in failed.stdout + failed.stderr
    # Ctrl-C as a terminal sends it, once the adaptation node waits for a task.
    session = TerminalSession(
        [
            "bash",
            "-c",
            f"set -e; source {REPO}/tools/env.sh; {overlay}; "
            "exec ros2 launch maml_ros adapt.launch.py device:=cpu",
        ],
        cwd=ws,
    )
    session.wait_for("waiting for a task", 120.0)  # the adaptation node came up
    session.ctrl_c()
    code, output = session.finish(60.0)
    assert code == 0, output
    assert f"loaded {ws}/install/maml_ros/share/maml_ros/models" in output, output
    assert "process has died" not in output, output
    assert output.count("process has finished cleanly") == 3, output
