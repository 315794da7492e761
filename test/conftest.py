"""Shared test set-up: single-threaded torch, and a private DDS domain for each test process."""

import os
import random

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the ROS-only tests do not need torch
    pass
