"""adapt.launch.py's description without running it: its arguments, its three nodes with their
exit handlers, and a missing params_file refused before any node starts."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from launch_support import require_launch_stack

require_launch_stack()

from launch import LaunchContext  # noqa: E402
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler  # noqa: E402
from launch_ros.actions import LifecycleNode  # noqa: E402
from launch_ros.actions import Node as LaunchNode  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "adapt.launch.py"


def described(**arguments: str) -> tuple[dict, list]:
    """The declared arguments and what the launch's OpaqueFunction returns for them."""
    module = runpy.run_path(str(LAUNCH_FILE))
    entities = module["generate_launch_description"]().entities
    declared = {e.name: e for e in entities if isinstance(e, DeclareLaunchArgument)}
    context = LaunchContext()
    for name, argument in declared.items():
        default = "".join(s.perform(context) for s in argument.default_value)
        context.launch_configurations[name] = arguments.get(name, default)
    (opaque,) = [e for e in entities if isinstance(e, OpaqueFunction)]
    return declared, opaque.execute(context) or []


def test_arguments_nodes_and_exit_handlers() -> None:
    declared, actions = described()
    assert set(declared) == {
        "checkpoint",
        "device",
        "namespace",
        "use_sim_time",
        "params_file",
        "robot",
    }
    assert set(declared["robot"].choices) == {"kuka_iiwa", "franka_panda", "xarm6"}
    nodes = [a for a in actions if isinstance(a, LaunchNode)]
    assert sorted(n.node_executable for n in nodes) == [
        "adaptation_node",
        "policy_controller_node",
        "sim_arm_node",
    ]
    assert len([a for a in actions if isinstance(a, RegisterEventHandler)]) == 3  # exits
    lifecycle = sorted(n.node_executable for n in nodes if isinstance(n, LifecycleNode))
    assert lifecycle == ["adaptation_node", "policy_controller_node"]


def test_a_missing_params_file_is_refused_before_any_node_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        described(params_file=str(tmp_path / "nope.yaml"))
