"""Fuzz: seeded valid and invalid messages on every input topic and calls on every service of
the running nodes (issue 20).

The graph: the real ``sim_arm_node`` (the driver, real time), ``policy_controller_node`` and
``adaptation_node`` as processes (bench/_nodes.py's NodeGroup, an isolated DDS domain), and
this process as the fuzzer. From one seeded generator (``--seed``: the same seed replays the
same inputs in the same order) it sends ``--count`` messages to each input topic
(``joint_states``, ``reward``, ``arm_controller/actions``, ``task``, ``policy``,
``policy_controller/status``) and ``--count`` calls to each service (``reset``,
``arm_controller/set_exploration``), interleaved in a shuffled order with random pauses and
bursts. Fields are valid or not (NaN/inf, lengths, names, huge arrays and strings), and so are
stamps (zero, far future, far past, out of order, unnormalised nanoseconds).
Policies are only ever bad ones (garbage, truncated, a corrupted header, NaN weights, weights
that overflow on the probe, the wrong shape or joint names, oversized, a replay of the running
version) or a replay of the genuine policy: the fuzzer never sends a good policy of its own,
so the controller must only ever run the adaptation node's.

Then a valid task is sent and the adaptation it starts must complete (``done``; the rollback
margin is set so high that a worse return never rolls back: this checks that the protocol
still runs end to end, not that the update helps).

Keys of the last line (JSON): ``seed``, ``messages_per_topic`` (topic -> sent),
``calls_per_service`` (service -> sent, answered, busy, unanswered), ``dropped`` (node -> kind
-> count, from each node's ``~/status``), ``last_drop_reason`` (node -> kind -> reason),
``accepted`` (what the nodes took: controller ticks and policy updates, task acks accepted,
successful service calls), ``node_crashes`` (must be 0), ``bad_policies_accepted`` (controller
statuses naming a run or version the adaptation node never published: must be 0),
``commands`` (received, non-finite, over the velocity limit: must be 0, 0),
``adaptation_after_fuzz`` (must be ``done``) with its ``reason``, ``fuzz_seconds``.

    python bench/bench_fuzz.py [--count 10000] [--seed 0] [--max-in-flight 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit_json, machine_info, shipped_bundle
from _nodes import NodeGroup, isolate_dds, wait_for_nodes

from maml_ros.rl.checkpoint import bundle_to_bytes, save_bundle
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec
from maml_ros.sim import sample_tasks

TOPICS = ("joint_states", "reward", "actions", "task", "policy", "controller_status")
SERVICES = ("reset", "set_exploration")
NODES = ("sim_arm", "policy_controller", "adaptation")
JOINTS = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
MAX_VELOCITY = 1.5
POLICY_MAX_BYTES = 1 << 20
"""The controller's policy_max_bytes here, so that an oversized policy stays cheap to send."""
FINAL_PHASES = ("done", "rolled_back", "failed", "cancelled")


# --------------------------------------------------------------------------- generators


