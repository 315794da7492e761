#!/usr/bin/env python
"""Sinusoid few-shot regression benchmark (Finn et al. 2017 set-up) for maml_ros.meta.

Meta-trains MAML and Meta-SGD at 5, 10 and 20 shots (1-40-40-1 ReLU net, meta-batch 25,
one inner step at alpha=0.01, Adam 1e-3, K-shot support and query), evaluates each on 600
held-out tasks with 100 query points after 1 and 10 inner steps, and measures meta-iterations/s
of the vmapped meta-loss against the per-task reference loop on the same CPU, one thread.

    python bench/bench_sine.py [--quick] [--iterations N]

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree, not an install

from maml_ros.meta import InnerConfig, meta_loss, meta_loss_loop
from maml_ros.meta.sine import (
    SineTasks,
    SineTrainConfig,
    evaluate,
    make_sine_model,
    meta_train,
    mse_loss_fn,
)

SHOTS = (5, 10, 20)
METHODS = {"maml": False, "metasgd": True}
FULL_ITERATIONS = 10_000
QUICK_ITERATIONS = 150
EVAL_TASKS = 600
EVAL_SEED = 1_000_000  # training seeds are 0..5


def plain_autograd_loop(inner_loss_fn, outer_loss_fn, params, support, query, cfg):
    """Baseline outside maml_ros.meta: per-task loop with torch.autograd.grad(create_graph)."""
    losses = []
    for i in range(support[0].shape[0]):
        inner = inner_loss_fn(params, (support[0][i], support[1][i]))
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        adapted = {k: p - cfg.lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
        losses.append(outer_loss_fn(adapted, (query[0][i], query[1][i])))
    return torch.stack(losses).mean()


def measure_speed(rounds: int, vmapped_iters: int, loop_iters: int) -> dict[str, float]:
    """Meta-iterations/s (sample, meta-loss, backward, Adam step) of each path, interleaved.

    MAML, 10 shots, meta-batch 25, one second-order inner step: the vmapped ``meta_loss``, the
    reference ``meta_loss_loop`` and a plain per-task autograd loop.
    """
    model, params = make_sine_model(seed=123)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    loss_fn = mse_loss_fn(model)
    generator = torch.Generator().manual_seed(123)
    cfg = InnerConfig()

    def rate(path, iterations: int) -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            tasks = SineTasks.sample(25, generator)
            support, query = tasks.points(10, generator), tasks.points(10, generator)
            loss = path(loss_fn, loss_fn, params, support, query, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return iterations / (time.perf_counter() - start)

    paths = {"vmap": meta_loss, "loop": meta_loss_loop, "plain_autograd_loop": plain_autograd_loop}
    for path in paths.values():
        rate(path, 2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            rates[name].append(rate(path, vmapped_iters if name == "vmap" else loop_iters))
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "vmap_meta_it_per_s": median["vmap"],
        "loop_meta_it_per_s": median["loop"],
        "plain_autograd_loop_meta_it_per_s": median["plain_autograd_loop"],
        "vmap_speedup_vs_loop": median["vmap"] / median["loop"],
        "vmap_speedup_vs_plain_autograd_loop": median["vmap"] / median["plain_autograd_loop"],
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: few iterations")
    parser.add_argument(
        "--iterations", type=int, default=None, help="meta-iterations per (method, shots)"
    )
    args = parser.parse_args(argv)
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else FULL_ITERATIONS)
    if iterations < 1:
        parser.error("--iterations must be >= 1")
    torch.set_num_threads(1)
    started = time.perf_counter()

    speed = measure_speed(*((2, 20, 5) if args.quick else (3, 150, 30)))
    print(
        f"speed: vmapped {speed['vmap_meta_it_per_s']:.1f} it/s, "
        f"reference loop {speed['loop_meta_it_per_s']:.1f} it/s "
        f"(speed-up {speed['vmap_speedup_vs_loop']:.2f}x), "
        f"plain autograd loop {speed['plain_autograd_loop_meta_it_per_s']:.1f} it/s "
        f"(speed-up {speed['vmap_speedup_vs_plain_autograd_loop']:.2f}x)",
        flush=True,
    )

    report: dict = {}
    train_seconds = 0.0
    for seed, ((method, meta_sgd), shots) in enumerate(itertools.product(METHODS.items(), SHOTS)):
        model, params = make_sine_model(seed=seed)
        cfg = SineTrainConfig(shots=shots, iterations=iterations, meta_sgd=meta_sgd, seed=seed)
        start = time.perf_counter()
        result = meta_train(model, params, cfg)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        evals = evaluate(
            model, result.params, shots, result.lrs, num_tasks=EVAL_TASKS, seed=EVAL_SEED
        )
        key = f"{method}_mse_{shots}shot"
        for steps, suffix in ((1, ""), (10, "_10step"), (0, "_0step")):
            r = evals[steps]
            report[key + suffix] = _finite_or_none(r.mse)
            report[key + suffix + "_ci95"] = _finite_or_none(r.ci95)
            if r.diverged:
                report[key + suffix + "_diverged_tasks"] = r.diverged
        tail = statistics.fmean(result.losses[-max(1, iterations // 20) :])
        print(
            f"{method} {shots}-shot: {iterations} it in {seconds:.0f} s "
            f"({iterations / seconds:.0f} it/s), final meta-loss {tail:.3f}; held-out MSE "
            + ", ".join(
                f"{s} step(s) {r.mse:.3f}±{r.ci95:.3f}"
                + (f" ({r.diverged} diverged)" if r.diverged else "")
                for s, r in evals.items()
            ),
            flush=True,
        )

    report.update(speed)
    report.update(
        {
            "meta_iterations": iterations,
            "meta_batch": 25,
            "eval_tasks": EVAL_TASKS,
            "eval_query_points": 100,
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - started,
            "torch_threads": torch.get_num_threads(),
            "quick": args.quick,
        }
    )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
