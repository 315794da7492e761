"""Meta-training on the toy point-navigation env: config validation, learning, the one-InnerConfig
property, resume, and the files maml-ros-train writes."""

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

import maml_ros.rl.trainer as trainer_module
from maml_ros.rl.checkpoint import CheckpointError, load_bundle
from maml_ros.rl.config import ConfigError, config_from_dict, load_config
from maml_ros.rl.envs import make_env, make_task_source
from maml_ros.rl.train import (
    baseline_config,
    episodes_per_iteration,
    main,
    train,
    training_budget,
)
from maml_ros.rl.trainer import InnerMismatchError, MetaTrainer

REPO = Path(__file__).resolve().parents[1]

TOY = {
    "seed": 3,
    "iterations": 4,
    "checkpoint_every": 2,
    "obs_norm_episodes": 10,
    "env": {
        "name": "point",
        "num_envs": 60,
        "horizon": 15,
        "families": ["reach"],
        "family_weights": [1.0],
    },
    "policy": {"hidden": [16, 16]},
    "inner": {"lr": 0.1},
    "outer": {"meta_batch": 6, "rollouts_per_task": 10, "epochs": 3, "lr": 0.01},
}


def point_env_factory(c):
    """``train``'s env factory for the toy point env of config ``c``."""
    return make_env("point", c.env.num_envs, 1, c.env.horizon), make_task_source(
        "point", c.env.families, c.env.family_weights
    )


def toy_trainer(**changes) -> MetaTrainer:
    cfg = config_from_dict({**TOY, **changes})
    env = make_env("point", cfg.env.num_envs, 1, cfg.env.horizon)
    return MetaTrainer(
        cfg, env, make_task_source("point", cfg.env.families, cfg.env.family_weights)
    )


def test_default_config_is_valid_and_fits_the_arm():
    cfg = load_config(REPO / "config" / "train.yaml")
    assert cfg.env.name == "arm" and cfg.outer.algo == "promp"
    assert cfg.max_minutes is not None and cfg.max_minutes + (cfg.pretrain.max_minutes or 0) <= 45


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"iterationz": 3}, "unknown key"),
        ({"outer": {"meta_batch": 4, "clip": 0.2}}, r"unknown key.*outer"),
        ({"inner": {"lr": -0.1}}, "lr"),
        ({"outer": {"algo": "trpo"}}, "algo"),
        ({"env": {"name": "mujoco"}}, "env.name"),
        ({"env": {"families": ["reach"], "family_weights": [1, 2]}}, "family_weights"),
        ({"pg": {"gamma": 1.5}}, "gamma"),
        ({"pg": {"reward_power": 0}}, "reward_power"),
        ({"policy": {"hidden": [0]}}, "hidden"),
        ({"outer": "fast"}, "mapping"),
        (
            {"env": {"families": ["reach", "swim"], "family_weights": [1, 1]}},
            r"unknown task family 'swim'; known: \['reach', 'dynamics', 'reach\+dynamics'",
        ),
        ({"env": {"families": ["reach", "reach"], "family_weights": [1, 1]}}, "twice"),
        ({"outer": {"rounds": 0}}, "rounds"),
        ({"outer": {"rounds": 6}}, "rounds"),
        ({"outer": {"rounds": 1.5}}, "rounds"),
        ({"outer": {"rounds": 2, "algo": "multitask"}}, "rounds"),
    ],
)
def test_config_rejects_bad_values(data, reason):
    with pytest.raises(ConfigError, match=reason):
        config_from_dict(data)


def test_meta_training_improves_post_update_return_on_the_toy():
    torch.manual_seed(0)
    trainer = toy_trainer()
    history = [trainer.step() for _ in range(16)]
    first = sum(h["post_return"] for h in history[:3]) / 3
    last = sum(h["post_return"] for h in history[-3:]) / 3
    assert last > first + 1.0, (first, last)
    assert sum(h["post_return"] - h["pre_return"] for h in history[-3:]) > 0


def test_sampling_and_meta_objective_share_one_inner_config(monkeypatch):
    trainer = toy_trainer(inner={"lr": 0.2, "meta_sgd": True})
    seen = []
    real = trainer_module.adapt_batched

    def spy(loss_fn, params, batches, cfg, lrs=None):
        seen.append(cfg)
        return real(loss_fn, params, batches, cfg, lrs)

    monkeypatch.setattr(trainer_module, "adapt_batched", spy)
    metrics = trainer.step()
    assert len(seen) == 1 + trainer.cfg.outer.epochs  # sampling + every epoch
    assert all(cfg is trainer.inner_cfg for cfg in seen)
    assert metrics["ratio_dev"] < 1e-5


