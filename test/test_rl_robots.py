"""Training any described arm: a 2-iteration smoke run per robot through the CLI, with the
robot and its joint order in the checkpoint's metadata."""

from __future__ import annotations

import pytest
import yaml

from maml_ros.rl.checkpoint import find_shipped_model, load_bundle
from maml_ros.rl.config import ConfigError, config_from_dict
from maml_ros.rl.evaluate import main as eval_main
from maml_ros.rl.train import main
from maml_ros.ros.demo import parse_args as demo_parse_args
from maml_ros.runtime.robots import RobotSpecError, get_robot, shipped_model_name

SMOKE = {
    "seed": 0,
    "iterations": 2,
    "checkpoint_every": 1,
    "obs_norm_episodes": 4,
    "env": {
        "name": "arm",
        "workers": 1,
        "num_envs": 4,
        "horizon": 5,
        "families": ["reach", "reach+dynamics"],
        "family_weights": [0.5, 0.5],
    },
    "policy": {"hidden": [8]},
    "outer": {"meta_batch": 2, "rollouts_per_task": 2, "epochs": 1},
}


@pytest.mark.parametrize("robot", ["franka_panda", "xarm6"])
def test_two_iteration_smoke_training_for_each_robot(tmp_path, robot: str) -> None:
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(SMOKE))
    out = tmp_path / "run"
    argv = ["--config", str(config), "--out", str(out), "--robot", robot, "--no-progress"]
    assert main(argv) == 0
    bundle = load_bundle(out / "policy_latest.safetensors")
    spec = get_robot(robot)
    assert (bundle.spec.obs_dim, bundle.spec.act_dim) == (2 * spec.num_joints, spec.num_joints)
    assert bundle.metadata["robot"] == robot
    assert bundle.metadata["joint_names"] == list(spec.joint_names)


def test_an_unknown_robot_is_a_config_error(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="unknown robot 'r2d2'"):
        config_from_dict({**SMOKE, "env": {**SMOKE["env"], "robot": "r2d2"}})
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(SMOKE))
    assert main(["--config", str(config), "--out", str(tmp_path / "o"), "--robot", "r2d2"]) == 2
    assert "unknown robot 'r2d2'" in capsys.readouterr().err


def test_each_robot_has_its_own_shipped_model_name() -> None:
    assert shipped_model_name("kuka_iiwa") == "arm_maml.safetensors"  # its name from before
    assert shipped_model_name("kuka_iiwa", "multitask") == "arm_multitask.safetensors"
    assert shipped_model_name("xarm6") == "xarm6_maml.safetensors"
    with pytest.raises(RobotSpecError, match="model kind"):
        shipped_model_name("xarm6", "oracle")


def test_a_robot_without_a_shipped_model_gets_a_clear_message(capsys) -> None:
    assert eval_main(["--robot", "xarm6", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "no trained policy ships for robot 'xarm6'" in err and "xarm6_maml" in err
    assert "make train ROBOT=xarm6" in err
    with pytest.raises(SystemExit) as exc:
        demo_parse_args(["--robot", "xarm6"])
    assert exc.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def test_a_baseline_for_another_robot_is_refused(capsys) -> None:
    panda_baseline = find_shipped_model(shipped_model_name("franka_panda", "multitask"))
    assert eval_main(["--multitask", str(panda_baseline), "--quick", "--out", "/nonexistent"]) == 2
    assert "policy is for robot 'franka_panda'" in capsys.readouterr().err
