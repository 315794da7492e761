"""Bench helpers that need ROS: node processes in an isolated domain, their memory and CPU,
a CPU-load process, and the bench process as a fast fake arm driver."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import shipped_bundle, summarize_ms

from maml_ros.rl.pg import Rollouts
from maml_ros.ros.common import set_realtime_priority
from maml_ros.ros.demo import NodeProcesses, find_executable

# --------------------------------------------------------------------------- node processes


def isolate_dds() -> dict[str, str]:
    """Localhost-only discovery and a random domain for this process and its children, unless
    the caller (tools/isolated.sh) already chose; returns the values."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    if "ROS_HOME" not in os.environ:
        os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="maml_bench_ros_")
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}


def wait_for_nodes(
    predicate: Any, timeout_s: float, group: NodeGroup, what: str, poll_s: float = 0.01
) -> None:
    """Poll until ``predicate()``; raise with a node's log if one dies or on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        dead = group.dead()
        if dead:
            name = next(iter(dead))
            log = group.tail(name)
            raise RuntimeError(f"{name} exited ({dead[name]}) waiting for {what}:\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


FAKE_DRIVER_NODES = ("policy_controller", "adaptation")


def start_nodes_for_fake_driver(
    group: NodeGroup,
    pids: dict[str, int],
    policy_path: Path,
    rollouts: int,
    rate_hz: float,
    bad_every: int,
    controller_params: dict[str, Any] | None = None,
    ready_timeout_s: float = 60.0,
    before_wait: Any = None,
) -> FakeArmDriver:
    """Starts the controller (exploring, on ``policy_path``) and an adaptation node (K =
    ``rollouts``, 50-step episodes, one evaluation episode) into ``pids``, and returns this
    process's :class:`FakeArmDriver` once both nodes are ready (``before_wait()`` first)."""
    pids["policy_controller"] = group.start(
        "policy_controller",
        "policy_controller_node",
        {"initial_policy": str(policy_path), "explore": True, **(controller_params or {})},
    )
    pids["adaptation"] = group.start(
        "adaptation",
        "adaptation_node",
        {
            "checkpoint": str(policy_path),
            "device": "cpu",
            "rollouts": rollouts,
            "horizon": 50,
            "eval_episodes": 1,
            "step_timeout_s": 2.0,
            "policy_ack_timeout_s": 1.0,
        },
    )
    driver = FakeArmDriver(rate_hz, bad_every=bad_every, status_nodes=FAKE_DRIVER_NODES)
    if before_wait is not None:
        before_wait()
    wait_for_nodes(
        lambda: (
            driver.status.get("policy_controller", {}).get("has_policy")
            and driver.status.get("adaptation", {}).get("ready")
        ),
        ready_timeout_s,
        group,
        "both nodes ready",
        poll_s=0.05,
    )
    return driver


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process in MiB, None if it is gone."""
    return _proc_status_kb(pid, "VmHWM")


def rss_mb(pid: int) -> float | None:
    """VmRSS (current resident set) of a live process in MiB, None if it is gone."""
    return _proc_status_kb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used so far (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _proc_status_kb(pid: int, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024.0, 2)
    except (OSError, ValueError):
        return None
    return None


class NodeGroup(NodeProcesses):
    """Node processes started with ``--ros-args``, logging to files, stopped with SIGINT."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        super().__init__({}, Path(log_dir or tempfile.mkdtemp(prefix="maml_bench_logs_")))

    def start(self, name: str, executable: str, params: dict[str, Any] | None = None) -> int:
        """Start ``executable`` (found by :func:`find_executable`) with ``-p k:=v``; its pid."""
        command = [find_executable(executable), "--ros-args"]
        for key, value in (params or {}).items():
            command += ["-p", f"{key}:={_param_text(value)}"]
        return self.launch(name, command)

    def start_python(self, name: str, args: Sequence[str]) -> int:
        """Start ``python args...`` (a helper process) in the group; its pid."""
        return self.launch(name, [sys.executable, *args])

    def dead(self) -> dict[str, int]:
        """Processes that exited, with their exit codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def __enter__(self) -> NodeGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_param_text(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value) if value == "" or any(c in value for c in " ,[]:") else value
    return str(value)


# --------------------------------------------------------------------------- real-time driver


def _priority(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 98:
        raise argparse.ArgumentTypeError(f"must be in [0, 98], got {value}")
    return value


def add_realtime_option(parser: argparse.ArgumentParser) -> None:
    """``--realtime-priority N``: SCHED_FIFO for the controller and the bench's driver side."""
    parser.add_argument(
        "--realtime-priority",
        type=_priority,
        default=0,
        help="SCHED_FIFO priority of the controller (its realtime_priority) and of this process,"
        " the arm driver (0: normal scheduling)",
    )


