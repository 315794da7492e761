"""run_node: how a node process ends."""

import subprocess
import sys
import textwrap

# A node whose callback receives SIGINT inside a binding call that swallows the
# KeyboardInterrupt into a RuntimeError (as rclpy's take_message does when the signal lands
# while it converts a message), before rclpy's signal thread has shut the context down.
SIGINT_DURING_TAKE = textwrap.dedent(
    """
    import os, signal, sys
    from rclpy.node import Node
    from maml_ros.ros.common import run_node

    class Racer(Node):
        def __init__(self):
            super().__init__("racer")
            self.create_timer(0.01, self.tick)

        def tick(self):
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                raise RuntimeError("Unable to convert call argument '0' to Python object")

    sys.exit(run_node(Racer, []))
    """
)

FAILING_CALLBACK = textwrap.dedent(
    """
    import sys
    from rclpy.node import Node
    from maml_ros.ros.common import run_node

    class Broken(Node):
        def __init__(self):
            super().__init__("broken")
            self.create_timer(0.01, self.tick)

        def tick(self):
            raise RuntimeError("a real bug")

    sys.exit(run_node(Broken, []))
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_sigint_surfacing_as_a_binding_runtime_error_is_a_clean_shutdown() -> None:
    proc = _run(SIGINT_DURING_TAKE)
    assert proc.returncode == 0, proc.stderr


def test_a_runtime_error_without_a_shutdown_is_not_hidden() -> None:
    proc = _run(FAILING_CALLBACK)
    assert proc.returncode == 1
    assert "a real bug" in proc.stderr
