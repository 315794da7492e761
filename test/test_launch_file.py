"""adapt.launch.py's description without running it: its arguments, its three nodes with their
exit handlers, and a missing params_file refused before any node starts."""

from __future__ import annotations

import runpy
import shutil
import tempfile
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
    keys_before = set(Path(tempfile.gettempdir()).glob("maml_ros_deploy_key_*"))
    declared, actions = described()
    for folder in set(Path(tempfile.gettempdir()).glob("maml_ros_deploy_key_*")) - keys_before:
        shutil.rmtree(folder)  # the launch's shutdown handler would, had it run
    assert set(declared) == {
        "checkpoint",
        "device",
        "namespace",
        "use_sim_time",
        "params_file",
        "deploy_key_file",
        "state_file",
        "resume",
        "robot",
        "reset_mode",
        "offer_reset",
        "adaptation_rounds",
    }
    assert set(declared["robot"].choices) == {"kuka_iiwa", "franka_panda", "xarm6"}
    assert declared["reset_mode"].choices == ["service", "homing"]
    assert declared["adaptation_rounds"].choices == ["1", "2", "3", "4", "5"]
    nodes = [a for a in actions if isinstance(a, LaunchNode)]
    assert sorted(n.node_executable for n in nodes) == [
        "adaptation_node",
        "policy_controller_node",
        "sim_arm_node",
    ]
    # Three exit handlers and the removal of the per-launch deploy key at shutdown.
    assert len([a for a in actions if isinstance(a, RegisterEventHandler)]) == 4
    lifecycle = sorted(n.node_executable for n in nodes if isinstance(n, LifecycleNode))
    assert lifecycle == ["adaptation_node", "policy_controller_node"]


def test_a_missing_params_file_is_refused_before_any_node_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        described(params_file=str(tmp_path / "nope.yaml"))


def test_the_per_launch_deploy_key_is_private_and_unpaired_launches_have_none() -> None:
    module = runpy.run_path(str(LAUNCH_FILE))
    (path, actions), (other, _) = module["_per_launch_key"](), module["_per_launch_key"]()
    try:
        assert Path(path).parent.stat().st_mode & 0o777 == 0o700
        assert Path(path).stat().st_mode & 0o777 == 0o600
        key = Path(path).read_text().strip()
        assert len(key) == 64 and int(key, 16) >= 0
        assert len(actions) == 1 and isinstance(actions[0], RegisterEventHandler)
        assert Path(other).read_text() != Path(path).read_text()  # a fresh key every launch
    finally:
        for key_file in (path, other):
            shutil.rmtree(Path(key_file).parent, ignore_errors=True)
    _, unpaired = described(deploy_key_file="none")
    assert len([a for a in unpaired if isinstance(a, RegisterEventHandler)]) == 3
