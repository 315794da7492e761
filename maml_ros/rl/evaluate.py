"""``maml-ros-eval``: Meta-World-style few-shot evaluation of the shipped policy on held-out tasks.

Per seed, held-out ("test" split) reach and dynamics tasks; per task:

- **pre**: ``eval_episodes`` deterministic episodes (mean action) of the meta-policy theta;
- **post1**: K exploration episodes with theta, one inner step (:func:`adapt_policy`, the
  on-robot update), then deterministic evaluation episodes;
- **post3**: two more steps, each on K *fresh* episodes of the latest adapted policy (MAML);
- **finetune**: the multi-task pretrained policy (``arm_multitask.safetensors`` from
  ``make train``), K episodes, one plain PG step with the best lr of a grid (its own inner lr
  times ``baseline_lr_factors``, so the grid follows the checkpoint's advantage scale);
- **scratch**: a random-init policy (same architecture and observation normalisation), K
  episodes, one plain PG step with the best lr of the same grid;
- for dynamics tasks, an **oracle**: the best of PPO trained on that task alone from theta
  (``oracle_iterations`` iterations of K episodes) and the adapted policies above; the fraction
  of the gap between pre and oracle closed by one step is ``dynamics_gap_recovered``.

Baseline lrs are picked per baseline as the best on the evaluation tasks themselves (an
optimistic choice for the baselines). 95% CIs are percentile bootstraps over tasks (all seeds
pooled). Writes ``eval.json`` and ``eval.png`` to ``--out``; the last printed line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maml_ros.rl.adapt import adapt_policy
from maml_ros.rl.checkpoint import (
    SHIPPED_MULTITASK_MODEL,
    CheckpointError,
    PolicyBundle,
    atomic_write_bytes,
    find_shipped_model,
    load_bundle,
)
from maml_ros.rl.config import config_from_dict
from maml_ros.rl.envs import BatchEnv, make_env, make_task_source
from maml_ros.rl.pg import Rollouts
from maml_ros.rl.policy import GaussianMLPPolicy
from maml_ros.rl.sampling import RolloutBatch, sample_rollouts
from maml_ros.rl.train import add_backend_arguments, check_backend_arguments
from maml_ros.rl.trainer import MetaTrainer
from maml_ros.runtime.robots import (
    DEFAULT_ROBOT,
    get_robot,
    no_shipped_model_message,
    policy_mismatch,
    robot_names,
)

SUMMARY_KEYS = (
    "reach_success_pre",
    "reach_success_post1",
    "reach_success_post3",
    "reach_return_pre",
    "reach_return_post1",
    "finetune_return_post1",
    "scratch_return_post1",
    "dynamics_gap_recovered",
)


@dataclass(frozen=True)
class EvalConfig:
    """Protocol sizes."""

    k: int = 20
    eval_episodes: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    n_reach: int = 10
    n_dynamics: int = 3
    baseline_lr_factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    oracle_iterations: int = 25
    workers: int = 2
    bootstrap: int = 5000

    @classmethod
    def quick(cls) -> EvalConfig:
        """A smoke-test sized protocol (seconds, not minutes)."""
        return cls(
            k=4,
            seeds=(0,),
            n_reach=2,
            n_dynamics=1,
            baseline_lr_factors=(1.0,),
            oracle_iterations=1,
            bootstrap=200,
        )


@dataclass
class TaskResult:
    """All measured numbers of one held-out task."""

    seed: int
    family: str
    task: str
    returns: dict[str, float]
    success: dict[str, float]


class Evaluator:
    """Runs the protocol for one seed's task set with a shared batched env."""

    def __init__(self, env: BatchEnv, cfg: EvalConfig) -> None:
        self.env = env
        self.cfg = cfg

    def run_episodes(
        self,
        bundles: Sequence[PolicyBundle],
        tasks: Sequence[Any],
        episodes: int,
        seed: int,
        explore: bool,
    ) -> RolloutBatch:
        """``episodes`` per task, each task with its own bundle's policy."""
        policy = GaussianMLPPolicy(bundles[0].spec, bundles[0].obs_mean, bundles[0].obs_std)
        for b in bundles[1:]:
            if not (
                torch.equal(b.obs_mean, bundles[0].obs_mean)
                and torch.equal(b.obs_std, bundles[0].obs_std)
            ):
                raise ValueError("bundles evaluated together must share observation normalisation")
        params = {k: torch.stack([b.params[k] for b in bundles]) for k in bundles[0].params}
        return sample_rollouts(
            self.env, policy, params, tasks, episodes, seed, explore=explore, batched_params=True
        )

    def evaluate(self, bundles, tasks, seed) -> RolloutBatch:
        """Deterministic evaluation episodes."""
        return self.run_episodes(bundles, tasks, self.cfg.eval_episodes, seed, explore=False)

    def adapt_all(self, bundles, batch: RolloutBatch) -> list[PolicyBundle]:
        """One :func:`adapt_policy` step per task on its K episodes."""
        out = []
        for i, bundle in enumerate(bundles):
            rollouts = Rollouts(batch.obs[i], batch.actions[i], batch.rewards[i], batch.mask[i])
            out.append(adapt_policy(bundle, rollouts, steps=1)[0])
        return out


