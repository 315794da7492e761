#!/usr/bin/env python
"""Task delivery, as a user types it: ``ros2 launch maml_ros adapt.launch.py``, then N times
the README's ``ros2 run maml_ros maml-ros-task reach --goal X Y Z`` with a new held-out goal.
After each, both task readers must run that task: the driver's status ``task_id`` (it applied
it) and the adaptation node's (it adapts to it). A half-delivery is a command that exited 0
while one of them runs another task, or one that exited non-zero after either changed task.

    python bench/bench_task_delivery.py [--tries 100]

Needs the launch stack (make setup LAUNCH_WHEELS=DIR). The last printed line is JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO / "bench"))

from _common import emit_json, machine_info  # noqa: E402
from launch_support import StatusClient, fast_params_file, run_task_cli, task_id_of  # noqa: E402

from maml_ros.sim import sample_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=100, help="task commands (default 100)")
    args = parser.parse_args()
    if args.tries < 1:
        parser.error("--tries must be >= 1")
    launch = subprocess.Popen(
        [
            shutil.which("ros2"),
            "launch",
            "maml_ros",
            "adapt.launch.py",
            "device:=cpu",
            f"params_file:={fast_params_file()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = StatusClient()
    counts = {"delivered": 0, "half_delivered": 0, "not_delivered": 0}
    cli_seconds = []
    try:
        client.ready()
        goals = [t.goal for t in sample_tasks("reach", args.tries, split="test", seed=11)]
        for i, goal in enumerate(goals, start=1):
            start = time.monotonic()
            cli = run_task_cli("reach", "--goal", *(f"{g:.4f}" for g in goal))
            cli_seconds.append(time.monotonic() - start)
            task_id = task_id_of(cli) if cli.returncode == 0 else None
            deadline = time.monotonic() + 5.0
            ids = (None, None)
            while time.monotonic() < deadline:
                client.spin_once(0.05)
                ids = (
                    client.status["sim_arm"].get("task_id"),
                    client.status["adaptation"].get("task_id"),
                )
                if task_id is not None and ids == (task_id, task_id):
                    break
            if task_id is not None and ids == (task_id, task_id):
                counts["delivered"] += 1
            elif task_id is not None or ids[0] != ids[1]:
                counts["half_delivered"] += 1
                print(f"try {i}: half-delivered: cli {cli.returncode} {task_id}, nodes {ids}")
            else:
                counts["not_delivered"] += 1
                print(f"try {i}: not delivered (exit {cli.returncode}): {cli.stderr.strip()}")
            if i % 10 == 0:
                print(f"{i} tries: {counts}", flush=True)
    finally:
        client.close()
        os.killpg(launch.pid, signal.SIGINT)
        launch_code = launch.wait(timeout=60)
    cli_seconds.sort()
    emit_json(
        {
            "tries": args.tries,
            **counts,
            "cli_seconds_p50": round(cli_seconds[len(cli_seconds) // 2], 2),
            "cli_seconds_max": round(cli_seconds[-1], 2),
            "launch_exit_code": launch_code,
            "machine": machine_info(),
        }
    )


if __name__ == "__main__":
    main()
