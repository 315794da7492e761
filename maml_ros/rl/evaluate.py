"""``maml-ros-eval``: Meta-World-style few-shot evaluation of the shipped policy on held-out tasks.

Per seed, held-out tasks (``--split``: ``test`` by default, ``validation`` for every choice
made while developing, ``out_of_range`` for tasks beyond the training ranges; see
:data:`maml_ros.sim.task.SPLITS`) of every task family the checkpoint was trained on
(its ``task_families`` metadata; the registry of :mod:`maml_ros.sim.task` says what each
family reports); per task:

- **pre**: ``eval_episodes`` deterministic episodes (mean action) of the meta-policy theta;
- **post1**: K exploration episodes with theta, one inner step (:func:`adapt_policy`, the
  on-robot update), then deterministic evaluation episodes;
- **post3**: two more steps, each on K *fresh* episodes of the latest adapted policy (MAML);
- **finetune**: the multi-task pretrained policy (``arm_multitask.safetensors`` from
  ``make train``), K episodes, one plain PG step with the best lr of a grid (its own inner lr
  times ``baseline_lr_factors``, so the grid follows the checkpoint's advantage scale);
- **scratch**: a random-init policy (same architecture and observation normalisation), K
  episodes, one plain PG step with the best lr of the same grid;
- **fomaml**: first-order MAML (``<robot>_fomaml.safetensors`` from ``make baselines``), K
  episodes, one step with the best of the same grid and of its own meta-learned lrs;
- **robust**: the multi-task policy as it is (domain-randomised over the training tasks, no
  update: what most robot teams ship);
- for families declaring the extra metric ``gap_recovered`` (built in: dynamics), an
  independent **oracle**: PPO trained on that task alone from a random init (the same
  architecture and observation normalisation, none of theta's weights), K episodes per
  iteration, until its deterministic return plateaus (no gain above ``oracle_min_gain`` in
  ``oracle_patience`` checks ``oracle_check_every`` iterations apart) or
  ``oracle_max_iterations``; its best checked return is the oracle. Oracle returns are stored
  per task, robot and budget in an oracle cache (``--oracle-cache``; the shipped
  ``models/oracle_returns_<robot>.json``) and reused. ``{family}_gap_recovered`` is the fraction
  of the gap between pre and that oracle closed by one step, and
  ``{family}_return_post1_minus_oracle`` compares the adapted return with it directly.

Per family and stage the summary has ``{family}_{metric}_{stage}`` for the family's metrics;
``pretrain_{episodes,minutes}_{maml,multitask,robust,fomaml}`` say what training each policy
had (:func:`maml_ros.rl.train.training_budget`), ``selection_split`` where the lrs were chosen.
Baseline lrs are picked per baseline as the best mean return on *validation* tasks of the
families with ``baselines`` (built in: reach), the same number per seed as evaluated, and then
applied once to the evaluated split. 95% CIs are percentile bootstraps over tasks (all seeds
pooled). ``maml_minus_{baseline}_return_post1`` (and ``_k<K>``) is the paired comparison: the
mean over the same tasks of MAML's one-step return minus the baseline's, with its own CI, which
task-to-task spread does not widen as it widens the two separate CIs. ``--resummarize`` computes
a stored report's summary anew from its per-task results (no episode run, no split read again);
``--no-oracle`` measures no oracle (quicker validation runs). Writes ``eval.json`` and
``eval.png`` to ``--out``; the last printed line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maml_ros.rl.adapt import adapt_policy
from maml_ros.rl.checkpoint import (
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
from maml_ros.rl.train import add_backend_arguments, check_backend_arguments, training_budget
from maml_ros.rl.trainer import MetaTrainer
from maml_ros.runtime.reader import read_file_bytes
from maml_ros.runtime.robots import (
    DEFAULT_ROBOT,
    get_robot,
    no_shipped_model_message,
    policy_mismatch,
    robot_names,
    shipped_model_name,
)
from maml_ros.sim.task import TaskFamily, family_names, get_family


class EvalError(ValueError):
    """An evaluation that cannot run as asked (a split, a family set, an oracle cache)."""


EVAL_SPLITS = ("validation", "test", "out_of_range")
"""What ``maml-ros-eval --split`` evaluates on (the baselines' lrs are chosen on validation)."""

SUMMARY_KEYS = (
    "reach_success_pre",
    "reach_success_post1",
    "reach_success_post3",
    "reach_return_pre",
    "reach_return_post1",
    "reach_success_post1_k10",
    "finetune_return_post1",
    "fomaml_return_post1",
    "scratch_return_post1",
    "dynamics_gap_recovered",
    "dynamics_return_post1_minus_oracle",
    "robust_return",
)


@dataclass(frozen=True)
class EvalConfig:
    """Protocol sizes."""

    k: int = 20
    eval_episodes: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    n_reach: int = 20
    n_dynamics: int = 3
    n_other: int = 3
    baseline_lr_factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    oracle_max_iterations: int = 100
    oracle_check_every: int = 10
    oracle_patience: int = 2
    oracle_min_gain: float = 0.05
    workers: int = 2
    bootstrap: int = 5000
    split: str = "test"
    k_curve: tuple[int, ...] = (5, 10, 20, 40)
    out_of_range: bool = True
    """With ``split`` test, also MAML's steps on the same number of out-of-range tasks, for
    ``{family}_success_ood`` (no baselines, no K curve)."""
    extra_metrics: bool = True
    """False: no family's extra metric (the dynamics tasks' oracle) is measured."""

    @classmethod
    def quick(cls) -> EvalConfig:
        """A smoke-test sized protocol (seconds, not minutes)."""
        return cls(
            k=4,
            seeds=(0,),
            n_reach=2,
            n_dynamics=1,
            n_other=1,
            baseline_lr_factors=(1.0,),
            oracle_max_iterations=2,
            oracle_check_every=1,
            oracle_patience=1,
            k_curve=(2, 4),
            bootstrap=200,
        )

    def tasks_per_seed(self, family: str) -> int:
        """Held-out tasks of ``family`` per seed: ``n_<family>`` where the config has one
        (``n_reach``, ``n_dynamics``), else ``n_other``."""
        return int(getattr(self, f"n_{family}", self.n_other))


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


LEARNED_LR = "learned"
"""A baseline's lr candidate that keeps its own meta-learned (Meta-SGD) lrs."""
LR = float | str
"""An lr candidate: a scalar inner lr, or :data:`LEARNED_LR`."""


def _with_lr(bundle: PolicyBundle, lr: LR) -> PolicyBundle:
    if lr == LEARNED_LR:
        return bundle.replace(inner=dataclasses.replace(bundle.inner, steps=1))
    return bundle.replace(inner=dataclasses.replace(bundle.inner, lr=lr, steps=1), lrs=None)


def lr_label(lr: LR) -> str:
    """``lr`` as it appears in result keys and reports."""
    return lr if isinstance(lr, str) else f"{lr:g}"


def random_init_bundle(meta: PolicyBundle, seed: int) -> PolicyBundle:
    """A fresh policy with the meta-policy's spec, normalisation and PG settings."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(meta.spec)
    return meta.replace(params=policy.params(), lrs=None, metadata={"kind": "scratch"})


@dataclass(frozen=True)
class OracleResult:
    """An oracle's best checked return, the iterations it trained and whether it plateaued."""

    ret: float
    iterations: int
    plateaued: bool


def oracle_return(
    meta: PolicyBundle,
    task: Any,
    task_source: Any,
    cfg: EvalConfig,
    seed: int,
    env_name: str,
    robot: str = DEFAULT_ROBOT,
) -> OracleResult:
    """PPO trained on ``task`` alone from a random init (multi-task trainer, one task) until
    its deterministic return plateaus; its best checked return."""

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
    env = make_env(env_name, cfg.k, cfg.workers, robot=robot)
    try:
        trainer = MetaTrainer(train_cfg, env, OneTask())
        trainer.set_obs_normalization(meta.obs_mean, meta.obs_std)
        start = random_init_bundle(meta, seed)
        with torch.no_grad():
            for name, value in trainer.params.items():
                value.copy_(start.params[name])
        best, since_best, iterations = -math.inf, 0, 0
        while iterations < cfg.oracle_max_iterations and since_best < cfg.oracle_patience:
            for _ in range(cfg.oracle_check_every):
                trainer.step()
            iterations += cfg.oracle_check_every
            batch = sample_rollouts(
                env, trainer.policy, trainer.bundle().params, [task], cfg.k, seed, explore=False
            )
            ret = float(batch.returns.mean())
            since_best = 0 if ret > best + cfg.oracle_min_gain else since_best + 1
            best = max(best, ret)
        return OracleResult(best, iterations, since_best >= cfg.oracle_patience)
    finally:
        env.close()


def oracle_cache_name(robot: str) -> str:
    """The file name under ``models/`` of ``robot``'s stored oracle returns."""
    return f"oracle_returns_{robot}.json"


class OracleCache:
    """Oracle returns by task, robot and budget, in a JSON file (read at start, rewritten
    atomically after each new entry); a missing file is an empty cache."""

    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(read_file_bytes(path, 16 << 20))
            except ValueError as exc:  # CheckpointError (unreadable) or invalid JSON
                raise EvalError(f"oracle cache {path}: {exc}") from exc
            if not isinstance(data, dict) or data.get("version") != self.VERSION:
                raise EvalError(f"{path}: not an oracle cache of version {self.VERSION}")
            entries = data.get("entries")
            if not isinstance(entries, dict) or not all(map(self._valid_entry, entries.values())):
                raise EvalError(
                    f"{path}: entries must map keys to "
                    "{'return': number, 'iterations': int, 'plateaued': bool}"
                )
            self.entries = entries

    @staticmethod
    def _valid_entry(entry: Any) -> bool:
        return (
            isinstance(entry, dict)
            and isinstance(entry.get("return"), (int, float))
            and not isinstance(entry.get("return"), bool)
            and isinstance(entry.get("iterations"), int)
            and not isinstance(entry.get("iterations"), bool)
            and isinstance(entry.get("plateaued"), bool)
        )

    @staticmethod
    def key(task_json: str, robot: str, env_name: str, cfg: EvalConfig) -> str:
        budget = (cfg.k, cfg.oracle_max_iterations, cfg.oracle_check_every, cfg.oracle_patience)
        return json.dumps([env_name, robot, task_json, budget, cfg.oracle_min_gain])

    def get(self, key: str) -> OracleResult | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        return OracleResult(
            float(entry["return"]), int(entry["iterations"]), bool(entry["plateaued"])
        )

    def put(self, key: str, result: OracleResult) -> None:
        self.entries[key] = {
            "return": result.ret,
            "iterations": result.iterations,
            "plateaued": result.plateaued,
        }
        if self.path is not None:
            text = json.dumps({"version": self.VERSION, "entries": self.entries}, indent=1)
            atomic_write_bytes(self.path, (text + "\n").encode())


BASELINES = ("finetune", "fomaml", "scratch")
"""The adapted baselines: the multi-task policy fine-tuned, first-order MAML, random init."""


def baseline_starts(
    meta: PolicyBundle, trained: dict[str, PolicyBundle | None], seed: int
) -> dict[str, PolicyBundle]:
    """The baselines' starting policies: ``scratch`` (random init) and those of ``trained``
    (``finetune``: the multi-task policy, ``fomaml``) that are there."""
    starts = {"scratch": random_init_bundle(meta, seed)}
    starts.update({name: bundle for name, bundle in trained.items() if bundle is not None})
    return starts


def lr_grid(start: PolicyBundle, cfg: EvalConfig) -> list[LR]:
    """A baseline's lr candidates: its own inner lr times ``cfg.baseline_lr_factors``, and its
    meta-learned lrs (:data:`LEARNED_LR`) when it has them."""
    grid: list[LR] = [round(start.inner.lr * f, 12) for f in cfg.baseline_lr_factors]
    return grid + ([LEARNED_LR] if start.lrs is not None else [])


def evaluate_seed(
    evaluator: Evaluator,
    meta: PolicyBundle,
    trained: dict[str, PolicyBundle | None],
    tasks: list[Any],
    families: list[str],
    task_json: list[str],
    seed: int,
    baseline_lrs: dict[str, LR] | None = None,
) -> tuple[list[TaskResult], dict[str, dict[LR, list[float]]]]:
    """The protocol on one seed's tasks; also per-lr baseline returns.

    ``baseline_lrs`` None: the lr-selection pass (the baselines' whole lr grid, no MAML
    stages); else the evaluation pass: MAML's stages and each baseline at its chosen lr.
    """
    cfg = evaluator.cfg
    n = len(tasks)
    rng_seed = 1_000_003 * (seed + 1)
    returns: dict[str, np.ndarray] = {}
    success: dict[str, np.ndarray] = {}

    def record(name: str, batch: RolloutBatch) -> None:
        returns[name] = batch.returns.mean(1).numpy()
        success[name] = batch.success.float().mean(1).numpy()

    def adapted_once(start: PolicyBundle, k: int, seed: int) -> list[PolicyBundle]:
        explore = evaluator.run_episodes([start] * n, tasks, k, seed, explore=True)
        return evaluator.adapt_all([start] * n, explore)

    starts = baseline_starts(meta, trained, seed)
    if baseline_lrs is not None:
        thetas = [meta] * n
        record("pre", evaluator.evaluate(thetas, tasks, rng_seed + 1))
        current = thetas
        for step in range(1, 4):
            explore = evaluator.run_episodes(
                current, tasks, cfg.k, rng_seed + 10 + step, explore=True
            )
            current = evaluator.adapt_all(current, explore)
            record(f"post{step}", evaluator.evaluate(current, tasks, rng_seed + 20 + step))
        if "finetune" in starts:  # the multi-task policy as it is: domain-randomised, no update
            record("robust", evaluator.evaluate([starts["finetune"]] * n, tasks, rng_seed + 60))
        for k in (k for k in cfg.k_curve if k != cfg.k):
            adapted = adapted_once(meta, k, rng_seed + 100 + k)
            record(f"post1_k{k}", evaluator.evaluate(adapted, tasks, rng_seed + 300 + k))
            for name, start in starts.items():
                if name in baseline_lrs:
                    start = _with_lr(start, baseline_lrs[name])
                    adapted = adapted_once(start, k, rng_seed + 200 + k)
                    batch = evaluator.evaluate(adapted, tasks, rng_seed + 400 + k)
                    record(f"{name}_k{k}", batch)
    baselines: dict[str, dict[LR, list[float]]] = {}
    for name, start in starts.items():
        if baseline_lrs is not None and name not in baseline_lrs:
            continue
        explore = evaluator.run_episodes([start] * n, tasks, cfg.k, rng_seed + 40, explore=True)
        baselines[name] = {}
        if baseline_lrs is None:
            lrs = lr_grid(start, cfg)
        else:
            lrs = [baseline_lrs[name]] if name in baseline_lrs else []
        for lr in lrs:
            adapted = evaluator.adapt_all([_with_lr(start, lr)] * n, explore)
            record(f"{name}_lr{lr_label(lr)}", evaluator.evaluate(adapted, tasks, rng_seed + 50))
            baselines[name][lr] = returns[f"{name}_lr{lr_label(lr)}"].tolist()
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


STAGES = ("pre", "post1", "post2", "post3")
STAGE_METRICS: dict[str, Callable[[TaskResult, str], float]] = {
    "return": lambda r, stage: r.returns[stage],
    "success": lambda r, stage: r.success[stage],
}
"""The per-stage metrics a family may name in ``TaskFamily.metrics``."""


class _Summary(dict):
    """The summary being built: ``put`` adds a mean and its 95% CI."""

    def __init__(self, n_boot: int) -> None:
        super().__init__()
        self.n_boot = n_boot

    def put(self, key: str, values: list[float]) -> None:
        arr = np.asarray(values, dtype=np.float64)
        self[key] = float(arr.mean()) if len(arr) else math.nan
        self[f"{key}_ci95"] = list(bootstrap_ci(arr, np.mean, self.n_boot))


@dataclass(frozen=True)
class ExtraMetric:
    """A measurement beyond the per-stage metrics, named by ``TaskFamily.extra_metrics``:
    ``measure`` adds entries to one task's result after the protocol ran (it gets the meta
    policy, the task, the task source, the eval config, the seed, env name, robot and the
    :class:`OracleCache`);
    ``summarize(family, results, summary)`` adds the family's summary keys."""

    measure: Callable[..., None]
    summarize: Callable[[str, list[TaskResult], _Summary], None]


def _measure_oracle(
    result: TaskResult, meta, task, task_source, cfg, seed, env_name, robot, oracles: OracleCache
):
    key = OracleCache.key(task_source.to_json(task), robot, env_name, cfg)
    oracle = oracles.get(key)
    if oracle is None:
        oracle = oracle_return(meta, task, task_source, cfg, seed, env_name, robot)
        oracles.put(key, oracle)
    result.returns["oracle"] = oracle.ret
    result.returns["oracle_iterations"] = oracle.iterations
    result.returns["oracle_plateaued"] = float(oracle.plateaued)


def _summarize_gap(family: str, results: list[TaskResult], summary: _Summary) -> None:
    if not results:
        summary[f"{family}_gap_recovered"] = None
        summary[f"{family}_gap_recovered_ci95"] = [None, None]
        return
    gains = np.array([[r.returns["pre"], r.returns["post1"], r.returns["oracle"]] for r in results])

    def gap(rows: np.ndarray) -> float:
        denom = (rows[:, 2] - rows[:, 0]).mean()
        return float((rows[:, 1] - rows[:, 0]).mean() / denom) if denom > 1e-6 else math.nan

    summary[f"{family}_gap_recovered"] = gap(gains)
    summary[f"{family}_gap_recovered_ci95"] = list(bootstrap_ci(gains, gap, summary.n_boot))
    summary[f"{family}_gap_vs_oracle"] = summary[f"{family}_gap_recovered"]  # the name
    summary[f"{family}_gap_vs_oracle_ci95"] = summary[f"{family}_gap_recovered_ci95"]
    summary.put(f"{family}_return_oracle", list(gains[:, 2]))
    summary.put(f"{family}_return_post1_minus_oracle", list(gains[:, 1] - gains[:, 2]))
    summary[f"{family}_oracle_iterations_max"] = max(
        int(r.returns["oracle_iterations"]) for r in results
    )
    summary[f"{family}_oracle_plateaued"] = sum(r.returns["oracle_plateaued"] for r in results)


EXTRA_METRICS: dict[str, ExtraMetric] = {
    "gap_recovered": ExtraMetric(_measure_oracle, _summarize_gap),
}
"""What a family may name in ``TaskFamily.extra_metrics``."""


def check_family(family: TaskFamily) -> TaskFamily:
    """``family``, or ValueError when it names a metric evaluation does not measure."""
    for metric in family.metrics:
        if metric not in STAGE_METRICS:
            raise ValueError(
                f"family {family.name!r}: unknown metric {metric!r}; "
                f"evaluation measures {sorted(STAGE_METRICS)}"
            )
    for metric in family.extra_metrics:
        if metric not in EXTRA_METRICS:
            raise ValueError(
                f"family {family.name!r}: unknown extra metric {metric!r}; "
                f"evaluation knows {sorted(EXTRA_METRICS)}"
            )
    return family


def curve_k_values(results: list[TaskResult]) -> list[int]:
    """The extra K values of the K curve that every result has (``post1_k<K>`` stages)."""
    ks = [{int(k[len("post1_k") :]) for k in r.returns if k.startswith("post1_k")} for r in results]
    return sorted(set.intersection(*ks)) if ks else []


SUMMARY_ALIASES = {
    "multitask_return_post1": "finetune_return_post1",
    "multitask_success_post1": "finetune_success_post1",
    "robust_return_post1": "robust_return",
    "robust_success_post1": "robust_success",
}
"""Second names of summary keys, by which the evaluation protocol (issue 17) asks for them."""


def summarize(
    results: list[TaskResult],
    best_lr: dict[str, LR],
    n_boot: int,
    families: Sequence[str] | None = None,
    extra_metrics: bool = True,
) -> dict[str, Any]:
    """The headline numbers with 95% CIs, per family (``families``: those of ``results``);
    ``extra_metrics`` False: the families' per-stage metrics only."""
    if families is None:
        families = list(dict.fromkeys(r.family for r in results))
    specs = [check_family(get_family(f)) for f in families]
    by_family = {f.name: [r for r in results if r.family == f.name] for f in specs}
    pool = [r for f in specs if f.baselines for r in by_family[f.name]]
    curve_ks = curve_k_values(results)
    summary = _Summary(n_boot)
    for stage in (*STAGES, *(f"post1_k{k}" for k in curve_ks)):
        for family in specs:
            for metric in family.metrics:
                values = [STAGE_METRICS[metric](r, stage) for r in by_family[family.name]]
                summary.put(f"{family.name}_{metric}_{stage}", values)
    for name in BASELINES:
        if name in best_lr:
            key = f"{name}_lr{lr_label(best_lr[name])}"
            summary.put(f"{name}_return_post1", [r.returns[key] for r in pool])
            summary.put(f"{name}_success_post1", [r.success[key] for r in pool])
            paired = f"maml_minus_{name}_return_post1"  # per task, then the mean: a paired CI
            summary.put(paired, [r.returns["post1"] - r.returns[key] for r in pool])
            for k in curve_ks:
                summary.put(f"{name}_return_post1_k{k}", [r.returns[f"{name}_k{k}"] for r in pool])
                summary.put(f"{name}_success_post1_k{k}", [r.success[f"{name}_k{k}"] for r in pool])
                summary.put(
                    f"{paired}_k{k}",
                    [r.returns[f"post1_k{k}"] - r.returns[f"{name}_k{k}"] for r in pool],
                )
        else:
            for key in (f"{name}_return_post1", f"maml_minus_{name}_return_post1"):
                summary[key], summary[f"{key}_ci95"] = None, [None, None]
    if pool and all("robust" in r.returns for r in pool):
        summary.put("robust_return", [r.returns["robust"] for r in pool])
        summary.put("robust_success", [r.success["robust"] for r in pool])
    for name, source in SUMMARY_ALIASES.items():
        if source in summary:
            summary[name], summary[f"{name}_ci95"] = summary[source], summary[f"{source}_ci95"]
    for family in specs if extra_metrics else ():
        for metric in family.extra_metrics:
            EXTRA_METRICS[metric].summarize(family.name, by_family[family.name], summary)
    return dict(summary)


def add_k_aliases(summary: dict[str, Any], k: int) -> None:
    """Give the one-step keys (``*_post1``) their name as the K = ``k`` point of the K curve."""
    one_step = [key for key in summary if key.endswith("_post1") and not key.startswith("robust_")]
    for key in one_step:
        summary.setdefault(f"{key}_k{k}", summary[key])
        summary.setdefault(f"{key}_k{k}_ci95", summary.get(f"{key}_ci95"))


def resummarize(report: dict[str, Any]) -> dict[str, Any]:
    """The summary of an ``eval.json`` report computed anew from its per-task results, so that
    keys added to :func:`summarize` since it ran are there too; no episode is run, no split read
    again. The bootstrap is seeded, so every key the report had comes out equal."""
    try:
        results = [TaskResult(**row) for row in report["tasks"]]
        best_lr = dict(report["baseline_best_lr"])
        protocol = report["protocol"]
        n_boot, k = int(protocol["bootstrap"]), int(protocol["k"])
        extra_metrics = bool(protocol.get("extra_metrics", True))
        families = [str(f) for f in report["families"]]
        summary = dict(report["summary"])
        if not results:
            raise EvalError("the report has no per-task results")
        new = summarize(results, best_lr, n_boot, families, extra_metrics)
    except (KeyError, TypeError, ValueError) as exc:  # EvalError is a ValueError
        raise EvalError(f"not an eval.json report of maml-ros-eval: {exc!r}") from None
    add_k_aliases(new, k)
    summary.update(new)
    return summary


def out_of_range_keys(summary: dict[str, Any], families: Sequence[str]) -> dict[str, Any]:
    """``{family}_{success,return}_ood`` (and ``_ci95``): the one-step figures of a summary of
    out-of-range tasks."""
    keys = {}
    for family in families:
        for metric in ("success", "return"):
            source = f"{family}_{metric}_post1"
            if source in summary:
                keys[f"{family}_{metric}_ood"] = summary[source]
                keys[f"{family}_{metric}_ood_ci95"] = summary[f"{source}_ci95"]
    return keys


def _save_figure(fig: Any, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` atomically (a temporary file, then a rename) and
    close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def plot(summary: dict[str, Any], path: Path, families: Sequence[str] = ()) -> None:
    """Bar charts of every family's success and returns (baselines beside the baseline
    families') with 95% CI error bars."""
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

    names = list(families or LEGACY_FAMILIES)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(4.3 * (1 + len(names)), 4), squeeze=False)
    stages, labels = list(STAGES), ["pre", "1 step", "2 steps", "3 steps"]
    success = [f"{n}_success_{s}" for n in names for s in stages if f"{n}_success_{s}" in summary]
    bars(axes[0][0], success, [k.replace("_success_", " ") for k in success], "success (held-out)")
    axes[0][0].set_ylim(0, 1.05)
    for ax, name in zip(axes[0][1:], names, strict=True):
        keys, names_ = [f"{name}_return_{s}" for s in stages], list(labels)
        if get_family(name).baselines:
            keys += ["finetune_return_post1", "fomaml_return_post1", "scratch_return_post1"]
            names_ += ["fine-tune 1", "FOMAML 1", "scratch 1"]
        title = f"{name} return (held-out)"
        if f"{name}_gap_recovered" in summary:
            gap = summary[f"{name}_gap_recovered"]
            title = f"{name} return (gap recovered {math.nan if gap is None else gap:.2f})"
        bars(ax, keys, names_, title)
    _save_figure(fig, path)


def plot_curves(
    summary: dict[str, Any], path: Path, k: int, k_curve: Sequence[int], family: str = "reach"
) -> None:
    """``family``'s success against K (one step; MAML and the baselines) and against inner
    steps (K fixed), 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key_of) -> tuple[list[float], list[float], list[float]]:
        means, lows, highs = [], [], []
        for x in xs:
            value = summary.get(key_of(x))
            ci = summary.get(f"{key_of(x)}_ci95") or [None, None]
            ok = value is not None and None not in ci
            means.append(value if ok else math.nan)
            lows.append(ci[0] if ok else math.nan)
            highs.append(ci[1] if ok else math.nan)
        return means, lows, highs

    fig, (by_k, by_steps) = plt.subplots(1, 2, figsize=(10, 4))
    xs = sorted({*k_curve, k})

    def at_k(prefix: str):
        return lambda x: prefix + ("" if x == k else f"_k{x}")

    lines = {
        "MAML (meta-trained θ)": at_k(f"{family}_success_post1"),
        "fine-tune multi-task": at_k("finetune_success_post1"),
        "first-order MAML": at_k("fomaml_success_post1"),
        "scratch": at_k("scratch_success_post1"),
    }
    for label, key_of in lines.items():
        means, lows, highs = series(key_of)
        if all(math.isnan(m) for m in means):
            continue
        by_k.plot(xs, means, marker="o", label=label)
        by_k.fill_between(xs, lows, highs, alpha=0.2)
    flat = (
        ("multi-task, no update (robust)", "robust_success", "tab:red"),
        ("θ, no update", f"{family}_success_pre", "grey"),
    )
    for label, key, color in flat:
        if summary.get(key) is not None:
            by_k.axhline(summary[key], linestyle="--", linewidth=1, color=color, label=label)
    by_k.set(xscale="log", xlabel="K adaptation rollouts (one step)", ylabel=f"{family} success")
    by_k.set_xticks(xs, [str(x) for x in xs])
    by_k.minorticks_off()
    by_k.set_ylim(-0.02, 1.02)
    by_k.legend(fontsize=8)
    xs = [0, 1, 2, 3]
    means, lows, highs = series(lambda x: f"{family}_success_" + ("pre" if x == 0 else f"post{x}"))
    by_steps.errorbar(
        xs,
        means,
        yerr=[np.subtract(means, lows), np.subtract(highs, means)],
        marker="o",
        capsize=4,
    )
    by_steps.set(xlabel=f"inner steps (K = {k} fresh rollouts each)", ylabel=f"{family} success")
    by_steps.set_xticks(xs)
    by_steps.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{family}, held-out tasks, 95% CIs")
    _save_figure(fig, path)


LEGACY_FAMILIES = ("reach", "dynamics")
"""What a checkpoint without ``task_families`` metadata is evaluated on (the protocol before
families were plug-ins)."""


def evaluated_families(meta: PolicyBundle, env_name: str = "arm") -> tuple[str, ...]:
    """The registered families ``meta`` was trained on, in its order; ValueError naming the
    known ones for a family the registry lacks or a metric evaluation does not measure."""
    names = meta.metadata.get("task_families") or list(LEGACY_FAMILIES)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"task_families metadata must be a list of names, got {names!r}")
    for name in names:
        if name not in family_names():
            raise ValueError(
                f"the policy was trained on task family {name!r}, which is not registered; "
                f"known: {list(family_names())} (register it before evaluating)"
            )
        check_family(get_family(name))
    return tuple(dict.fromkeys(names))


def eval_batches(families: Sequence[str]) -> list[list[str]]:
    """``families`` grouped by ``TaskFamily.eval_batch`` (each group shares one batched env)."""
    groups: dict[str, list[str]] = {}
    for name in families:
        groups.setdefault(get_family(name).eval_batch or f"family:{name}", []).append(name)
    return list(groups.values())


def run_eval(
    meta: PolicyBundle,
    multitask: PolicyBundle | None,
    cfg: EvalConfig,
    out: Path,
    env_name: str = "arm",
    robot: str = DEFAULT_ROBOT,
    backend: str = "local",
    ray_address: str | None = None,
    oracle_cache: Path | None = None,
    fomaml: PolicyBundle | None = None,
) -> dict[str, Any]:
    """The whole protocol; writes eval.json and eval.png; returns the summary (oracle returns
    are read from and added to ``oracle_cache``, None: kept in memory). ``multitask`` and
    ``fomaml``: the trained baselines (None: not compared).

    ``backend="ray"`` runs the episodes of all tasks in ``cfg.workers`` Ray actors (the
    per-task oracle's small PPO runs stay in-process).
    """
    t0 = time.monotonic()
    if cfg.split not in EVAL_SPLITS:
        raise EvalError(f"split must be one of {EVAL_SPLITS}, got {cfg.split!r}")
    out.mkdir(parents=True, exist_ok=True)
    families = evaluated_families(meta, env_name)
    task_source = make_task_source(env_name, families, [1.0] * len(families), robot)
    families = tuple(f for f in families if f in task_source.families)
    if cfg.split == "out_of_range":
        families = tuple(f for f in families if task_source.has_out_of_range(f))
    if not families:
        raise EvalError(
            f"the {env_name!r} env samples none of the policy's task families"
            + (" out of range" if cfg.split == "out_of_range" else "")
        )
    results: list[TaskResult] = []
    per_lr: dict[str, dict[LR, list[float]]] = {}
    trained = {"finetune": multitask, "fomaml": fomaml}
    oracles = OracleCache(oracle_cache)
    with ExitStack() as stack:
        groups = []
        batches = [g for g in eval_batches(families) if sum(map(cfg.tasks_per_seed, g))]
        for group in batches:
            n_tasks = sum(cfg.tasks_per_seed(f) for f in group)
            env = make_env(
                env_name,
                n_tasks * cfg.eval_episodes,
                cfg.workers,
                backend=backend,
                ray_address=ray_address,
                robot=robot,
                ray_actor_cpus=1.0 / len(batches),  # the batches take turns: they share CPUs
            )
            stack.callback(env.close)
            groups.append((group, Evaluator(env, cfg)))

        def task_sets(split: str, batches=groups):
            """Per seed and eval batch (of ``batches``): the seed, the batch's families, its
            evaluator and that seed's tasks of ``split``."""
            for seed in cfg.seeds:
                for group, evaluator in batches:
                    tasks = []
                    for family in group:
                        seed_f = 7919 * seed + 1 + family_names().index(family)
                        tasks += task_source.sample(
                            cfg.tasks_per_seed(family), split, seed_f, family=family
                        )
                    yield seed, group, evaluator, tasks

        with_baselines = any(get_family(f).baselines for f in families)
        for seed, _, evaluator, tasks in task_sets("validation") if with_baselines else ():
            task_families = [task_source.family_of(t) for t in tasks]
            _, baselines = evaluate_seed(
                evaluator, meta, trained, tasks, task_families, [""] * len(tasks), seed
            )
            for name, by_lr in baselines.items():
                for lr, values in by_lr.items():
                    per_lr.setdefault(name, {}).setdefault(lr, []).extend(
                        v
                        for v, fam in zip(values, task_families, strict=True)
                        if get_family(fam).baselines
                    )
        best_lr = {
            name: max(by_lr, key=lambda lr: float(np.mean(by_lr[lr])))
            for name, by_lr in per_lr.items()
        }
        print(
            f"maml-ros-eval: baseline lrs {best_lr} ({time.monotonic() - t0:.0f} s)",
            file=sys.stderr,
        )
        for seed, group, evaluator, tasks in task_sets(cfg.split):
            task_families = [task_source.family_of(t) for t in tasks]
            seed_results, _ = evaluate_seed(
                evaluator,
                meta,
                trained,
                tasks,
                task_families,
                [task_source.to_json(t) for t in tasks],
                seed,
                baseline_lrs=best_lr,
            )
            for result, task in zip(seed_results, tasks, strict=True):
                extra = get_family(result.family).extra_metrics if cfg.extra_metrics else ()
                for metric in extra:
                    EXTRA_METRICS[metric].measure(
                        result, meta, task, task_source, cfg, seed, env_name, robot, oracles
                    )
            results.extend(seed_results)
            print(
                f"maml-ros-eval: seed {seed}, {' + '.join(group)} done "
                f"({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
            )
        ood_results: list[TaskResult] = []
        if cfg.split == "test" and cfg.out_of_range:
            ood_batches = [
                (group, Evaluator(evaluator.env, dataclasses.replace(cfg, k_curve=())))
                for group, evaluator in groups
                if all(task_source.has_out_of_range(f) for f in group)
            ]
            for seed, _, evaluator, tasks in task_sets("out_of_range", ood_batches):
                task_families = [task_source.family_of(t) for t in tasks]
                task_json = [task_source.to_json(t) for t in tasks]
                ood_results += evaluate_seed(
                    evaluator, meta, {}, tasks, task_families, task_json, seed, baseline_lrs={}
                )[0]
            if ood_batches:
                print(
                    f"maml-ros-eval: out of range done ({time.monotonic() - t0:.0f} s)",
                    file=sys.stderr,
                )
    summary = summarize(results, best_lr, cfg.bootstrap, families, cfg.extra_metrics)
    if cfg.split == "out_of_range":
        summary.update(out_of_range_keys(summary, families))
    elif ood_results:
        ood_families = list(dict.fromkeys(r.family for r in ood_results))
        ood_summary = summarize(ood_results, {}, cfg.bootstrap, ood_families, extra_metrics=False)
        summary.update(out_of_range_keys(ood_summary, ood_families))
    add_k_aliases(summary, cfg.k)
    budgets = {"maml": meta, "multitask": multitask, "robust": multitask, "fomaml": fomaml}
    for name, bundle in budgets.items():
        if bundle is not None:
            try:
                episodes, minutes, measured = training_budget(bundle.metadata)
            except CheckpointError:  # a hand-made policy: no training on record
                episodes, minutes, measured = None, None, False
            summary[f"pretrain_episodes_{name}"] = episodes
            summary[f"pretrain_minutes_{name}"] = minutes
            summary[f"pretrain_minutes_{name}_measured"] = measured
    summary["selection_split"] = "validation"
    report = {
        "summary": summary,
        "split": cfg.split,
        "families": list(families),
        "baseline_best_lr": best_lr,
        "baseline_lr_grid_validation_return": {
            name: {lr_label(lr): float(np.mean(v)) for lr, v in by_lr.items()}
            for name, by_lr in per_lr.items()
        },
        "protocol": dataclasses.asdict(cfg),
        "policy": {"version": meta.version, "run_id": meta.run_id, "metadata": meta.metadata},
        "multitask_policy": None if multitask is None else multitask.metadata.get("iteration"),
        "fomaml_policy": None if fomaml is None else fomaml.metadata.get("iteration"),
        "tasks": [dataclasses.asdict(r) for r in results],
        "out_of_range_tasks": [dataclasses.asdict(r) for r in ood_results],
        "wall_s": time.monotonic() - t0,
    }
    atomic_write_bytes(
        out / "eval.json", (json.dumps(report, indent=1, default=float) + "\n").encode()
    )
    plot(summary, out / "eval.png", families)
    if "reach" in families and cfg.k_curve:
        plot_curves(summary, out / "eval_curves.png", cfg.k, cfg.k_curve)
    return summary


def _baseline_bundle(path: str | None, robot: str, kind: str, env: str) -> PolicyBundle | None:
    """The ``kind`` baseline: ``path``, else the robot's shipped one (arm), else None (said)."""
    if path:
        bundle = load_bundle(path)
    elif env != "arm":
        return None
    else:
        try:
            bundle = load_bundle(find_shipped_model(shipped_model_name(robot, kind)))
        except FileNotFoundError:
            print(
                f"maml-ros-eval: no {kind} baseline ships for {robot}; not compared",
                file=sys.stderr,
            )
            return None
    return _for_robot(bundle, robot, env, path or f"the shipped {kind} baseline")


def _for_robot(bundle: PolicyBundle, robot: str, env: str, what: str) -> PolicyBundle:
    """``bundle``, or CheckpointError naming ``what`` when it cannot drive the arm ``robot``."""
    mismatch = policy_mismatch(bundle.metadata, robot, get_robot(robot).joint_names)
    if env == "arm" and mismatch:
        raise CheckpointError(f"{what}: {mismatch} (--robot)")
    return bundle


def _print_line(summary: dict[str, Any]) -> None:
    line = {}
    for key in SUMMARY_KEYS:
        line[key] = summary.get(key)
        line[f"{key}_ci95"] = summary.get(f"{key}_ci95")
    print(json.dumps(line))


def _resummarize_main(path: Path, out: Path) -> int:
    try:
        report = json.loads(read_file_bytes(path, 64 << 20))
        if not isinstance(report, dict):
            raise EvalError(f"{path}: not a JSON object")
        report["summary"] = resummarize(report)
    except (OSError, ValueError) as exc:  # EvalError and JSON errors are ValueErrors
        print(f"maml-ros-eval: {path}: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out / "eval.json", (json.dumps(report, indent=1, default=float) + "\n").encode()
    )
    _print_line(report["summary"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="maml-ros-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="meta-policy checkpoint (default: the shipped model)")
    parser.add_argument(
        "--multitask", help="multi-task baseline checkpoint (default: shipped, if any)"
    )
    parser.add_argument(
        "--fomaml", help="first-order MAML baseline checkpoint (default: shipped, if any)"
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
        help="robot description; its shipped models/<robot>_maml.safetensors unless --policy",
    )
    parser.add_argument(
        "--oracle-cache",
        help="JSON file of oracle returns to reuse and extend (default: OUT/oracle_returns.json, "
        "starting from the shipped models/oracle_returns_<robot>.json)",
    )
    parser.add_argument(
        "--k-curve",
        help="comma-separated extra K values of the K curve (default 5,10,20,40; '' for none)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=EVAL_SPLITS,
        help="tasks to evaluate on (default test; validation for development choices)",
    )
    parser.add_argument(
        "--resummarize",
        metavar="REPORT",
        help="run nothing: write REPORT's (an eval.json's) summary computed anew from its "
        "per-task results to --out, with the keys added since it ran",
    )
    parser.add_argument(
        "--no-oracle",
        action="store_true",
        help="measure no family's extra metric (the dynamics tasks' oracle and gap): a "
        "quicker run for development choices",
    )
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    check_backend_arguments(parser, args)
    if args.resummarize:
        return _resummarize_main(Path(args.resummarize), Path(args.out))
    torch.set_num_threads(1)
    cfg = EvalConfig.quick() if args.quick else EvalConfig()
    cfg = dataclasses.replace(cfg, split=args.split, extra_metrics=not args.no_oracle)
    if args.k_curve is not None:
        try:
            k_curve = tuple(int(v) for v in args.k_curve.split(",") if v.strip())
        except ValueError:
            parser.error(f"--k-curve must be comma-separated integers, got {args.k_curve!r}")
        if any(v < 1 for v in k_curve):
            parser.error("--k-curve values must be >= 1")
        cfg = dataclasses.replace(cfg, k_curve=k_curve)
    for name, value in (("k", args.k), ("workers", args.workers)):
        if value is not None:
            if value < 1:
                parser.error(f"--{name} must be >= 1")
            cfg = dataclasses.replace(cfg, **{name: value})
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be >= 1")
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    try:
        shipped = None if args.policy else find_shipped_model(shipped_model_name(args.robot))
    except FileNotFoundError:
        message = no_shipped_model_message(args.robot, "maml-ros-eval")
        print(f"{message} as --policy (EVAL_ARGS=--policy=...)", file=sys.stderr)
        return 2
    try:
        meta = _for_robot(
            load_bundle(args.policy or shipped),
            args.robot,
            args.env,
            args.policy or "the shipped model",
        )
        evaluated_families(meta, args.env)
        multitask = _baseline_bundle(args.multitask, args.robot, "multitask", args.env)
        fomaml = _baseline_bundle(args.fomaml, args.robot, "fomaml", args.env)
        oracle_cache = Path(args.oracle_cache) if args.oracle_cache else None
        if oracle_cache is None:
            oracle_cache = Path(args.out) / "oracle_returns.json"
            oracle_cache.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shipped_oracles = find_shipped_model(oracle_cache_name(args.robot))
                if not oracle_cache.exists():
                    atomic_write_bytes(oracle_cache, read_file_bytes(shipped_oracles, 16 << 20))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"maml-ros-eval: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_eval(
            meta,
            multitask,
            cfg,
            Path(args.out),
            env_name=args.env,
            robot=args.robot,
            backend=args.backend,
            ray_address=args.ray_address,
            oracle_cache=oracle_cache,
            fomaml=fomaml,
        )
    except (CheckpointError, FileNotFoundError, EvalError) as exc:
        print(f"maml-ros-eval: {exc}", file=sys.stderr)
        return 2
    _print_line(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