def _with_lr(bundle: PolicyBundle, lr: float) -> PolicyBundle:
    return bundle.replace(inner=dataclasses.replace(bundle.inner, lr=lr, steps=1), lrs=None)


def random_init_bundle(meta: PolicyBundle, seed: int) -> PolicyBundle:
    """A fresh policy with the meta-policy's spec, normalisation and PG settings."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(meta.spec)
    return meta.replace(params=policy.params(), lrs=None, metadata={"kind": "scratch"})


def oracle_return(
    meta: PolicyBundle,
    task: Any,
    task_source: Any,
    cfg: EvalConfig,
    seed: int,
    env_name: str,
    robot: str = DEFAULT_ROBOT,
) -> float:
    """Eval return of PPO trained on ``task`` alone from theta (multi-task trainer, one task)."""

    class OneTask:
        families = (task.family,)

        def sample(self, n, split, seed, family=None):
            return [task] * n

        def family_of(self, t):
            return t.family

        def to_json(self, t):
            return task_source.to_json(t)

    train_cfg = config_from_dict(
        {
            "seed": seed,
            "env": {"name": env_name, "num_envs": cfg.k, "workers": 1, "robot": robot},
            "policy": {"hidden": list(meta.spec.hidden), "init_log_std": meta.spec.init_log_std},
            "outer": {
                "algo": "multitask",
                "meta_batch": 1,
                "rollouts_per_task": cfg.k,
                "epochs": 5,
                "lr": 1e-3,
            },
            "pg": meta.pg.to_dict(),
        }
    )
    env = make_env(env_name, cfg.k, 1, robot=robot)
    try:
        trainer = MetaTrainer(train_cfg, env, OneTask())
        trainer.set_obs_normalization(meta.obs_mean, meta.obs_std)
        with torch.no_grad():
            for name, value in trainer.params.items():
                value.copy_(meta.params[name])
        for _ in range(cfg.oracle_iterations):
            trainer.step()
        final = trainer.bundle()
        batch = sample_rollouts(
            env, trainer.policy, final.params, [task], cfg.k, seed, explore=False
        )
        return float(batch.returns.mean())
    finally:
        env.close()


def evaluate_seed(
    evaluator: Evaluator,
    meta: PolicyBundle,
    multitask: PolicyBundle | None,
    tasks: list[Any],
    families: list[str],
    task_json: list[str],
    seed: int,
) -> tuple[list[TaskResult], dict[str, dict[float, list[float]]]]:
    """The protocol on one seed's tasks; also per-lr baseline returns (for lr selection)."""
    cfg = evaluator.cfg
    n = len(tasks)
    rng_seed = 1_000_003 * (seed + 1)
    returns: dict[str, np.ndarray] = {}
    success: dict[str, np.ndarray] = {}

    def record(name: str, batch: RolloutBatch) -> None:
        returns[name] = batch.returns.mean(1).numpy()
        success[name] = batch.success.float().mean(1).numpy()

    thetas = [meta] * n
    record("pre", evaluator.evaluate(thetas, tasks, rng_seed + 1))
    current = thetas
    for step in range(1, 4):
        explore = evaluator.run_episodes(current, tasks, cfg.k, rng_seed + 10 + step, explore=True)
        current = evaluator.adapt_all(current, explore)
        if step in (1, 3):
            record(f"post{step}", evaluator.evaluate(current, tasks, rng_seed + 20 + step))
    baselines: dict[str, dict[float, list[float]]] = {}
    starts = {"scratch": random_init_bundle(meta, seed)}
    if multitask is not None:
        starts["finetune"] = multitask
    for name, start in starts.items():
        explore = evaluator.run_episodes([start] * n, tasks, cfg.k, rng_seed + 40, explore=True)
        baselines[name] = {}
        for lr in (round(start.inner.lr * f, 12) for f in cfg.baseline_lr_factors):
            adapted = evaluator.adapt_all([_with_lr(start, lr)] * n, explore)
            batch = evaluator.evaluate(adapted, tasks, rng_seed + 50)
            baselines[name][lr] = batch.returns.mean(1).tolist()
            returns[f"{name}_lr{lr:g}"] = batch.returns.mean(1).numpy()
            success[f"{name}_lr{lr:g}"] = batch.success.float().mean(1).numpy()
    results = [
        TaskResult(
            seed=seed,
            family=families[i],
            task=task_json[i],
            returns={k: float(v[i]) for k, v in returns.items()},
            success={k: float(v[i]) for k, v in success.items()},
        )
        for i in range(n)
    ]
    return results, baselines


