"""ArmEnv: gymnasium contract, determinism, reward/success, and that a changed body matters."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from maml_ros.sim.arm_env import (
    HOME_POSE,
    JOINT_FORCE_LIMITS,
    ArmEnv,
    PhysicsWorld,
    observation_from_joint_state,
)
from maml_ros.sim.task import DEFAULT_GOAL, GOAL_CUBE_CENTER, HOME_EE, TaskSpec, sample_tasks

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env():
    arm = ArmEnv()
    yield arm
    arm.close()


def rollout(env, actions, seed, task=None):
    obs, _ = env.reset(seed=seed, options={"task": task} if task else None)
    trajectory = [obs]
    rewards, ees = [], []
    for action in actions:
        obs, reward, _, _, info = env.step(action)
        trajectory.append(obs)
        rewards.append(reward)
        ees.append(info["ee_pos"])
    return np.array(trajectory), np.array(rewards), np.array(ees)


def test_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)


def test_spaces_and_joint_names(env):
    assert env.observation_space.shape == (14,)
    assert env.action_space.shape == (7,)
    assert env.joint_names == tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8))
    assert env.substeps == 6


def test_home_pose_sits_in_the_goal_cube(env):
    arm = ArmEnv(reset_noise=0.0)
    try:
        arm.reset(seed=0)
        np.testing.assert_allclose(arm.ee_position(), HOME_EE, atol=0.002)
    finally:
        arm.close()
    assert np.linalg.norm(np.array(HOME_EE) - GOAL_CUBE_CENTER) < 0.01


def test_same_seed_same_trajectory(env):
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 7))
    task = sample_tasks("reach+dynamics", 1, "train", 0)[0]
    first = rollout(env, actions, seed=7, task=task)
    rollout(env, actions[::-1], seed=8)  # an unrelated episode in between
    second = rollout(env, actions, seed=7, task=task)
    fresh = ArmEnv(task)
    try:
        third = rollout(fresh, actions, seed=7)
    finally:
        fresh.close()
    for a, b, c in zip(first, second, third, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other_seed = rollout(env, actions, seed=9, task=task)
    assert not np.array_equal(first[0], other_seed[0])


def test_reward_and_success_match_the_docstring(env):
    goal = (0.6, 0.05, 0.45)
    env.reset(seed=0, options={"task": TaskSpec(family="reach", goal=goal)})
    action = np.array([0.5, -0.2, 0.1, 0.3, -0.4, 0.2, 1.7])  # last entry is clipped to 1
    _, reward, terminated, truncated, info = env.step(action)
    distance = np.linalg.norm(env.ee_position() - np.array(goal))
    clipped = np.clip(action, -1, 1)
    assert info["distance"] == pytest.approx(distance)
    assert reward == pytest.approx(-distance - env.action_cost * clipped @ clipped)
    assert info["success"] == (distance < 0.05)
    assert not terminated and not truncated
    # A goal placed exactly at the end effector is a success with reward -cost(a) only.
    env.reset(seed=0)
    env.set_task(TaskSpec(family="reach", goal=tuple(env.ee_position())))
    _, reward, _, _, info = env.step(np.zeros(7))
    assert info["success"] and info["distance"] < 0.01
    assert reward == pytest.approx(-info["distance"])


def test_episode_is_truncated_at_the_horizon():
    arm = ArmEnv(horizon=3)
    try:
        arm.reset(seed=0)
        flags = [arm.step(np.zeros(7))[3] for _ in range(3)]
    finally:
        arm.close()
    assert flags == [False, False, True]


def test_actions_move_the_arm_at_the_commanded_speed(env):
    env.reset(seed=0)
    start = env.true_joint_positions()
    action = np.zeros(7)
    action[0] = 1.0
    for _ in range(8):  # 0.2 s
        obs, *_ = env.step(action)
    moved = env.true_joint_positions() - start
    assert moved[0] == pytest.approx(0.2 * env.max_joint_velocity, rel=0.05)
    assert np.abs(moved[1:]).max() < 0.01
    assert obs[7] == pytest.approx(env.max_joint_velocity, rel=0.02)


def test_dead_joint_does_not_move(env):
    gains = [1.0] * 7
    gains[1] = 0.0
    env.reset(seed=0, options={"task": TaskSpec(family="dynamics", joint_gain=gains)})
    start = env.true_joint_positions()
    rng = np.random.default_rng(1)
    for _ in range(20):
        env.step(np.clip(rng.normal(0, 1, 7), -1, 1) + np.eye(7)[1])
    moved = np.abs(env.true_joint_positions() - start)
    assert moved[1] < 1e-3
    assert moved[[0, 2, 3]].max() > 0.05


def test_weak_joint_is_slower(env):
    gains = [1.0] * 7
    gains[3] = 0.5
    action = np.eye(7)[3]
    env.reset(seed=0)
    for _ in range(4):
        env.step(action)
    nominal = env.true_joint_positions()[3] - HOME_POSE[3]
    env.reset(seed=0, options={"task": TaskSpec(family="dynamics", joint_gain=gains)})
    for _ in range(4):
        env.step(action)
    weak = env.true_joint_positions()[3] - HOME_POSE[3]
    assert weak == pytest.approx(0.5 * nominal, rel=0.1)


def test_payload_changes_tracking_under_the_same_commands(env):
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 7))
    _, _, light = rollout(env, actions, seed=0, task=TaskSpec(family="dynamics"))
    _, _, heavy = rollout(env, actions, seed=0, task=TaskSpec(family="dynamics", payload_kg=4.0))
    assert np.linalg.norm(light[-1] - heavy[-1]) > 0.02


def test_payload_makes_a_weak_shoulder_sag(env):
    gains = [1.0] * 7
    gains[1] = 0.2  # 35 N·m: enough for the bare arm at home, not with 4 kg in the hand
    hold = np.zeros((20, 7))
    tasks = [TaskSpec(family="dynamics", joint_gain=gains, payload_kg=m) for m in (0.0, 4.0)]
    (_, _, bare), (_, _, loaded) = (rollout(env, hold, seed=0, task=t) for t in tasks)
    bare_sag = bare[0, 2] - bare[-1, 2]
    loaded_sag = loaded[0, 2] - loaded[-1, 2]
    assert abs(bare_sag) < 0.005
    assert loaded_sag > 0.05
    assert 0.2 * JOINT_FORCE_LIMITS[1] < 40.0


def test_damping_slows_a_sagging_joint(env):
    gains = [1.0] * 7
    gains[1] = 0.2
    hold = np.zeros((12, 7))
    sags = []
    for damping in (0.0, 10.0):
        task = TaskSpec(
            family="dynamics",
            joint_gain=gains,
            payload_kg=4.0,
            joint_damping=[0, damping] + [0] * 5,
        )
        _, _, ees = rollout(env, hold, seed=0, task=task)
        sags.append(ees[0, 2] - ees[-1, 2])
    assert sags[0] > 0.02
    assert sags[1] < 0.8 * sags[0]


def test_encoder_offsets_shift_observed_positions_only(env):
    offsets = [0.05, -0.05, 0.02, 0.0, 0.1, -0.1, 0.03]
    obs_nominal, _ = env.reset(seed=3, options={"task": TaskSpec(family="dynamics")})
    task = TaskSpec(family="dynamics", encoder_offset=offsets)
    obs_offset, _ = env.reset(seed=3, options={"task": task})
    np.testing.assert_allclose(obs_offset[:7] - obs_nominal[:7], offsets, atol=1e-6)
    positions, velocities = env.joint_state()
    np.testing.assert_allclose(positions - env.true_joint_positions(), offsets)
    np.testing.assert_array_equal(obs_offset, observation_from_joint_state(positions, velocities))


def test_reset_accepts_task_json_and_set_task_applies_goal(env):
    task = sample_tasks("reach", 1, "test", 0)[0]
    env.reset(seed=0, options={"task": task.to_json()})
    assert env.task == task
    np.testing.assert_array_equal(env.goal, task.goal)
    env.set_task(TaskSpec(family="dynamics"))
    np.testing.assert_array_equal(env.goal, DEFAULT_GOAL)
    with pytest.raises(TypeError):
        env.set_task({"family": "reach"})


def test_bad_actions_are_rejected(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(7, np.nan))


def test_observation_from_joint_state():
    obs = observation_from_joint_state(list(range(7)), np.arange(7, 14))
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, np.arange(14, dtype=np.float32))
    with pytest.raises(ValueError, match="7 positions"):
        observation_from_joint_state([0.0] * 6, [0.0] * 7)
    with pytest.raises(ValueError, match="non-finite"):
        observation_from_joint_state([0.0] * 7, [0.0] * 6 + [float("inf")])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="multiple"):
        ArmEnv(control_hz=50)
    with pytest.raises(ValueError, match="max_joint_velocity"):
        ArmEnv(max_joint_velocity=0.0)


def test_sim_layer_imports_no_torch_rl_or_ros():
    code = (
        "import sys, maml_ros.sim, maml_ros.sim.render, maml_ros.sim.render_demo\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'rclpy')\n"
        "       or m.startswith(('maml_ros.rl', 'maml_ros.ros', 'maml_ros.meta'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_arms_sharing_a_world_move_as_if_alone():
    tasks = sample_tasks("reach+dynamics", 2, "train", seed=5)
    actions = np.random.default_rng(3).uniform(-1, 1, (15, 2, 7))
    world = PhysicsWorld()
    shared = [ArmEnv(task, world=world) for task in tasks]
    try:
        for i, arm in enumerate(shared):
            arm.reset(seed=i)
        with pytest.raises(RuntimeError, match="shares its world"):
            shared[0].step(np.zeros(7))
        for step_actions in actions:
            clipped = [arm._command_action(a) for arm, a in zip(shared, step_actions, strict=True)]
            world.step(shared[0].substeps)
            together = [arm._finish_step(c)[0] for arm, c in zip(shared, clipped, strict=True)]
        for i, task in enumerate(tasks):
            alone = ArmEnv(task)
            try:
                alone.reset(seed=i)
                for step_actions in actions:
                    obs = alone.step(step_actions[i])[0]
            finally:
                alone.close()
            np.testing.assert_array_equal(obs, together[i])
    finally:
        for arm in shared:
            arm.close()
        world.close()