class Generator:
    """Seeded generator of fuzz messages (valid or not) for each input topic."""

    def __init__(self, seed: int, genuine_policy: bytes, bad_pool: list[bytes]) -> None:
        self.rng = np.random.default_rng(seed)
        self.genuine = genuine_policy
        self.bad_pool = bad_pool
        self.tasks = sample_tasks("reach", 8, "test", seed=seed)

    def _choice(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def stamp(self, msg: Any) -> None:
        """A stamp near now (mostly) or a bad one: zero, far future/past, unnormalised."""
        now = time.time_ns()
        kind = self._choice(["now"] * 6 + ["zero", "future", "past", "jitter", "nanosec", "old"])
        if kind == "zero":
            sec, nsec = 0, 0
        elif kind == "future":
            sec, nsec = divmod(now + int(1e9 * self.rng.uniform(700, 1e6)), 1_000_000_000)
        elif kind == "past":
            sec, nsec = divmod(now - int(1e9 * self.rng.uniform(700, 1e6)), 1_000_000_000)
        elif kind == "jitter":  # within tolerance but out of order
            sec, nsec = divmod(now - int(1e9 * self.rng.uniform(0, 5)), 1_000_000_000)
        elif kind == "nanosec":
            sec, nsec = now // 1_000_000_000, int(self.rng.integers(1_000_000_000, 2**32))
        elif kind == "old":
            sec, nsec = int(self.rng.integers(1, 2**31)), int(self.rng.integers(0, 10**9))
        else:
            sec, nsec = divmod(now, 1_000_000_000)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(sec), int(nsec)

    def _floats(self, n: int) -> list[float]:
        values = self.rng.normal(0.0, 1.0, n)
        if n and self.rng.random() < 0.3:
            values[int(self.rng.integers(n))] = self._choice([math.nan, math.inf, -math.inf, 1e308])
        return values.tolist()

    def _names(self) -> list[str]:
        kind = self._choice(["valid"] * 5 + ["shuffled", "missing", "duplicate", "extra", "odd"])
        names = list(JOINTS)
        if kind == "shuffled":
            self.rng.shuffle(names)
        elif kind == "missing":
            names.pop(int(self.rng.integers(7)))
        elif kind == "duplicate":
            names[int(self.rng.integers(7))] = names[0]
        elif kind == "extra":
            names.append("gripper_joint")
        elif kind == "odd":
            names = [self._choice(["", "x" * 5000, "\u00e9\u2603", "lbr_iiwa_joint_8"])] * 7
        return names

    def _length(self, n: int) -> int:
        return self._choice([n] * 6 + [0, n - 1, n + 1, int(self.rng.integers(0, 20_000))])

    def joint_states(self, msg_type: Any) -> Any:
        msg = msg_type()
        self.stamp(msg)
        msg.name = self._names()
        n = len(msg.name)
        msg.position = self._floats(self._length(n))
        msg.velocity = self._floats(self._length(n))
        if self.rng.random() < 0.1:
            msg.effort = self._floats(int(self.rng.integers(0, 50)))
        return msg

    def actions(self, msg_type: Any) -> Any:
        msg = msg_type()
        self.stamp(msg)
        msg.name = self._names()
        msg.velocity = self._floats(self._length(len(msg.name)))
        msg.header.frame_id = self._choice(["explore", "mean", "", "EXPLORE", "x" * 300])
        return msg

    def reward(self, msg_type: Any) -> Any:
        msg = msg_type()
        self.stamp(msg)
        msg.vector.x = self._choice([float(self.rng.normal()), math.nan, math.inf, -1e308])
        msg.vector.y = self._choice([0.0, 1.0, 0.5, math.nan, -1.0])
        msg.vector.z = self._choice([0.0, 1.0, 3.0, 2.5, -1.0, 1e300, math.nan])
        msg.header.frame_id = self._choice(
            ["", "sha-0@x", "task@session", "@", "a@b@c", "\u2603@s", "t" * 500 + "@s"]
        )
        return msg

    def task(self, msg_type: Any) -> Any:
        task = self._choice(self.tasks).to_dict()
        kind = self._choice(
            [
                *("valid", "valid_id", "bad_id", "bad_json", "nested", "huge_int", "nan"),
                *("family", "missing", "big", "not_object", "unknown_key"),
            ]
        )
        if kind == "valid":
            text = json.dumps(task)
        elif kind == "valid_id":
            text = json.dumps({**task, "id": f"fuzz-{int(self.rng.integers(1_000_000))}"})
        elif kind == "bad_id":
            text = json.dumps(
                {**task, "id": self._choice(["", "a b", "x" * 65, 7, None, "\u00e9"])}
            )
        elif kind == "bad_json":
            text = json.dumps(task)[: int(self.rng.integers(0, 40))]
        elif kind == "nested":  # under the size limit, deeper than Python's recursion limit
            text = "[" * 30_000 + "]" * 30_000
        elif kind == "huge_int":
            text = json.dumps({**task, "payload_kg": 0}).replace(
                '"payload_kg": 0', '"payload_kg": ' + "9" * 400
            )
        elif kind == "nan":
            text = json.dumps({**task, "joint_gain": math.nan})
        elif kind == "family":
            text = json.dumps({**task, "family": "juggle"})
        elif kind == "missing":
            text = json.dumps({k: v for k, v in task.items() if k != "goal"})
        elif kind == "big":
            text = json.dumps({**task, "note": "x" * 70_000})
        elif kind == "not_object":
            text = self._choice(["42", '"reach"', "null", "[]", "true"])
        else:
            text = json.dumps({**task, "id": "fuzz-u", "colour": "red"})
        return msg_type(data=text)

    def policy(self, msg_type: Any) -> Any:
        kinds = ["garbage", "truncated", "header_len", "header_json", "nan", "pool", "replay"]
        if self.rng.random() < 0.02:  # the rare ones: about 0.1% oversized (1 MiB each)
            kinds = [*kinds, "empty", "oversized"]
        kind = self._choice(kinds)
        data = self.genuine
        if kind == "garbage":
            data = self.rng.bytes(int(self.rng.integers(1, 4000)))
        elif kind == "truncated":
            data = self.genuine[: int(self.rng.integers(0, len(self.genuine)))]
        elif kind == "header_len":
            size = int(self.rng.choice([0, 7, 2**63 - 1, len(self.genuine) + 1, 100_000_000]))
            data = struct.pack("<Q", size) + self.genuine[8:]
        elif kind == "header_json":
            (header_len,) = struct.unpack("<Q", self.genuine[:8])
            junk = self._choice([b"{", b"[]", b"{}", b'{"__metadata__": 5}', b"\xff" * 10])
            data = struct.pack("<Q", len(junk)) + junk + self.genuine[8 + header_len :]
        elif kind == "nan":  # a NaN float32 written somewhere in the tensor data
            (header_len,) = struct.unpack("<Q", self.genuine[:8])
            start = 8 + header_len
            at = start + 4 * int(self.rng.integers(0, (len(self.genuine) - start) // 4))
            data = self.genuine[:at] + struct.pack("<f", math.nan) + self.genuine[at + 4 :]
        elif kind == "pool":
            data = self._choice(self.bad_pool)
        elif kind == "empty":
            data = b""
        elif kind == "oversized":
            data = self.rng.bytes(POLICY_MAX_BYTES + 1)
        msg = msg_type()
        msg.data = data
        return msg

    def controller_status(self, msg_type: Any) -> Any:
        kind = self._choice(["ok_like", "garbage", "nested", "big", "types", "nan"])
        if kind == "ok_like":
            text = json.dumps({"run_id": "fuzz-run", "policy_version": int(self.rng.integers(9))})
        elif kind == "garbage":
            text = self.rng.bytes(int(self.rng.integers(0, 200))).decode("latin-1")
        elif kind == "nested":
            text = "[" * 30_000 + "]" * 30_000
        elif kind == "big":
            text = json.dumps({"run_id": "x" * 70_000, "policy_version": 1})
        elif kind == "types":
            text = json.dumps({"run_id": self._choice([1, None, [], {}]), "policy_version": "2"})
        else:
            text = '{"run_id": "r", "policy_version": NaN}'
        return msg_type(data=text)


def bad_policy_pool(seed: int) -> list[bytes]:
    """Policies that decode but must be refused: wrong shape, wrong joint names, weights that
    overflow on the probe; each under a run id of the fuzzer's own."""
    import torch

    base, _ = shipped_bundle()
    pool = []
    torch.manual_seed(seed)
    spec = PolicySpec(obs_dim=10, act_dim=5, hidden=(8,))
    small = base.replace(
        spec=spec,
        params=GaussianMLPPolicy(spec).params(),
        obs_mean=torch.zeros(10),
        obs_std=torch.ones(10),
        lrs=None,
    )
    pool.append(bundle_to_bytes(small.replace(run_id="fuzzbad-shape", version=10**6)))
    renamed = base.replace(
        run_id="fuzzbad-names", version=10**6, metadata={**base.metadata, "joint_names": ["a"] * 7}
    )
    pool.append(bundle_to_bytes(renamed))
    weight = base.params["mlp.0.weight"].clone()
    weight[:, 0], weight[:, 1] = 3e38, -3e38
    overflow = base.replace(
        run_id="fuzzbad-overflow", version=10**6, params={**base.params, "mlp.0.weight": weight}
    )
    pool.append(bundle_to_bytes(overflow))
    return pool


# --------------------------------------------------------------------------- the fuzzer node


class FuzzNode:
    """The fuzzer's rclpy node: publishers on every input topic, service clients, and the
    observers (the nodes' statuses, the controller's commands, task acks, the policy)."""

    def __init__(self, pids: dict[str, int], max_in_flight: int) -> None:
        import rclpy
        from geometry_msgs.msg import Vector3Stamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray
        from std_srvs.srv import SetBool, Trigger

        from maml_ros.ros import interfaces as itf

        if not rclpy.ok():
            rclpy.init()
        self.types = {
            "joint_states": JointState,
            "reward": Vector3Stamped,
            "actions": JointState,
            "task": String,
            "policy": UInt8MultiArray,
            "controller_status": String,
        }
        self.node = rclpy.create_node("fuzzer")
        n = self.node
        self.pubs = {
            "joint_states": n.create_publisher(
                JointState, itf.JOINT_STATES_TOPIC, itf.JOINT_STATES_QOS
            ),
            "reward": n.create_publisher(Vector3Stamped, itf.REWARD_TOPIC, itf.STREAM_QOS),
            "actions": n.create_publisher(JointState, itf.actions_topic(), itf.STREAM_QOS),
            "task": n.create_publisher(String, itf.TASK_TOPIC, itf.TASK_QOS),
            "policy": n.create_publisher(UInt8MultiArray, itf.POLICY_TOPIC, itf.LATCHED_QOS),
            "controller_status": n.create_publisher(
                String, "/policy_controller/status", itf.LATCHED_QOS
            ),
        }
        self.clients = {
            "reset": [
                n.create_client(Trigger, itf.RESET_SERVICE, qos_profile=itf.SERVICE_QOS)
                for _ in range(max_in_flight)
            ],
            "set_exploration": [
                n.create_client(
                    SetBool,
                    f"arm_controller/{itf.EXPLORATION_SERVICE}",
                    qos_profile=itf.SERVICE_QOS,
                )
                for _ in range(max_in_flight)
            ],
        }
        self.requests = {"reset": Trigger.Request, "set_exploration": SetBool.Request}
        self.futures: dict[str, list[Any]] = {s: [None] * max_in_flight for s in SERVICES}
        self.calls = {s: {"sent": 0, "answered": 0, "busy": 0, "success": 0} for s in SERVICES}
        self._all_futures: dict[str, list[Any]] = {s: [] for s in SERVICES}
        self.pids = pids
        self.lock = threading.Lock()
        self.status: dict[str, dict[str, Any]] = {}
        self.controller_runs: set[tuple[Any, Any]] = set()
        self.commands = {"received": 0, "non_finite": 0, "over_limit": 0}
        self.acks_accepted: dict[str, int] = {}
        self.acks: list[dict[str, Any]] = []
        self.genuine_policy: bytes | None = None
        for name in NODES:
            n.create_subscription(
                String,
                f"/{name}/status",
                lambda msg, name=name: self._on_status(name, msg),
                itf.LATCHED_QOS,
            )
        n.create_subscription(
            Float64MultiArray, itf.commands_topic(), self._on_command, itf.COMMAND_QOS
        )
        n.create_subscription(String, itf.TASK_ACK_TOPIC, self._on_ack, itf.TASK_ACK_QOS)
        n.create_subscription(UInt8MultiArray, itf.POLICY_TOPIC, self._on_policy, itf.LATCHED_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException, RuntimeError):
            self.executor.spin()

    def _on_status(self, name: str, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
        except (ValueError, RecursionError):
            return  # the fuzzer's own garbage on policy_controller/status
        if not isinstance(data, dict) or data.get("pid") != self.pids.get(name):
            return  # not the real node's status (the fuzzer publishes on the controller's)
        with self.lock:
            self.status[name] = data
            if name == "policy_controller" and data.get("has_policy"):
                self.controller_runs.add((data.get("run_id"), data.get("policy_version")))

    def _on_command(self, msg: Any) -> None:
        values = np.asarray(msg.data, dtype=np.float64)
        with self.lock:
            self.commands["received"] += 1
            if not np.isfinite(values).all():
                self.commands["non_finite"] += 1
            elif values.size and np.abs(values).max() > MAX_VELOCITY + 1e-9:
                self.commands["over_limit"] += 1

    def _on_ack(self, msg: Any) -> None:
        try:
            ack = json.loads(msg.data)
        except ValueError:
            return
        with self.lock:
            self.acks.append(ack)
            if ack.get("accepted"):
                node = str(ack.get("node"))
                self.acks_accepted[node] = self.acks_accepted.get(node, 0) + 1

    def _on_policy(self, msg: Any) -> None:
        if self.genuine_policy is None:  # before fuzzing only the adaptation node publishes
            self.genuine_policy = bytes(msg.data)

    def snapshot(self, name: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.status.get(name, {}))

    def publish(self, topic: str, msg: Any) -> None:
        self.pubs[topic].publish(msg)

    def call(self, service: str, request: Any) -> bool:
        """Sends ``request`` on a free client; False when all are waiting for an answer."""
        slots = self.futures[service]
        for i, future in enumerate(slots):
            if future is None or future.done():
                if future is not None:
                    self._count(service, future)
                slots[i] = self.clients[service][i].call_async(request)
                self.calls[service]["sent"] += 1
                return True
        return False

    def _count(self, service: str, future: Any) -> None:
        result = future.result()
        stats = self.calls[service]
        stats["answered"] += 1
        if result.success:
            stats["success"] += 1
        elif result.message == "busy":
            stats["busy"] += 1

    def settle_calls(self, timeout_s: float) -> None:
        """Waits for the calls in flight; counts the answers (the rest stay unanswered)."""
        deadline = time.monotonic() + timeout_s
        pending = [f for s in SERVICES for f in self.futures[s] if f is not None]
        while time.monotonic() < deadline and not all(f.done() for f in pending):
            time.sleep(0.02)
        for service in SERVICES:
            for i, future in enumerate(self.futures[service]):
                if future is not None and future.done():
                    self._count(service, future)
                    self.futures[service][i] = None

    def unanswered(self, service: str) -> int:
        return sum(1 for f in self.futures[service] if f is not None)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()
        self.thread.join(timeout=2.0)


# --------------------------------------------------------------------------- the run


def run_fuzz(
    count: int = 10_000,
    seed: int = 0,
    max_in_flight: int = 8,
    work_dir: str | Path | None = None,
    adapt_timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Runs the fuzz scenario (module docstring) and returns its measurements."""
    isolate_dds()
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench_fuzz_"))
    bundle, _ = shipped_bundle()
    checkpoint = save_bundle(work / "policy.safetensors", bundle)
    group = NodeGroup(work / "logs")
    pids: dict[str, int] = {}
    fuzz: FuzzNode | None = None
    sent = dict.fromkeys(TOPICS, 0)
    result: dict[str, Any] = {}
    try:
        pids["sim_arm"] = group.start("sim_arm", "sim_arm_node", {"real_time_factor": 1.0})
        pids["policy_controller"] = group.start(
            "policy_controller",
            "policy_controller_node",
            {"policy_max_bytes": POLICY_MAX_BYTES, "max_velocity": [MAX_VELOCITY]},
        )
        pids["adaptation"] = group.start(
            "adaptation",
            "adaptation_node",
            {
                "checkpoint": str(checkpoint),
                "device": "cpu",
                "rollouts": 4,
                "horizon": 20,
                "eval_episodes": 1,
                "step_timeout_s": 2.0,
                "policy_ack_timeout_s": 1.0,
                "rollback_margin": 1e9,
                "max_discarded_rollouts": 50,
            },
        )
        fuzz = FuzzNode(pids, max_in_flight)
        wait_for_nodes(
            lambda: (
                fuzz.snapshot("policy_controller").get("has_policy")
                and fuzz.snapshot("adaptation").get("ready")
                and fuzz.snapshot("sim_arm").get("ticks", 0) > 0
                and fuzz.genuine_policy is not None
                and all(c.service_is_ready() for cs in fuzz.clients.values() for c in cs)
            ),
            120.0,
            group,
            "the nodes ready",
            poll_s=0.05,
        )
        before = {name: fuzz.snapshot(name) for name in NODES}
        gen = Generator(seed, fuzz.genuine_policy, bad_policy_pool(seed))
        schedule = [t for t in (*TOPICS, *SERVICES) for _ in range(count)]
        gen.rng.shuffle(schedule)
        started = time.monotonic()
        for i, what in enumerate(schedule):
            if i % 500 == 0 and group.dead():
                break
            if what in SERVICES:
                request = fuzz.requests[what]()
                if what == "set_exploration":
                    request.data = bool(gen.rng.random() < 0.5)
                while not fuzz.call(what, request):
                    time.sleep(0.001)
            else:
                fuzz.publish(what, getattr(gen, what)(fuzz.types[what]))
                sent[what] += 1
            pause = gen.rng.random()
            if pause < 0.002:
                time.sleep(float(gen.rng.uniform(0.05, 0.3)))  # a quiet spell
            elif pause < 0.2:
                time.sleep(0.0005)  # a paced stretch; the rest go in bursts
        fuzz_seconds = time.monotonic() - started
        fuzz.settle_calls(30.0)
        time.sleep(1.5)  # every node publishes its status once a second
        after = {name: fuzz.snapshot(name) for name in NODES}

        # A valid adaptation afterwards.
        task_id = f"after-fuzz-{seed}"
        task = sample_tasks("reach", 1, "test", seed=seed + 1)[0]
        from maml_ros.ros.convert import task_to_msg

        deadline = time.monotonic() + adapt_timeout_s
        phase, reason = None, None
        while time.monotonic() < deadline and not group.dead():
            status = fuzz.snapshot("adaptation")
            if status.get("task_id") == task_id and status.get("phase") in FINAL_PHASES:
                phase, reason = status.get("phase"), status.get("reason")
                break
            if status.get("task_id") != task_id:
                fuzz.publish("task", task_to_msg(task, task_id))
            time.sleep(0.5)
        if phase is None:
            status = fuzz.snapshot("adaptation")
            phase = f"not finished: {status.get('phase')} (task {status.get('task_id')})"
            reason = status.get("reason")
        final = {name: fuzz.snapshot(name) for name in NODES}
        # The adaptation node's versions only grow: the controller may run (its run id,
        # any version up to its latest); anything else came from the fuzzer.
        run_id = final["adaptation"].get("run_id")
        latest = final["adaptation"].get("policy_version")
        with fuzz.lock:
            bad_runs = sorted(
                str(run)
                for run in fuzz.controller_runs
                if run[0] != run_id or not isinstance(run[1], int) or run[1] > latest
            )
            commands = dict(fuzz.commands)
            acks_accepted = dict(fuzz.acks_accepted)
        calls = {s: {**fuzz.calls[s], "unanswered": fuzz.unanswered(s)} for s in SERVICES}
        died = group.dead()
        ctl_before, ctl_after = before["policy_controller"], after["policy_controller"]
        result = {
            "seed": seed,
            "count": count,
            "fuzz_seconds": round(fuzz_seconds, 1),
            "messages_per_topic": sent,
            "calls_per_service": calls,
            "dropped": {name: after[name].get("dropped", {}) for name in NODES},
            "last_drop_reason": {
                name: {k: v[:160] for k, v in after[name].get("last_drop_reason", {}).items()}
                for name in NODES
            },
            "accepted": {
                "controller_ticks": ctl_after.get("ticks", 0) - ctl_before.get("ticks", 0),
                "controller_policy_updates": ctl_after.get("policy_updates", 0)
                - ctl_before.get("policy_updates", 0),
                "task_acks_accepted": acks_accepted,
                "service_success": {s: calls[s]["success"] for s in SERVICES},
            },
            "bad_policies_accepted": len(bad_runs),
            "bad_policy_runs": bad_runs[:10],
            "controller_policy_at_end": [
                final["policy_controller"].get("run_id"),
                final["policy_controller"].get("policy_version"),
            ],
            "adaptation_run_id": final["adaptation"].get("run_id"),
            "commands": commands,
            "adaptation_after_fuzz": phase,
            "adaptation_after_fuzz_reason": reason,
            "adaptation_exploration_mismatches": final["adaptation"].get(
                "exploration_mismatches", 0
            ),
            "node_crashes_during": len(died),
        }
    finally:
        if fuzz is not None:
            fuzz.close()
        codes = group.stop()
    result["exit_codes"] = codes
    result["node_crashes"] = result.get("node_crashes_during", 0) + sum(
        1 for c in codes.values() if c != 0
    )
    result["logs"] = str(group.log_dir)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages per topic and calls")
    parser.add_argument("--seed", type=int, default=0, help="replays the same inputs")
    parser.add_argument("--max-in-flight", type=int, default=8, help="service calls in flight")
    args = parser.parse_args()
    if args.count < 1 or args.max_in_flight < 1:
        parser.error("--count and --max-in-flight must be positive")
    r = run_fuzz(args.count, args.seed, args.max_in_flight)
    print(f"seed {r['seed']}: {r['messages_per_topic']} in {r['fuzz_seconds']} s")
    print(f"calls {r['calls_per_service']}")
    print(f"dropped {r['dropped']}")
    print(
        f"crashes {r['node_crashes']} {r['exit_codes']}, bad policies accepted "
        f"{r['bad_policies_accepted']}, commands {r['commands']}, adaptation after fuzz "
        f"{r['adaptation_after_fuzz']} ({r['adaptation_after_fuzz_reason']})"
    )
    emit_json({"bench": "fuzz", **machine_info(), **r})


if __name__ == "__main__":
    main()
