"""maml-ros-task: publish one task change on the ``task`` topic.

    maml-ros-task reach --goal 0.5 0.1 0.4
    maml-ros-task dynamics --joint-gain 1 1 0.5 1 1 1 1 --payload-kg 1.0 [--goal X Y Z]
    maml-ros-task json '{"family": "reach", "goal": [0.5, 0.1, 0.4]}'
    maml-ros-task reach --goal 0.5 0.1 0.4 --topic /arm1/task --wait-s 10 --ros-args ...

The task is validated (``TaskSpec``) before any ROS start-up; invalid input is an argparse
error (exit code 2). Then it waits up to ``--wait-s`` for a subscriber, publishes the task once
(RELIABLE), waits until every subscriber acknowledged it and prints the JSON it sent (exit 0).
Exit code 1 when nobody subscribed or acknowledged in time. Arguments after ``--ros-args``
go to rclpy (remappings, namespace).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from maml_ros.ros.interfaces import COMMAND_QOS, TASK_TOPIC
from maml_ros.sim import NUM_JOINTS, TaskSpec, TaskSpecError

TASK_QOS = COMMAND_QOS
"""RELIABLE, depth 10: the ``task`` topic's QoS (interfaces.py)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maml-ros-task", description="Publish one task change on the maml_ros task topic."
    )
    parser.add_argument("--topic", default=TASK_TOPIC, help="topic (default: %(default)s)")
    parser.add_argument(
        "--wait-s",
        type=float,
        default=5.0,
        help="how long to wait for a subscriber and its acknowledgement (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{reach,dynamics,json}")
    reach = sub.add_parser("reach", help="a new end-effector goal, nominal body")
    reach.add_argument("--goal", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"))
    dyn = sub.add_parser(
        "dynamics", help="a changed body (reach+dynamics when --goal is given too)"
    )
    dyn.add_argument("--goal", type=float, nargs=3, metavar=("X", "Y", "Z"))
    vector = {"type": float, "nargs": NUM_JOINTS, "metavar": "V"}
    dyn.add_argument("--joint-gain", **vector, help="actuator gain per joint (1 nominal, 0 dead)")
    dyn.add_argument("--joint-damping", **vector, help="joint damping per joint (N·m·s/rad)")
    dyn.add_argument("--payload-kg", type=float, help="payload at the end effector (kg)")
    dyn.add_argument("--encoder-offset", **vector, help="encoder offset per joint (rad)")
    raw = sub.add_parser("json", help="a task given as JSON text")
    raw.add_argument("text", help="task JSON")
    return parser


def task_from_args(args: argparse.Namespace) -> TaskSpec:
    """The validated TaskSpec the parsed arguments describe; raises TaskSpecError."""
    if args.command == "json":
        return TaskSpec.from_json(args.text)
    if args.command == "reach":
        return TaskSpec.from_dict({"family": "reach", "goal": args.goal})
    fields: dict[str, Any] = {
        "family": "dynamics" if args.goal is None else "reach+dynamics",
        "goal": args.goal,
        "joint_gain": args.joint_gain,
        "joint_damping": args.joint_damping,
        "payload_kg": args.payload_kg,
        "encoder_offset": args.encoder_offset,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if len(fields) == 1:
        raise TaskSpecError(
            "dynamics needs at least one of --joint-gain, --joint-damping, --payload-kg, "
            "--encoder-offset, --goal"
        )
    return TaskSpec.from_dict(fields)


def parse(argv: Sequence[str]) -> tuple[TaskSpec, argparse.Namespace]:
    """Parses and validates the command line (exit code 2 with the reason on bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not (math.isfinite(args.wait_s) and args.wait_s > 0):
        parser.error(f"--wait-s must be a positive number, got {args.wait_s}")
    if not args.topic.strip("/"):
        parser.error("--topic must not be empty")
    try:
        return task_from_args(args), args
    except TaskSpecError as exc:
        parser.error(f"invalid task: {exc}")
        raise AssertionError("unreachable") from exc  # parser.error exits


def publish_task(task: TaskSpec, topic: str, wait_s: float, ros_args: Sequence[str]) -> bool:
    """Publishes ``task`` once on ``topic``; True when a subscriber acknowledged it in time."""
    import rclpy
    from rclpy.duration import Duration
    from std_msgs.msg import String

    rclpy.init(args=["maml-ros-task", *ros_args])
    try:
        node = rclpy.create_node("maml_ros_task")
        publisher = node.create_publisher(String, topic, TASK_QOS)
        deadline = time.monotonic() + wait_s
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                print(
                    f"maml-ros-task: nobody subscribed to {publisher.topic_name} within "
                    f"{wait_s} s; nothing sent",
                    file=sys.stderr,
                )
                return False
            time.sleep(0.02)
        publisher.publish(String(data=task.to_json()))
        left = max(deadline - time.monotonic(), 0.1)
        if not publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
            print(
                f"maml-ros-task: the task was sent on {publisher.topic_name} but not "
                f"acknowledged within {wait_s} s",
                file=sys.stderr,
            )
            return False
        return True
    finally:
        rclpy.try_shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``maml-ros-task``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        split = argv.index("--ros-args")
        argv, ros_args = argv[:split], argv[split:]
    task, args = parse(argv)
    try:
        sent = publish_task(task, args.topic, args.wait_s, ros_args)
    except KeyboardInterrupt:
        return 130
    if not sent:
        return 1
    print(task.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
