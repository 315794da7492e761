"""maml-ros-eval: statistics, and the protocol end to end on the toy point env."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle, load_bundle, save_bundle
from maml_ros.rl.config import config_from_dict
from maml_ros.rl.evaluate import (
    SUMMARY_KEYS,
    EvalConfig,
    TaskResult,
    bootstrap_ci,
    evaluated_families,
    main,
    resummarize,
    run_eval,
    summarize,
)
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec
from maml_ros.rl.train import train
from maml_ros.sim.task import (
    TaskFamily,
    goal_split,
    register_family,
    sample_goal,
    unregister_family,
)


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 10), rng.normal(1.0, 1.0, 400)
    lo_s, hi_s = bootstrap_ci(small, np.mean, 2000)
    lo_l, hi_l = bootstrap_ci(large, np.mean, 2000)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2
    assert bootstrap_ci(np.ones(5), np.mean, 100) == (1.0, 1.0)


def result(family, pre, post1, post3, oracle=None, success=0.0):
    returns = {"pre": pre, "post1": post1, "post2": post3, "post3": post3, "scratch_lr0.1": pre - 1}
    if oracle is not None:
        returns.update(oracle=oracle, oracle_iterations=120.0, oracle_plateaued=1.0)
    stages = ("pre", "post1", "post2", "post3", "scratch_lr0.1")
    return TaskResult(0, family, "{}", returns, dict.fromkeys(stages, success))


def test_summary_numbers_and_gap_recovered():
    results = [
        result("reach", -10, -6, -4, success=1.0),
        result("reach", -12, -8, -6, success=0.0),
        result("dynamics", -10, -7, -6, oracle=-4),
        result("dynamics", -20, -17, -15, oracle=-14),
    ]
    summary = summarize(results, {"scratch": 0.1}, 500)
    assert summary["reach_return_pre"] == -11 and summary["reach_return_post1"] == -7
    assert summary["reach_success_post1"] == 0.5
    assert summary["scratch_return_post1"] == -12
    assert summary["finetune_return_post1"] is None
    # (mean post1 - mean pre) / (mean oracle - mean pre) = 3 / 6
    assert summary["dynamics_gap_recovered"] == pytest.approx(0.5)
    lo, hi = summary["dynamics_gap_recovered_ci95"]
    assert lo <= 0.5 <= hi
    # the oracle alone, never the adapted policy: post1 - oracle = -3, -3
    assert summary["dynamics_return_post1_minus_oracle"] == -3
    assert summary["dynamics_return_oracle"] == -9
    assert summary["dynamics_oracle_plateaued"] == 2


def test_the_paired_difference_sees_a_steady_lead_that_overlapping_cis_hide():
    # tasks of very different difficulty; MAML is 0.5 ahead of scratch on every one of them
    results = []
    for pre in (-2.0, -6.0, -10.0, -14.0, -18.0, -22.0):
        row = result("reach", pre, pre + 1.0, pre + 1.0)
        row.returns["scratch_lr0.1"] = pre + 0.5
        results.append(row)
    summary = summarize(results, {"scratch": 0.1}, 2000)
    maml_lo, _ = summary["reach_return_post1_ci95"]
    _, scratch_hi = summary["scratch_return_post1_ci95"]
    assert maml_lo < scratch_hi  # the two CIs overlap...
    assert summary["maml_minus_scratch_return_post1"] == pytest.approx(0.5)
    assert summary["maml_minus_scratch_return_post1_ci95"] == pytest.approx([0.5, 0.5])
    assert summary["maml_minus_finetune_return_post1"] is None  # not compared


def point_bundle(tmp_path):
    spec = PolicySpec(obs_dim=4, act_dim=2, hidden=(8,))
    torch.manual_seed(0)
    bundle = PolicyBundle(
        spec=spec,
        params=GaussianMLPPolicy(spec).params(),
        obs_mean=torch.zeros(4),
        obs_std=torch.full((4,), 0.3),
        inner=InnerConfig(lr=0.25),
    )
    path = tmp_path / "point.safetensors"
    save_bundle(path, bundle)
    return path


def test_cli_quick_run_on_the_toy_writes_json_and_plot(tmp_path, capsys):
    policy = point_bundle(tmp_path)
    out = tmp_path / "eval"
    args = ["--policy", str(policy), "--multitask", str(policy), "--env", "point", "--quick"]
    assert main([*args, "--out", str(out), "--workers", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in SUMMARY_KEYS:
        assert key in line and f"{key}_ci95" in line
    assert line["finetune_return_post1"] is not None
    report = json.loads((out / "eval.json").read_text())
    assert len(report["tasks"]) == 3  # quick: 2 reach + 1 dynamics, one seed
    # the baselines' lr grid is their own inner lr times the factors (quick: 1.0 alone)
    assert report["baseline_best_lr"] == {"scratch": 0.25, "finetune": 0.25}
    assert {"pre", "post1", "post3", "oracle"} <= set(report["tasks"][-1]["returns"])
    # the oracle trained (quick: 2 iterations, patience 1) is stored and reused
    cache = json.loads((out / "oracle_returns.json").read_text())  # seeded with the shipped
    (entry,) = [v for k, v in cache["entries"].items() if json.loads(k)[0] == "point"]
    assert entry["iterations"] == 2
    assert report["tasks"][-1]["returns"]["oracle"] == entry["return"]
    entry["return"] = 123.0  # a stored oracle is not trained again
    (out / "oracle_returns.json").write_text(json.dumps(cache))
    assert main([*args, "--out", str(out), "--workers", "1"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["tasks"][-1]["returns"]["oracle"] == 123.0
    assert (out / "eval.png").stat().st_size > 0
    # curves: K (quick: 2 besides the protocol's 4) for MAML and the baselines, and steps
    summary = report["summary"]
    for key in ("reach_success_post1_k2", "finetune_success_post1_k2", "scratch_return_post1_k2"):
        assert key in summary and len(summary[f"{key}_ci95"]) == 2
    assert "post1_k4" not in report["tasks"][0]["returns"]  # K = 4 is the protocol's own post1
    assert summary["reach_success_post1_k4"] == summary["reach_success_post1"]
    assert {"reach_success_post2", "robust_return", "robust_success"} <= set(summary)
    assert (out / "eval_curves.png").stat().st_size > 0


def test_no_oracle_skips_the_oracle_and_its_gap_only(tmp_path, capsys):
    policy = point_bundle(tmp_path)
    out = tmp_path / "eval"
    args = ["--policy", str(policy), "--env", "point", "--quick", "--workers", "1"]
    assert main([*args, "--out", str(out), "--no-oracle", "--split", "validation"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert not any("oracle" in task["returns"] for task in report["tasks"])
    assert (
        not (out / "oracle_returns.json").exists()
        or "point" not in (out / "oracle_returns.json").read_text()
    )
    summary = report["summary"]
    assert "dynamics_gap_recovered" not in summary and "dynamics_return_post1" in summary
    assert report["protocol"]["extra_metrics"] is False
    assert resummarize(report) == summary  # and a re-summary measures none either


def test_baseline_lrs_are_chosen_on_validation_and_applied_once_to_the_split(tmp_path, monkeypatch):
    from maml_ros.rl.envs import PointTaskSource

    requested = []
    sample = PointTaskSource.sample

    def spy(self, n, split, seed, family=None):
        requested.append(split)
        return sample(self, n, split, seed, family)

    monkeypatch.setattr(PointTaskSource, "sample", spy)
    bundle = load_bundle(point_bundle(tmp_path))
    cfg = replace(EvalConfig.quick(), baseline_lr_factors=(0.1, 1.0), workers=1)
    run_eval(bundle, bundle, cfg, tmp_path / "eval", env_name="point")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert requested == ["validation"] * 2 + ["test"] * 2  # reach, dynamics; lrs first
    assert report["split"] == "test"
    assert set(report["baseline_lr_grid_validation_return"]["scratch"]) == {"0.025", "0.25"}
    for task in report["tasks"]:  # the test tasks see each baseline at its chosen lr only
        assert [k for k in task["returns"] if k.startswith("scratch_lr")] == [
            f"scratch_lr{report['baseline_best_lr']['scratch']:g}"
        ]
    with pytest.raises(ValueError, match="out of range"):
        run_eval(bundle, bundle, replace(cfg, split="out_of_range"), tmp_path, "point")


def test_the_test_split_run_also_reports_maml_out_of_range(tmp_path, monkeypatch):
    from maml_ros.rl.envs import PointTaskSource

    requested = []
    sample = PointTaskSource.sample

    def spy(self, n, split, seed, family=None):  # the toy has no out-of-range tasks: borrow
        requested.append(split)
        return sample(self, n, "validation" if split == "out_of_range" else split, seed, family)

    monkeypatch.setattr(PointTaskSource, "sample", spy)
    monkeypatch.setattr(PointTaskSource, "has_out_of_range", lambda self, family: True)
    bundle = load_bundle(point_bundle(tmp_path))
    cfg = replace(EvalConfig.quick(), workers=1)
    summary = run_eval(bundle, bundle, cfg, tmp_path / "eval", env_name="point")
    assert requested == ["validation"] * 2 + ["test"] * 2 + ["out_of_range"] * 2
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    *ood_reach, ood_dynamics = report["out_of_range_tasks"]  # quick: 2 reach + 1 dynamics
    assert set(ood_dynamics["returns"]) == {"pre", "post1", "post2", "post3"}  # MAML alone
    assert summary["reach_success_ood"] == np.mean([r["success"]["post1"] for r in ood_reach])
    assert summary["dynamics_return_ood"] == ood_dynamics["returns"]["post1"]
    assert summary["reach_success_post1_k4"] == summary["reach_success_post1"]  # K's own point
    assert "robust_return_post1_k4" not in summary
    requested.clear()
    summary = run_eval(bundle, bundle, replace(cfg, out_of_range=False), tmp_path / "e2", "point")
    assert "out_of_range" not in requested and "reach_success_ood" not in summary


def test_first_order_maml_is_a_baseline_with_its_learned_lrs_among_the_candidates(tmp_path):
    meta = load_bundle(point_bundle(tmp_path))
    fomaml = meta.replace(
        lrs={k: torch.full_like(v, 0.3) for k, v in meta.params.items()},
        metadata={"algo": "fomaml", "episodes": 4000, "minutes": 2.5},
    )
    multitask = meta.replace(metadata={"algo": "multitask", "episodes": 4400, "minutes": 2.0})
    cfg = replace(EvalConfig.quick(), workers=1)
    summary = run_eval(meta, multitask, cfg, tmp_path / "eval", env_name="point", fomaml=fomaml)
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    grid = report["baseline_lr_grid_validation_return"]
    assert set(grid["fomaml"]) == {"0.25", "learned"}  # quick grid: factor 1.0, and its own
    assert set(grid["finetune"]) == {"0.25"}  # no learned lrs, no such candidate
    for name in ("fomaml", "finetune", "scratch", "multitask", "robust"):
        assert np.isfinite(summary[f"{name}_return_post1"]), name
    assert summary["multitask_return_post1"] == summary["finetune_return_post1"]
    assert summary["robust_return_post1"] == summary["robust_return"]
    assert summary["fomaml_success_post1_k2"] is not None  # on the K curve too
    assert summary["selection_split"] == "validation"
    assert summary["pretrain_episodes_fomaml"] == 4000
    assert summary["pretrain_minutes_multitask"] == summary["pretrain_minutes_robust"] == 2.0
    assert summary["pretrain_episodes_maml"] is None  # a hand-made policy: no training on record
    assert report["fomaml_policy"] is None  # no iteration in its metadata
    for name in ("fomaml", "finetune", "scratch"):  # the paired differences, on the K curve too
        assert summary[f"maml_minus_{name}_return_post1"] == pytest.approx(
            summary["reach_return_post1"] - summary[f"{name}_return_post1"]
        )
        assert f"maml_minus_{name}_return_post1_k2_ci95" in summary

    # a report written before the paired keys: computed anew from its tasks, all else equal
    old = {k: v for k, v in report["summary"].items() if not k.startswith("maml_minus_")}
    again = resummarize({**report, "summary": old})
    assert json.dumps(again, sort_keys=True) == json.dumps(report["summary"], sort_keys=True)
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**report, "summary": old}))
    assert main(["--resummarize", str(path), "--out", str(tmp_path / "re")]) == 0
    rewritten = json.loads((tmp_path / "re" / "eval.json").read_text())
    assert rewritten["summary"] == report["summary"] and rewritten["tasks"] == report["tasks"]


INCOMPLETE_REPORT = json.dumps(
    {
        "tasks": [{"seed": 0, "family": "reach", "task": "{}", "returns": {}, "success": {}}],
        "baseline_best_lr": {},
        "protocol": {"bootstrap": 10, "k": 20},
        "families": ["reach"],
        "summary": {},
    }
)


@pytest.mark.parametrize(
    "text", ["[]", "not json", '{"tasks": []}', '{"tasks": [{"x": 1}]}', INCOMPLETE_REPORT]
)
def test_resummarize_refuses_what_is_not_a_report(tmp_path, capsys, text):
    path = tmp_path / "eval.json"
    path.write_text(text)
    assert main(["--resummarize", str(path), "--out", str(tmp_path / "re")]) == 2
    assert "maml-ros-eval" in capsys.readouterr().err
    assert not (tmp_path / "re").exists()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"version": 2, "entries": {}}',
        '{"version": 1, "entries": {"k": 1}}',
        '{"version": 1, "entries": {"k": {"return": -1.0}}}',  # get() would need the rest
    ],
)
def test_cli_rejects_a_corrupt_oracle_cache(tmp_path, capsys, text):
    cache = tmp_path / "oracles.json"
    cache.write_text(text)
    policy = point_bundle(tmp_path)
    args = ["--policy", str(policy), "--env", "point", "--quick", "--oracle-cache", str(cache)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "maml-ros-eval" in capsys.readouterr().err
    assert cache.read_text() == text  # nothing overwritten


def test_cli_rejects_a_corrupt_policy(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--policy", str(bad), "--out", str(tmp_path / "o"), "--quick"]) == 2
    assert "maml-ros-eval" in capsys.readouterr().err


def _low_goal(rng, split, robot):
    while True:  # the lower half of the goal cube only
        goal = sample_goal(rng, split, robot)
        if goal[2] < robot.goal_cube_center[2]:
            return {"goal": goal}


@pytest.fixture
def low_reach():
    family = TaskFamily(
        name="low_reach",
        sample=_low_goal,
        split=lambda task, robot: goal_split(task.goal, robot),
        metrics=("return", "success"),
        baselines=True,
    )
    register_family(family)
    yield family
    unregister_family("low_reach")


def test_a_family_registered_here_is_trained_on_and_reported_by_evaluation(tmp_path, low_reach):
    cfg = config_from_dict(
        {
            "iterations": 1,
            "obs_norm_episodes": 2,
            "env": {
                "workers": 1,  # in-process envs: worker processes would not know the family
                "num_envs": 4,
                "horizon": 10,
                "families": ["low_reach"],
                "family_weights": [1.0],
            },
            "policy": {"hidden": [8]},
            "outer": {"meta_batch": 2, "rollouts_per_task": 2, "epochs": 1},
        }
    )
    train(cfg, tmp_path / "run", show_progress=False)
    meta = load_bundle(tmp_path / "run" / "policy_latest.safetensors")
    assert evaluated_families(meta) == ("low_reach",)
    eval_cfg = EvalConfig(
        k=2,
        eval_episodes=1,
        seeds=(0,),
        n_other=2,
        baseline_lr_factors=(1.0,),
        workers=1,
        bootstrap=50,
    )
    summary = run_eval(meta, None, eval_cfg, tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["families"] == ["low_reach"]
    assert [t["family"] for t in report["tasks"]] == ["low_reach"] * 2
    for stage in ("pre", "post1", "post3"):
        for metric in ("return", "success"):
            value = summary[f"low_reach_{metric}_{stage}"]
            assert np.isfinite(value) and f"low_reach_{metric}_{stage}_ci95" in summary
    assert summary["low_reach_return_pre"] == pytest.approx(
        np.mean([t["returns"]["pre"] for t in report["tasks"]])
    )
    assert summary["scratch_return_post1"] is not None  # the family pools the baselines
    assert not any(k.startswith(("reach_", "dynamics_")) for k in summary)
    unregister_family("low_reach")
    with pytest.raises(ValueError, match="'low_reach', which is not registered; known: "):
        evaluated_families(meta)
    register_family(low_reach)


def test_a_family_naming_an_unknown_metric_is_refused(tmp_path, low_reach):
    import dataclasses

    register_family(dataclasses.replace(low_reach, metrics=("speed",)), replace=True)
    bundle = load_bundle(point_bundle(tmp_path))
    bundle = bundle.replace(metadata={"task_families": ["low_reach"]})
    with pytest.raises(ValueError, match="unknown metric 'speed'; evaluation measures"):
        evaluated_families(bundle)
