"""Task changes over ROS: receiving and acknowledging them (nodes), delivering them (senders).

The contract is in :mod:`maml_ros.ros.interfaces`: every node that reads ``task`` answers each
message on ``task_ack``; a sender repeats the message until each node it needs has answered,
which the receivers make harmless (a task whose id they already run is acknowledged again and
changes nothing). :class:`TaskDelivery` is that sender, used by ``maml-ros-task``, the demo and
the tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rclpy.node import Node
from std_msgs.msg import String

from maml_ros.ros.common import NodeStatus
from maml_ros.ros.convert import TaskChange, task_ack_to_msg, task_from_msg, task_to_msg
from maml_ros.ros.interfaces import TASK_ACK_QOS, TASK_ACK_TOPIC, TASK_QOS, TASK_TOPIC
from maml_ros.runtime.robots import DEFAULT_ROBOT

DEFAULT_REQUIRED = ("sim_arm", "adaptation")
"""The nodes of adapt.launch.py that read tasks: the driver and the adaptation node."""
REPEAT_PERIOD_S = 0.5
"""How often a sender repeats a task that some required node has not acknowledged yet."""


class TaskInbox:
    """A node's ``task`` subscription: validates each message, acknowledges it on ``task_ack``
    and hands valid task changes to ``on_task``; bad messages, and tasks for another robot than
    ``robot``, are refused, counted and dropped."""

    def __init__(
        self,
        node: Node,
        status: NodeStatus,
        on_task: Callable[[TaskChange], str | None],
        robot: str = DEFAULT_ROBOT,
    ) -> None:
        """``on_task(change)`` returns None when it takes the task, else why it refuses it."""
        self._node = node
        self._status = status
        self._on_task = on_task
        self._robot = robot
        self._ack_pub = node.create_publisher(String, TASK_ACK_TOPIC, TASK_ACK_QOS)
        node.create_subscription(String, TASK_TOPIC, self.receive, TASK_QOS)

    def receive(self, msg: String) -> None:
        """Handles one task message (the subscription callback; tests call it directly)."""
        try:
            change = task_from_msg(msg)
        except ValueError as err:
            self._status.drop("task", str(err))
            self._ack(None, str(err))
            return
        if change.task.robot != self._robot:
            reason = f"task is for robot {change.task.robot!r}, this node's is {self._robot!r}"
        else:
            reason = self._on_task(change)
        if reason is not None:
            self._status.drop("task", reason)
        self._ack(change.id, reason)

    def _ack(self, task_id: str | None, reason: str | None) -> None:
        self._ack_pub.publish(
            task_ack_to_msg(self._node.get_fully_qualified_name(), task_id, reason)
        )


@dataclass
class DeliveryReport:
    """Who acknowledged a task: ``accepted`` and ``refused`` (node → reason) by node name."""

    task_id: str
    required: list[str]
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    sends: int = 0

    @property
    def missing(self) -> list[str]:
        """Required nodes that neither accepted nor refused the task."""
        return [n for n in self.required if n not in self.accepted and n not in self.refused]

    @property
    def delivered(self) -> bool:
        """Every required node accepted the task."""
        return all(n in self.accepted for n in self.required)


class TaskDelivery:
    """Delivers task changes from ``node`` to the nodes that must all run them.

    ``required`` names the nodes (relative names resolve in ``node``'s namespace). A task is
    published once every required node subscribes to the task topic (when one never does,
    nothing is sent), then repeated every
    :data:`REPEAT_PERIOD_S` until each has acknowledged it on ``task_ack`` (or refused it), or
    until the timeout. Call :meth:`deliver` from a thread that does not spin ``node``:
    it spins ``node`` itself while it waits.
    """

    def __init__(self, node: Node, required: Sequence[str], topic: str = TASK_TOPIC) -> None:
        self._node = node
        self.required = [self._qualify(name) for name in required]
        self._publisher = node.create_publisher(String, topic, TASK_QOS)
        self._acks: list[dict] = []
        # The acknowledgements come on task_ack beside the task topic (interfaces.py).
        node.create_subscription(String, f"{topic}_ack", self._on_ack, TASK_ACK_QOS)

    @property
    def topic_name(self) -> str:
        """The resolved task topic."""
        return self._publisher.topic_name

    def _qualify(self, name: str) -> str:
        if name.startswith("/"):
            return name
        namespace = self._node.get_namespace().rstrip("/")
        return f"{namespace}/{name}"

    def _on_ack(self, msg: String) -> None:
        try:
            ack = json.loads(msg.data)
        except (ValueError, RecursionError):
            return
        if isinstance(ack, dict):
            self._acks.append(ack)

    def subscribers(self) -> list[str]:
        """Fully qualified names of the nodes subscribed to the task topic."""
        infos = self._node.get_subscriptions_info_by_topic(self.topic_name)
        return sorted(f"{info.node_namespace.rstrip('/')}/{info.node_name}" for info in infos)

    def _spin_until(self, done: Callable[[], bool], deadline: float) -> bool:
        import rclpy

        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            rclpy.spin_once(self._node, timeout_sec=min(left, 0.05))
        return True

    def deliver(self, change: TaskChange, timeout_s: float) -> DeliveryReport:
        """Publishes ``change`` until every required node answered; returns who did."""
        report = DeliveryReport(change.id, list(self.required))
        deadline = time.monotonic() + timeout_s
        if not self._spin_until(lambda: set(self.required) <= set(self.subscribers()), deadline):
            return report  # never half-deliver: nothing is sent unless every node listens
        msg = task_to_msg(change.task, change.id)
        while True:
            self._publisher.publish(msg)
            report.sends += 1
            repeat_at = min(time.monotonic() + REPEAT_PERIOD_S, deadline)
            self._spin_until(lambda: self._collect(report), repeat_at)
            if not report.missing or time.monotonic() >= deadline:
                return report

    def _collect(self, report: DeliveryReport) -> bool:
        """Adds the acknowledgements received so far to ``report``; True when none is missing."""
        acks, self._acks = self._acks, []
        for ack in acks:
            node = ack.get("node")
            if ack.get("id") != report.task_id or node not in report.required:
                continue
            if ack.get("accepted") is True:
                if node not in report.accepted:
                    report.accepted.append(node)
                report.refused.pop(node, None)
            elif node not in report.accepted:
                report.refused[node] = str(ack.get("reason"))
        return not report.missing