def run_driver_realtime(priority: int) -> None:
    """Puts this process, the driver side of the loop as on a robot, under SCHED_FIFO at
    ``priority`` (0: nothing); raises if the system refuses."""
    if priority:
        problem = set_realtime_priority(priority)
        if problem:
            raise RuntimeError(f"realtime priority {priority} refused here: {problem}")


# --------------------------------------------------------------------------- CPU load


def adapt_load(seconds: float, k: int = 20, threads: int = 1) -> int:
    """Run ``adapt_policy`` (K rollouts of horizon 50, shipped architecture) back to back for
    ``seconds``, as the adaptation node's inner update loads the CPU; the number of updates."""
    from maml_ros.rl.adapt import adapt_policy

    torch.set_num_threads(threads)
    bundle, _ = shipped_bundle()
    rng = np.random.default_rng(0)
    spec = bundle.spec
    rollouts = Rollouts.from_numpy(
        rng.standard_normal((k, 50, spec.obs_dim)),
        rng.uniform(-1, 1, (k, 50, spec.act_dim)),
        rng.standard_normal((k, 50)),
    )
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        adapt_policy(bundle, rollouts)
        count += 1
    return count


def relay(seconds: float) -> int:
    """A bare rclpy relay, the controller's floor: each joint state on ``relay/joint_states``
    is answered on ``relay/actions`` with its stamp and nothing else (no policy, no checks);
    the count. It has a topic of its own so that it never competes with the controller for
    the same message (see :class:`FakeArmDriver`'s ``relay_states``)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from maml_ros.ros import interfaces as itf

    rclpy.init()
    node = rclpy.create_node("bench_relay")
    publisher = node.create_publisher(JointState, RELAY_TOPIC, itf.STREAM_QOS)
    answer = JointState()
    count = 0

    def on_state(msg: JointState) -> None:
        nonlocal count
        answer.header.stamp = msg.header.stamp
        publisher.publish(answer)
        count += 1

    node.create_subscription(JointState, RELAY_STATES_TOPIC, on_state, itf.JOINT_STATES_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + seconds
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):  # the bench's SIGINT
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()
    return count


# --------------------------------------------------------------------------- a fake arm driver

RELAY_TOPIC = "relay/actions"
"""Where :func:`relay` answers."""
RELAY_STATES_TOPIC = "relay/joint_states"
"""What :func:`relay` answers."""

JOINT_NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
BAD_KINDS = ("nan", "wrong_length", "stale_stamp")


class FakeArmDriver:
    """The bench process as a fast arm driver (a kinematic 7-joint arm) for the real nodes.

    A publisher thread sends stamped ``joint_states`` at ``rate_hz`` (and, for each valid state,
    its ``reward`` on the same stamp); the arm integrates the controller's echoed actions; the
    ``reset`` service starts a new episode. Every ``bad_every``-th slot (0: never) carries a bad
    joint state instead, cycling through :data:`BAD_KINDS`. Send and receive times (perf
    counter) are recorded per stamp, so the controller's state-in -> action-out latency is
    measured on the wire. Latched ``~/status`` JSON of the named nodes is kept.
    """

    def __init__(
        self,
        rate_hz: float,
        bad_every: int = 0,
        status_nodes: Sequence[str] = ("policy_controller",),
        listen_commands: bool = False,
        rewards: bool = True,
        listen_relay: bool = False,
    ) -> None:
        """``listen_relay``: also send each joint state on ``relay/joint_states`` half a period
        after ``joint_states`` and time the relay's answers: the relay and the controller
        then see the same load at the same rate, but never wake for the same message, so
        neither waits for the other's callback on a shared core."""
        import rclpy
        from geometry_msgs.msg import Vector3Stamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import Trigger

        from maml_ros.ros import interfaces as itf

        if not rclpy.ok():
            rclpy.init()
        self.rate_hz = rate_hz
        self.period = 1.0 / rate_hz
        self.bad_every = bad_every
        self.rewards = rewards
        self.node = rclpy.create_node("bench_driver")
        self._state_pub = self.node.create_publisher(
            JointState, itf.JOINT_STATES_TOPIC, itf.JOINT_STATES_QOS
        )
        self._reward_pub = self.node.create_publisher(
            Vector3Stamped, itf.REWARD_TOPIC, itf.STREAM_QOS
        )
        self._task_pub = self.node.create_publisher(String, itf.TASK_TOPIC, itf.TASK_QOS)
        self._active_task_pub = self.node.create_publisher(
            String, itf.ACTIVE_TASK_TOPIC, itf.LATCHED_QOS
        )
        self._session = f"bench-{os.getpid()}"
        self.node.create_subscription(
            JointState, itf.actions_topic(), self._on_action, itf.STREAM_QOS
        )
        self.relay_sent: dict[int, float] = {}  # stamp -> relay state send time
        self.relay_received: dict[int, float] = {}  # stamp -> relay answer time
        self._relay_pub = None
        if listen_relay:
            self.node.create_subscription(JointState, RELAY_TOPIC, self._on_relay, itf.STREAM_QOS)
            self._relay_pub = self.node.create_publisher(
                JointState, RELAY_STATES_TOPIC, itf.JOINT_STATES_QOS
            )
        if listen_commands:
            self.node.create_subscription(
                Float64MultiArray, itf.commands_topic(), self._on_command, itf.COMMAND_QOS
            )
        self.status: dict[str, dict[str, Any]] = {}
        self.status_log: list[tuple[float, str, dict[str, Any]]] = []
        for name in status_nodes:
            self.node.create_subscription(
                String,
                f"/{name}/status",
                lambda msg, name=name: self._on_status(name, msg),
                itf.LATCHED_QOS,
            )
        self.node.create_service(Trigger, itf.RESET_SERVICE, self._on_reset)
        self._JointState = JointState
        self._lock = threading.Lock()
        self.positions = np.zeros(7)
        self.velocities = np.zeros(7)
        self.goal = np.full(7, 0.3)
        self.episode = 0
        self.sent: dict[int, float] = {}  # valid stamp -> send time
        self.received: dict[int, float] = {}  # stamp -> action receive time
        self.command_received: dict[int, float] = {}  # stamp -> command receive time
        self.bad_sent = dict.fromkeys(BAD_KINDS, 0)
        self.slots = 0
        self._last_valid_stamp = 0
        self._running = False
        self.started_at = 0.0
        self.elapsed = 0.0
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._spin_thread = threading.Thread(target=self._spin, daemon=True)
        self._spin_thread.start()
        self._pub_thread = None

    # -- callbacks (executor thread)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException, RuntimeError):
            self._executor.spin()

    def _on_action(self, msg: Any) -> None:
        now = time.perf_counter()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.received.setdefault(stamp, now)
        if len(msg.velocity) == 7:
            with self._lock:
                self.velocities = np.clip(np.asarray(msg.velocity), -1.0, 1.0) * 1.5

    def _on_relay(self, msg: Any) -> None:
        now = time.perf_counter()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.relay_received.setdefault(stamp, now)

    def _on_command(self, msg: Any) -> None:
        from maml_ros.ros.convert import command_stamp_ns

        now = time.perf_counter()
        stamp = command_stamp_ns(msg)
        if stamp:  # 0 / None: a hold, which answers no state
            self.command_received.setdefault(stamp, now)

    def _on_status(self, name: str, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        self.status[name] = data
        self.status_log.append((time.perf_counter(), name, data))

    def _on_reset(self, request: Any, response: Any) -> Any:
        with self._lock:
            self.episode += 1
            self.positions[:] = 0.0
            self.velocities[:] = 0.0
            episode = self.episode
        response.success = True
        response.message = f"fake arm reset; episode {episode}"
        return response

    # -- publishing (own thread)

    def start(self, seconds: float) -> None:
        """Publish for ``seconds`` in a background thread (see :meth:`wait`)."""
        self._running = True
        self.started_at = time.perf_counter()
        self._pub_thread = threading.Thread(target=self._publish_loop, args=(seconds,))
        self._pub_thread.start()

    def wait(self) -> None:
        """Wait until the publisher thread is done."""
        if self._pub_thread is not None:
            self._pub_thread.join()

    def stop(self) -> None:
        """Stop publishing now."""
        self._running = False
        self.wait()

    def _publish_loop(self, seconds: float) -> None:
        from maml_ros.ros.convert import reward_to_msg

        msg = self._JointState()
        msg.name = list(JOINT_NAMES)
        start = self.started_at
        base_ns = time.time_ns()
        n_slots = int(seconds * self.rate_hz)
        for i in range(n_slots):
            if not self._running:
                break
            due = start + i * self.period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamp = base_ns + int(i * self.period * 1e9)
            with self._lock:
                self.positions += self.velocities * self.period
                positions = self.positions.copy()
                velocities = self.velocities.copy()
                episode = self.episode
            bad = self.bad_every and i % self.bad_every == self.bad_every - 1
            kind = BAD_KINDS[(i // self.bad_every) % len(BAD_KINDS)] if bad else None
            if kind == "nan":
                positions[i % 7] = float("nan")
            elif kind == "wrong_length":
                positions = positions[:6]
            elif kind == "stale_stamp":
                stamp = self._last_valid_stamp - 1_000_000_000
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.position = positions.tolist()
            msg.velocity = velocities.tolist()
            if kind is None:
                self.sent[stamp] = time.perf_counter()
                self._last_valid_stamp = stamp
            self._state_pub.publish(msg)
            if kind is not None:
                self.bad_sent[kind] += 1
            elif self.rewards:
                reward = -float(np.linalg.norm(positions - self.goal))
                self._reward_pub.publish(reward_to_msg(stamp, reward, reward > -0.05, episode))
            if self._relay_pub is not None and kind is None:
                delay = due + self.period / 2 - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.relay_sent[stamp] = time.perf_counter()
                self._relay_pub.publish(msg)
            self.slots += 1
        self.elapsed = time.perf_counter() - start
        self._running = False

    # -- results

    def publish_task(self, task_json: str) -> None:
        """Publish a task change and, as the driver, confirm it (interfaces.py's contract) for
        the states stamped from now on."""
        from std_msgs.msg import String

        from maml_ros.ros.convert import active_task_to_msg, task_from_msg

        msg = String(data=task_json)
        self._task_pub.publish(msg)
        confirmation = active_task_to_msg(task_from_msg(msg), time.time_ns(), self._session)
        self._active_task_pub.publish(confirmation)

    def latency(self, since: float = 0.0, answer: str = "action") -> dict[str, Any]:
        """State-in -> answer latency per valid state sent at or after ``since`` (perf
        counter), and missed ticks: states whose answer had not come back before the next state
        was due (one period later). ``answer``: the controller's ``action`` echo or its
        ``command`` (``listen_commands``), or the bare ``relay``'s answer."""
        latencies = []
        missed = 0
        received = {
            "action": self.received,
            "command": self.command_received,
            "relay": self.relay_received,
        }[answer]
        sent_at = self.relay_sent if answer == "relay" else self.sent
        sent_after = {s: t for s, t in sent_at.items() if t >= since}
        for stamp, sent in sent_after.items():
            got = received.get(stamp)
            if got is None or got - sent > self.period:
                missed += 1
            if got is not None:
                latencies.append(got - sent)
        return {
            "states_sent": len(sent_after),
            "actions_received": len(latencies),
            "missed_ticks": missed,
            "tick_ms": summarize_ms(latencies),
        }

    def bad_total(self) -> int:
        """Bad joint states sent."""
        return sum(self.bad_sent.values())

    def close(self) -> None:
        """Stop publishing, the executor and the node."""
        import rclpy

        self.stop()
        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()
        self._spin_thread.join(timeout=2.0)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="bench helper processes")
    parser.add_argument("mode", choices=["adapt-load", "relay"])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=20)
    add_realtime_option(parser)
    cli = parser.parse_args()
    # The bench stops its helpers with SIGINT, which a background parent may have set ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if cli.mode == "relay":
        run_driver_realtime(cli.realtime_priority)
        print(json.dumps({"relayed": relay(cli.seconds)}), flush=True)
        sys.exit(0)
    try:
        updates = adapt_load(cli.seconds, cli.k)
    except KeyboardInterrupt:  # stopped early by the bench
        updates = -1
    print(json.dumps({"adapt_updates": updates}), flush=True)
