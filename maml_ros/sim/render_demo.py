"""Render the simulated arm reaching a held-out goal (the README's picture).

    python -m maml_ros.sim.render_demo --png docs/img/arm.png [--gif out/reach.gif]

Apart from :mod:`maml_ros.sim.render` so that rendering needs no env, oracle or task module
(``ArmEnv.render`` uses it; this demo uses them all).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maml_ros.sim.arm_env import ArmEnv
from maml_ros.sim.oracle import oracle_action
from maml_ros.sim.render import render_rgb, save_gif, save_png
from maml_ros.sim.task import HOME_EE, TaskSpec, TaskSpecError, sample_tasks


def render_reach(
    task: TaskSpec | None = None,
    steps: int = 30,
    width: int = 480,
    height: int = 360,
    seed: int = 0,
) -> list[np.ndarray]:
    """Frames of the oracle controller reaching for ``task``'s goal (first frame = reset).

    The default task is the held-out reach goal farthest from home among the first 20.
    """
    if task is None:
        candidates = sample_tasks("reach", 20, "test", seed)
        task = max(candidates, key=lambda t: float(np.linalg.norm(np.subtract(t.goal, HOME_EE))))
    env = ArmEnv(task)
    try:
        env.reset(seed=seed)
        frames = [render_rgb(env, width, height)]
        for _ in range(steps):
            env.step(oracle_action(env))
            frames.append(render_rgb(env, width, height))
    finally:
        env.close()
    return frames


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m maml_ros.sim.render_demo --png docs/img/arm.png [--gif out/reach.gif]``."""
    parser = argparse.ArgumentParser(description="Render the iiwa reaching a held-out goal.")
    parser.add_argument("--png", type=Path, help="one frame as PNG")
    parser.add_argument("--png-step", type=int, default=5, help="which frame goes in the PNG")
    parser.add_argument("--gif", type=Path, help="all frames as GIF (needs Pillow)")
    parser.add_argument("--task", help="task JSON (default: the first held-out reach goal)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args(argv)
    if args.png is None and args.gif is None:
        parser.error("give --png and/or --gif")
    if args.steps < 0:
        parser.error("--steps must be >= 0")
    try:
        task = TaskSpec.from_json(args.task) if args.task else None
    except TaskSpecError as exc:
        parser.error(f"--task: {exc}")
    frames = render_reach(task, args.steps, args.width, args.height)
    if args.png:
        print(save_png(args.png, frames[min(args.png_step, len(frames) - 1)]))
    if args.gif:
        print(save_gif(args.gif, frames, fps=20))


if __name__ == "__main__":
    main()
