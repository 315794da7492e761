"""Shared test set-up: single-threaded torch, a private DDS domain for each test process, and
(with MAML_ROS_REQUIRE_LAUNCH=1, as in CI) launch tests that must run: a skipped or missing one
fails the session."""

import os
import random
from collections.abc import Iterator

import pytest
from ros_harness import Ros

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
REQUIRE_LAUNCH = os.environ.get("MAML_ROS_REQUIRE_LAUNCH") == "1"
LAUNCH_TEST_PREFIX = "test_launch"
"""Modules whose tests need the launch stack (launch, launch_ros, launch_testing, ros2cli)."""

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the ROS-only tests do not need torch
    pass

_launch_outcomes: dict[str, int] = {"passed": 0, "skipped": 0, "failed": 0}


@pytest.fixture
def ros() -> Iterator[Ros]:
    """A private rclpy context and namespace whose nodes a background executor spins."""
    harness = Ros()
    yield harness
    harness.close()


def _is_launch_test(report: pytest.TestReport | pytest.CollectReport) -> bool:
    return os.path.basename(report.nodeid.split("::")[0]).startswith(LAUNCH_TEST_PREFIX)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _is_launch_test(report) and (report.when == "call" or report.outcome != "passed"):
        _launch_outcomes[report.outcome] += 1


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if _is_launch_test(report) and report.outcome == "skipped":
        _launch_outcomes["skipped"] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With MAML_ROS_REQUIRE_LAUNCH=1 a launch test that skipped, or none that ran, fails."""
    selected = session.config.args
    if not REQUIRE_LAUNCH or session.config.option.collectonly:
        return
    if not any(LAUNCH_TEST_PREFIX in arg or os.path.isdir(arg) for arg in selected):
        return  # a run of other modules only
    if _launch_outcomes["skipped"] or not _launch_outcomes["passed"]:
        print(
            f"\nconftest: MAML_ROS_REQUIRE_LAUNCH=1, but launch tests {_launch_outcomes}: "
            "they must run and pass (install the launch stack: make setup LAUNCH_WHEELS=DIR)"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
