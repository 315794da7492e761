"""run_node: how a node process ends."""

import subprocess
import sys
import textwrap
import time

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


FAILING_FAST_CALLBACK = textwrap.dedent(
    """
    import sys
    from rclpy.node import Node
    from std_msgs.msg import String
    from maml_ros.ros.common import SubscriptionThread, run_node

    class Broken(Node):
        def __init__(self):
            super().__init__("broken_fast")
            self.loop = SubscriptionThread(
                self, String, "fast_topic", self.on_msg, 10, idle=lambda: None, idle_period_s=0.05
            )
            self.loop.start()
            self.pub = self.create_publisher(String, "fast_topic", 10)
            self.create_timer(0.05, lambda: self.pub.publish(String(data="x")))

        def on_msg(self, msg):
            raise RuntimeError("a real bug on the fast thread")

        def destroy_node(self):
            self.loop.close()
            super().destroy_node()

    sys.exit(run_node(Broken, []))
    """
)


def test_an_error_on_a_subscription_thread_fails_the_node_as_its_own_callbacks_do() -> None:
    proc = _run(FAILING_FAST_CALLBACK)
    assert proc.returncode == 1, proc.stderr
    assert "a real bug on the fast thread" in proc.stderr


def test_a_subscription_thread_serves_the_owners_remapped_topic_while_its_executor_is_busy(
    ros,
) -> None:
    """The thread's node subscribes to the name the owner resolves (namespace, remapping) and
    takes messages while every callback of the owner's executor is held up; idle() runs too."""
    import threading

    from rclpy.node import Node
    from ros_harness import wait_until
    from std_msgs.msg import String

    from maml_ros.ros.common import SubscriptionThread

    owner = ros.add(Node("owner", **ros.kwargs(), cli_args=["--ros-args", "-r", "in:=remapped"]))
    got: list[tuple[str, str]] = []
    idles: list[float] = []
    loop = SubscriptionThread(
        owner,
        String,
        "in",
        lambda msg: got.append((msg.data, threading.current_thread().name)),
        10,
        idle=lambda: idles.append(1.0),
        idle_period_s=0.02,
    )
    loop.start()
    try:
        assert loop.node.get_name() == "owner_control_loop"
        topics = [sub.topic_name for sub in loop.node.subscriptions]
        assert f"{ros.namespace}/remapped" == topics[0] and len(topics) == 1
        publisher = owner.create_publisher(String, f"{ros.namespace}/remapped", 10)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(10.0)

        timer = owner.create_timer(0.01, hold)
        assert held.wait(5.0)
        timer.cancel()
        try:
            wait_until(lambda: publisher.get_subscription_count() > 0)
            for i in range(20):
                if got:
                    break
                publisher.publish(String(data=f"m{i}"))
                time.sleep(0.05)
            assert got, "no message taken while the owner's executor was held up"
            assert got[0][1] == "owner_control_loop"
            assert idles
        finally:
            release.set()
    finally:
        loop.close()
    assert not loop._thread.is_alive()
