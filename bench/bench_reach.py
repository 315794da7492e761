"""Where one adaptation step sends the arm: step length against goal distance, and lateral error.

For held-out reach goals: K exploration rollouts of the meta-policy, one inner step (the
on-robot :func:`adapt_policy`), then one deterministic episode of the adapted policy, recording
the end effector (validation goals by default: this bench is a development tool, and choices
made with it must not see the test split). The displacement from the home pose is split along
the home-to-goal direction ("along") and across it ("lateral"). A step that knows the goal's
distance has an along/distance slope near 1; a step of fixed length has a slope near 0. The
last printed line is JSON.

    python bench/bench_reach.py [--checkpoint F] [--goals 60] [--k 20] [--seed 7]
        [--split validation|test]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import emit_json, machine_info, shipped_bundle

from maml_ros.rl.envs import make_env, make_task_source
from maml_ros.rl.evaluate import EvalConfig, Evaluator
from maml_ros.rl.policy import numpy_policy
from maml_ros.sim.arm_env import ArmEnv
from maml_ros.sim.task import HOME_EE


def end_effector_path(arm: ArmEnv, bundle, task) -> np.ndarray:
    """End-effector positions ``[T, 3]`` of one deterministic episode of ``bundle`` on ``task``."""
    policy = numpy_policy(bundle)
    obs, _ = arm.reset(seed=0, options={"task": task})
    path = []
    for _ in range(arm.horizon):
        obs, _, _, _, info = arm.step(policy.mean(obs))
        path.append(info["ee_pos"])
    return np.array(path)


def geometry(path: np.ndarray, goal: np.ndarray, home: np.ndarray) -> dict[str, float]:
    """Goal distance, closest approach, and the final displacement along / across the goal."""
    distance = float(np.linalg.norm(goal - home))
    direction = (goal - home) / distance
    final = path[-1] - home
    along = float(final @ direction)
    return {
        "goal_distance": distance,
        "closest": float(np.linalg.norm(path - goal, axis=1).min()),
        "along": along,
        "lateral": float(np.linalg.norm(final - along * direction)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="policy bundle (default: shipped)")
    parser.add_argument("--goals", type=int, default=60)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    args = parser.parse_args()
    if args.goals < 3 or args.k < 1:
        parser.error("need --goals >= 3 and --k >= 1")

    bundle, source = shipped_bundle(args.checkpoint)
    tasks = make_task_source("arm", ["reach"], [1.0]).sample(
        args.goals, args.split, args.seed, "reach"
    )
    env = make_env("arm", min(100, args.goals * args.k), args.workers)
    try:  # the exploring episodes and the step of `make eval`'s post1
        evaluator = Evaluator(env, EvalConfig(k=args.k))
        explore = evaluator.run_episodes([bundle] * len(tasks), tasks, args.k, args.seed, True)
        adapted = evaluator.adapt_all([bundle] * len(tasks), explore)
    finally:
        env.close()
    arm = ArmEnv(reset_noise=0.0)
    home = np.array(HOME_EE)
    try:
        rows = [
            geometry(end_effector_path(arm, policy, task), np.array(task.goal), home)
            for policy, task in zip(adapted, tasks, strict=True)
        ]
    finally:
        arm.close()
    distance = np.array([r["goal_distance"] for r in rows])
    along = np.array([r["along"] for r in rows])
    closest = np.array([r["closest"] for r in rows])
    for r in sorted(rows, key=lambda r: r["goal_distance"]):
        print("  ".join(f"{k} {100 * v:5.1f} cm" for k, v in r.items()))
    summary = {
        "bench": "reach",
        **machine_info(),
        "checkpoint": source,
        "goals": args.goals,
        "split": args.split,
        "k": args.k,
        "success_post1": float((closest < arm.success_threshold).mean()),
        "closest_cm_median": float(100 * np.median(closest)),
        "goal_distance_cm_median": float(100 * np.median(distance)),
        "along_cm_median": float(100 * np.median(along)),
        "lateral_cm_median": float(100 * np.median([r["lateral"] for r in rows])),
        "along_vs_distance_slope": float(np.polyfit(distance, along, 1)[0]),
        "along_vs_distance_corr": float(np.corrcoef(distance, along)[0, 1]),
    }
    emit_json(summary)


if __name__ == "__main__":
    main()
