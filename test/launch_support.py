"""What the launch tests share: the launch stack or a clear skip, ``ros2 launch`` run as a
terminal runs it, a fast parameter file, the README's task command, and a client that follows
the nodes' status over DDS."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HOW_TO_GET_IT = (
    "the ROS 2 launch stack (launch, launch_ros, launch_testing, ros2cli) is not installed: "
    "`make setup LAUNCH_WHEELS=<dir>` installs it from wheels (the project's shared "
    "ros2-launch/wheels), or source a ROS 2 Jazzy/Kilted install"
)
FINAL = ("done", "rolled_back", "failed", "cancelled")


def require_launch_stack() -> None:
    """Skips the calling module (at import) without the launch stack, unless
    MAML_ROS_REQUIRE_LAUNCH=1 (CI), where its absence is an error."""
    try:
        for name in ("launch", "launch_ros", "launch_testing", "ros2cli"):
            module = importlib.import_module(name)
            if getattr(module, "__file__", None) is None:  # the repo's launch/ folder
                raise ImportError(f"{name} resolves to a folder, not the package")
    except ImportError as exc:
        if os.environ.get("MAML_ROS_REQUIRE_LAUNCH") == "1":
            raise ImportError(f"MAML_ROS_REQUIRE_LAUNCH=1: {HOW_TO_GET_IT} ({exc})") from exc
        pytest.skip(HOW_TO_GET_IT, allow_module_level=True)


def _as_a_terminal_job() -> None:
    """SIGINT handled as in a terminal's job, even where this process inherited it ignored
    (a background job of a non-interactive shell): launch would ignore Ctrl-C otherwise."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TerminalSession:
    """A command (``ros2 launch ...``) in a session of its own, as a terminal runs it, with its
    output collected as it comes. ``ctrl_c`` sends what Ctrl-C sends: one SIGINT to the whole
    process group. (``timeout -s INT`` is not that: it signals the launch twice, once directly
    and once through the group, and a second SIGINT that lands while launch handles the first
    can leave ``ros2 launch`` hanging at exit, ros2/launch#207.)"""

    def __init__(self, argv: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_as_a_terminal_job,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, timeout_s: float) -> None:
        """Until ``text`` appears in the output; fails (and stops the session) otherwise."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {text!r} within {timeout_s} s:\n{self.output[-3000:]}")
            time.sleep(0.2)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the whole group: the launch and every node it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=5.0)

    def finish(self, timeout_s: float) -> tuple[int, str]:
        """The exit code and the whole output once the command and the nodes it started have
        ended; fails (after killing them) if that takes over ``timeout_s``."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout_s} s:\n{self.output[-3000:]}")
        self._reader.join(timeout=timeout_s)  # EOF: every process holding the pipe has ended
        if self._reader.is_alive():
            self.kill()
            pytest.fail(f"a node outlived the launch by {timeout_s} s:\n{self.output[-3000:]}")
        return self.proc.returncode, self.output


def ros2_launch(*arguments: str) -> TerminalSession:
    """``ros2 launch maml_ros adapt.launch.py device:=cpu ARGUMENTS`` as a terminal runs it."""
    ros2 = shutil.which("ros2")
    assert ros2, "ros2 is not on PATH: source tools/env.sh (make shell)"
    return TerminalSession(
        [ros2, "launch", "maml_ros", "adapt.launch.py", "device:=cpu", *arguments]
    )


def share() -> Path:
    """The installed share/maml_ros (make setup or colcon)."""
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("maml_ros"))


def fast_params_file(**adaptation: Any) -> str:
    """The installed config with a fast simulated arm and a small adaptation budget."""
    import yaml

    params = yaml.safe_load((share() / "config" / "adapt.yaml").read_text())
    for key, section in params.items():
        name = key.rsplit("/", 1)[-1]
        values = section["ros__parameters"]
        if name == "sim_arm":
            values.update(real_time_factor=0.0, command_wait_s=0.5)
        elif name == "policy_controller":
            # real_time_factor 0 without use_sim_time: sim stamps outrun the wall clock.
            values.update(stamp_tolerance_s=0.0)
        elif name == "adaptation":
            # stamp_tolerance_s 0: as for the controller, the fast sim's stamps outrun the clock.
            values.update(rollouts=6, eval_episodes=1, device="cpu", stamp_tolerance_s=0.0)
            values.update(adaptation)
    handle, path = tempfile.mkstemp(prefix="adapt_fast_", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(params, out)
    return path


def run_task_cli(*argv: str, namespace: str = "") -> subprocess.CompletedProcess:
    """``ros2 run maml_ros maml-ros-task ARGV`` as the README types it (plus a namespace)."""
    ros2 = shutil.which("ros2")
    assert ros2, "ros2 is not on PATH: source tools/env.sh (make shell)"
    ros_args = ["--ros-args", "-r", f"__ns:={namespace}"] if namespace else []
    return subprocess.run(
        [ros2, "run", "maml_ros", "maml-ros-task", *argv, "--wait-s", "30", *ros_args],
        capture_output=True,
        text=True,
        timeout=90,
    )


def task_id_of(cli: subprocess.CompletedProcess) -> str:
    """The task id maml-ros-task reports having delivered."""
    for line in cli.stdout.splitlines():
        if " received by " in line:
            return line.split("task ", 1)[1].split(" ", 1)[0]
    raise AssertionError(f"maml-ros-task did not deliver: {cli.stdout}\n{cli.stderr}")


class StatusClient:
    """A node following the three nodes' latched ``~/status`` in ``namespace``."""

    NODES = ("sim_arm", "policy_controller", "adaptation")

    def __init__(self, namespace: str = "") -> None:
        import rclpy
        from std_msgs.msg import String

        from maml_ros.ros.interfaces import LATCHED_QOS

        self._rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node("launch_test_client", namespace=namespace or "/")
        self.status: dict[str, dict[str, Any]] = {name: {} for name in self.NODES}
        for name in self.NODES:
            self.node.create_subscription(
                String, f"{name}/status", lambda m, n=name: self._on_status(n, m), LATCHED_QOS
            )

    def _on_status(self, name: str, msg: Any) -> None:
        self.status[name] = json.loads(msg.data)

    def spin_once(self, timeout_s: float = 0.1) -> None:
        """Handles the status messages that came in (waits up to ``timeout_s`` for one)."""
        self._rclpy.spin_once(self.node, timeout_sec=timeout_s)

    def spin_until(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := predicate()):
            assert time.monotonic() < deadline, f"{what} within {timeout_s} s: {self.status}"
            self.spin_once()
        return value

    def ready(self, timeout_s: float = 90.0) -> None:
        """Until the adaptation node is ready and the controller runs a policy."""
        self.spin_until(
            lambda: (
                self.status["adaptation"].get("ready")
                and self.status["policy_controller"].get("policy_version") is not None
                and self.status["sim_arm"]
            ),
            timeout_s,
            "the nodes were not ready",
        )

    def adapted(self, adaptation_id: int, timeout_s: float = 180.0) -> dict[str, Any]:
        """The adaptation node's final status of adaptation ``adaptation_id``."""
        return self.spin_until(
            lambda: (
                self.status["adaptation"].get("adaptation_id") == adaptation_id
                and self.status["adaptation"].get("phase") in FINAL
                and self.status["adaptation"]
            ),
            timeout_s,
            f"adaptation {adaptation_id} did not finish",
        )

    def close(self) -> None:
        self.node.destroy_node()
        self._rclpy.try_shutdown()
