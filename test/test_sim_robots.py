"""Robot descriptions: the registry, each shipped arm in the sim, and the iiwa unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maml_ros.runtime.robots import (
    DEFAULT_ROBOT,
    KUKA_IIWA,
    ROBOTS,
    RobotSpec,
    RobotSpecError,
    get_robot,
)
from maml_ros.sim import FAMILIES, ArmEnv, TaskSpec, TaskSpecError, sample_tasks, task_split

IIWA_ROLLOUTS = Path(__file__).parent / "data" / "iiwa_rollouts_d58a3d3.npz"
"""Observations and rewards of a seeded 20-step rollout per family, recorded with the code
before robots had descriptions (commit d58a3d3). On the machine that recorded them the env
matches them bit for bit; PyBullet's floating point differs slightly between CPUs (a first
version of this test compared hashes and failed on another CPU model), hence the tolerance."""


@pytest.mark.parametrize("family", FAMILIES)
def test_default_robot_reproduces_the_iiwa_env(family: str) -> None:
    task = sample_tasks(family, 3, "test", seed=5)[2]
    env = ArmEnv(task)
    try:
        obs, _ = env.reset(seed=11)
        rng = np.random.default_rng(0)
        observations, rewards = [obs], []
        for _ in range(20):
            o, r, *_ = env.step(rng.uniform(-1, 1, 7))
            observations.append(o)
            rewards.append(r)
    finally:
        env.close()
    with np.load(IIWA_ROLLOUTS) as recorded:
        np.testing.assert_allclose(observations, recorded[f"{family}_obs"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rewards, recorded[f"{family}_rew"], rtol=1e-4, atol=1e-5)
    assert "robot" not in task.to_dict()  # iiwa task messages are as before


@pytest.mark.parametrize("name", sorted(ROBOTS))
def test_each_robot_loads_with_its_joints_limits_and_home(name: str) -> None:
    robot = get_robot(name)
    env = ArmEnv(robot=name)
    try:
        assert env.joint_names == robot.joint_names
        assert env.observation_space.shape == (2 * robot.num_joints,)
        assert env.action_space.shape == (robot.num_joints,)
        np.testing.assert_allclose(env.joint_lower, robot.position_lower, atol=1e-3)
        np.testing.assert_allclose(env.joint_upper, robot.position_upper, atol=1e-3)
        env.reset(seed=0)
        np.testing.assert_allclose(env.ee_position(), robot.home_ee, atol=0.01)
        obs, reward, *_ = env.step(np.zeros(robot.num_joints))
        assert obs.shape == (2 * robot.num_joints,) and np.isfinite(reward)
    finally:
        env.close()


@pytest.mark.parametrize("name", sorted(ROBOTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_tasks_are_sized_by_the_robot_and_splits_stay_disjoint(name: str, family: str) -> None:
    robot = get_robot(name)
    train = sample_tasks(family, 20, "train", seed=1, robot=name)
    test = sample_tasks(family, 20, "test", seed=1, robot=name)
    assert all(len(t.joint_gain) == robot.num_joints for t in train + test)
    assert {task_split(t) for t in train} == {"train"}
    assert {task_split(t) for t in test} == {"test"}
    for t in train[:3]:
        assert TaskSpec.from_json(t.to_json()) == t


def test_a_task_for_another_robot_is_refused_by_the_env() -> None:
    env = ArmEnv(robot="xarm6")
    try:
        with pytest.raises(TaskSpecError, match="robot 'kuka_iiwa'"):
            env.set_task(sample_tasks("reach", 1)[0])
    finally:
        env.close()
    with pytest.raises(TaskSpecError, match="must have 6 values"):
        TaskSpec(family="dynamics", robot="xarm6", joint_gain=(1.0,) * 7)
    with pytest.raises(TaskSpecError, match="unknown robot"):
        TaskSpec.from_json('{"family": "reach", "robot": "r2d2"}')


def test_damping_goes_to_the_arm_joint_not_the_pybullet_index(monkeypatch) -> None:
    """xArm 6: PyBullet joint 0 is the fixed world joint, arm joint i is PyBullet joint i + 1."""
    import pybullet as pb

    env = ArmEnv(robot="xarm6")
    calls: dict[int, float] = {}
    real = pb.changeDynamics

    def spy(body, link, **kwargs):
        if "jointDamping" in kwargs:
            calls[link] = kwargs["jointDamping"]
        return real(body, link, **kwargs)

    monkeypatch.setattr(pb, "changeDynamics", spy)
    try:
        damping = (0.0, 0.0, 0.0, 0.0, 0.0, 3.0)
        env.set_task(TaskSpec(family="dynamics", robot="xarm6", joint_damping=damping))
        base = 1.0  # the xArm URDF's joint damping
        assert calls == {j + 1: base + d for j, d in enumerate(damping)}
    finally:
        env.close()


def test_invalid_descriptions_are_rejected_with_the_reason() -> None:
    fields = {k: getattr(KUKA_IIWA, k) for k in KUKA_IIWA.__dataclass_fields__}
    with pytest.raises(RobotSpecError, match="home_pose must have 7"):
        RobotSpec(**{**fields, "home_pose": (0.0,) * 6})
    with pytest.raises(RobotSpecError, match="outside the joint limits"):
        RobotSpec(**{**fields, "home_pose": (0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0)})
    with pytest.raises(RobotSpecError, match="max_reach"):
        RobotSpec(**{**fields, "max_reach": 0.3})
    with pytest.raises(RobotSpecError, match="unknown robot"):
        get_robot("r2d2")
    assert get_robot(DEFAULT_ROBOT) is KUKA_IIWA


@pytest.mark.parametrize("name", sorted(ROBOTS))
def test_the_oracle_reaches_a_goal_on_every_robot(name: str) -> None:
    """The scripted reference controller works on any description (the Panda's fingers are
    degrees of freedom PyBullet's Jacobian counts)."""
    from maml_ros.sim.oracle import oracle_action

    task = sample_tasks("reach", 1, "train", seed=0, robot=name)[0]
    env = ArmEnv(task, robot=name, horizon=200)
    try:
        env.reset(seed=0)
        start = np.linalg.norm(env.ee_position() - env.goal)
        for _ in range(120):
            *_, info = env.step(oracle_action(env))
        assert info["distance"] < min(0.05, start / 2), (start, info["distance"])
    finally:
        env.close()
