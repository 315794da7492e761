"""maml-ros-demo: the arm adapts to a new goal and to a changed body, end to end over ROS 2.

Starts sim_arm_node, policy_controller_node and adaptation_node (the shipped checkpoint, CPU,
the installed config/adapt.yaml) as separate processes, paired by a fresh deploy key removed at
the end, publishes two task changes drawn from
the sim's held-out test samplers (one reach, one dynamics; fixed seed), waits for each
adaptation to finish (the adaptation node's status), prints a table of the pre-/post-update
return and success, saves a plot, stops the nodes with SIGINT and checks they exit with 0.
``--adaptation-rounds 2`` adds a second update on fresh rollouts (``round_returns`` in the
results). The last printed line is JSON: ``{"tasks": [{"family", "return_pre", "return_post",
"success_pre", "success_post", "policy_version", "round_returns"}, ...]}``. Exits non-zero if a
node dies or an adaptation does not finish in time. Run it in an isolated DDS domain (``make
demo`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from maml_ros.ros.convert import TaskChange
from maml_ros.ros.interfaces import ADAPTATION_ROUNDS_RANGE, LATCHED_QOS
from maml_ros.ros.tasks import DEFAULT_REQUIRED, TaskDelivery
from maml_ros.runtime.deployment import create_deploy_key
from maml_ros.runtime.robots import (
    DEFAULT_ROBOT,
    no_shipped_model_message,
    robot_names,
    shipped_model_name,
)
from maml_ros.sim import TaskSpec, sample_tasks

EXECUTABLES = ("sim_arm_node", "policy_controller_node", "adaptation_node")
FINAL_PHASES = ("done", "rolled_back", "failed")


class DemoError(RuntimeError):
    """The demo cannot go on: a node died, timed out or misbehaved."""


def find_executable(name: str) -> str:
    """``name`` on PATH, else in the install prefix's lib/maml_ros (where ros2 run looks)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.prefix) / "lib" / "maml_ros" / name
    if candidate.exists():
        return str(candidate)
    raise DemoError(f"executable {name} not found (run `make setup` and `source tools/env.sh`)")


def installed_file(*parts: str) -> Path:
    """A file of the installed share/maml_ros (``installed_file("config", "adapt.yaml")``)."""
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("maml_ros"), *parts)


def installed_config() -> Path:
    """The installed config/adapt.yaml."""
    return installed_file("config", "adapt.yaml")


def demo_tasks(seed: int, robot: str = DEFAULT_ROBOT) -> list[TaskSpec]:
    """One held-out reach task and one held-out dynamics task for ``robot``."""
    return [
        sample_tasks("reach", 1, split="test", seed=seed, robot=robot)[0],
        sample_tasks("dynamics", 1, split="test", seed=seed, robot=robot)[0],
    ]


