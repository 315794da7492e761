#!/usr/bin/env python
"""Sinusoid few-shot regression benchmark (Finn et al. 2017 set-up) for maml_ros.meta.

Meta-trains MAML and Meta-SGD at 5, 10 and 20 shots (1-40-40-1 ReLU net, meta-batch 25,
one inner step at alpha=0.01, Adam 1e-3, K-shot support and query), evaluates each on 600
held-out tasks with 100 query points after 1 and 10 inner steps, and measures meta-iterations/s
of maml_ros's meta-loss (the batched-MLP fast path meta_train uses, and the generic vmapped
one) against per-task loops on the same CPU, one thread, interleaved: the reference loop, a
plain autograd loop, and learn2learn's way (a per-task copy of the model); the headline
``speedup_vs_per_task_loop`` is the fast path's rate over the last one's.

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
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree, not an install

from maml_ros.meta import MLP, InnerConfig, meta_loss, meta_loss_loop, mlp_mse_meta_loss
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


def clone_module(module: nn.Module, params: dict[str, torch.Tensor], prefix: str = "") -> nn.Module:
    """learn2learn's ``clone_module``: a copy of ``module`` whose parameters are differentiable
    clones (here of the tensors in ``params``, the leaves the optimiser updates)."""
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = {k: params[prefix + k].clone() for k in module._parameters}
    clone._buffers = dict(module._buffers)
    clone._modules = {
        name: clone_module(child, params, f"{prefix}{name}.")
        for name, child in module._modules.items()
    }
    return clone


def update_module(module: nn.Module, updates: dict[nn.Module, dict[str, torch.Tensor]]) -> None:
    """learn2learn's ``update_module``: ``p <- p + update`` in every (sub)module, in place."""
    for name in module._parameters:
        module._parameters[name] = module._parameters[name] + updates[module][name]
    for child in module._modules.values():
        update_module(child, updates)


def per_task_copy_loop(model, params, support, query, cfg):
    """The meta-loss as learn2learn's MAML computes it (``MAML.clone()`` then ``adapt()`` per
    task): a per-task copy of the model, ``autograd.grad(create_graph=True)``, an update of
    the copy's parameters, its forward on the query set; a Python loop over tasks."""
    losses = []
    for i in range(support[0].shape[0]):
        learner = clone_module(model, params)
        inner = F.mse_loss(learner(support[0][i]), support[1][i])
        owners = [(m, n) for m in learner.modules() for n in m._parameters]
        grads = torch.autograd.grad(
            inner, [m._parameters[n] for m, n in owners], create_graph=not cfg.first_order
        )
        updates: dict[nn.Module, dict[str, torch.Tensor]] = {m: {} for m, _ in owners}
        for (m, n), g in zip(owners, grads, strict=True):
            updates[m][n] = -cfg.lr * g
        update_module(learner, updates)
        losses.append(F.mse_loss(learner(query[0][i]), query[1][i]))
    return torch.stack(losses).mean()


def measure_speed(rounds: int, fast_iters: int, loop_iters: int) -> dict[str, float]:
    """Meta-iterations/s (sample, meta-loss, backward, Adam step) of each path, interleaved.

    MAML, 10 shots, meta-batch 25, one second-order inner step, float32, one thread:
    maml_ros's closed-form batched-MLP ``mlp_mse_meta_loss`` (what ``meta_train`` runs), the
    generic vmapped ``meta_loss``, its reference ``meta_loss_loop``, a plain per-task
    autograd loop, and the per-task model copy learn2learn uses. Their meta-gradients on one
    meta-batch are compared first (max |difference| to the per-task copy's).
    """
    model, params = make_sine_model(seed=123)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    loss_fn = mse_loss_fn(model)
    mlp = MLP.from_sequential(model)
    generator = torch.Generator().manual_seed(123)
    cfg = InnerConfig()

    paths = {
        "mlp": lambda s, q: mlp_mse_meta_loss(mlp, params, s, q, cfg),
        "vmap": lambda s, q: meta_loss(loss_fn, loss_fn, params, s, q, cfg),
        "loop": lambda s, q: meta_loss_loop(loss_fn, loss_fn, params, s, q, cfg),
        "plain_autograd_loop": lambda s, q: plain_autograd_loop(
            loss_fn, loss_fn, params, s, q, cfg
        ),
        "per_task_loop": lambda s, q: per_task_copy_loop(model, params, s, q, cfg),
    }
    tasks = SineTasks.sample(25, generator)
    support, query = tasks.points(10, generator), tasks.points(10, generator)
    grads = {
        name: torch.autograd.grad(path(support, query), list(params.values()))
        for name, path in paths.items()
    }
    reference = grads["per_task_loop"]
    grad_diff = {
        name: max(float((a - b).abs().max()) for a, b in zip(g, reference, strict=True))
        for name, g in grads.items()
    }

    def rate(path, iterations: int) -> tuple[float, float]:
        """Iterations per second of wall time and of this thread's CPU time."""
        start, start_cpu = time.perf_counter(), time.thread_time()
        for _ in range(iterations):
            tasks = SineTasks.sample(25, generator)
            support, query = tasks.points(10, generator), tasks.points(10, generator)
            loss = path(support, query)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        wall, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
        return iterations / wall, iterations / cpu

    iterations = {"mlp": fast_iters, "vmap": fast_iters // 2}
    for path in paths.values():
        rate(path, 2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in paths}
    cpu_rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            wall, cpu = rate(path, iterations.get(name, loop_iters))
            rates[name].append(wall)
            cpu_rates[name].append(cpu)
    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_rates.items()}
    return {
        "vmap_meta_it_per_s": median["vmap"],
        "loop_meta_it_per_s": median["loop"],
        "plain_autograd_loop_meta_it_per_s": median["plain_autograd_loop"],
        "vmap_speedup_vs_loop": median["vmap"] / median["loop"],
        "vmap_speedup_vs_plain_autograd_loop": median["vmap"] / median["plain_autograd_loop"],
        "mlp_meta_it_per_s": median["mlp"],
        "per_task_loop_meta_it_per_s": median["per_task_loop"],
        "speedup_vs_per_task_loop": median["mlp"] / median["per_task_loop"],
        "mlp_speedup_vs_plain_autograd_loop": median["mlp"] / median["plain_autograd_loop"],
        "mlp_speedup_vs_vmap": median["mlp"] / median["vmap"],
        "vmap_speedup_vs_per_task_loop": median["vmap"] / median["per_task_loop"],
        "meta_grad_max_abs_diff_vs_per_task_loop": max(
            v for k, v in grad_diff.items() if k != "per_task_loop"
        ),
        # The same by thread CPU time (the machine is shared: its load inflates wall time).
        "mlp_meta_it_per_thread_s": cpu_median["mlp"],
        "per_task_loop_meta_it_per_thread_s": cpu_median["per_task_loop"],
        "speedup_vs_per_task_loop_thread_time": cpu_median["mlp"] / cpu_median["per_task_loop"],
        "speed_rounds": rounds,
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

    speed = measure_speed(*((3, 100, 5) if args.quick else (7, 300, 30)))
    print(
        f"speed: batched MLP {speed['mlp_meta_it_per_s']:.1f} it/s, per-task model copy "
        f"(learn2learn's way) {speed['per_task_loop_meta_it_per_s']:.1f} it/s "
        f"(speed-up {speed['speedup_vs_per_task_loop']:.2f}x), "
        f"vmapped {speed['vmap_meta_it_per_s']:.1f} it/s, "
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
