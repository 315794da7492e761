"""Controller tick latency over DDS, against a bare relay's in the same run, while adaptation
inner updates load the CPU.

``policy_controller_node`` runs as its own process (the shipped policy as ``initial_policy``,
exploration on), beside a bare rclpy relay process (``_nodes.py relay``: subscribe a joint
state, publish an answer with its stamp, nothing else: the floor that rclpy, DDS and this
machine's scheduling set). This process publishes stamped joint states (sensor-data QoS) at
each of ``--rates`` in turn, and the same states to the relay on a topic of its own, half a
period later: both see the same rate and load, and neither wakes for the other's message (on
one free core, two processes woken by the same message each wait for the other's callback).
A third process runs ``adapt_policy`` back to back (K=20 rollouts of horizon 50, the shipped
architecture) to load the CPU as the adaptation node would.

- ``controller_tick_ms_*`` / ``relay_tick_ms_*``: per joint state, the wall time from just
  before ``publish()`` here to the arrival here of the controller's command for it (its stamp
  label; what the robot waits for), or of the relay's answer; the first ``--warmup`` seconds of
  each rate are not counted. ``echo_tick_ms_*``: the same to the controller's action echo,
  which it publishes after the command (for the adaptation node).
- ``controller_excess_ms_p99``: the controller's p99 minus the relay's, at the same rate in the
  same run (the largest over the rates; each rate's is listed too); ``policy_us_p50``: the
  policy's own compute per tick, from the controller's status.
- ``missed_ticks_<rate>hz``: joint states whose command had not arrived before the next joint
  state was due (one period), or never arrived.

Until the twelfth session the controller was timed on its echo and the relay answered the
same message as the controller (docs/benchmarks.md has both measures side by side).

``--realtime-priority N`` puts the controller, the relay and this process, which plays the
robot's driver, under SCHED_FIFO at N; it needs root or CAP_SYS_NICE.

    python bench/bench_control.py [--seconds 20] [--rates 500 100] [--warmup 2]
        [--realtime-priority 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit_json, machine_info, shipped_bundle
from _nodes import (
    RELAY_TOPIC,
    FakeArmDriver,
    NodeGroup,
    add_realtime_option,
    isolate_dds,
    peak_rss_mb,
    run_driver_realtime,
    wait_for_nodes,
)

from maml_ros.rl.checkpoint import save_bundle

TARGET_EXCESS_P99_MS = 0.3
HELPER = Path(__file__).with_name("_nodes.py")


def measure_rate(rate: float, args: argparse.Namespace, group: NodeGroup) -> dict[str, Any]:
    """One rate: the controller's and the relay's answers to the same joint states."""
    driver = FakeArmDriver(rate, listen_commands=True, rewards=False, listen_relay=True)
    try:
        run_driver_realtime(args.realtime_priority)
        wait_for_nodes(
            lambda: (
                driver.status.get("policy_controller", {}).get("has_policy")
                and driver.node.count_publishers(RELAY_TOPIC) > 0
            ),
            60.0,
            group,
            "the controller's status and the relay",
            poll_s=0.05,
        )
        driver.start(args.warmup + args.seconds)
        measure_from = driver.started_at + args.warmup
        driver.wait()
        time.sleep(0.2)  # the last answers
        controller = driver.latency(since=measure_from, answer="command")
        echo = driver.latency(since=measure_from, answer="action")
        relay = driver.latency(since=measure_from, answer="relay")
        status = driver.status.get("policy_controller", {})
    finally:
        driver.close()
    tick, floor, echoed = controller["tick_ms"], relay["tick_ms"], echo["tick_ms"]
    print(
        f"{rate:.0f} Hz: {controller['states_sent']} states; controller p50 {tick['p50']:.3f} "
        f"p99 {tick['p99']:.3f} ms (echo p99 {echoed['p99']:.3f}), relay p50 "
        f"{floor['p50']:.3f} p99 {floor['p99']:.3f} ms; missed {controller['missed_ticks']} "
        f"(echo {echo['missed_ticks']}, relay {relay['missed_ticks']}); callback p50 "
        f"{status.get('tick_us_p50')} p99 {status.get('tick_us_p99')} us",
        flush=True,
    )
    return {
        "states_sent": controller["states_sent"],
        "controller_tick_ms_p50": tick["p50"],
        "controller_tick_ms_p99": tick["p99"],
        "relay_tick_ms_p50": floor["p50"],
        "relay_tick_ms_p99": floor["p99"],
        "controller_excess_ms_p99": tick["p99"] - floor["p99"],
        "echo_tick_ms_p50": echoed["p50"],
        "echo_tick_ms_p99": echoed["p99"],
        "echo_excess_ms_p99": echoed["p99"] - floor["p99"],
        "missed_ticks": controller["missed_ticks"],
        "echo_missed_ticks": echo["missed_ticks"],
        "relay_missed_ticks": relay["missed_ticks"],
        "policy_us_p50": status.get("policy_us_p50"),
        "tick_us_p50": status.get("tick_us_p50"),
        "tick_us_p99": status.get("tick_us_p99"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[500.0, 100.0], help="joint states per second"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    parser.add_argument("--no-load", action="store_true", help="no adapt_policy load process")
    parser.add_argument("--checkpoint", default=None, help="policy bundle (default: shipped)")
    add_realtime_option(parser)
    args = parser.parse_args()
    if args.seconds <= 0 or min(args.rates) <= 0 or args.warmup < 0:
        parser.error("--seconds and --rates must be positive, --warmup >= 0")
    domain = isolate_dds()
    bundle, source = shipped_bundle(args.checkpoint)
    work = Path(tempfile.mkdtemp(prefix="bench_control_"))
    policy_path = save_bundle(work / "policy.safetensors", bundle)
    print(f"policy: {source}; DDS {domain}; logs in {work}")
    total = len(args.rates) * (args.warmup + args.seconds + 3.0) + 30.0
    priority = ["--realtime-priority", str(args.realtime_priority)]
    group = NodeGroup(work / "logs")
    per_rate: dict[float, dict[str, Any]] = {}
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
        group.start_python("relay", [str(HELPER), "relay", "--seconds", str(total), *priority])
        if not args.no_load:
            group.start_python("adapt_load", [str(HELPER), "adapt-load", "--seconds", str(total)])
            time.sleep(1.0)  # let the load process import torch and start updating
        for rate in args.rates:
            per_rate[rate] = measure_rate(rate, args, group)
        rss = peak_rss_mb(pid)
        crashed = group.dead()
    finally:
        codes = group.stop()
    result: dict[str, Any] = {
        "bench": "control",
        **machine_info(),
        "seconds_per_rate": args.seconds,
        "adapt_load": not args.no_load,
        "realtime_priority": args.realtime_priority,
    }
    for rate, figures in per_rate.items():
        result.update({f"{key}_{rate:.0f}hz": value for key, value in figures.items()})
        result[f"missed_ticks_{rate:.0f}hz"] = figures["missed_ticks"]
    excess = max(f["controller_excess_ms_p99"] for f in per_rate.values())
    missed_100 = per_rate.get(100.0, {}).get("missed_ticks")
    result.update(
        {
            "controller_excess_ms_p99": excess,
            "policy_us_p50": per_rate[args.rates[-1]]["policy_us_p50"],
            "controller_peak_rss_mb": rss,
            "node_crashes": len(crashed) + sum(1 for c in codes.values() if c not in (0, -2)),
            "exit_codes": codes,
            "target_met": excess <= TARGET_EXCESS_P99_MS and missed_100 == 0,
        }
    )
    emit_json(result)


if __name__ == "__main__":
    main()
