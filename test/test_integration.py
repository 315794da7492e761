"""End to end over DDS: the three installed executables as separate processes.

sim_arm_node, policy_controller_node and adaptation_node run with the installed
config/adapt.yaml (plus -p overrides for a fast sim and a small budget) in this test's DDS
domain (conftest.py). A test node publishes task changes and follows the policy topic and the
status topics. Needs the package installed (``make setup``) and ``source tools/env.sh``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
import torch
from ament_index_python.packages import get_package_share_directory
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from ros_harness import read_jsonl
from std_msgs.msg import String, UInt8MultiArray

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle, load_bundle, save_bundle
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec
from maml_ros.ros.convert import policy_from_msg, policy_to_msg
from maml_ros.ros.interfaces import COMMAND_QOS, LATCHED_QOS
from maml_ros.sim import sample_tasks

torch.set_num_threads(1)
SHARE = Path(get_package_share_directory("maml_ros"))
CONFIG = SHARE / "config" / "adapt.yaml"
SHIPPED = SHARE / "models" / "arm_maml.safetensors"
FINAL = ("done", "rolled_back", "failed")
HORIZON = 20
REACH = sample_tasks("reach", 3, split="test", seed=1)

pytestmark = pytest.mark.slow


def executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: run `make setup` and `source tools/env.sh`")
    return path


def small_bundle(path: Path) -> Path:
    """An untrained policy of the env's shape (for the plumbing; it need not improve)."""
    torch.manual_seed(0)
    spec = PolicySpec(hidden=(32, 32))
    bundle = PolicyBundle(
        spec=spec,
        params=GaussianMLPPolicy(spec).params(),
        obs_mean=torch.zeros(14),
        obs_std=torch.ones(14),
        inner=InnerConfig(lr=0.05),
    )
    save_bundle(path, bundle)
    return path


class Cluster:
    """The three nodes as processes, and a test node listening to them."""

    def __init__(self, tmp: Path, params: dict[str, dict[str, Any]]) -> None:
        self.tmp = tmp
        self.params = params
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}
        self.must_live = {"adaptation", "policy_controller", "sim_arm"}
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("integration_test", context=self.context)
        self.lock = threading.Lock()
        self.policies: list[tuple[str, int]] = []
        self.status: dict[str, dict[str, Any]] = {}
        self.node.create_subscription(UInt8MultiArray, "policy", self._on_policy, LATCHED_QOS)
        for name in ("adaptation", "policy_controller", "sim_arm"):
            self.node.create_subscription(
                String, f"{name}/status", lambda msg, n=name: self._on_status(n, msg), LATCHED_QOS
            )
        self.task_pub = self.node.create_publisher(String, "task", COMMAND_QOS)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        bundle = policy_from_msg(msg, 1 << 26)
        with self.lock:
            self.policies.append((bundle.run_id, bundle.version))

    def _on_status(self, name: str, msg: String) -> None:
        with self.lock:
            self.status[name] = json.loads(msg.data)

    def start(self, name: str) -> None:
        executables = {
            "sim_arm": "sim_arm_node",
            "policy_controller": "policy_controller_node",
            "adaptation": "adaptation_node",
        }
        overrides = [f"{k}:={v}" for k, v in self.params.get(name, {}).items()]
        command = [executable(executables[name]), "--ros-args", "--params-file", str(CONFIG)]
        for override in overrides:
            command += ["-p", override]
        self.starts[name] = self.starts.get(name, 0) + 1
        log = open(self.tmp / f"{name}.{self.starts[name]}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self, name: str, sig: int = signal.SIGINT, timeout_s: float = 20.0) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{name} did not exit within {timeout_s} s of {sig}") from err

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.{self.starts[name]}.log").read_text(errors="replace")

    def get(self, name: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.status.get(name, {}))

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None and name in self.must_live:
                    raise AssertionError(f"{name} died ({proc.returncode}):\n{self.log(name)}")
            with self.lock:
                if predicate():
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; status: {self.status}")

    def wait_adaptation(self, adaptation_id: int, timeout_s: float = 90.0) -> dict[str, Any]:
        self.wait_for(
            f"adaptation {adaptation_id}",
            lambda: (
                self.status.get("adaptation", {}).get("adaptation_id") == adaptation_id
                and self.status["adaptation"].get("phase") in FINAL
            ),
            timeout_s,
        )
        return self.get("adaptation")

    def wait_ready(self) -> None:
        self.wait_for("the first policy", lambda: bool(self.policies), 60.0)
        self.wait_for(
            "task subscribers",
            lambda: self.node.count_subscribers("task") >= 2,
            30.0,
        )
        self.wait_for(
            "the controller's policy",
            lambda: self.status.get("policy_controller", {}).get("policy_version") is not None,
            30.0,
        )

    def next_id(self) -> int:
        """The adaptation_id the next task change will get."""
        return int(self.get("adaptation").get("adaptation_id", 0)) + 1

    def wait_collecting(self, adaptation_id: int, rollouts: int = 0) -> None:
        self.wait_for(
            f"adaptation {adaptation_id} collecting",
            lambda: (
                self.status["adaptation"].get("adaptation_id") == adaptation_id
                and self.status["adaptation"].get("phase") == "collecting"
                and self.status["adaptation"].get("rollouts_collected", 0) >= rollouts
            ),
            60.0,
        )

    def set_adaptation_parameter(self, name: str, value: Any) -> None:
        client = self.node.create_client(SetParameters, "adaptation/set_parameters")
        assert client.wait_for_service(timeout_sec=10.0)
        parameter = Parameter(name, value=value).to_parameter_msg()
        future = client.call_async(SetParameters.Request(parameters=[parameter]))
        deadline = time.monotonic() + 10.0
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done() and future.result().results[0].successful, future.result()
        self.node.destroy_client(client)

    def send_task(self, task: Any) -> None:
        self.task_pub.publish(String(data=task.to_json()))

    def close(self) -> dict[str, int]:
        codes = {name: self.stop(name) for name in list(self.procs)}
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.spinner.join(timeout=5.0)
        return codes


