"""The Ray backend against the local one: meta-iteration time, meta-gradient, scaling.

config/train.yaml's sizes (meta batch 20 x 10 rollouts x horizon 50 = 400 episodes an
iteration, pre- and post-update; 200 envs; 64x64 ProMP, 5 outer epochs, Meta-SGD) on this
machine, ``--threads`` torch threads in the learner (1, as ``make train``).

For every worker count from 1 to ``--workers-max`` (default: the cores), a local trainer
(VecArmEnv worker processes; in-process ArmEnvs for 1 worker) and a Ray trainer (Ray actors on
a local Ray) with the same seed fix their observation normalisation (not timed), then run
``--iterations`` meta-iterations, interleaved (local, Ray, Ray, local, ...) so that both see
the same load on a shared machine; they do the same work (the same episodes). With 1 worker
(one physics world per env, ~7 GB for 200 envs) one backend runs after the other instead.

Reported: seconds per meta-iteration (median) for each backend, ``ray_overhead_vs_local`` =
ray / local - 1 at the largest worker count (median of the per-iteration ratios; target
<= 0.10), ``meta_grad_max_rel_diff_vs_local`` = max |g_ray - g_local| / max |g_local| of the
first epoch's meta-gradient, over all iterations and worker counts (target <= 1e-5),
episodes per second per worker, the learner's share of an iteration (everything but the
time spent waiting on env.reset / env.step: inference, GAE, the inner step, the outer epochs)
and, from it, an iteration time extrapolated to 64 workers, the resident memory and CPU time of
every Ray actor (CPU share: its CPU seconds over the wall time while the trainers iterate),
and the scaling table.

    python bench/bench_ray.py [--iterations 3] [--workers-max 2] [--threads 1]

Last line: JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any

import torch
from _common import DEFAULT_CONFIG, emit_json, machine_info

from maml_ros.rl.config import TrainConfig, load_config
from maml_ros.rl.train import default_env_factory
from maml_ros.rl.trainer import MetaTrainer


class TimedEnv:
    """A BatchEnv proxy that adds up the wall time spent inside reset and step."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.seconds = 0.0
        for name in ("num_envs", "obs_dim", "act_dim", "horizon"):
            setattr(self, name, getattr(env, name))

    def reset(self, tasks, seeds):
        t0 = time.perf_counter()
        try:
            return self.env.reset(tasks, seeds)
        finally:
            self.seconds += time.perf_counter() - t0

    def step(self, actions):
        t0 = time.perf_counter()
        try:
            return self.env.step(actions)
        finally:
            self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.env.close()


def make_trainer(cfg: TrainConfig, backend: str) -> tuple[MetaTrainer, TimedEnv]:
    env, tasks = default_env_factory(cfg, backend)
    timed = TimedEnv(env)
    trainer = MetaTrainer(cfg, timed, tasks)
    trainer.init_obs_normalization()
    return trainer, timed


