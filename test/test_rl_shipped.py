"""The shipped checkpoints (models/) load, validate, and run on the arm."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from maml_ros.rl.adapt import adapt_policy
from maml_ros.rl.checkpoint import (
    bundle_from_bytes,
    bundle_to_bytes,
    find_shipped_model,
    load_bundle,
)
from maml_ros.rl.config import config_from_dict, load_config
from maml_ros.rl.pg import Rollouts
from maml_ros.rl.policy import numpy_policy
from maml_ros.rl.train import BUDGET_SLACK, training_budget
from maml_ros.runtime.robots import get_robot, policy_mismatch, shipped_model_name
from maml_ros.sim import FAMILIES, ArmEnv, sample_tasks

SHIPPED_ROBOTS = ("kuka_iiwa", "franka_panda")
"""Every robot with a meta-trained policy and a multi-task baseline in models/."""

shipped = pytest.mark.parametrize("robot", SHIPPED_ROBOTS)


def shipped_bundle(robot: str, kind: str = "maml"):
    return load_bundle(find_shipped_model(shipped_model_name(robot, kind)))


@shipped
def test_shipped_meta_policy_loads_and_its_metadata_validates(robot):
    bundle = shipped_bundle(robot)
    joints = len(get_robot(robot).joint_names)
    assert (bundle.spec.obs_dim, bundle.spec.act_dim) == (2 * joints, joints)
    assert policy_mismatch(bundle.metadata, robot, get_robot(robot).joint_names) is None
    meta = bundle.metadata
    cfg = config_from_dict(meta["config"])
    assert cfg.env.name == "arm" and meta["algo"] == "promp"
    assert set(meta["task_families"]) <= set(FAMILIES)
    assert meta["iteration"] >= 1 and len(meta["git_commit"]) == 40
    assert bundle.inner.lr == cfg.inner.lr and bundle.inner.steps == cfg.inner.steps
    assert (bundle.lrs is not None) == cfg.inner.meta_sgd
    assert bundle.pg == cfg.pg
    # The ROS policy topic carries exactly these bytes.
    again = bundle_from_bytes(bundle_to_bytes(bundle))
    assert all(torch.equal(again.params[k], v) for k, v in bundle.params.items())


@shipped
def test_shipped_multitask_baseline_shares_the_normalisation(robot):
    meta = shipped_bundle(robot)
    multitask = shipped_bundle(robot, "multitask")
    assert multitask.metadata["algo"] == "multitask"
    assert torch.equal(multitask.obs_mean, meta.obs_mean)
    assert torch.equal(multitask.obs_std, meta.obs_std)


SAME_BUDGET_ROBOTS = ("kuka_iiwa", "franka_panda")
"""Robots whose baselines were trained with their meta-policy's budget (``make baselines``)."""


@pytest.mark.parametrize("robot", SAME_BUDGET_ROBOTS)
@pytest.mark.parametrize("kind", ["multitask", "fomaml"])
def test_shipped_same_budget_baselines_had_the_meta_policys_episodes(robot, kind):
    meta = shipped_bundle(robot)
    baseline = shipped_bundle(robot, kind)
    assert baseline.metadata["algo"] == kind
    assert torch.equal(baseline.obs_mean, meta.obs_mean)
    episodes, minutes, measured = training_budget(baseline.metadata)
    meta_episodes, meta_minutes, _ = training_budget(meta.metadata)
    assert measured and episodes == meta_episodes  # its last checkpoint: all of the budget
    assert minutes <= meta_minutes * BUDGET_SLACK
    ours, theirs = (config_from_dict(b.metadata["config"]) for b in (baseline, meta))
    assert ours.inner.first_order == (kind == "fomaml")
    for section in ("env", "policy", "pg", "seed"):  # the same problem and the same learner
        assert getattr(ours, section) == getattr(theirs, section), section


@shipped
def test_shipped_policy_runs_and_adapts_on_the_arm(robot):
    bundle = shipped_bundle(robot)
    obs_dim, act_dim = bundle.spec.obs_dim, bundle.spec.act_dim
    policy = numpy_policy(bundle)
    env = ArmEnv(sample_tasks("reach", 1, "test", 0, robot=robot)[0], horizon=10, robot=robot)
    rng = np.random.default_rng(0)
    obs_l, act_l, rew_l = [], [], []
    try:
        for episode in range(2):
            obs, _ = env.reset(seed=episode)
            for _ in range(10):
                action = policy.act(obs, True, rng).copy()
                obs_l.append(obs)
                act_l.append(action)
                obs, reward, _, _, _ = env.step(action)
                rew_l.append(reward)
    finally:
        env.close()
    rollouts = Rollouts.from_numpy(
        np.reshape(obs_l, (2, 10, obs_dim)),
        np.reshape(act_l, (2, 10, act_dim)),
        np.reshape(rew_l, (2, 10)),
    )
    new, info = adapt_policy(bundle, rollouts)
    assert new.version == bundle.version + 1 and np.isfinite(info["inner_loss"])
    assert any(not torch.equal(new.params[k], bundle.params[k]) for k in bundle.params)


def test_the_committed_config_is_the_shipped_iiwa_recipe():
    """``make train`` retrains the shipped iiwa model: the config it was trained with is the
    committed one, but for how long it ran and whether it kept its checkpoints. The shipped
    file is that run's checkpoint at the committed iteration count (chosen on validation from
    the checkpoints it kept); nothing in training depends on the total, so a run of that many
    iterations ends where the shipped file was taken."""
    meta = shipped_bundle("kuka_iiwa").metadata
    shipped = config_from_dict(meta["config"])
    committed = load_config(Path(__file__).resolve().parents[1] / "config" / "train.yaml")
    assert shipped.iterations >= meta["iteration"] == committed.iterations
    ran = {"iterations": committed.iterations, "keep_checkpoints": committed.keep_checkpoints}
    assert committed == dataclasses.replace(shipped, **ran)
