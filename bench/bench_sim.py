"""Simulation throughput: control steps/s of ArmEnv (one process) and VecArmEnv (all cores).

Default arm, 40 Hz control / 240 Hz physics (6 sub-steps), random actions, an episode reset
every ``horizon`` (50) steps. Also reports raw PyBullet physics steps/s of the same arm, so the
Python overhead per control step can be read off, and VecArmEnv with one physics world per
worker (the default) vs. one per env, with the workers' memory. The last printed line is one
JSON object.

    python bench/bench_sim.py [--steps 3000] [--n-envs 16] [--workers N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pybullet as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree, not an install

from _common import cpu_model

from maml_ros.sim import JOINT_FORCE_LIMITS, ArmEnv, VecArmEnv


def _timed(loop, steps: int) -> tuple[float, float]:
    """(wall s, process CPU s) of ``loop(steps)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    loop(steps)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_single(steps: int, seed: int, repeats: int) -> dict[str, float]:
    """Control steps/s of one ArmEnv vs. the bare motor-command + physics loop (best of runs).

    The two loops alternate, so a busy machine slows both alike; CPU-time rates are given too.
    """
    env = ArmEnv()
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 7)).astype(np.float32)
    robot, client, joints = env.robot_id, env.physics_client, list(range(7))
    forces = list(JOINT_FORCE_LIMITS)

    def env_loop(n: int) -> None:
        env.reset(seed=seed)
        for t in range(n):
            if t and t % env.horizon == 0:
                env.reset()
            env.step(actions[t])

    def bare_loop(n: int) -> None:
        env.reset(seed=seed)
        for t in range(n):
            if t and t % env.horizon == 0:
                env.reset()
            pb.setJointMotorControlArray(
                robot,
                joints,
                pb.VELOCITY_CONTROL,
                targetVelocities=actions[t] * env.max_joint_velocity,
                forces=forces,
                physicsClientId=client,
            )
            for _ in range(env.substeps):
                pb.stepSimulation(physicsClientId=client)

    env_times, bare_times = [], []
    for _ in range(repeats):
        env_times.append(_timed(env_loop, steps))
        bare_times.append(_timed(bare_loop, steps))
    env.close()
    env_wall, env_cpu = min(t[0] for t in env_times), min(t[1] for t in env_times)
    bare_wall, bare_cpu = min(t[0] for t in bare_times), min(t[1] for t in bare_times)
    substeps = env.substeps
    return {
        "control_steps_per_s_1proc": steps / env_wall,
        "control_steps_per_cpu_s_1proc": steps / env_cpu,
        "physics_steps_per_s_raw": steps * substeps / bare_wall,
        "control_step_ms": 1e3 * env_wall / steps,
        "physics_part_ms": 1e3 * bare_wall / steps,
        "overhead_ms": 1e3 * (env_wall - bare_wall) / steps,
        "overhead_cpu_ms": 1e3 * (env_cpu - bare_cpu) / steps,
    }


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def bench_vec(
    steps: int, n_envs: int, workers: int, seed: int, repeats: int, shared_world: bool
) -> dict[str, float]:
    """Env steps/s (summed over envs) of a VecArmEnv, best of runs; reset every 50 steps."""
    rng = np.random.default_rng(seed)
    with VecArmEnv(n_envs, n_workers=workers, shared_world=shared_world) as vec:
        vec.reset(None, list(range(n_envs)))  # the default arm, as in bench_single
        rounds = max(1, steps // n_envs)
        actions = rng.uniform(-1, 1, (rounds, n_envs, 7)).astype(np.float32)
        elapsed, cpu = math.inf, math.inf
        pids = [proc.pid for proc in vec._procs]
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), sum(_cpu_s(pid) for pid in pids)
            for action in actions:
                _, _, _, truncated, _ = vec.step(action)
                if truncated.any():
                    vec.reset()
            elapsed = min(elapsed, time.perf_counter() - start)
            cpu = min(cpu, sum(_cpu_s(pid) for pid in pids) - cpu_start)
        rss = sum(_rss_mb(pid) for pid in pids)
    env_steps = rounds * n_envs
    return {
        "steps_per_s": env_steps / elapsed,
        "worker_cpu_ms_per_step": 1e3 * cpu / env_steps,
        "worker_rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="control steps per measurement")
    parser.add_argument("--n-envs", type=int, default=16, help="envs in the VecArmEnv")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1 or args.n_envs < 1 or args.repeats < 1:
        parser.error("--steps, --n-envs and --repeats must be positive")
    cores = os.cpu_count() or 1
    workers = args.workers or min(cores, args.n_envs)
    if workers < 1:
        parser.error("--workers must be positive")

    single = bench_single(args.steps, args.seed, args.repeats)
    print(
        f"1 process: {single['control_steps_per_s_1proc']:.0f} control steps/s "
        f"({single['control_step_ms']:.3f} ms/step, of which physics "
        f"{single['physics_part_ms']:.3f} ms, overhead {single['overhead_ms']:.3f} ms; raw physics "
        f"{single['physics_steps_per_s_raw']:.0f} steps/s)"
    )
    vec = bench_vec(args.steps, args.n_envs, workers, args.seed, args.repeats, True)
    separate = bench_vec(args.steps, args.n_envs, workers, args.seed, args.repeats, False)
    for name, numbers in (("one world per worker", vec), ("one world per env", separate)):
        print(
            f"VecArmEnv({args.n_envs} envs, {workers} workers, {name}): "
            f"{numbers['steps_per_s']:.0f} control steps/s, workers' CPU "
            f"{numbers['worker_cpu_ms_per_step']:.3f} ms/step, "
            f"RSS {numbers['worker_rss_mb']:.0f} MB"
        )
    result = {
        "bench": "sim",
        "cpu": cpu_model(),
        "cores": cores,
        "workers": workers,
        "n_envs": args.n_envs,
        "steps": args.steps,
        "control_hz": 40,
        "physics_hz": 240,
        **{k: round(v, 4) for k, v in single.items()},
        "control_steps_per_s_vec": round(vec["steps_per_s"], 1),
        "speedup_vec": round(vec["steps_per_s"] / single["control_steps_per_s_1proc"], 3),
        "vec_worker_rss_mb": round(vec["worker_rss_mb"], 1),
        "vec_worker_cpu_ms_per_step": round(vec["worker_cpu_ms_per_step"], 4),
        "single_cpu_ms_per_step": round(1e3 / single["control_steps_per_cpu_s_1proc"], 4),
        "control_steps_per_s_vec_world_per_env": round(separate["steps_per_s"], 1),
        "vec_worker_rss_mb_world_per_env": round(separate["worker_rss_mb"], 1),
        "vec_worker_cpu_ms_per_step_world_per_env": round(separate["worker_cpu_ms_per_step"], 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
