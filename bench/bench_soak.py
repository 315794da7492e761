"""Soak: 1 kHz joint states with bad ones mixed in, an adaptation every minute, for minutes.

The graph of ``bench/bench_load.py``: ``policy_controller_node`` and ``adaptation_node`` as
processes (the shipped policy) and this process as the arm driver
(:class:`_nodes.FakeArmDriver`: stamped joint states and rewards at ``--rate`` Hz, every
``--bad-every``-th state bad, cycling NaN, wrong length and a stale stamp; the ``reset``
service). Every ``--interval`` seconds a new task is sent; the adaptation it starts must end
``done``, ``rolled_back`` or ``failed`` with a reason before the next one is sent, else it
counts as stuck.

Keys of the last line (JSON): ``minutes``, ``rss_start_mb`` / ``rss_end_mb`` (VmRSS of each
node once the first adaptation has ended, so start-up and warm-up are excluded, and at the end)
and ``rss_growth`` (node -> (end - start) / start; target <= 0.05), ``node_crashes``,
``adaptations`` (sent, by final phase, stuck, and each failure's reason), ``dropped`` (node ->
kind -> count) with ``last_drop_reason``, ``bad_msgs_sent``, ``msgs_per_s``.

    python bench/bench_soak.py [--minutes 10] [--rate 1000] [--bad-every 100] [--interval 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit_json, machine_info, shipped_bundle
from _nodes import (
    FAKE_DRIVER_NODES,
    NodeGroup,
    isolate_dds,
    rss_mb,
    start_nodes_for_fake_driver,
)

from maml_ros.rl.checkpoint import save_bundle
from maml_ros.ros.convert import task_id_of
from maml_ros.sim import sample_tasks

NODES = FAKE_DRIVER_NODES
FINAL_PHASES = ("done", "rolled_back", "failed", "cancelled")


def _record_end(current: dict[str, Any] | None, status: dict[str, Any]) -> bool:
    """Records how the adaptation ``current`` ended when ``status`` shows it; True then."""
    if current is None or current["phase"] is not None:
        return False
    if status.get("task_id") != current["id"] or status.get("phase") not in FINAL_PHASES:
        return False
    current["phase"], current["reason"] = status["phase"], status.get("reason")
    current["ended_after_s"] = round(time.monotonic() - current["sent_at"], 1)
    return True


def run_soak(
    minutes: float = 10.0,
    rate_hz: float = 1000.0,
    bad_every: int = 100,
    interval_s: float = 60.0,
    rollouts: int = 10,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Runs the soak (module docstring) and returns its measurements."""
    isolate_dds()
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench_soak_"))
    bundle, _ = shipped_bundle()
    policy_path = save_bundle(work / "policy.safetensors", bundle)
    group = NodeGroup(work / "logs")
    driver = None
    pids: dict[str, int] = {}
    outcomes: list[dict[str, Any]] = []
    rss_start: dict[str, float | None] = {}
    seconds = minutes * 60.0
    try:
        driver = start_nodes_for_fake_driver(
            group, pids, policy_path, rollouts, rate_hz, bad_every, ready_timeout_s=120.0
        )
        tasks = sample_tasks("reach", max(2, int(seconds / interval_s) + 2), "test", seed=3)
        driver.start(seconds)
        next_at, index, current = time.monotonic(), 0, None
        while driver._running and not group.dead():
            status = driver.status.get("adaptation", {})
            if _record_end(current, status) and not rss_start:
                # The first adaptation is over: start-up and warm-up are behind us.
                rss_start = {name: rss_mb(pid) for name, pid in pids.items()}
            if time.monotonic() >= next_at:
                if current is not None and current["phase"] is None:
                    current["phase"] = "stuck"
                    current["reason"] = f"still {status.get('phase')} after {interval_s} s"
                task = tasks[index % len(tasks)]
                current = {"id": task_id_of(task), "phase": None, "sent_at": time.monotonic()}
                outcomes.append(current)
                driver.publish_task(task.to_json())
                index += 1
                next_at += interval_s
            time.sleep(0.05)
        driver.wait()
        if current is not None and current["phase"] is None:  # the last one: give it a while
            deadline = time.monotonic() + min(interval_s, 60.0)
            while time.monotonic() < deadline and current["phase"] is None:
                status = driver.status.get("adaptation", {})
                _record_end(current, status)
                time.sleep(0.1)
            if current["phase"] is None:
                current["phase"] = "stuck"
                current["reason"] = f"still {status.get('phase')} after the run ended"
        time.sleep(1.5)  # the nodes publish their status every second
        rss_end = {name: rss_mb(pid) for name, pid in pids.items()}
        status = {name: dict(driver.status.get(name, {})) for name in NODES}
        died = group.dead()
        bad_sent = dict(driver.bad_sent)
        slots, elapsed = driver.slots, driver.elapsed
    finally:
        if driver is not None:
            driver.close()
        codes = group.stop()
    growth = {
        name: None
        if not rss_start.get(name) or rss_end.get(name) is None
        else round((rss_end[name] - rss_start[name]) / rss_start[name], 4)
        for name in NODES
    }
    phases = [o["phase"] for o in outcomes]
    return {
        "minutes": minutes,
        "rate_hz": rate_hz,
        "msgs_sent": slots,
        "msgs_per_s": round(slots / elapsed, 1) if elapsed else None,
        "bad_msgs_sent": sum(bad_sent.values()),
        "bad_msgs_by_kind": bad_sent,
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_growth": growth,
        "adaptations": {
            "sent": len(outcomes),
            "by_phase": {p: phases.count(p) for p in sorted(set(phases), key=str)},
            "stuck": phases.count("stuck"),
            "failure_reasons": [o["reason"] for o in outcomes if o["phase"] != "done"][:20],
            "ended_after_s": [o.get("ended_after_s") for o in outcomes],
        },
        "dropped": {name: status[name].get("dropped", {}) for name in NODES},
        "last_drop_reason": {
            name: {k: v[:160] for k, v in status[name].get("last_drop_reason", {}).items()}
            for name in NODES
        },
        "node_crashes": len(died) + sum(1 for c in codes.values() if c != 0),
        "exit_codes": codes,
        "logs": str(group.log_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="joint states per second")
    parser.add_argument("--bad-every", type=int, default=100, help="every n-th state is bad")
    parser.add_argument("--interval", type=float, default=60.0, help="s between adaptations")
    parser.add_argument("--rollouts", type=int, default=10, help="K of each adaptation")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.bad_every < 0 or args.interval <= 0:
        parser.error("--minutes, --rate and --interval must be positive, --bad-every >= 0")
    r = run_soak(args.minutes, args.rate, args.bad_every, args.interval, args.rollouts)
    print(
        f"{r['minutes']} min, {r['msgs_per_s']} states/s, {r['bad_msgs_sent']} bad; "
        f"RSS growth {r['rss_growth']} ({r['rss_start_mb']} -> {r['rss_end_mb']} MB)"
    )
    print(f"adaptations {r['adaptations']['by_phase']}, crashes {r['node_crashes']}")
    emit_json({"bench": "soak", **machine_info(), **r})


if __name__ == "__main__":
    main()