@pytest.mark.parametrize(("algo", "powers"), [("promp", [2.0, 1.0]), ("multitask", [1.0])])
def test_reward_power_shapes_the_inner_loss_only(monkeypatch, algo, powers):
    trainer = toy_trainer(pg={"reward_power": 2.0}, outer={**TOY["outer"], "algo": algo})
    seen = []
    real = trainer_module.compute_advantages

    def spy(obs, rewards, mask, cfg):
        seen.append(cfg.reward_power)
        return real(obs, rewards, mask, cfg)

    monkeypatch.setattr(trainer_module, "compute_advantages", spy)
    trainer.normalized = True  # skip the normalisation episodes
    trainer.step()
    assert seen == powers  # support (inner loss), then query (the meta-objective)


def test_rounds_adapt_again_on_fresh_episodes_of_the_adapted_policy(monkeypatch):
    """outer.rounds 3: each round samples K fresh episodes with the latest adapted params and
    adapts those again; the meta-objective recomputes the same chain (ratio_dev ~ 0)."""
    trainer = toy_trainer(outer={**TOY["outer"], "rounds": 3}, inner={"lr": 0.2, "meta_sgd": True})
    sampled = []
    real = trainer_module.sample_rollouts

    def spy(env, policy, params, tasks, k, seed, **kwargs):
        sampled.append({name: value.clone() for name, value in params.items()})
        return real(env, policy, params, tasks, k, seed, **kwargs)

    monkeypatch.setattr(trainer_module, "sample_rollouts", spy)
    trainer.normalized = True
    metrics = trainer.step()
    cfg = trainer.cfg.outer
    assert len(sampled) == 1 + 3  # theta, then one wave per round
    assert metrics["episodes"] == cfg.meta_batch * cfg.rollouts_per_task * 4
    assert metrics["ratio_dev"] < 1e-5
    assert {"post1_return", "post2_return", "post3_return"} <= set(metrics)
    for before, after in itertools.pairwise(sampled[1:]):  # each round moves on
        assert any(not torch.equal(before[n], after[n]) for n in before)
    assert episodes_per_iteration(trainer.cfg, "promp") == metrics["episodes"]


def test_a_sampling_lr_mismatch_is_caught(monkeypatch):
    trainer = toy_trainer()
    trainer.step()  # a trained step, so the policy is no longer at its init
    wrong = dataclasses.replace(trainer.inner_cfg, lr=trainer.inner_cfg.lr * 1.5)
    real = trainer_module.adapt_batched

    def sampling_with_wrong_lr(loss_fn, params, support):
        adapted = real(loss_fn, params, support, wrong)
        return {k: v.detach() for k, v in adapted.items()}

    monkeypatch.setattr(
        trainer,
        "sample_adapted",
        lambda support, per_task=None: sampling_with_wrong_lr(
            trainer.inner_loss, trainer._detached()[0], support
        ),
    )
    with pytest.raises(InnerMismatchError, match="inner lr"):
        trainer.step()


def test_train_writes_checkpoints_and_resumes_exactly(tmp_path):
    cfg = config_from_dict({**TOY, "pretrain": {"iterations": 2}})

    straight = tmp_path / "straight"
    train(cfg, straight, env_factory=point_env_factory, show_progress=False)
    split = tmp_path / "split"
    train(
        dataclasses.replace(cfg, iterations=3),
        split,
        env_factory=point_env_factory,
        show_progress=False,
    )
    with pytest.raises(FileExistsError):
        train(cfg, split, env_factory=point_env_factory, show_progress=False)
    train(cfg, split, resume=True, env_factory=point_env_factory, show_progress=False)
    a = load_bundle(straight / "policy_latest.safetensors")
    b = load_bundle(split / "policy_latest.safetensors")
    for name in a.params:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=0, atol=1e-6)
    assert a.lrs is None and a.inner.lr == 0.1
    meta = a.metadata
    assert meta["iteration"] == 4 and meta["task_families"] == ["reach"]
    assert meta["config"]["outer"]["meta_batch"] == 6 and "git_commit" in meta
    for name in (
        "learning_curve.png",
        "summary.json",
        "config.yaml",
        "multitask_policy_latest.safetensors",
    ):
        assert (straight / name).stat().st_size > 0
    assert list((straight / "tb").iterdir())
    lines = (straight / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 2, 3]
    assert (
        load_bundle(straight / "multitask_policy_latest.safetensors").metadata["algo"]
        == "multitask"
    )


