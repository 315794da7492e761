"""Load: joint states at 1 kHz into the running graph for 60 s while adaptations run.

The graph: ``policy_controller_node`` and ``adaptation_node`` (separate processes, the shipped
policy) and this process as the arm driver (:class:`_nodes.FakeArmDriver`, a kinematic arm:
stamped joint states and rewards at ``--rate`` Hz, the ``reset`` service). Task changes are
published one after the other, so an adaptation (evaluate, collect K rollouts, inner update,
publish, evaluate) is always running. Every ``--bad-every``-th joint state is bad, cycling
through NaN, wrong length and a stale stamp (1 s older than the last good one).

Keys of the last line (JSON):

- ``msgs_per_s``: joint states published per second (good and bad).
- ``peak_rss_mb``: each node's VmHWM (/proc/<pid>/status) at the end; ``rss_growth_mb``: its
  VmRSS at the end minus at the first quarter of the run (after start-up and warm-up).
- ``callback_ms_p99``: p99 of the controller's tick as seen on the wire (state published here
  -> stamped action echo received here); also ``callback_ms_p50`` and ``missed_ticks``.
- ``dropped_bad_msgs``: the controller's ``~/status`` drop counter for joint states, which must
  equal ``bad_msgs_sent`` (the adaptation node checks contents but not stamp order, so its
  ``joint_states`` counter must equal the NaN + wrong-length count: ``adaptation_dropped``).
- ``node_crashes``: nodes that died or exited non-zero at the SIGINT stop (must be 0).
- ``cpu_cores_used``: CPU seconds per wall second of each node and of this driver process.
- ``adaptations_completed`` and their final phases, ``adaptation_phases_seen`` (every phase
  the node reported during the run); ``states_lost``: good states the controller
  never answered (best-effort sensor QoS drops what a busy subscriber cannot take).

``--realtime-priority N`` runs the controller and this process (the driver) under SCHED_FIFO at
N, as a robot's control loop runs (needs root or CAP_SYS_NICE).

    python bench/bench_load.py [--seconds 60] [--rate 1000] [--bad-every 100] [--rollouts 10]
        [--realtime-priority 0]
"""

from __future__ import annotations

import argparse
import bisect
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit_json, machine_info, shipped_bundle
from _nodes import (
    FAKE_DRIVER_NODES,
    NodeGroup,
    add_realtime_option,
    cpu_seconds,
    isolate_dds,
    peak_rss_mb,
    rss_mb,
    run_driver_realtime,
    start_nodes_for_fake_driver,
)

from maml_ros.rl.checkpoint import save_bundle
from maml_ros.sim import sample_tasks

FINAL_PHASES = ("done", "rolled_back", "failed", "cancelled")
NODES = FAKE_DRIVER_NODES


