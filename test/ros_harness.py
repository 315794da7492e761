"""A private rclpy context for in-process node tests (used by the ROS test modules)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
import torch
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec

ROS_BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


class Ros:
    """A private rclpy context whose nodes a background SingleThreadedExecutor spins.

    Nodes go into a namespace of their own, so tests of other processes sharing the DDS domain
    cannot cross-talk with this one.
    """

    def __init__(self) -> None:
        self.namespace = f"/test_{uuid.uuid4().hex[:12]}"
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list[Node] = []
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def kwargs(self) -> dict[str, Any]:
        """Node keyword arguments: this context and namespace."""
        return {"context": self.context, "namespace": self.namespace}

    def add(self, node: Node) -> Any:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)  # stop spinning before destroying anything
        self.thread.join(timeout=5.0)
        for node in reversed(self.nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.01)
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines log's complete records (a running node may be writing the next line)."""
    text = path.read_text() if path.exists() else ""
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def small_bundle(lr: float = 0.3, seed: int = 0) -> PolicyBundle:
    """A small, untrained 7-joint policy whose single inner step moves it toward the goal of a
    joint-space point mass (the fake arms of the adaptation tests)."""
    torch.manual_seed(seed)
    spec = PolicySpec(hidden=(16,), init_log_std=-0.5)
    policy = GaussianMLPPolicy(spec)
    return PolicyBundle(
        spec=spec,
        params=policy.params(),
        obs_mean=torch.zeros(14),
        obs_std=torch.ones(14),
        inner=InnerConfig(lr=lr, steps=1),
    )