def test_keep_checkpoints_keeps_every_checkpoint_and_the_last_is_latest(tmp_path):
    cfg = config_from_dict({**TOY, "keep_checkpoints": True})

    out = tmp_path / "run"
    train(cfg, out, env_factory=point_env_factory, show_progress=False)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"policy_it000{i}.{ext}" for i in (2, 4) for ext in ("json", "safetensors")]
    first = load_bundle(out / "checkpoints" / "policy_it0002.safetensors")
    last = load_bundle(out / "checkpoints" / "policy_it0004.safetensors")
    latest = load_bundle(out / "policy_latest.safetensors")
    assert first.metadata["iteration"] == 2 and last.metadata["iteration"] == 4
    assert first.metadata["episodes"] < last.metadata["episodes"] == latest.metadata["episodes"]
    for name in latest.params:
        assert torch.equal(last.params[name], latest.params[name])
    assert not torch.equal(first.params["mlp.0.weight"], last.params["mlp.0.weight"])
    saved = json.loads((out / "checkpoints" / "policy_it0004.json").read_text())
    assert saved["iteration"] == 4
    assert not (tmp_path / "plain").exists()
    train(
        dataclasses.replace(cfg, keep_checkpoints=False),
        tmp_path / "plain",
        env_factory=point_env_factory,
        show_progress=False,
    )
    assert not (tmp_path / "plain" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        config_from_dict({**TOY, "keep_checkpoints": "yes"})


def test_cli_rejects_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 3\nwings: 2\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_resume_from_a_truncated_state_is_a_clear_error(tmp_path, capsys):
    cfg = config_from_dict({**TOY, "iterations": 2})

    out = tmp_path / "run"
    train(cfg, out, env_factory=point_env_factory, show_progress=False)
    state = out / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot resume from .*state\.safetensors"):
        train(cfg, out, resume=True, env_factory=point_env_factory, show_progress=False)
    argv = ["--config", str(out / "config.yaml"), "--out", str(out), "--resume", "--no-progress"]
    assert main(argv) == 2
    assert "cannot resume from" in capsys.readouterr().err


def test_a_baseline_trains_alone_with_the_meta_checkpoints_episodes(tmp_path, capsys):
    cfg = config_from_dict({**TOY, "iterations": 3})

    train(cfg, tmp_path / "maml", env_factory=point_env_factory, show_progress=False)
    reference = load_bundle(tmp_path / "maml" / "policy_latest.safetensors")
    episodes, minutes, measured = training_budget(reference.metadata)
    assert (episodes, measured) == (3 * 2 * 6 * 10, True) and minutes > 0
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    for baseline, iterations in (("fomaml", 3), ("multitask", 6)):
        out = tmp_path / baseline
        argv = ["--config", str(tmp_path / "toy.yaml"), "--out", str(out), "--no-progress"]
        argv += [
            "--baseline",
            baseline,
            "--budget-of",
            str(tmp_path / "maml" / "policy_latest.safetensors"),
        ]
        assert main(argv) == 0, capsys.readouterr().err
        bundle = load_bundle(out / "policy_latest.safetensors")
        meta = bundle.metadata
        assert meta["algo"] == baseline and meta["iteration"] == iterations
        assert meta["episodes"] == episodes  # the same episodes, whatever one iteration samples
        assert meta["config"]["inner"]["first_order"] == (baseline == "fomaml")
        assert not (out / "multitask_policy_latest.safetensors").exists()  # no second phase
        assert torch.equal(bundle.obs_mean, reference.obs_mean)  # the same inputs
        assert torch.equal(bundle.obs_std, reference.obs_std)


def test_an_old_checkpoints_budget_is_its_iterations_and_time_budget():
    cfg = config_from_dict(
        {**TOY, "max_minutes": 9, "pretrain": {"iterations": 5, "max_minutes": 2}}
    )
    old = {"config": cfg.to_dict(), "iteration": 4}
    assert training_budget({**old, "algo": "promp"}) == (4 * 2 * 6 * 10, 9.0, False)
    assert training_budget({**old, "algo": "multitask"}) == (4 * 6 * 10, 2.0, False)
    with pytest.raises(CheckpointError, match="no training budget"):
        training_budget({"iteration": 4})
    with pytest.raises(CheckpointError, match="neither its minutes"):
        training_budget({**old, "algo": "promp", "config": TOY})


def test_baseline_needs_a_known_name_and_budget_of_needs_baseline(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--baseline must be one of"):
        baseline_config(config_from_dict(TOY), "reptile", 100, 1.0)
    config = str(REPO / "config" / "train.yaml")
    with pytest.raises(SystemExit):
        main(["--config", config, "--budget-of", "x.safetensors"])
    assert "--budget-of needs --baseline" in capsys.readouterr().err
    assert main(["--config", config, "--baseline", "fomaml", "--budget-of", "/nope"]) == 2
    assert "/nope" in capsys.readouterr().err


def test_baselines_of_a_several_round_config_keep_its_episodes():
    """First-order MAML keeps the rounds (the same recipe without the second-order term); the
    multi-task baseline samples no post-update episodes, so it has one wave and more
    iterations for the same episodes."""
    cfg = config_from_dict({**TOY, "outer": {**TOY["outer"], "rounds": 2}})
    episodes = episodes_per_iteration(cfg, "promp") * 5
    fomaml = baseline_config(cfg, "fomaml", episodes, 1.0)
    multitask = baseline_config(cfg, "multitask", episodes, 1.0)
    assert (fomaml.outer.rounds, fomaml.iterations) == (2, 5)
    assert (multitask.outer.rounds, multitask.iterations) == (1, 15)
    assert multitask.iterations * episodes_per_iteration(multitask, "multitask") == episodes
