"""``maml-ros-train``: meta-train the arm policy (and the multi-task baseline) from a YAML config.

Writes into ``--out``: ``config.yaml`` (resolved), ``tb/`` (TensorBoard scalars),
``metrics.jsonl``, ``policy_latest.safetensors`` / ``policy_best.safetensors`` (bundles with
JSON metadata in the header, also mirrored to ``.json`` files), ``state.safetensors`` (theta,
Meta-SGD lrs, normalisation and Adam state for ``--resume``; no pickle),
``learning_curve.png``, and with ``pretrain.iterations > 0`` the multi-task baseline
``multitask_policy_best.safetensors`` (and the rest, prefixed ``multitask_``). Checkpoints
record the episodes and minutes of training behind them. ``--baseline multitask|fomaml`` trains
a baseline alone with the episodes of a meta-trained checkpoint (``--budget-of``, default the
robot's shipped model), for ``maml-ros-eval``'s same-budget comparison. Every file is written
atomically (temp file + os.replace).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import yaml

from maml_ros.rl.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    find_shipped_model,
    load_bundle,
    read_regular_file,
    read_safetensors,
    save_bundle,
)
from maml_ros.rl.config import ConfigError, TrainConfig, config_from_dict, load_config
from maml_ros.rl.envs import BACKENDS, BatchEnv, TaskSource, make_env, make_task_source
from maml_ros.rl.trainer import MetaTrainer, smoothed
from maml_ros.runtime.robots import shipped_model_name

STATE_MAX_BYTES = 1 << 30
"""Largest resumable state file read (bytes)."""
EnvFactory = Callable[[TrainConfig], tuple[BatchEnv, TaskSource]]
SCALARS = (
    "pre_return",
    "post_return",
    "pre_success",
    "post_success",
    "surrogate_before",
    "kl",
    "grad_norm",
    "log_std",
    "ratio_dev",
    "time_iteration",
    "meta_sgd_lr_mean",
)


def default_env_factory(
    cfg: TrainConfig, backend: str = "local", ray_address: str | None = None
) -> tuple[BatchEnv, TaskSource]:
    """The env and task source named by the config, on ``backend`` (``local`` or ``ray``)."""
    env = make_env(
        cfg.env.name,
        cfg.env.num_envs,
        cfg.env.workers,
        cfg.env.horizon,
        backend,
        ray_address,
        robot=cfg.env.robot,
    )
    tasks = make_task_source(cfg.env.name, cfg.env.families, cfg.env.family_weights, cfg.env.robot)
    return env, tasks


def backend_env_factory(backend: str, ray_address: str | None = None) -> EnvFactory:
    """An :data:`EnvFactory` that builds the config's env on ``backend``."""
    return lambda cfg: default_env_factory(cfg, backend, ray_address)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--ray-address`` and ``--workers`` (shared by train and eval)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="where the arm's envs run: local worker processes, or Ray actors (pip install "
        "-r requirements-ray.txt)",
    )
    parser.add_argument(
        "--ray-address",
        help="with --backend ray: join this Ray cluster ('auto': the one `ray start` runs "
        "here; default: start a local Ray)",
    )


def check_backend_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject --ray-address without --backend ray, and a missing ray package, early."""
    if args.ray_address is not None and args.backend != "ray":
        parser.error("--ray-address needs --backend ray")
    if args.backend == "ray":
        from maml_ros.sim.ray_env import import_ray

        try:
            import_ray()
        except ImportError as exc:
            parser.exit(2, f"{parser.prog}: {exc}\n")


def git_commit() -> str:
    """The repository's HEAD commit, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def plot_learning_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Pre- and post-update return (and success) per iteration, to a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    fig, (ax_ret, ax_succ) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, label, color in (
        ("pre_return", "pre-update", "tab:blue"),
        ("post_return", "post-update (1 step)", "tab:orange"),
    ):
        values = [h[key] for h in history]
        ax_ret.plot(its, values, color=color, alpha=0.3)
        smooth = [smoothed(values[: i + 1], 10) for i in range(len(values))]
        ax_ret.plot(its, smooth, color=color, label=label)
    for key, label, color in (
        ("pre_success", "pre-update", "tab:blue"),
        ("post_success", "post-update", "tab:orange"),
    ):
        values = [h[key] for h in history]
        smooth = [smoothed(values[: i + 1], 10) for i in range(len(values))]
        ax_succ.plot(its, smooth, color=color, label=label)
    ax_ret.set_ylabel("mean episode return")
    ax_ret.set_title(title)
    ax_ret.legend()
    ax_succ.set_ylabel("success rate (10-it mean)")
    ax_succ.set_xlabel("meta-iteration")
    ax_succ.set_ylim(-0.02, 1.02)
    ax_succ.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


