"""Two rclpy nodes in separate processes exchange a sensor_msgs/JointState over DDS."""

import subprocess
import sys
import textwrap

PUBLISHER = textwrap.dedent(
    """
    import rclpy
    from sensor_msgs.msg import JointState

    rclpy.init()
    node = rclpy.create_node("smoke_publisher")
    pub = node.create_publisher(JointState, "smoke_joint_states", 10)
    msg = JointState(name=["a1", "a2"], position=[0.25, -1.5], velocity=[0.0, 2.0])
    def tick():
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
    node.create_timer(0.05, tick)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        rclpy.try_shutdown()
    """
)


def test_joint_state_crosses_processes() -> None:
    import rclpy
    from sensor_msgs.msg import JointState

    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER])
    rclpy.init()
    try:
        node = rclpy.create_node("smoke_subscriber")
        received: list[JointState] = []
        node.create_subscription(JointState, "smoke_joint_states", received.append, 10)
        deadline = node.get_clock().now().nanoseconds + 20_000_000_000
        while not received and node.get_clock().now().nanoseconds < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert received, "no JointState arrived from the other process within 20 s"
        msg = received[0]
        assert list(msg.name) == ["a1", "a2"]
        assert list(msg.position) == [0.25, -1.5]
        assert list(msg.velocity) == [0.0, 2.0]
        assert msg.header.stamp.sec > 0
    finally:
        publisher.terminate()
        publisher.wait(timeout=10)
        rclpy.try_shutdown()