class NodeProcesses:
    """The three nodes as child processes, logging to files; stopped with SIGINT."""

    def __init__(self, commands: dict[str, list[str]], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs: dict[str, Path] = {}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []
        for name, command in commands.items():
            self.launch(name, command)

    def launch(self, name: str, command: list[str]) -> int:
        """Starts ``command`` as process ``name``, logging to ``<log_dir>/<name>.log``; its pid."""
        self.logs[name] = self.log_dir / f"{name}.log"
        out = open(self.logs[name], "wb")  # noqa: SIM115 (closed in stop())
        self._files.append(out)
        self.procs[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        return self.procs[name].pid

    def check_alive(self) -> None:
        """Raises DemoError naming a node that exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(
                    f"{name} died with exit code {proc.returncode}; log tail:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 20) -> str:
        """The end of a node's log."""
        text = self.logs[name].read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 15.0) -> dict[str, int]:
        """SIGINT to every node, then their exit codes (SIGKILL after ``timeout_s``)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        codes: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        for out in self._files:
            out.close()
        return codes


class StatusWatcher:
    """Follows the adaptation node's status and publishes task changes."""

    def __init__(self, node: Node, status_topic: str) -> None:
        self.node = node
        self._cond = threading.Condition()
        self.status: dict[str, Any] | None = None
        node.create_subscription(String, status_topic, self._on_status, LATCHED_QOS)

    def _on_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        if isinstance(status, dict):
            with self._cond:
                self.status = status
                self._cond.notify_all()

    def wait(self, predicate: Any, timeout_s: float, procs: NodeProcesses, what: str) -> dict:
        """The first status satisfying ``predicate``; DemoError on timeout or a dead node."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.status is None or not predicate(self.status):
                procs.check_alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(
                        f"timed out after {timeout_s:.0f} s waiting for {what}; "
                        f"last status: {self.status}"
                    )
                self._cond.wait(min(left, 0.2))
            return dict(self.status)


def save_plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Bar chart of the pre- and post-update return per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['family']}" for r in results]
    xs = range(len(results))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for offset, when in ((-0.2, "pre"), (0.2, "post")):
        bars = ax.bar(
            [x + offset for x in xs],
            [r[f"return_{when}"] for r in results],
            0.4,
            label=f"{when}-update",
        )
        success = [f"success {r[f'success_{when}']:.2f}" for r in results]
        ax.bar_label(bars, success, label_type="center", fontsize=8)
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("episode return (higher is better)")
    ax.set_title("Adaptation over ROS 2 (simulated arm)")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: Sequence[dict[str, Any]]) -> None:
    """The per-task numbers, one row each."""
    print(
        f"{'task':<16}{'return pre':>12}{'return post':>13}{'success pre':>13}"
        f"{'success post':>14}{'version':>9}{'adapt ms':>10}"
    )
    for r in results:
        print(
            f"{r['family']:<16}{r['return_pre']:>12.3f}{r['return_post']:>13.3f}"
            f"{r['success_pre']:>13.2f}{r['success_post']:>14.2f}{r['policy_version']:>9d}"
            f"{(r['adapt_latency_ms'] or 0.0):>10.1f}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="maml-ros-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--checkpoint", default="", help="policy checkpoint ('' = shipped)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--params-file", type=Path, default=None, help="default: installed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out tasks")
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=None,
        help="sim speed override (default: the params file's, 1 = real time)",
    )
    parser.add_argument("--rollouts", type=int, default=None, help="override K")
    parser.add_argument(
        "--adaptation-rounds",
        type=int,
        default=None,
        help="override the adaptation node's adaptation_rounds (1-5)",
    )
    parser.add_argument(
        "--robot",
        default=DEFAULT_ROBOT,
        choices=robot_names(),
        help="robot description; its shipped models/<robot>_maml.safetensors unless --checkpoint",
    )
    parser.add_argument("--timeout-s", type=float, default=180.0, help="per adaptation")
    args = parser.parse_args(argv)
    if (args.real_time_factor is not None and args.real_time_factor < 0) or args.timeout_s <= 0:
        parser.error("--real-time-factor must be >= 0 and --timeout-s > 0")
    if args.rollouts is not None and args.rollouts < 1:
        parser.error("--rollouts must be >= 1")
    low, high = ADAPTATION_ROUNDS_RANGE
    if args.adaptation_rounds is not None and not low <= args.adaptation_rounds <= high:
        parser.error(f"--adaptation-rounds must be in [{low}, {high}]")
    shipped = installed_file("models", shipped_model_name(args.robot))
    if not args.checkpoint and not shipped.is_file():
        parser.exit(2, no_shipped_model_message(args.robot, parser.prog) + " as --checkpoint\n")
    return args


def node_commands(
    args: argparse.Namespace, params_file: Path, deploy_key: Path
) -> dict[str, list[str]]:
    """The command line of each node; the controller and the adaptation node are paired by
    ``deploy_key``."""
    common = ["--ros-args", "--params-file", str(params_file)]
    paired = ["-p", f"deploy_key_file:={deploy_key}"]
    adaptation = [*paired, "-p", f"device:={args.device}"]
    if args.checkpoint:  # '' (the shipped checkpoint) is the node's default
        adaptation += ["-p", f"checkpoint:={args.checkpoint}"]
    if args.rollouts is not None:
        adaptation += ["-p", f"rollouts:={args.rollouts}"]
    if args.adaptation_rounds is not None:
        adaptation += ["-p", f"adaptation_rounds:={args.adaptation_rounds}"]
    sim_arm, controller = [], list(paired)
    if args.robot != DEFAULT_ROBOT:
        robot = ["-p", f"robot:={args.robot}"]
        adaptation, sim_arm, controller = adaptation + robot, list(robot), controller + robot
    if args.real_time_factor is not None:
        sim_arm += ["-p", f"real_time_factor:={args.real_time_factor}"]
        if args.real_time_factor != 1.0:  # sim stamps drift away from the wall clock
            controller += ["-p", "stamp_tolerance_s:=0.0"]
            adaptation += ["-p", "stamp_tolerance_s:=0.0"]
    return {
        "sim_arm": [find_executable("sim_arm_node"), *common, *sim_arm],
        "policy_controller": [find_executable("policy_controller_node"), *common, *controller],
        "adaptation": [find_executable("adaptation_node"), *common, *adaptation],
    }


def run_demo(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs the nodes and both adaptations; returns the per-task results."""
    params_file = args.params_file or installed_config()
    if not params_file.is_file():
        raise DemoError(f"params file {params_file} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    key_folder = tempfile.mkdtemp(prefix="maml_ros_demo_key_")  # mode 0700, removed below
    deploy_key = create_deploy_key(key_folder)
    procs = NodeProcesses(node_commands(args, params_file, deploy_key), args.out / "logs")
    rclpy.init()
    node = rclpy.create_node("maml_ros_demo")
    watcher = StatusWatcher(node, "adaptation/status")
    spinner = threading.Thread(target=_spin, args=(node,), daemon=True)
    spinner.start()
    results: list[dict[str, Any]] = []
    try:
        watcher.wait(lambda s: s.get("phase") == "idle", 60.0, procs, "the adaptation node")
        # A node of its own: TaskDelivery spins it while it waits for the acknowledgements.
        delivery = TaskDelivery(rclpy.create_node("maml_ros_demo_tasks"), DEFAULT_REQUIRED)
        for index, task in enumerate(demo_tasks(args.seed, args.robot), start=1):
            print(f"[demo] task {index}: {task.family} {task.to_json()}", flush=True)
            t0 = time.monotonic()
            change = TaskChange(f"demo-{index}", task)
            report = delivery.deliver(change, 30.0)
            procs.check_alive()
            if not report.delivered:
                raise DemoError(
                    f"task {change.id} not delivered: missing {report.missing}, "
                    f"refused {report.refused}"
                )
            status = watcher.wait(
                lambda s, i=index: s.get("adaptation_id") == i and s.get("phase") in FINAL_PHASES,
                args.timeout_s,
                procs,
                f"adaptation {index} ({task.family})",
            )
            if status["phase"] == "failed":
                raise DemoError(f"adaptation {index} failed: {status.get('reason')}")
            results.append(
                {
                    "family": task.family,
                    "return_pre": status["return_pre"],
                    "return_post": status["return_post"],
                    "success_pre": status["success_pre"],
                    "success_post": status["success_post"],
                    "policy_version": status["policy_version"],
                    "phase": status["phase"],
                    "rollouts": status["rollouts_collected"],
                    "round_returns": status.get("round_returns"),
                    "adapt_latency_ms": status["adapt_latency_ms"],
                    "wall_s": round(time.monotonic() - t0, 2),
                }
            )
            print(f"[demo] task {index} {status['phase']} in {results[-1]['wall_s']} s", flush=True)
    finally:
        codes = procs.stop()
        shutil.rmtree(key_folder, ignore_errors=True)
        node.destroy_node()
        rclpy.try_shutdown()
        spinner.join(timeout=5.0)
    bad = {name: code for name, code in codes.items() if code != 0}
    if bad:
        raise DemoError(f"nodes did not exit cleanly: {bad}")
    return results


def _spin(node: Node) -> None:
    """Spins ``node`` on an executor of its own: TaskDelivery spins its node on rclpy's global
    executor from the main thread, and two threads on one executor end this spin (silently,
    under the suppress below: the status stopped arriving and the demo timed out)."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    with contextlib.suppress(Exception):  # the context shuts down at the end of the demo
        executor.spin()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``maml-ros-demo``."""
    args = parse_args(argv)
    t0 = time.monotonic()
    try:
        results = run_demo(args)
    except DemoError as err:
        print(f"[demo] FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    print_table(results)
    plot = args.out / "demo_returns.png"
    save_plot(results, plot)
    summary = {"tasks": results, "wall_s": round(time.monotonic() - t0, 1)}
    (args.out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] plot: {plot}; results: {args.out / 'demo.json'}; log: {args.out / 'logs'}")
    print(json.dumps({"tasks": [{k: r[k] for k in _SUMMARY_KEYS} for r in results]}))
    return 0


_SUMMARY_KEYS = (
    "family",
    "return_pre",
    "return_post",
    "success_pre",
    "success_post",
    "policy_version",
    "round_returns",
)

if __name__ == "__main__":
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    raise SystemExit(main())
