"""Controller tick latency over DDS at 500 Hz while adaptation inner updates load the CPU.

``policy_controller_node`` runs as its own process (the shipped policy as ``initial_policy``,
exploration on). This process publishes stamped joint states at ``--rate`` Hz (sensor-data
QoS) and receives the controller's ``arm_controller/actions`` echo (same stamp) and
``arm_controller/commands``. A third process runs ``adapt_policy`` back to back (K=20 rollouts
of horizon 50, the shipped architecture) to load the CPU as the adaptation node would.

- ``tick_ms_*``: per joint state, the wall time from just before ``publish()`` here to the
  arrival of its stamped action echo here (through DDS both ways, the controller's callback
  and this process's executor: an upper bound of the controller's tick); the first
  ``--warmup`` seconds are not counted.
- ``missed_ticks``: joint states whose action had not arrived before the next joint state was
  due (one period, 2 ms at 500 Hz), or never arrived.

``--realtime-priority N`` puts the controller (its ``realtime_priority`` parameter) and this
process, which plays the robot's driver, under SCHED_FIFO at N, as a ros2_control robot runs
its control loop; it needs root or CAP_SYS_NICE. The machine (2 cores) is shared with other
jobs; say so next to the numbers.

    python bench/bench_control.py [--seconds 20] [--rate 500] [--warmup 2]
        [--realtime-priority 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import emit_json, machine_info, shipped_bundle
from _nodes import (
    FakeArmDriver,
    NodeGroup,
    add_realtime_option,
    isolate_dds,
    peak_rss_mb,
    run_driver_realtime,
    wait_for_nodes,
)

from maml_ros.rl.checkpoint import save_bundle

TARGET_P99_MS = 2.0
HELPER = Path(__file__).with_name("_nodes.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    parser.add_argument("--rate", type=float, default=500.0, help="joint states per second")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    parser.add_argument("--no-load", action="store_true", help="no adapt_policy load process")
    parser.add_argument("--checkpoint", default=None, help="policy bundle (default: shipped)")
    add_realtime_option(parser)
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0 or args.warmup < 0:
        parser.error("--seconds and --rate must be positive, --warmup >= 0")
    domain = isolate_dds()
    bundle, source = shipped_bundle(args.checkpoint)
    work = Path(tempfile.mkdtemp(prefix="bench_control_"))
    policy_path = save_bundle(work / "policy.safetensors", bundle)
    print(f"policy: {source}; DDS {domain}; logs in {work}")

    group = NodeGroup(work / "logs")
    driver = None
    try:
        pid = group.start(
            "policy_controller",
            "policy_controller_node",
            {
                "initial_policy": str(policy_path),
                "explore": True,
                "realtime_priority": args.realtime_priority,
            },
        )
        driver = FakeArmDriver(args.rate, listen_commands=True, rewards=False)
        run_driver_realtime(args.realtime_priority)
        wait_for_nodes(
            lambda: driver.status.get("policy_controller", {}).get("has_policy"),
            30.0,
            group,
            "the controller's status",
            poll_s=0.05,
        )
        total = args.warmup + args.seconds
        if not args.no_load:
            group.start_python(
                "adapt_load",
                [
                    str(Path(__file__).with_name("_nodes.py")),
                    "adapt-load",
                    "--seconds",
                    str(total),
                ],
            )
            time.sleep(1.0)  # let the load process import torch and start updating
        driver.start(total)
        measure_from = driver.started_at + args.warmup
        driver.wait()
        time.sleep(0.2)  # the last echoes
        result = driver.latency(since=measure_from)
        commands = sum(1 for t in driver.command_times if t >= measure_from)
        rss = peak_rss_mb(pid)
        crashed = group.dead()
    finally:
        if driver is not None:
            driver.close()
        codes = group.stop()
    load_log = group.tail("adapt_load", 1) if not args.no_load else ""
    tick = result["tick_ms"]
    achieved = result["states_sent"] / args.seconds
    print(
        f"{result['states_sent']} joint states at {achieved:.0f}/s (asked {args.rate:.0f}), "
        f"{result['actions_received']} actions and {commands} commands back"
    )
    print(
        f"tick latency (wire, shared 2-core machine, adapt_policy load "
        f"{'off' if args.no_load else 'on'}, realtime priority {args.realtime_priority}): "
        f"p50 {tick['p50']:.3f} ms, "
        f"p99 {tick['p99']:.3f} ms, max {tick['max']:.3f} ms; "
        f"missed ticks {result['missed_ticks']} (target p99 <= {TARGET_P99_MS} ms and 0 missed)"
    )
    print(f"adapt load process: {load_log.strip()}; exit codes {codes}")
    emit_json(
        {
            "bench": "control",
            **machine_info(),
            "rate_hz": args.rate,
            "seconds": args.seconds,
            "adapt_load": not args.no_load,
            "realtime_priority": args.realtime_priority,
            "states_sent": result["states_sent"],
            "states_per_s": round(achieved, 1),
            "actions_received": result["actions_received"],
            "commands_received": commands,
            "tick_ms_p50": tick["p50"],
            "tick_ms_p90": tick["p90"],
            "tick_ms_p99": tick["p99"],
            "tick_ms_max": tick["max"],
            "missed_ticks": result["missed_ticks"],
            "controller_peak_rss_mb": rss,
            "node_crashes": len(crashed) + sum(1 for c in codes.values() if c not in (0, -2)),
            "exit_codes": codes,
            "target_met": tick["p99"] <= TARGET_P99_MS and result["missed_ticks"] == 0,
        }
    )


if __name__ == "__main__":
    main()