class Run:
    """One training phase (meta or multitask) with its files under ``out``."""

    def __init__(
        self,
        trainer: MetaTrainer,
        out: Path,
        prefix: str,
        iterations: int,
        max_minutes: float | None,
        common_meta: dict[str, Any],
    ) -> None:
        self.trainer = trainer
        self.out = out
        self.prefix = prefix
        self.iterations = iterations
        self.max_minutes = max_minutes
        self.common_meta = common_meta
        self.best_score = -math.inf

    @property
    def state_path(self) -> Path:
        return self.out / f"{self.prefix}state.safetensors"

    def resume(self) -> bool:
        """Load saved state if there is any; True when resumed."""
        if not self.state_path.exists():
            return False
        data = read_regular_file(self.state_path, STATE_MAX_BYTES)
        try:
            tensors, metadata = read_safetensors(data)
            self.trainer.load_state(tensors, metadata)
            self.best_score = float(metadata.get("best_score", "-inf"))
        except (CheckpointError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot resume from {self.state_path}: {type(exc).__name__}: {exc}"
            ) from exc
        return True

    def _metadata(self, extra: dict[str, Any]) -> dict[str, Any]:
        hist = self.trainer.history
        return {
            **self.common_meta,
            "iteration": self.trainer.iteration,
            "episodes": int(sum(h.get("episodes", 0.0) for h in hist)),
            "minutes": sum(h["time_iteration"] for h in hist) / 60,
            "pre_return_recent": smoothed([h["pre_return"] for h in hist], 10),
            "post_return_recent": smoothed([h["post_return"] for h in hist], 10),
            **extra,
        }

    def save(self) -> None:
        """Bundle(s), resumable state and the learning curve."""
        trainer = self.trainer
        hist = trainer.history
        key = "post_return" if trainer.adapts else "pre_return"
        score = smoothed([h[key] for h in hist], 10)
        run_id = self.common_meta.get("run_id", "")
        latest = trainer.bundle(self._metadata({"kind": "latest"}), run_id=run_id)
        save_bundle(self.out / f"{self.prefix}policy_latest.safetensors", latest)
        _write_json(self.out / f"{self.prefix}policy_latest.json", latest.metadata)
        if trainer.cfg.keep_checkpoints:
            kept = self.out / "checkpoints" / f"{self.prefix}policy_it{trainer.iteration:04d}"
            kept.parent.mkdir(exist_ok=True)
            save_bundle(kept.with_suffix(".safetensors"), latest)
            _write_json(kept.with_suffix(".json"), latest.metadata)
        if math.isfinite(score) and score > self.best_score:
            self.best_score = score
            best = trainer.bundle(self._metadata({"kind": "best", "score": score}), run_id=run_id)
            save_bundle(self.out / f"{self.prefix}policy_best.safetensors", best)
            _write_json(self.out / f"{self.prefix}policy_best.json", best.metadata)
        tensors, metadata = trainer.state_tensors()
        metadata["best_score"] = repr(self.best_score)
        atomic_write_bytes(self.state_path, safetensors.torch.save(tensors, metadata=metadata))
        if hist:
            title = "ProMP meta-training" if trainer.adapts else "multi-task pretraining"
            plot_learning_curve(hist, self.out / f"{self.prefix}learning_curve.png", title)

    def run(self, writer: Any, show_progress: bool) -> None:
        """Iterate until ``iterations`` or the time budget; checkpoint every N."""
        from tqdm import tqdm

        trainer = self.trainer
        every = trainer.cfg.checkpoint_every
        start = time.monotonic()
        saved_at = trainer.iteration
        bar = tqdm(
            total=self.iterations,
            initial=trainer.iteration,
            desc=self.prefix.rstrip("_") or self.common_meta.get("algo", "meta"),
            disable=not show_progress,
            dynamic_ncols=True,
        )
        with (self.out / f"{self.prefix}metrics.jsonl").open("a") as log:
            while trainer.iteration < self.iterations:
                metrics = trainer.step()
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                for name in SCALARS:
                    if name in metrics:
                        writer.add_scalar(f"{self.prefix}{name}", metrics[name], trainer.iteration)
                bar.update(1)
                bar.set_postfix(
                    pre=f"{metrics['pre_return']:.1f}",
                    post=f"{metrics['post_return']:.1f}",
                    succ=f"{metrics['post_success']:.2f}",
                    s_it=f"{metrics['time_iteration']:.1f}",
                )
                elapsed_min = (time.monotonic() - start) / 60
                out_of_time = self.max_minutes is not None and elapsed_min >= self.max_minutes
                if trainer.iteration % every == 0 or out_of_time:
                    self.save()
                    saved_at = trainer.iteration
                if out_of_time:
                    bar.write(
                        f"{self.prefix or 'meta '}time budget of {self.max_minutes} min reached"
                    )
                    break
        bar.close()
        if saved_at != trainer.iteration or not self.state_path.exists():
            self.save()