def run_load(
    seconds: float = 60.0,
    rate_hz: float = 1000.0,
    bad_every: int = 100,
    rollouts: int = 10,
    checkpoint: str | None = None,
    work_dir: str | Path | None = None,
    realtime_priority: int = 0,
) -> dict[str, Any]:
    """Run the load scenario (see the module docstring) and return its measurements.

    ``realtime_priority`` > 0 runs the controller and this process (the driver) under
    SCHED_FIFO, as a robot's control loop; do not set it from a test process."""
    isolate_dds()
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench_load_"))
    bundle, source = shipped_bundle(checkpoint)
    policy_path = save_bundle(work / "policy.safetensors", bundle)
    group = NodeGroup(work / "logs")
    driver = None
    pids: dict[str, int] = {}
    rss_early: dict[str, float | None] = {}
    phases: list[str] = []
    try:
        driver = start_nodes_for_fake_driver(
            group,
            pids,
            policy_path,
            rollouts,
            rate_hz,
            bad_every,
            controller_params={"realtime_priority": realtime_priority},
            before_wait=lambda: run_driver_realtime(realtime_priority),
        )
        tasks = sample_tasks("reach", 50, "test", seed=1)
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own_cpu_start = time.process_time()
        driver.start(seconds)
        early_at = driver.started_at + seconds / 4
        published, next_task = 0, 0
        while driver._running:
            dead = group.dead()
            if dead:
                break
            status = driver.status.get("adaptation", {})
            idle = status.get("phase") in ("idle", *FINAL_PHASES)
            if idle and status.get("adaptation_id", 0) >= published:
                if published:
                    phases.append(status.get("phase"))
                driver.publish_task(tasks[next_task % len(tasks)].to_json())
                published += 1
                next_task += 1
                # Wait until the node took it (its adaptation_id moves on) before looking again.
                deadline = time.monotonic() + 5.0
                while (
                    driver.status.get("adaptation", {}).get("adaptation_id", 0) < published
                    and time.monotonic() < deadline
                    and driver._running
                ):
                    time.sleep(0.01)
            if not rss_early and time.perf_counter() >= early_at:
                rss_early = {name: rss_mb(pid) for name, pid in pids.items()}
            time.sleep(0.02)
        driver.wait()
        cpu_used = {
            name: None
            if cpu_seconds(pid) is None or cpu_start[name] is None
            else round((cpu_seconds(pid) - cpu_start[name]) / driver.elapsed, 3)
            for name, pid in pids.items()
        }
        cpu_used["bench_driver"] = round((time.process_time() - own_cpu_start) / driver.elapsed, 3)
        time.sleep(1.5)  # the nodes publish their status every second
        rss_end = {name: rss_mb(pid) for name, pid in pids.items()}
        peak = {name: peak_rss_mb(pid) for name, pid in pids.items()}
        died = group.dead()
        latency = driver.latency()
        edges = [driver.started_at + q * driver.elapsed / 4 for q in (1, 2, 3)]
        answered_by_quarter = [0, 0, 0, 0]
        for stamp, sent_at in driver.sent.items():
            if stamp in driver.received:
                answered_by_quarter[bisect.bisect_right(edges, sent_at)] += 1
        status = {name: dict(driver.status.get(name, {})) for name in NODES}
        phases_seen = sorted(
            {d.get("phase") for t, n, d in driver.status_log if n == "adaptation"} - {None}
        )
        bad_sent = dict(driver.bad_sent)
        slots, elapsed = driver.slots, driver.elapsed
    finally:
        if driver is not None:
            driver.close()
        codes = group.stop()
    controller, adaptation = status["policy_controller"], status["adaptation"]
    tick = latency["tick_ms"]
    growth = {
        name: None
        if rss_end.get(name) is None or rss_early.get(name) is None
        else round(rss_end[name] - rss_early[name], 2)
        for name in NODES
    }
    return {
        "policy_source": source,
        "seconds": seconds,
        "rate_hz": rate_hz,
        "msgs_sent": slots,
        "msgs_per_s": round(slots / elapsed, 1) if elapsed else None,
        "bad_msgs_sent": sum(bad_sent.values()),
        "bad_msgs_by_kind": bad_sent,
        "dropped_bad_msgs": controller.get("dropped", {}).get("joint_state", 0),
        "adaptation_dropped": adaptation.get("dropped", {}),
        "adaptation_last_drop_reason": adaptation.get("last_drop_reason", {}),
        "adaptation_phase_at_end": adaptation.get("phase"),
        "adaptation_phases_seen": phases_seen,
        "adaptation_expected_joint_state_drops": bad_sent["nan"] + bad_sent["wrong_length"],
        "controller_dropped": controller.get("dropped", {}),
        "controller_ticks": controller.get("ticks"),
        "states_sent": latency["states_sent"],
        "actions_received": latency["actions_received"],
        "states_lost": latency["states_sent"] - latency["actions_received"],
        "actions_received_by_quarter": answered_by_quarter,
        "callback_ms_p50": tick["p50"],
        "callback_ms_p99": tick["p99"],
        "callback_ms_max": tick.get("max"),
        "missed_ticks": latency["missed_ticks"],
        "cpu_cores_used": cpu_used,
        "peak_rss_mb": peak,
        "rss_early_mb": rss_early,
        "rss_end_mb": rss_end,
        "rss_growth_mb": growth,
        "adaptations_started": published,
        "adaptations_completed": len(phases),
        "adaptation_phases": {p: phases.count(p) for p in sorted(set(phases))},
        "adapt_latency_ms_last": adaptation.get("adapt_latency_ms"),
        "rollouts_discarded_last": adaptation.get("rollouts_discarded"),
        "node_crashes": len(died) + sum(1 for c in codes.values() if c != 0),
        "exit_codes": codes,
        "logs": str(group.log_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="joint states per second")
    parser.add_argument("--bad-every", type=int, default=100, help="every n-th state is bad")
    parser.add_argument("--rollouts", type=int, default=10, help="K of each adaptation")
    parser.add_argument("--checkpoint", default=None, help="policy bundle (default: shipped)")
    add_realtime_option(parser)
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0 or args.bad_every < 0 or args.rollouts < 1:
        parser.error("--seconds, --rate, --rollouts must be positive and --bad-every >= 0")
    r = run_load(
        args.seconds,
        args.rate,
        args.bad_every,
        args.rollouts,
        args.checkpoint,
        realtime_priority=args.realtime_priority,
    )
    print(
        f"{r['msgs_sent']} joint states in {args.seconds:.0f} s ({r['msgs_per_s']}/s), "
        f"{r['bad_msgs_sent']} bad {r['bad_msgs_by_kind']}; shared 2-core machine"
    )
    print(
        f"controller: dropped {r['dropped_bad_msgs']} bad (sent {r['bad_msgs_sent']}), "
        f"tick on the wire p50 {r['callback_ms_p50']} ms p99 {r['callback_ms_p99']} ms, "
        f"{r['states_lost']} of {r['states_sent']} good states unanswered, "
        f"{r['missed_ticks']} missed ticks"
    )
    print(
        f"adaptation: {r['adaptations_completed']} adaptations {r['adaptation_phases']}, "
        f"drops {r['adaptation_dropped']} (expected joint_states "
        f"{r['adaptation_expected_joint_state_drops']})"
    )
    print(
        f"peak RSS MB {r['peak_rss_mb']}, growth MB {r['rss_growth_mb']}, crashes "
        f"{r['node_crashes']} {r['exit_codes']}"
    )
    emit_json({"bench": "load", **machine_info(), "realtime_priority": args.realtime_priority, **r})


if __name__ == "__main__":
    main()