def bootstrap_ci(values: np.ndarray, stat, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of ``stat`` over resampled rows of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = np.array([stat(values[row]) for row in idx])
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return (math.nan, math.nan)
    return (float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5)))


def summarize(results: list[TaskResult], best_lr: dict[str, float], n_boot: int) -> dict[str, Any]:
    """The headline numbers with 95% CIs."""
    reach = [r for r in results if r.family == "reach"]
    dyn = [r for r in results if r.family == "dynamics"]
    summary: dict[str, Any] = {}

    def put(key: str, values: list[float]) -> None:
        arr = np.asarray(values, dtype=np.float64)
        summary[key] = float(arr.mean()) if len(arr) else math.nan
        summary[f"{key}_ci95"] = list(bootstrap_ci(arr, np.mean, n_boot))

    for stage in ("pre", "post1", "post3"):
        put(f"reach_success_{stage}", [r.success[stage] for r in reach])
        put(f"reach_return_{stage}", [r.returns[stage] for r in reach])
        put(f"dynamics_return_{stage}", [r.returns[stage] for r in dyn])
        put(f"dynamics_success_{stage}", [r.success[stage] for r in dyn])
    for name in ("finetune", "scratch"):
        if name in best_lr:
            key = f"{name}_lr{best_lr[name]:g}"
            put(f"{name}_return_post1", [r.returns[key] for r in reach])
            put(f"{name}_success_post1", [r.success[key] for r in reach])
        else:
            summary[f"{name}_return_post1"] = None
            summary[f"{name}_return_post1_ci95"] = [None, None]
    if dyn:
        gains = np.array([[r.returns["pre"], r.returns["post1"], r.returns["oracle"]] for r in dyn])

        def gap(rows: np.ndarray) -> float:
            denom = (rows[:, 2] - rows[:, 0]).mean()
            return float((rows[:, 1] - rows[:, 0]).mean() / denom) if denom > 1e-6 else math.nan

        summary["dynamics_gap_recovered"] = gap(gains)
        summary["dynamics_gap_recovered_ci95"] = list(bootstrap_ci(gains, gap, n_boot))
        summary["dynamics_return_oracle"] = float(gains[:, 2].mean())
    else:
        summary["dynamics_gap_recovered"] = None
        summary["dynamics_gap_recovered_ci95"] = [None, None]
    return summary


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bar charts of reach success and returns with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(ax, keys: list[str], labels: list[str], title: str) -> None:
        means, lows, highs = [], [], []
        for key in keys:
            value = summary.get(key)
            ci = summary.get(f"{key}_ci95", [None, None])
            ok = value is not None and ci[0] is not None and math.isfinite(value)
            means.append(value if ok else 0.0)
            lows.append(value - ci[0] if ok else 0.0)
            highs.append(ci[1] - value if ok else 0.0)
        ax.bar(labels, means, yerr=[lows, highs], capsize=4, color="tab:blue", alpha=0.8)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)

    gap_value = summary.get("dynamics_gap_recovered") or math.nan
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4))
    bars(
        ax1,
        ["reach_success_pre", "reach_success_post1", "reach_success_post3"],
        ["pre", "1 step", "3 steps"],
        "reach success (held-out)",
    )
    ax1.set_ylim(0, 1.05)
    bars(
        ax2,
        [
            "reach_return_pre",
            "reach_return_post1",
            "reach_return_post3",
            "finetune_return_post1",
            "scratch_return_post1",
        ],
        ["MAML pre", "MAML 1 step", "MAML 3 steps", "fine-tune 1", "scratch 1"],
        "reach return (held-out)",
    )
    bars(
        ax3,
        ["dynamics_return_pre", "dynamics_return_post1", "dynamics_return_post3"],
        ["pre", "1 step", "3 steps"],
        f"dynamics return (gap recovered {gap_value:.2f})",
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def run_eval(
    meta: PolicyBundle,
    multitask: PolicyBundle | None,
    cfg: EvalConfig,
    out: Path,
    env_name: str = "arm",
    robot: str = DEFAULT_ROBOT,
    backend: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """The whole protocol; writes eval.json and eval.png; returns the summary.

    ``backend="ray"`` runs the episodes of all tasks in ``cfg.workers`` Ray actors (the
    per-task oracle's small PPO runs stay in-process).
    """
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    task_source = make_task_source(env_name, ["reach", "dynamics"], [1.0, 1.0], robot)
    n_tasks = cfg.n_reach + cfg.n_dynamics
    env = make_env(
        env_name,
        n_tasks * cfg.eval_episodes,
        cfg.workers,
        backend=backend,
        ray_address=ray_address,
        robot=robot,
    )
    results: list[TaskResult] = []
    per_lr: dict[str, dict[float, list[float]]] = {}
    try:
        evaluator = Evaluator(env, cfg)
        for seed in cfg.seeds:
            tasks = task_source.sample(cfg.n_reach, "test", 7919 * seed + 1, family="reach")
            tasks += task_source.sample(cfg.n_dynamics, "test", 7919 * seed + 2, family="dynamics")
            families = [task_source.family_of(t) for t in tasks]
            seed_results, baselines = evaluate_seed(
                evaluator,
                meta,
                multitask,
                tasks,
                families,
                [task_source.to_json(t) for t in tasks],
                seed,
            )
            for name, by_lr in baselines.items():
                for lr, values in by_lr.items():
                    per_lr.setdefault(name, {}).setdefault(lr, []).extend(
                        v for v, fam in zip(values, families, strict=True) if fam == "reach"
                    )
            for result, task in zip(seed_results, tasks, strict=True):
                if result.family == "dynamics":
                    trained = oracle_return(meta, task, task_source, cfg, seed, env_name, robot)
                    adapted = max(
                        result.returns["post1"], result.returns["post3"], result.returns["pre"]
                    )
                    result.returns["oracle_ppo"] = trained
                    result.returns["oracle"] = max(trained, adapted)
            results.extend(seed_results)
            print(
                f"maml-ros-eval: seed {seed} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr
            )
    finally:
        env.close()
    best_lr = {
        name: max(by_lr, key=lambda lr: float(np.mean(by_lr[lr]))) for name, by_lr in per_lr.items()
    }
    summary = summarize(results, best_lr, cfg.bootstrap)
    report = {
        "summary": summary,
        "baseline_best_lr": best_lr,
        "baseline_lr_grid_reach_return": {
            name: {f"{lr:g}": float(np.mean(v)) for lr, v in by_lr.items()}
            for name, by_lr in per_lr.items()
        },
        "protocol": dataclasses.asdict(cfg),
        "policy": {"version": meta.version, "run_id": meta.run_id, "metadata": meta.metadata},
        "multitask_policy": None if multitask is None else multitask.metadata.get("iteration"),
        "tasks": [dataclasses.asdict(r) for r in results],
        "wall_s": time.monotonic() - t0,
    }
    atomic_write_bytes(
        out / "eval.json", (json.dumps(report, indent=1, default=float) + "\n").encode()
    )
    plot(summary, out / "eval.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="maml-ros-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="meta-policy checkpoint (default: the shipped model)")
    parser.add_argument(
        "--multitask", help="multi-task baseline checkpoint (default: shipped, if any)"
    )
    parser.add_argument("--out", default="out/eval", help="output folder")
    parser.add_argument("--quick", action="store_true", help="smoke-test sized protocol")
    parser.add_argument("--k", type=int, help="adaptation episodes per step (default 20)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    parser.add_argument(
        "--workers", type=int, help="sim worker processes or Ray actors (default 2)"
    )
    parser.add_argument("--env", default="arm", choices=["arm", "point"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--robot",
        default=DEFAULT_ROBOT,
        choices=robot_names(),
        help=f"robot description (only {DEFAULT_ROBOT} has a shipped model)",
    )
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    check_backend_arguments(parser, args)
    torch.set_num_threads(1)
    cfg = EvalConfig.quick() if args.quick else EvalConfig()
    for name, value in (("k", args.k), ("workers", args.workers)):
        if value is not None:
            if value < 1:
                parser.error(f"--{name} must be >= 1")
            cfg = dataclasses.replace(cfg, **{name: value})
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be >= 1")
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.robot != DEFAULT_ROBOT and not args.policy:
        message = no_shipped_model_message(args.robot, "maml-ros-eval")
        print(f"{message} as --policy (EVAL_ARGS=--policy=...)", file=sys.stderr)
        return 2
    try:
        meta = load_bundle(args.policy or find_shipped_model())
        mismatch = policy_mismatch(meta.metadata, args.robot, get_robot(args.robot).joint_names)
        if args.env == "arm" and mismatch:
            raise CheckpointError(f"{args.policy or 'the shipped model'}: {mismatch} (--robot)")
        multitask = None
        if args.robot != DEFAULT_ROBOT and not args.multitask:
            pass  # no shipped baseline for this robot: skip fine-tuning
        elif args.multitask:
            multitask = load_bundle(args.multitask)
        else:
            try:
                multitask = load_bundle(find_shipped_model(SHIPPED_MULTITASK_MODEL))
            except FileNotFoundError:
                print(
                    "maml-ros-eval: no multi-task baseline found; skipping fine-tuning",
                    file=sys.stderr,
                )
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"maml-ros-eval: {exc}", file=sys.stderr)
        return 2
    summary = run_eval(
        meta,
        multitask,
        cfg,
        Path(args.out),
        env_name=args.env,
        robot=args.robot,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    line = {}
    for key in SUMMARY_KEYS:
        line[key] = summary.get(key)
        line[f"{key}_ci95"] = summary.get(f"{key}_ci95")
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