BASELINES = ("multitask", "fomaml")
"""``maml-ros-train --baseline``: a baseline trained alone with a meta-trained checkpoint's
budget: ``multitask`` (PPO on the same training tasks, no adaptation: the fine-tuning start
and the domain-randomised robust policy) or ``fomaml`` (first-order MAML)."""
BUDGET_SLACK = 1.1
"""A baseline's time cap: this times the budget's minutes, or one minute more if that is larger
(its episodes are matched exactly; the cap only stops a run much slower than the reference)."""


def episodes_per_iteration(cfg: TrainConfig, algo: str) -> int:
    """Episodes one iteration samples: K per task of the meta-batch, before and (``promp``)
    after the update."""
    waves = 1 + cfg.outer.rounds if algo == "promp" else 1
    return cfg.outer.meta_batch * cfg.outer.rollouts_per_task * waves


def training_budget(metadata: dict[str, Any]) -> tuple[int, float, bool]:
    """The episodes and minutes of training behind a checkpoint and whether both were measured.

    Checkpoints record ``episodes`` and ``minutes`` (the summed iteration times); for one from
    before they did, the episodes are its iteration times what an iteration samples (exact) and
    the minutes its phase's time budget (an upper bound: ``False``)."""
    if "episodes" in metadata and "minutes" in metadata:
        return int(metadata["episodes"]), float(metadata["minutes"]), True
    try:
        cfg = config_from_dict(metadata["config"])
        algo, iteration = str(metadata["algo"]), int(metadata["iteration"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"the checkpoint records no training budget: {exc}") from exc
    pretrain_phase = algo == "multitask" and cfg.outer.algo != "multitask"
    minutes = cfg.pretrain.max_minutes if pretrain_phase else cfg.max_minutes
    if minutes is None:
        raise CheckpointError("the checkpoint records neither its minutes nor a time budget")
    algo = "promp" if algo == "fomaml" else algo
    return iteration * episodes_per_iteration(cfg, algo), float(minutes), False


def baseline_config(cfg: TrainConfig, baseline: str, episodes: int, minutes: float) -> TrainConfig:
    """``cfg`` turned into a ``baseline`` run of ``episodes`` episodes (time cap: ``minutes``
    and :data:`BUDGET_SLACK`), with no multi-task phase after it."""
    if baseline not in BASELINES:
        raise ConfigError(f"--baseline must be one of {BASELINES}, got {baseline!r}")
    algo = "multitask" if baseline == "multitask" else "promp"
    inner = dataclasses.replace(
        cfg.inner, first_order=baseline == "fomaml" or cfg.inner.first_order
    )
    return dataclasses.replace(
        cfg,
        iterations=max(1, math.ceil(episodes / episodes_per_iteration(cfg, algo))),
        max_minutes=max(minutes * BUDGET_SLACK, minutes + 1.0),
        inner=inner,
        outer=dataclasses.replace(
            cfg.outer, algo=algo, rounds=cfg.outer.rounds if algo == "promp" else 1
        ),
        pretrain=dataclasses.replace(cfg.pretrain, iterations=0),
    ).validate()


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _robot_metadata(cfg: TrainConfig) -> dict[str, Any]:
    """The robot a policy drives and its joint order (the nodes check both)."""
    if cfg.env.name != "arm":
        return {}
    from maml_ros.runtime.robots import get_robot

    robot = get_robot(cfg.env.robot)
    return {"robot": robot.name, "joint_names": list(robot.joint_names)}


def train(
    cfg: TrainConfig,
    out: Path,
    resume: bool = False,
    env_factory: EnvFactory = default_env_factory,
    show_progress: bool = True,
    baseline: str = "",
    obs_normalization: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Run the configured training; returns a summary (also written to ``summary.json``).
    ``baseline``: the name the run's checkpoints carry as their ``algo`` (see
    :func:`baseline_config`); ``obs_normalization``: fixed (mean, std) instead of measuring
    them (a baseline takes the meta-policy's, so that both see the same inputs)."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    if not resume and (out / "state.safetensors").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another --out")
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    commit = git_commit()
    common = {
        "config": cfg.to_dict(),
        "git_commit": commit,
        "task_families": list(cfg.env.families),
        "family_weights": list(cfg.env.family_weights),
        "env": cfg.env.name,
        **_robot_metadata(cfg),
        "run_id": f"train-{commit[:8]}-seed{cfg.seed}{f'-{baseline}' if baseline else ''}",
    }
    algo = baseline or cfg.outer.algo
    env, tasks = env_factory(cfg)
    writer = SummaryWriter(str(out / "tb"))
    summary: dict[str, Any] = {"out": str(out)}
    t0 = time.monotonic()
    try:
        meta = MetaTrainer(cfg, env, tasks)
        if obs_normalization is not None:
            meta.set_obs_normalization(*obs_normalization)
        meta_run = Run(meta, out, "", cfg.iterations, cfg.max_minutes, {**common, "algo": algo})
        if resume and meta_run.resume():
            print(f"resumed at iteration {meta.iteration}", file=sys.stderr)
        meta_run.run(writer, show_progress)
        summary["meta"] = _phase_summary(meta, time.monotonic() - t0)
        if cfg.pretrain.iterations > 0:
            t1 = time.monotonic()
            mt_cfg = dataclasses.replace(
                cfg, outer=dataclasses.replace(cfg.outer, algo="multitask")
            )
            multitask = MetaTrainer(mt_cfg, env, tasks)
            # Same observation normalisation as the meta policy: a fair fine-tuning comparison.
            multitask.set_obs_normalization(
                meta.policy.obs_mean.clone(), meta.policy.obs_std.clone()
            )
            mt_run = Run(
                multitask,
                out,
                "multitask_",
                cfg.pretrain.iterations,
                cfg.pretrain.max_minutes,
                {**common, "algo": "multitask"},
            )
            if resume and mt_run.resume():
                print(f"multitask resumed at iteration {multitask.iteration}", file=sys.stderr)
            mt_run.run(writer, show_progress)
            summary["multitask"] = _phase_summary(multitask, time.monotonic() - t1)
    finally:
        writer.close()
        env.close()
    summary["wall_s"] = time.monotonic() - t0
    _write_json(out / "summary.json", summary)
    return summary


def _phase_summary(trainer: MetaTrainer, wall_s: float) -> dict[str, float]:
    hist = trainer.history
    times = [h["time_iteration"] for h in hist]
    return {
        "iterations": trainer.iteration,
        "wall_s_this_session": wall_s,
        "mean_iteration_s": float(np.mean(times)) if times else math.nan,
        "pre_return_last10": smoothed([h["pre_return"] for h in hist], 10),
        "post_return_last10": smoothed([h["post_return"] for h in hist], 10),
        "pre_success_last10": smoothed([h["pre_success"] for h in hist], 10),
        "post_success_last10": smoothed([h["post_success"] for h in hist], 10),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="maml-ros-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--out", default="runs/train", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_backend_arguments(parser)
    parser.add_argument(
        "--workers", type=int, help="override env.workers (sim processes or Ray actors)"
    )
    parser.add_argument("--robot", help="override env.robot (a maml_ros.runtime.robots name)")
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        help="train only this baseline, with --budget-of's episodes and minutes",
    )
    parser.add_argument(
        "--budget-of",
        help="with --baseline: the checkpoint whose training budget to match (default: the "
        "robot's shipped meta-trained model)",
    )
    args = parser.parse_args(argv)
    if args.budget_of and not args.baseline:
        parser.error("--budget-of needs --baseline")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    check_backend_arguments(parser, args)
    torch.set_num_threads(args.threads)
    obs_normalization = None
    try:
        cfg = load_config(args.config)
        if args.iterations is not None:
            cfg = dataclasses.replace(cfg, iterations=args.iterations).validate()
        if args.workers is not None:
            env = dataclasses.replace(cfg.env, workers=args.workers)
            cfg = dataclasses.replace(cfg, env=env).validate()
        if args.robot is not None:
            env = dataclasses.replace(cfg.env, robot=args.robot)
            cfg = dataclasses.replace(cfg, env=env).validate()
        if args.baseline:
            budget_of = args.budget_of or find_shipped_model(shipped_model_name(cfg.env.robot))
            reference = load_bundle(budget_of)
            episodes, minutes, _ = training_budget(reference.metadata)
            cfg = baseline_config(cfg, args.baseline, episodes, minutes)
            obs_normalization = (reference.obs_mean, reference.obs_std)
            print(
                f"maml-ros-train: {args.baseline} with the budget of {budget_of}: "
                f"{cfg.iterations} iterations ({episodes} episodes), at most "
                f"{cfg.max_minutes:.1f} min",
                file=sys.stderr,
            )
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"maml-ros-train: {exc}", file=sys.stderr)
        return 2
    try:
        summary = train(
            cfg,
            Path(args.out),
            resume=args.resume,
            env_factory=backend_env_factory(args.backend, args.ray_address),
            show_progress=not args.no_progress,
            baseline=args.baseline or "",
            obs_normalization=obs_normalization,
        )
    except (FileExistsError, CheckpointError) as exc:
        print(f"maml-ros-train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maml-ros-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
