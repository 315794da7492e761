"""A quick screen of checkpoints on validation reach goals: one-step success and return at each K.

For every checkpoint: ``--goals`` validation reach goals, ``--draws`` independent sets of K
exploration rollouts on each, one inner step (the on-robot :func:`adapt_policy`, through
``Evaluator.adapt_all``) per set, then one deterministic episode of each adapted policy. Every
checkpoint sees the same goals and the same sampling seeds. A development tool for choosing
among the checkpoints a run keeps (``keep_checkpoints: true``): it reads the validation split
only, and a choice it suggests is confirmed with ``maml-ros-eval --split validation`` before
anything ships. Its few goals make it optimistic (see docs/benchmarks.md, fourteenth session).
The last printed line is JSON.

    python bench/bench_screen.py CHECKPOINT [CHECKPOINT ...] [--goals 12] [--draws 8]
        [--k 10 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import emit_json, machine_info

from maml_ros.rl.checkpoint import CheckpointError, load_bundle
from maml_ros.rl.envs import make_env, make_task_source
from maml_ros.rl.evaluate import EvalConfig, Evaluator
from maml_ros.rl.sampling import RolloutBatch
from maml_ros.runtime.robots import DEFAULT_ROBOT

GOAL_SEED = 4242
"""The validation goals' seed (the eval's validation tasks use other seeds)."""


def screen(evaluator: Evaluator, bundle, tasks: list, draws: int, k: int) -> dict[str, float]:
    """Mean success and return over ``tasks`` x ``draws`` one-step adaptations from K rollouts."""
    explore = evaluator.run_episodes([bundle] * len(tasks), tasks, k * draws, 7 + k, explore=True)
    # Each task's k * draws episodes as ``draws`` tasks of k episodes (task-major, as ``each``).
    n = len(tasks) * draws

    def per_draw(x):
        return x.reshape(n, k, *x.shape[2:])

    draws_as_tasks = RolloutBatch(
        per_draw(explore.obs),
        per_draw(explore.actions),
        per_draw(explore.rewards),
        per_draw(explore.mask),
        per_draw(explore.success),
    )
    adapted = evaluator.adapt_all([bundle] * n, draws_as_tasks)
    each = [task for task in tasks for _ in range(draws)]
    batch = evaluator.run_episodes(adapted, each, 1, 3, explore=False)
    return {
        f"success_k{k}": round(float(batch.success.float().mean()), 4),
        f"return_k{k}": round(float(batch.returns.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--goals", type=int, default=12)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for name in ("goals", "draws", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if any(k < 1 for k in args.k):
        parser.error("--k values must be >= 1")
    try:
        bundles = [load_bundle(path) for path in args.checkpoints]
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    robots = {b.metadata.get("robot", DEFAULT_ROBOT) for b in bundles}
    if len(robots) != 1:
        parser.error(f"the checkpoints are for different robots: {sorted(robots)}")
    robot = robots.pop()
    torch.set_num_threads(1)
    tasks = make_task_source("arm", ["reach"], [1.0], robot).sample(
        args.goals, "validation", GOAL_SEED, family="reach"
    )
    env = make_env("arm", args.goals * args.draws, args.workers, robot=robot)
    evaluator = Evaluator(env, EvalConfig())
    rows = {}
    try:
        for path, bundle in zip(args.checkpoints, bundles, strict=True):
            t0 = time.monotonic()
            row = {key: bundle.metadata.get(key) for key in ("iteration", "episodes")}
            for k in args.k:
                row.update(screen(evaluator, bundle, tasks, args.draws, k))
            rows[str(path)] = row
            print(path, row, f"{time.monotonic() - t0:.0f} s", flush=True)
    finally:
        env.close()
    emit_json(
        {
            "split": "validation",
            "goals": args.goals,
            "draws": args.draws,
            "robot": robot,
            "checkpoints": rows,
            **machine_info(),
        }
    )


if __name__ == "__main__":
    main()
