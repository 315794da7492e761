"""maml-ros-task: deliver one task change to the nodes that must run it.

    maml-ros-task reach --goal 0.5 0.1 0.4
    maml-ros-task dynamics --joint-gain 1 1 0.5 1 1 1 1 --payload-kg 1.0 [--goal X Y Z]
    maml-ros-task --robot xarm6 dynamics --joint-gain 1 1 0.5 1 1 1
    maml-ros-task json '{"family": "reach", "goal": [0.5, 0.1, 0.4]}'
    maml-ros-task reach --goal 0.5 0.1 0.4 --wait-s 10 --require sim_arm adaptation
    maml-ros-task reach --goal 0.5 0.1 0.4 --ros-args -r __ns:=/robot1

The options may come before or after the subcommand. ``--robot`` (default ``kuka_iiwa``) names
the arm the task is for: it sizes the joint vectors, bounds the goal, and the nodes refuse a
task for another robot than theirs. The task is validated (``TaskSpec``) before any ROS
start-up; invalid input is an argparse error (exit code 2). Then it gets a fresh
id, waits until every ``--require``'d node (default: the driver ``sim_arm`` and the
``adaptation`` node, in this command's namespace) subscribes to the task topic, publishes the
task, and repeats it until each of them has acknowledged it on ``task_ack``
(:class:`maml_ros.ros.tasks.TaskDelivery`). It prints who received it and the JSON it sent
(exit 0), or who did not, or who refused it and why, within ``--wait-s`` (exit 1). Arguments
after ``--ros-args`` go to rclpy (namespace, remappings).
"""

from __future__ import annotations

import argparse
import math
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from maml_ros.ros.convert import TaskChange
from maml_ros.ros.interfaces import TASK_TOPIC
from maml_ros.ros.tasks import DEFAULT_REQUIRED
from maml_ros.runtime.robots import DEFAULT_ROBOT, robot_names
from maml_ros.sim import TaskSpec, TaskSpecError


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options accepted before and after the subcommand (``default`` keeps the value
    given before it when the subcommand's own parser sees none)."""
    parser.add_argument(
        "--topic",
        default=default if default is argparse.SUPPRESS else TASK_TOPIC,
        help=f"task topic; acknowledgements come on <topic>_ack (default: {TASK_TOPIC})",
    )
    parser.add_argument(
        "--wait-s",
        type=float,
        default=default if default is argparse.SUPPRESS else 10.0,
        help="how long to wait for the required nodes' acknowledgements (default: 10)",
    )
    parser.add_argument(
        "--require",
        nargs="+",
        metavar="NODE",
        default=default if default is argparse.SUPPRESS else list(DEFAULT_REQUIRED),
        help="nodes that must acknowledge the task; relative names resolve in this command's "
        f"namespace (default: {' '.join(DEFAULT_REQUIRED)})",
    )
    parser.add_argument(
        "--robot",
        default=default if default is argparse.SUPPRESS else DEFAULT_ROBOT,
        choices=robot_names(),
        help=f"the robot the task is for (default: {DEFAULT_ROBOT})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maml-ros-task", description="Deliver one task change to the maml_ros nodes."
    )
    _common_options(parser, None)
    options = argparse.ArgumentParser(add_help=False)
    _common_options(options, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{reach,dynamics,json}")
    reach = sub.add_parser("reach", parents=[options], help="a new end-effector goal, nominal body")
    reach.add_argument("--goal", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"))
    dyn = sub.add_parser(
        "dynamics",
        parents=[options],
        help="a changed body (reach+dynamics when --goal is given too)",
    )
    dyn.add_argument("--goal", type=float, nargs=3, metavar=("X", "Y", "Z"))
    vector = {"type": float, "nargs": "+", "metavar": "V"}  # one per joint of --robot
    dyn.add_argument("--joint-gain", **vector, help="actuator gain per joint (1 nominal, 0 dead)")
    dyn.add_argument("--joint-damping", **vector, help="joint damping per joint (N·m·s/rad)")
    dyn.add_argument("--payload-kg", type=float, help="payload at the end effector (kg)")
    dyn.add_argument("--encoder-offset", **vector, help="encoder offset per joint (rad)")
    raw = sub.add_parser("json", parents=[options], help="a task given as JSON text")
    raw.add_argument("text", help="task JSON")
    return parser


def task_from_args(args: argparse.Namespace) -> TaskSpec:
    """The validated TaskSpec the parsed arguments describe; raises TaskSpecError."""
    if args.command == "json":
        task = TaskSpec.from_json(args.text)
        if task.robot != args.robot:
            raise TaskSpecError(f"the JSON task is for robot {task.robot!r}, not {args.robot!r}")
        return task
    if args.command == "reach":
        return TaskSpec.from_dict({"family": "reach", "goal": args.goal, "robot": args.robot})
    fields: dict[str, Any] = {
        "robot": args.robot,
        "family": "dynamics" if args.goal is None else "reach+dynamics",
        "goal": args.goal,
        "joint_gain": args.joint_gain,
        "joint_damping": args.joint_damping,
        "payload_kg": args.payload_kg,
        "encoder_offset": args.encoder_offset,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if len(fields) == 2:
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
    if any(not name.strip("/") for name in args.require):
        parser.error("--require needs node names")
    try:
        return task_from_args(args), args
    except (TaskSpecError, OverflowError) as exc:  # OverflowError: a 400-digit number
        parser.error(f"invalid task: {exc}")
        raise AssertionError("unreachable") from exc  # parser.error exits


def send_task(change: TaskChange, args: argparse.Namespace, ros_args: Sequence[str]) -> bool:
    """Delivers ``change`` to the required nodes; True when every one of them accepted it."""
    import rclpy

    from maml_ros.ros.tasks import TaskDelivery

    rclpy.init(args=["maml-ros-task", *ros_args])
    try:
        node = rclpy.create_node("maml_ros_task")
        delivery = TaskDelivery(node, args.require, args.topic)
        report = delivery.deliver(change, args.wait_s)
        where = delivery.topic_name
        if report.accepted:
            print(f"maml-ros-task: task {change.id} received by {', '.join(report.accepted)}")
        for name, reason in report.refused.items():
            print(f"maml-ros-task: {name} refused task {change.id}: {reason}", file=sys.stderr)
        if report.sends == 0:
            absent = sorted(set(report.required) - set(delivery.subscribers()))
            print(
                f"maml-ros-task: {', '.join(absent)} did not subscribe to {where} within "
                f"{args.wait_s} s; nothing sent",
                file=sys.stderr,
            )
        elif report.missing:
            subscribed = delivery.subscribers()
            print(
                f"maml-ros-task: no acknowledgement of task {change.id} on {where} from "
                f"{', '.join(report.missing)} within {args.wait_s} s (subscribers: "
                f"{', '.join(subscribed) or 'none'}; sent {report.sends} time(s))",
                file=sys.stderr,
            )
        return report.delivered
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
    change = TaskChange(f"cli-{uuid.uuid4().hex[:12]}", task)
    try:
        delivered = send_task(change, args, ros_args)
    except KeyboardInterrupt:
        return 130
    if not delivered:
        return 1
    print(task.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