def proc_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_workers(cfg: TrainConfig, workers: int, iterations: int) -> dict[str, Any]:
    """Alternate local and Ray iterations with ``workers`` workers; per-iteration figures."""
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, workers=workers))
    episodes = 2 * cfg.outer.meta_batch * cfg.outer.rollouts_per_task
    rows: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    grads: dict[str, list[torch.Tensor]] = {"local": [], "ray": []}
    start_s: dict[str, float] = {}
    actors: list[dict[str, Any]] = []
    local_worker_rss: list[int] = []
    live: dict[str, tuple[MetaTrainer, TimedEnv]] = {}

    def start(name: str) -> None:
        nonlocal actors_at_start, ray_started
        t0 = time.perf_counter()
        live[name] = make_trainer(cfg, name)
        start_s[name] = time.perf_counter() - t0
        if name == "ray":  # CPU time of the actors from here (not building their envs)
            actors_at_start = live[name][1].env.vec.actor_info()
            ray_started = time.perf_counter()

    def stop(name: str) -> None:
        nonlocal actors, local_worker_rss
        _, timed = live.pop(name)
        try:
            if name == "ray":
                actors = timed.env.vec.actor_info()
                wall = time.perf_counter() - ray_started
                for a, first in zip(actors, actors_at_start, strict=True):
                    a["cpu_share_while_running"] = (a["cpu_s"] - first["cpu_s"]) / wall
            else:
                vec = getattr(timed.env, "vec", None)
                if vec is not None:
                    local_worker_rss = [proc_rss(p.pid) for p in vec._procs]
        finally:
            timed.close()

    def iterate(name: str, i: int) -> None:
        trainer, timed = live[name]
        before = timed.seconds
        t0 = time.perf_counter()
        m = trainer.step()
        wall = time.perf_counter() - t0
        env_s = timed.seconds - before
        rows[name].append(
            {"s": wall, "env_s": env_s, "learner_s": wall - env_s, "optimise_s": m["time_optimize"]}
        )
        assert trainer.last_meta_grad is not None
        grads[name].append(trainer.last_meta_grad)
        print(
            f"  workers={workers} iteration {i} {name}: {wall:.2f} s "
            f"(waiting on the sim {env_s:.2f} s, learner {wall - env_s:.2f} s)",
            flush=True,
        )

    # Both alive, iterations interleaved A B B A ..., unless one world per env (1 worker: ~35 MB
    # an env, 7 GB for 200) would hold two such sets at once: then one backend after the other.
    together = workers > 1
    ray_started = 0.0
    actors_at_start: list[dict[str, Any]] = []
    try:
        if together:
            start("local")
            start("ray")
            for i in range(iterations):
                for name in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
                    iterate(name, i)
            stop("ray")
            stop("local")
        else:
            for name in ("local", "ray"):
                start(name)
                for i in range(iterations):
                    iterate(name, i)
                stop(name)
    finally:
        for name in list(live):
            live.pop(name)[1].close()
    grad_diffs = [
        float((g_ray - g_local).abs().max() / g_local.abs().max())
        for g_local, g_ray in zip(grads["local"], grads["ray"], strict=True)
    ]
    result_order = "interleaved ABBA" if together else "one backend after the other"

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    ratios = [b["s"] / a["s"] for a, b in zip(rows["local"], rows["ray"], strict=True)]
    result: dict[str, Any] = {"workers": workers, "episodes_per_iteration": episodes}
    for name in ("local", "ray"):
        s = med(name, "s")
        result[name] = {
            "s_per_iteration": round(s, 3),
            "env_s_per_iteration": round(med(name, "env_s"), 3),
            "learner_s_per_iteration": round(med(name, "learner_s"), 3),
            "optimise_s_per_iteration": round(med(name, "optimise_s"), 3),
            "learner_share": round(med(name, "learner_s") / s, 3),
            "episodes_per_s": round(episodes / s, 2),
            "episodes_per_s_per_worker": round(episodes / s / workers, 2),
            "episodes_per_s_per_worker_sim_only": round(episodes / med(name, "env_s") / workers, 2),
            "iterations_s": [round(r["s"], 3) for r in rows[name]],
        }
    result["order"] = result_order
    for name in ("local", "ray"):
        result[name]["start_s"] = round(start_s[name], 2)
    result["ray_overhead_vs_local"] = round(statistics.median(ratios) - 1.0, 4)
    result["ray_overhead_per_iteration"] = [round(x - 1.0, 4) for x in ratios]
    result["meta_grad_max_rel_diff_vs_local"] = max(grad_diffs)
    result["ray_actors"] = [
        {
            "rss_mb": round(a["rss_bytes"] / 2**20, 1),
            "n_envs": a["n_envs"],
            "cpu_s_total": round(a["cpu_s"], 2),
            "cpu_share_while_running": round(a["cpu_share_while_running"], 3),
        }
        for a in actors
    ]
    result["local_worker_rss_mb"] = [round(b / 2**20, 1) for b in local_worker_rss]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="meta-iterations per backend")
    parser.add_argument("--workers-max", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the learner")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config (YAML)")
    parser.add_argument("--target-workers", type=int, default=64, help="extrapolate to this")
    args = parser.parse_args()
    if args.iterations < 1 or args.workers_max < 1 or args.threads < 1:
        parser.error("--iterations, --workers-max and --threads must be positive")
    torch.set_num_threads(args.threads)
    from maml_ros.sim.ray_env import init_ray

    t0 = time.perf_counter()
    init_ray(None, max(os.cpu_count() or 1, args.workers_max))
    ray_init_s = time.perf_counter() - t0
    import ray

    cfg = load_config(args.config)
    table = []
    try:
        for workers in range(1, args.workers_max + 1):
            print(f"workers={workers}: local and Ray, alternating", flush=True)
            table.append(run_workers(cfg, workers, args.iterations))
            row = table[-1]
            print(
                f"workers={workers}: local {row['local']['s_per_iteration']:.2f} s, "
                f"Ray {row['ray']['s_per_iteration']:.2f} s an iteration "
                f"(overhead {100 * row['ray_overhead_vs_local']:+.1f}%, meta-gradient max rel "
                f"diff {row['meta_grad_max_rel_diff_vs_local']:.2g})",
                flush=True,
            )
    finally:
        ray.shutdown()
    top = table[-1]
    one = table[0]
    # Paper extrapolation: the learner's time stays, the sim's time divides by the workers.
    learner = top["ray"]["learner_s_per_iteration"]
    sim_work = top["ray"]["env_s_per_iteration"] * top["workers"]
    target = args.target_workers
    extrapolated = learner + sim_work / target
    # Lock-step calls an iteration (pre + post sampling, a reset and `horizon` steps a wave) and
    # what each costs on Ray beyond the local pipes, measured here: kept as a fixed cost.
    waves = -(-cfg.outer.meta_batch * cfg.outer.rollouts_per_task // cfg.env.num_envs)
    calls = 2 * waves * ((cfg.env.horizon or 50) + 1)
    per_call = max(
        0.0, (top["ray"]["env_s_per_iteration"] - top["local"]["env_s_per_iteration"]) / calls
    )
    with_calls = extrapolated + calls * per_call
    iterations = cfg.iterations
    result: dict[str, Any] = {
        "bench": "ray",
        **machine_info(),
        "ray": ray.__version__,
        "config": args.config,
        "iterations_per_backend": args.iterations,
        "ray_init_s": round(ray_init_s, 2),
        "workers": top["workers"],
        "ray_overhead_vs_local": top["ray_overhead_vs_local"],
        "meta_grad_max_rel_diff_vs_local": max(r["meta_grad_max_rel_diff_vs_local"] for r in table),
        "s_per_iteration_local": top["local"]["s_per_iteration"],
        "s_per_iteration_ray": top["ray"]["s_per_iteration"],
        "episodes_per_s_per_worker_ray": top["ray"]["episodes_per_s_per_worker"],
        "episodes_per_s_per_worker_local": top["local"]["episodes_per_s_per_worker"],
        "learner_share_ray": top["ray"]["learner_share"],
        "learner_s_per_iteration": learner,
        "ray_speedup_vs_1_worker": round(
            one["ray"]["s_per_iteration"] / top["ray"]["s_per_iteration"], 3
        ),
        f"extrapolated_s_per_iteration_{target}_workers": round(extrapolated, 3),
        f"extrapolated_make_train_meta_min_{target}_workers": round(
            iterations * extrapolated / 60, 1
        ),
        "env_calls_per_iteration": calls,
        "ray_extra_ms_per_env_call": round(1e3 * per_call, 3),
        f"extrapolated_s_per_iteration_{target}_workers_with_call_overhead": round(with_calls, 3),
        f"extrapolated_make_train_meta_min_{target}_workers_with_call_overhead": round(
            iterations * with_calls / 60, 1
        ),
        "extrapolation": (
            f"learner_s + env_s x {top['workers']} / {target}: the learner's share stays on "
            "the driver, the simulation divides over the actors; _with_call_overhead adds, "
            "per lock-step env call, Ray's extra cost over the local pipes measured here "
            f"(assumed not to grow with the actors); {iterations} iterations of the config"
        ),
        "ray_actor_rss_mb": [a["rss_mb"] for a in top["ray_actors"]],
        "ray_actor_envs": [a["n_envs"] for a in top["ray_actors"]],
        "scaling": [
            {
                "workers": r["workers"],
                "s_per_iteration_local": r["local"]["s_per_iteration"],
                "s_per_iteration_ray": r["ray"]["s_per_iteration"],
                "episodes_per_s_ray": r["ray"]["episodes_per_s"],
                "episodes_per_s_per_worker_ray": r["ray"]["episodes_per_s_per_worker"],
                "learner_share_ray": r["ray"]["learner_share"],
                "ray_overhead_vs_local": r["ray_overhead_vs_local"],
            }
            for r in table
        ],
        "settings": table,
    }
    emit_json(result)


if __name__ == "__main__":
    main()
