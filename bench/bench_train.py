"""Meta-training throughput of the real trainer (``MetaTrainer.step``) on the default config.

For each core budget (1: in-process ArmEnvs and 1 torch thread; 2: the sim's VecArmEnv with 2
worker processes and 2 torch threads) a fresh trainer with config/train.yaml's sizes (meta
batch 20 x 10 rollouts x horizon 50, hidden 64x64, ProMP with 5 outer epochs, Meta-SGD) fixes
its observation normalisation (not timed), then runs ``--iterations`` meta-iterations.

Reported per setting: env steps/s (pre- and post-update sampling steps over the whole
iteration time, and over the sampling time alone), meta-iterations/min, and the split of an
iteration into sampling and optimisation. The machine is shared with other jobs: treat the
numbers as lower bounds.

    python bench/bench_train.py [--iterations 2] [--cores 1 2] [--config config/train.yaml]

Last line (JSON): ``env_steps_per_s_1core``, ``meta_iters_per_min_1core``,
``projected_full_run_minutes_1core`` (the config's meta-iterations at the measured pace, capped
by its ``max_minutes``; observation normalisation and checkpoints not counted) and the same for
``_2core``, plus ``settings`` with every measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch
from _common import DEFAULT_CONFIG, emit_json, machine_info

from maml_ros.rl.config import load_config
from maml_ros.rl.train import default_env_factory
from maml_ros.rl.trainer import MetaTrainer


def run_setting(config_path: str, cores: int, iterations: int) -> dict[str, Any]:
    """Throughput of ``iterations`` meta-iterations with ``cores`` workers / torch threads."""
    cfg = load_config(config_path)
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, workers=cores))
    torch.set_num_threads(cores)
    env, tasks = default_env_factory(cfg)
    try:
        trainer = MetaTrainer(cfg, env, tasks)
        trainer.init_obs_normalization()
        horizon = int(getattr(env, "horizon", 50))
        samplings = 2 if cfg.outer.algo == "promp" else 1
        steps_per_iter = samplings * cfg.outer.meta_batch * cfg.outer.rollouts_per_task * horizon
        metrics = []
        start = time.perf_counter()
        for i in range(iterations):
            m = trainer.step()
            metrics.append(m)
            print(
                f"  cores={cores} iteration {i}: {m['time_iteration']:.1f} s "
                f"(sampling {m['time_sample_pre'] + m['time_sample_post']:.1f} s, "
                f"optimise {m['time_optimize']:.1f} s)",
                flush=True,
            )
        wall = time.perf_counter() - start
    finally:
        env.close()
    sampling = sum(m["time_sample_pre"] + m["time_sample_post"] for m in metrics)
    optimise = sum(m["time_optimize"] for m in metrics)
    total_steps = steps_per_iter * iterations
    minutes = cfg.iterations * wall / iterations / 60.0  # the config's run at this pace
    time_capped = cfg.max_minutes is not None and minutes > cfg.max_minutes
    return {
        "cores": cores,
        "workers": cores,
        "torch_threads": cores,
        "iterations": iterations,
        "env_steps_per_iteration": steps_per_iter,
        "env_steps_per_s": round(total_steps / wall, 1),
        "env_steps_per_s_sampling_only": round(total_steps / sampling, 1),
        "meta_iters_per_min": round(60.0 * iterations / wall, 3),
        "s_per_iteration": round(wall / iterations, 2),
        "sampling_s_per_iteration": round(sampling / iterations, 2),
        "optimise_s_per_iteration": round(optimise / iterations, 2),
        "meta_batch": cfg.outer.meta_batch,
        "rollouts_per_task": cfg.outer.rollouts_per_task,
        "horizon": horizon,
        "hidden": list(cfg.policy.hidden),
        "outer_epochs": cfg.outer.epochs,
        "config_iterations": cfg.iterations,
        "projected_full_run_minutes": round(cfg.max_minutes if time_capped else minutes, 2),
        "time_capped": time_capped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2, help="meta-iterations per setting")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core budgets")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config (YAML)")
    args = parser.parse_args()
    if args.iterations < 1 or any(c < 1 for c in args.cores):
        parser.error("--iterations and --cores must be positive")
    settings = []
    for cores in args.cores:
        print(f"setting: {cores} core(s) ({cores} env worker(s), {cores} torch thread(s))")
        s = run_setting(args.config, cores, args.iterations)
        settings.append(s)
        print(
            f"cores={cores}: {s['env_steps_per_s']:.0f} env steps/s "
            f"({s['env_steps_per_s_sampling_only']:.0f} while sampling), "
            f"{s['meta_iters_per_min']:.2f} meta-iterations/min "
            f"({s['s_per_iteration']:.1f} s each; shared machine)",
            flush=True,
        )
    result: dict[str, Any] = {"bench": "train", **machine_info(), "config": args.config}
    for s in settings:
        result[f"env_steps_per_s_{s['cores']}core"] = s["env_steps_per_s"]
        result[f"meta_iters_per_min_{s['cores']}core"] = s["meta_iters_per_min"]
        result[f"projected_full_run_minutes_{s['cores']}core"] = s["projected_full_run_minutes"]
    result["settings"] = settings
    emit_json(result)


if __name__ == "__main__":
    main()