def base_params(tmp: Path, checkpoint: Path) -> dict[str, dict[str, Any]]:
    return {
        "sim_arm": {
            "real_time_factor": 1.0,
            "command_wait_s": 0.5,
            "episode_steps": HORIZON,
            "transition_log": str(tmp / "transitions.jsonl"),
        },
        "adaptation": {
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "rollouts": 4,
            "horizon": HORIZON,
            "eval_episodes": 1,
            "step_timeout_s": 2.0,
            # A killed controller takes seconds to come back (Python + torch start-up on a busy
            # 2-core machine); its set_exploration service must be waited for, not given up on.
            "service_timeout_s": 20.0,
            "buffer_dump": str(tmp / "buffer.jsonl"),
        },
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("integration")
    cluster = Cluster(tmp, base_params(tmp, small_bundle(tmp / "small.safetensors")))
    for name in ("sim_arm", "policy_controller", "adaptation"):
        cluster.start(name)
    cluster.wait_ready()
    yield cluster
    cluster.close()


def test_01_task_change_gives_a_newer_policy_and_aligned_transitions(cluster: Cluster) -> None:
    run_id, first_version = cluster.policies[-1]
    n = cluster.next_id()
    cluster.send_task(REACH[0])
    status = cluster.wait_adaptation(n)
    assert status["phase"] in ("done", "rolled_back"), status
    assert status["task_family"] == "reach" and status["rollouts_collected"] == 4
    assert np.isfinite(status["return_pre"]) and np.isfinite(status["return_post"])
    assert status["adapt_latency_ms"] > 0
    cluster.wait_for("the adapted policy", lambda: cluster.policies[-1][1] > first_version, 10.0)
    assert cluster.policies[-1][0] == run_id

    # Alignment: what the adaptation node buffered is exactly what the arm executed.
    dumped = read_jsonl(cluster.tmp / "buffer.jsonl")
    executed = read_jsonl(cluster.tmp / "transitions.jsonl")
    by_stamp = {r["stamp_ns"]: r for r in executed}
    assert len(dumped) == 4 * HORIZON
    for record in dumped:
        truth = by_stamp[record["stamp_ns"]]
        for key in ("episode", "positions", "velocities", "reward", "success"):
            assert record[key] == truth[key], (key, record, truth)
        np.testing.assert_allclose(np.clip(record["action"], -1, 1), truth["action"], atol=1e-9)
    # Each rollout is the first HORIZON steps of its episode, without a gap.
    for episode in {r["episode"] for r in dumped}:
        ours = [r["stamp_ns"] for r in dumped if r["episode"] == episode]
        theirs = [r["stamp_ns"] for r in executed if r["episode"] == episode][:HORIZON]
        assert ours == theirs


def test_02_a_task_change_during_an_adaptation_cancels_and_restarts(cluster: Cluster) -> None:
    n = cluster.next_id()
    cluster.send_task(REACH[1])
    cluster.wait_collecting(n)
    cluster.send_task(REACH[2])
    status = cluster.wait_adaptation(n + 1)
    assert status["cancellations"] == 1, status
    assert status["phase"] in ("done", "rolled_back"), status


def test_03_a_restarted_controller_gets_the_current_policy(cluster: Cluster) -> None:
    n = cluster.next_id()
    cluster.send_task(REACH[0])
    cluster.wait_collecting(n)
    cluster.must_live = {"adaptation", "sim_arm"}
    assert cluster.stop("policy_controller", signal.SIGKILL) != 0
    with cluster.lock:
        cluster.status.pop("policy_controller", None)
    cluster.start("policy_controller")
    cluster.must_live = {"adaptation", "sim_arm", "policy_controller"}
    status = cluster.wait_adaptation(n)
    assert status["phase"] in ("done", "rolled_back"), status["reason"]
    current = cluster.get("adaptation")["policy_version"]
    cluster.wait_for(
        "the restarted controller to run the current policy",
        lambda: cluster.status.get("policy_controller", {}).get("policy_version") == current,
        20.0,
    )
    assert cluster.get("policy_controller")["run_id"] == cluster.get("adaptation")["run_id"]


def test_04_a_driver_restart_mid_collection_fails_without_mixing_tasks(
    cluster: Cluster,
) -> None:
    """The restarted driver runs its initial task under a new session (active_task): the
    adaptation ends failed, no step of the new session is used, the policy stays as it was."""
    # A long step timeout, so the new driver is up before the rollout times out: the node
    # must notice the restart from the driver's confirmation, not from silence.
    cluster.set_adaptation_parameter("step_timeout_s", 30.0)
    n = cluster.next_id()
    cluster.send_task(REACH[1])
    cluster.wait_collecting(n, rollouts=1)
    adaptations = cluster.status["adaptation"]["adaptations"]
    time.sleep(0.2)  # into the next rollout (HORIZON steps at 40 Hz take 0.5 s)
    cluster.must_live = {"adaptation", "policy_controller"}
    assert cluster.stop("sim_arm", signal.SIGKILL) != 0
    cluster.start("sim_arm")
    cluster.must_live = {"adaptation", "policy_controller", "sim_arm"}
    status = cluster.wait_adaptation(n, timeout_s=120.0)
    cluster.set_adaptation_parameter("step_timeout_s", 2.0)
    assert status["phase"] == "failed", status
    assert "switched from task" in status["reason"] and "session" in status["reason"], status
    assert status["rollouts_collected"] < 4 and status["adaptations"] == adaptations, status


def test_05_nodes_exit_cleanly_on_sigint(cluster: Cluster) -> None:
    codes = {name: cluster.stop(name) for name in ("adaptation", "policy_controller", "sim_arm")}
    assert codes == {"adaptation": 0, "policy_controller": 0, "sim_arm": 0}, codes


def test_a_bad_checkpoint_or_parameter_is_a_clear_fatal_error_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [executable("adaptation_node"), "--ros-args", "-p", f"checkpoint:={bad}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot load checkpoint" in result.stderr + result.stdout
    result = subprocess.run(
        [executable("adaptation_node"), "--ros-args", "-p", "rollouts:=0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "rollouts" in result.stderr + result.stdout


@pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped meta-trained checkpoint")
def test_shipped_checkpoint_improves_a_held_out_reach_task(tmp_path: Path) -> None:
    params = base_params(tmp_path, SHIPPED)
    params["sim_arm"]["episode_steps"] = 50
    params["adaptation"].update(rollouts=20, horizon=50, eval_episodes=3)
    cluster = Cluster(tmp_path, params)
    try:
        for name in ("sim_arm", "policy_controller", "adaptation"):
            cluster.start(name)
        cluster.wait_ready()
        first = cluster.policies[-1][1]
        cluster.send_task(sample_tasks("reach", 1, split="test", seed=0)[0])
        status = cluster.wait_adaptation(1, timeout_s=150.0)
        assert status["phase"] == "done", status
        assert status["return_post"] > status["return_pre"], status
        cluster.wait_for("the adapted policy", lambda: cluster.policies[-1][1] > first, 10.0)
    finally:
        codes = cluster.close()
    assert set(codes.values()) == {0}, codes


def test_demo_fails_loudly_when_a_node_dies(tmp_path: Path) -> None:
    import sys

    from maml_ros.ros.demo import DemoError, NodeProcesses, demo_tasks, node_commands, parse_args

    assert [t.family for t in demo_tasks(0)] == ["reach", "dynamics"]
    with pytest.raises(SystemExit):
        parse_args(["--timeout-s", "0"])
    for rounds in ("0", "6"):
        with pytest.raises(SystemExit):
            parse_args(["--adaptation-rounds", rounds])
    commands = node_commands(parse_args(["--adaptation-rounds", "2"]), tmp_path, tmp_path / "k")
    assert "adaptation_rounds:=2" in commands["adaptation"]
    assert not any("adaptation_rounds" in arg for arg in commands["policy_controller"])
    procs = NodeProcesses(
        {
            "dies": [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
            "lives": [sys.executable, "-c", "import time; time.sleep(60)"],
        },
        tmp_path,
    )
    try:
        deadline = time.monotonic() + 20.0
        with pytest.raises(DemoError, match="dies died with exit code 3"):
            while time.monotonic() < deadline:
                procs.check_alive()
                time.sleep(0.05)
    finally:
        codes = procs.stop(timeout_s=5.0)
    assert codes["dies"] == 3 and codes["lives"] != 0


def test_a_paired_adaptation_node_killed_mid_collection_resumes_its_adapted_policy(
    tmp_path: Path,
) -> None:
    """The controller takes only the paired node's policies; SIGKILL of that node while it
    collects for a second task loses nothing adapted: restarted, it resumes the first task's
    policy under the same run with a later version, and the controller runs it again."""
    key = tmp_path / "deploy.key"
    key.write_text("a" * 64)
    key.chmod(0o600)
    params = base_params(tmp_path, SHIPPED)
    params["adaptation"].update(
        deploy_key_file=str(key),
        state_file=str(tmp_path / "state.safetensors"),
        rollback_margin=1e9,  # every update is kept: the test is about keeping it
    )
    params["policy_controller"] = {"deploy_key_file": str(key)}
    cluster = Cluster(tmp_path, params)
    try:
        for name in ("sim_arm", "policy_controller", "adaptation"):
            cluster.start(name)
        cluster.wait_ready()
        controller = lambda: cluster.status.get("policy_controller", {})  # noqa: E731
        # An unsigned policy from another publisher is refused.
        intruder = cluster.node.create_publisher(UInt8MultiArray, "policy", LATCHED_QOS)
        forged = policy_to_msg(load_bundle(SHIPPED).replace(run_id="intruder", version=99))
        cluster.wait_for("the intruder matched", lambda: intruder.get_subscription_count(), 20.0)
        intruder.publish(forged)
        cluster.wait_for(
            "the forged policy dropped",
            lambda: controller().get("dropped", {}).get("policy", 0) >= 1,
            30.0,
        )
        assert "unsigned policy" in controller()["last_drop_reason"]["policy"]
        assert controller()["run_id"] != "intruder"

        n = cluster.next_id()
        cluster.send_task(REACH[0])
        assert cluster.wait_adaptation(n)["phase"] == "done"
        cluster.wait_for("the adapted policy", lambda: controller().get("policy_adapted"), 20.0)
        run_id, version = controller()["run_id"], controller()["policy_version"]

        cluster.send_task(REACH[1])
        cluster.wait_collecting(n + 1, rollouts=1)
        cluster.must_live.discard("adaptation")
        assert cluster.stop("adaptation", signal.SIGKILL) == -signal.SIGKILL
        cluster.start("adaptation")
        cluster.must_live.add("adaptation")
        cluster.wait_for(
            "the resumed policy on the controller",
            lambda: (
                cluster.status.get("adaptation", {}).get("resumed") is True
                and controller().get("policy_version", -1) > version + 1
            ),
            120.0,
        )
        assert controller()["run_id"] == run_id and controller()["policy_adapted"] is True
        assert cluster.get("adaptation")["run_id"] == run_id
        assert not list(tmp_path.glob(".state.safetensors.*.tmp"))
    finally:
        cluster.close()
