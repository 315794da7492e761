"""Shared test set-up: single-threaded torch, and a private DDS domain for each test process."""

import os
import random
from collections.abc import Iterator

import pytest
from ros_harness import Ros

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the ROS-only tests do not need torch
    pass


@pytest.fixture
def ros() -> Iterator[Ros]:
    """A private rclpy context and namespace whose nodes a background executor spins."""
    harness = Ros()
    yield harness
    harness.close()
