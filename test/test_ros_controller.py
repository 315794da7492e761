"""policy_controller_node: clamped commands, stamped action echoes, policy swaps and rejections,
stale hold, exploration service, parameter validation, and the executable."""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_harness import ROS_BUILTIN_PARAMETERS, Ros, wait_until
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle, bundle_to_bytes, save_bundle
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec, numpy_policy
from maml_ros.ros.common import stamp_to_ns
from maml_ros.ros.convert import (
    action_exploring,
    arrays_to_joint_state,
    command_stamp_ns,
    policy_to_msg,
)
from maml_ros.ros.interfaces import (
    ACTION_DETERMINISTIC,
    ACTION_EXPLORING,
    COMMAND_QOS,
    JOINT_STATES_QOS,
    LATCHED_QOS,
)
from maml_ros.ros.policy_controller_node import (
    DEFAULT_ACTION_SCALE,
    DEFAULT_JOINT_NAMES,
    RESYNC_STATES,
    PolicyControllerNode,
)
from maml_ros.runtime.robots import get_robot
from maml_ros.sim import ArmEnv

JOINTS = DEFAULT_JOINT_NAMES
BIAS_A = np.array([2.0, -2.0, 0.5, -0.3, 0.0, 0.9, -1.2], dtype=np.float32)
BIAS_B = np.array([-0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7], dtype=np.float32)
START_NS = time.time_ns()
"""Stamps near the wall clock, as a driver stamping with its own clock sends them."""


def constant_bundle(
    bias: np.ndarray, version: int = 1, run_id: str = "run-a", **spec_changes: Any
) -> PolicyBundle:
    """A tiny policy whose action mean is ``bias`` whatever the observation."""
    spec = PolicySpec(**{"obs_dim": 14, "act_dim": 7, "hidden": (8,), **spec_changes})
    params = GaussianMLPPolicy(spec).params()
    last = len(spec.hidden)
    params[f"mlp.{last}.weight"] = torch.zeros_like(params[f"mlp.{last}.weight"])
    params[f"mlp.{last}.bias"] = torch.as_tensor(bias[: spec.act_dim]).clone()
    return PolicyBundle(
        spec=spec,
        params=params,
        obs_mean=torch.zeros(spec.obs_dim),
        obs_std=torch.ones(spec.obs_dim),
        inner=InnerConfig(lr=0.05),
        version=version,
        run_id=run_id,
        metadata={"joint_names": JOINTS},
    )


def overflowing_bundle(version: int = 2, run_id: str = "run-a") -> PolicyBundle:
    """Every tensor finite, but the first layer computes inf - inf for large observations,
    so every action away from the centre is NaN."""
    bundle = constant_bundle(BIAS_B, version=version, run_id=run_id)
    weight = torch.zeros_like(bundle.params["mlp.0.weight"])
    weight[0, 0], weight[0, 1] = 3e38, -3e38
    return bundle.replace(params={**bundle.params, "mlp.0.weight": weight})


class ListPublisher:
    """Stands in for a publisher: keeps a copy of what is published (a publisher serialises
    the message at once, and the controller re-uses its messages)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def publish(self, msg: Any) -> None:
        self.sent.append(copy.deepcopy(msg))


def install(ctl: PolicyControllerNode, bundle: PolicyBundle) -> None:
    """Swaps ``bundle`` in as the decoder would, past its checks (the probe included)."""
    ctl._install(
        SimpleNamespace(
            policy=numpy_policy(bundle),
            version=bundle.version,
            run_id=bundle.run_id,
            metadata=bundle.metadata,
        )
    )


def policy_msg(data: bytes) -> UInt8MultiArray:
    msg = UInt8MultiArray()
    msg.data = data
    return msg


class Rig:
    """Plays the driver and the adaptation node around one controller."""

    def __init__(self, ros: Ros, **params: Any) -> None:
        defaults = {"explore": False, "max_velocity": [1.0], "stale_timeout_s": 0.3}
        overrides = [Parameter(k, value=v) for k, v in {**defaults, **params}.items()]
        self.ctl: PolicyControllerNode = ros.add(
            PolicyControllerNode(**ros.kwargs(), parameter_overrides=overrides)
        )
        self.node = ros.add(Node("rig", **ros.kwargs()))
        self.states = self.node.create_publisher(JointState, "joint_states", JOINT_STATES_QOS)
        self.policies = self.node.create_publisher(UInt8MultiArray, "policy", LATCHED_QOS)
        self.commands: list[tuple[float, np.ndarray, int | None]] = []
        self.actions: dict[int, np.ndarray] = {}
        self.node.create_subscription(
            Float64MultiArray, "arm_controller/commands", self._command, COMMAND_QOS
        )
        self.node.create_subscription(JointState, "arm_controller/actions", self._action, 100)
        self.stamp_ns = time.time_ns()
        wait_until(
            lambda: (
                self.states.get_subscription_count()
                and self.ctl._commands_pub.get_subscription_count()
                and self.ctl._actions_pub.get_subscription_count()
            )
        )

    def _command(self, msg: Float64MultiArray) -> None:
        self.commands.append((time.monotonic(), np.array(msg.data), command_stamp_ns(msg)))

    def command_for(self, stamp_ns: int) -> np.ndarray | None:
        """The command stamped with ``stamp_ns``, if one arrived."""
        return next((c for _, c, s in reversed(self.commands) if s == stamp_ns), None)

    def _action(self, msg: JointState) -> None:
        assert list(msg.name) == JOINTS and len(msg.position) == 0
        self.actions[stamp_to_ns(msg.header.stamp)] = np.array(msg.velocity)

    def send_policy(self, bundle_or_bytes: PolicyBundle | bytes, key: bytes | None = None) -> None:
        if isinstance(bundle_or_bytes, PolicyBundle):
            self.policies.publish(policy_to_msg(bundle_or_bytes, key))
        else:
            self.policies.publish(policy_msg(bundle_or_bytes))

    def publish_state(self, stamp_ns: int | None = None) -> int:
        if stamp_ns is None:
            self.stamp_ns += 25_000_000
            stamp_ns = self.stamp_ns
        self.states.publish(arrays_to_joint_state(stamp_ns, JOINTS, np.zeros(7), np.zeros(7)))
        return stamp_ns

    def tick(self) -> tuple[np.ndarray, np.ndarray]:
        """Publishes a state; returns (command, echoed action) for it (retries lost states)."""
        for _ in range(20):
            stamp = self.publish_state()
            try:
                wait_until(
                    lambda s=stamp: s in self.actions and self.command_for(s) is not None,
                    timeout=1.0,
                )
            except AssertionError:
                continue
            return self.command_for(stamp), self.actions[stamp]
        raise AssertionError("the controller never answered a joint state")


def test_publishes_clamped_commands_and_stamped_echoes(ros: Ros) -> None:
    rig = Rig(ros)
    rig.publish_state()
    time.sleep(0.2)
    assert rig.commands == [] and rig.actions == {}, "no policy yet: nothing is published"
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 1)
    command, action = rig.tick()
    np.testing.assert_allclose(action, BIAS_A, atol=1e-6)  # policy units, before clamping
    expected = np.clip(np.clip(BIAS_A, -1, 1) * DEFAULT_ACTION_SCALE, -1.0, 1.0)
    np.testing.assert_allclose(command, expected, atol=1e-6)
    assert command[3] == pytest.approx(-0.45) and command[0] == 1.0  # scaled, then clamped
    # Per-joint limits can be changed at run time.
    limits = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert rig.ctl.set_parameters([Parameter("max_velocity", value=limits)])[0].successful
    command, _ = rig.tick()
    np.testing.assert_allclose(command, np.clip(expected, -np.array(limits), limits), atol=1e-6)


def test_default_action_scale_is_the_env_velocity() -> None:
    default = inspect.signature(ArmEnv).parameters["max_joint_velocity"].default
    assert default == DEFAULT_ACTION_SCALE


def test_swaps_to_newer_policies_and_keeps_the_last_good_one(ros: Ros) -> None:
    rig = Rig(ros, policy_max_bytes=8192)
    rig.send_policy(constant_bundle(BIAS_A, version=1))
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 1)
    rig.send_policy(constant_bundle(BIAS_B, version=2))
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 2)
    np.testing.assert_allclose(rig.tick()[1], BIAS_B, atol=1e-6)

    good = bundle_to_bytes(constant_bundle(BIAS_A, version=3))
    nan_bytes = bytearray(good)
    nan_bytes[-4:] = np.array([np.nan], dtype="<f4").tobytes()
    bad_inputs = {
        "truncated": good[: len(good) - 100],
        "NaN": bytes(nan_bytes),
        "wrong shape": constant_bundle(BIAS_A, version=3, obs_dim=10),
        "old version": constant_bundle(BIAS_A, version=2),
        "oversized": constant_bundle(BIAS_A, version=3, hidden=(64, 64)),
        "wrong joints": constant_bundle(BIAS_A, version=3).replace(
            metadata={"joint_names": list(reversed(JOINTS))}
        ),
        "joint names not a list": constant_bundle(BIAS_A, version=3).replace(
            metadata={"joint_names": 7}
        ),
        "another robot": constant_bundle(BIAS_A, version=3).replace(
            metadata={"robot": "franka_panda", "joint_names": JOINTS}
        ),
    }
    for count, (what, payload) in enumerate(bad_inputs.items(), start=1):
        rig.send_policy(payload)
        wait_until(lambda c=count: rig.ctl.status.dropped("policy") == c)
        reason = rig.ctl.status.snapshot()["last_drop_reason"]["policy"]
        assert rig.ctl.status.snapshot()["policy_version"] == 2, what
        np.testing.assert_allclose(rig.tick()[1], BIAS_B, atol=1e-6, err_msg=what)
        if what in ("old version", "oversized"):
            assert what in reason, reason

    # Another run (a restarted adaptation node) may start again from a low version.
    rig.send_policy(constant_bundle(BIAS_A, version=0, run_id="run-b"))
    wait_until(lambda: rig.ctl.status.snapshot()["run_id"] == "run-b")
    np.testing.assert_allclose(rig.tick()[1], BIAS_A, atol=1e-6)


def key_file(path: Path, key: bytes, mode: int = 0o600) -> str:
    path.write_bytes(key)
    path.chmod(mode)
    return str(path)


def test_with_a_deploy_key_only_policies_signed_with_it_are_taken(ros: Ros, tmp_path) -> None:
    key = b"k" * 32
    rig = Rig(ros, deploy_key_file=key_file(tmp_path / "key", key))
    rig.send_policy(constant_bundle(BIAS_A, version=1), key)
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 1)
    # An attacker without the key: unsigned, signed with another key, a signature copied from
    # another message, a valid signature with the label mangled. Each is counted and dropped.
    victim = policy_to_msg(constant_bundle(BIAS_B, version=5), key)
    copied = policy_to_msg(constant_bundle(BIAS_B, version=6))
    copied.layout.dim = list(victim.layout.dim)
    mangled = policy_to_msg(constant_bundle(BIAS_B, version=7), key)
    label = mangled.layout.dim[0].label
    mangled.layout.dim[0].label = label[:-1] + ("0" if label[-1] != "0" else "1")
    attacks = [
        ("unsigned", policy_to_msg(constant_bundle(BIAS_B, version=2))),
        ("does not match", policy_to_msg(constant_bundle(BIAS_B, version=3), b"x" * 32)),
        ("does not match", copied),
        ("does not match", mangled),
    ]
    for count, (reason, msg) in enumerate(attacks, start=1):
        rig.policies.publish(msg)
        wait_until(lambda c=count: rig.ctl.status.dropped("policy") == c)
        assert reason in rig.ctl.status.snapshot()["last_drop_reason"]["policy"]
        assert rig.ctl.status.snapshot()["policy_version"] == 1
    np.testing.assert_allclose(rig.tick()[1], BIAS_A, atol=1e-6)
    rig.send_policy(constant_bundle(BIAS_B, version=8), key)
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 8)


@pytest.mark.parametrize(
    ("mode", "content", "reason"),
    [(0o644, b"k" * 32, "chmod 600"), (0o600, b"short", "at least 16 needed")],
)
def test_a_deploy_key_file_others_can_read_or_too_short_is_refused(
    ros: Ros, tmp_path, mode: int, content: bytes, reason: str
) -> None:
    overrides = [Parameter("deploy_key_file", value=key_file(tmp_path / "k", content, mode))]
    with pytest.raises(ValueError, match=reason):
        PolicyControllerNode(**ros.kwargs(), parameter_overrides=overrides)


def test_an_adapted_policy_is_never_replaced_by_an_unadapted_one_of_another_run(
    ros: Ros,
) -> None:
    rig = Rig(ros)
    adapted = {"joint_names": JOINTS, "adapted": True}
    rig.send_policy(constant_bundle(BIAS_A, version=4).replace(metadata=adapted))
    wait_until(lambda: rig.ctl.status.snapshot()["policy_adapted"] is True)
    # A restarted adaptation node that lost its state republishes the checkpoint: refused.
    rig.send_policy(constant_bundle(BIAS_B, version=0, run_id="run-b"))
    wait_until(lambda: rig.ctl.status.dropped("policy") == 1)
    assert "downgrade refused" in rig.ctl.status.snapshot()["last_drop_reason"]["policy"]
    assert rig.ctl.status.snapshot()["run_id"] == "run-a"
    np.testing.assert_allclose(rig.tick()[1], BIAS_A, atol=1e-6)
    # The same run may go back to the checkpoint's weights (a new version: its own decision);
    # another run's adapted policy, or its checkpoint with the operator's override, is taken.
    rig.send_policy(constant_bundle(BIAS_B, version=5))
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 5)
    rig.send_policy(constant_bundle(BIAS_A, version=6).replace(metadata=adapted))
    wait_until(lambda: rig.ctl.status.snapshot()["policy_version"] == 6)
    rig.send_policy(constant_bundle(BIAS_B, version=0, run_id="run-c").replace(metadata=adapted))
    wait_until(lambda: rig.ctl.status.snapshot()["run_id"] == "run-c")
    override = {"joint_names": JOINTS, "override": True}
    rig.send_policy(constant_bundle(BIAS_A, version=0, run_id="run-d").replace(metadata=override))
    wait_until(lambda: rig.ctl.status.snapshot()["run_id"] == "run-d")
    assert rig.ctl.status.snapshot()["policy_adapted"] is False


def test_the_robot_parameter_sets_the_joints_and_refuses_other_robots_policies(ros: Ros) -> None:
    """An xArm 6 controller: its six joints, states in any order, and a policy from another
    robot (an old checkpoint without a robot is the iiwa's) refused and counted."""
    xarm = get_robot("xarm6")
    names = list(xarm.joint_names)
    overrides = [Parameter("robot", value="xarm6"), Parameter("explore", value=False)]
    ctl = ros.add(PolicyControllerNode(**ros.kwargs(), parameter_overrides=overrides))
    assert ctl.joint_names == names
    six = constant_bundle(BIAS_A, obs_dim=12, act_dim=6)
    old = six.replace(metadata={})  # no robot: the iiwa's
    assert not ctl.handle_policy(policy_to_msg(old))
    assert ctl.status.dropped("policy") == 1
    reason = ctl.status.snapshot()["last_drop_reason"]["policy"]
    assert "policy is for robot 'kuka_iiwa'" in reason
    mine = six.replace(metadata={"robot": "xarm6", "joint_names": names})
    assert ctl.handle_policy(policy_to_msg(mine))
    assert ctl.status.snapshot()["has_policy"]
    before = ctl._ticks
    order = list(reversed(names))  # joint_state_broadcaster publishes in its own order
    stamp = time.time_ns()
    # (Within the xArm's joint limits, so inside the safety envelope: its joint 3 stops at 0.19.)
    ctl._on_joint_state(arrays_to_joint_state(stamp, order, np.arange(6.0) / 50, np.zeros(6)))
    assert ctl.status.dropped("joint_state") == 0
    assert ctl._ticks == before + 1
    np.testing.assert_allclose(ctl._obs[:6], np.arange(6.0)[::-1] / 50, atol=1e-6)


def test_bad_joint_states_are_dropped(ros: Ros) -> None:
    rig = Rig(ros)
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: rig.ctl.status.snapshot()["has_policy"])
    rig.tick()
    last = rig.stamp_ns
    rig.publish_state(last)  # repeated stamp
    bad = arrays_to_joint_state(last + 10**9, JOINTS, np.zeros(7), np.zeros(7))
    bad.position[2] = float("nan")
    rig.states.publish(bad)
    answered = len(rig.actions)
    wait_until(lambda: rig.ctl.status.dropped("joint_state") >= 2)
    time.sleep(0.1)
    assert len(rig.actions) == answered


def test_stale_joint_states_hold_position(ros: Ros) -> None:
    rig = Rig(ros, hold_rate_hz=20.0)
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: rig.ctl.status.snapshot()["has_policy"])
    for _ in range(3):
        rig.tick()
    stopped = time.monotonic()
    wait_until(lambda: rig.ctl.status.snapshot()["stale"])
    wait_until(lambda: len([c for t, c, _ in rig.commands if t > stopped + 0.3]) >= 3)
    holds = [(c, stamp) for t, c, stamp in rig.commands if t > stopped + 0.3]
    assert all((c == 0.0).all() and stamp == 0 for c, stamp in holds), holds
    # A restarted driver's clock may start lower: it is accepted after going stale.
    rig.stamp_ns -= 60 * 10**9
    _, action = rig.tick()
    np.testing.assert_allclose(action, BIAS_A, atol=1e-6)
    # Keep the states coming (they would go stale again after stale_timeout_s).
    wait_until(lambda: rig.publish_state() and not rig.ctl.status.snapshot()["stale"])


def test_exploration_service_and_seeded_noise(ros: Ros) -> None:
    rig = Rig(ros, explore=True, seed=7)
    rig.send_policy(constant_bundle(BIAS_B))
    wait_until(lambda: rig.ctl.status.snapshot()["has_policy"])
    noisy = rig.tick()[1]
    assert np.abs(noisy - BIAS_B).max() > 1e-3
    std = np.exp(-0.5)  # PolicySpec's init_log_std
    expected = BIAS_B + std * np.random.default_rng(7).standard_normal(7, dtype=np.float32)
    np.testing.assert_allclose(noisy, expected, atol=1e-5)

    client = rig.node.create_client(SetBool, "arm_controller/set_exploration")
    assert client.wait_for_service(timeout_sec=10.0)
    response = client.call(SetBool.Request(data=False), timeout_sec=10.0)
    assert response.success and "off" in response.message
    assert rig.ctl.params["explore"] is False
    assert rig.ctl.status.snapshot()["exploring"] is False
    np.testing.assert_allclose(rig.tick()[1], BIAS_B, atol=1e-6)


def test_rejects_invalid_runtime_parameters(ros: Ros) -> None:
    rig = Rig(ros)
    bad = [
        Parameter("max_velocity", value=[-1.0]),
        Parameter("max_velocity", value=[1.0, 2.0]),
        Parameter("max_velocity", value=[float("inf")]),
        Parameter("action_scale", value=float("nan")),
        Parameter("stale_timeout_s", value=0.0),
        Parameter("stamp_tolerance_s", value=-1.0),
        Parameter("stamp_tolerance_s", value=float("nan")),
        Parameter("hold_rate_hz", value=-5.0),
        Parameter("policy_max_bytes", value=10),
        Parameter("seed", value=-1),
        Parameter("joint_names", value=["a"] * 7),
        Parameter("controller", value="other"),
    ]
    for param in bad:
        result = rig.ctl.set_parameters([param])[0]
        assert not result.successful, param.name
    assert rig.ctl.params["max_velocity"] == [1.0]
    assert rig.ctl.set_parameters([Parameter("stale_timeout_s", value=1.0)])[0].successful


def _executable(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not on PATH: run `make setup` and `source tools/env.sh`"
    return path


def test_executable_runs_an_initial_policy(ros: Ros, tmp_path) -> None:
    checkpoint = save_bundle(tmp_path / "policy.safetensors", constant_bundle(BIAS_B))
    proc = subprocess.Popen(
        [
            _executable("policy_controller_node"),
            "--ros-args",
            "-r",
            f"__ns:={ros.namespace}",
            "-p",
            f"initial_policy:={checkpoint}",
            "-p",
            "explore:=false",
        ],
        env=os.environ.copy(),
    )
    try:
        node = ros.add(Node("driver", **ros.kwargs()))
        states = node.create_publisher(JointState, "joint_states", JOINT_STATES_QOS)
        actions: list[JointState] = []
        node.create_subscription(JointState, "arm_controller/actions", actions.append, 100)
        stamp = time.time_ns()

        def answered() -> bool:
            nonlocal stamp
            stamp += 25_000_000
            states.publish(arrays_to_joint_state(stamp, JOINTS, np.zeros(7), np.zeros(7)))
            time.sleep(0.05)
            return bool(actions)

        wait_until(answered, timeout=30.0)
        np.testing.assert_allclose(actions[0].velocity, BIAS_B, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    assert code == 0


def test_invalid_start_parameters_are_value_errors(ros: Ros) -> None:
    for name, value in (("stale_timeout_s", 0.0), ("max_velocity", [1.0, 2.0])):
        with pytest.raises(ValueError, match=name):
            PolicyControllerNode(**ros.kwargs(), parameter_overrides=[Parameter(name, value=value)])


def test_executable_exits_2_on_a_missing_initial_policy(tmp_path) -> None:
    missing = tmp_path / "missing.safetensors"
    proc = subprocess.run(
        [_executable("policy_controller_node"), "--ros-args", "-p", f"initial_policy:={missing}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "missing.safetensors" in proc.stderr + proc.stdout


def test_config_lists_every_parameter_with_its_default(ros: Ros) -> None:
    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "adapt.yaml").read_text())
    values = config["/**/policy_controller"]["ros__parameters"]
    node = ros.add(PolicyControllerNode(**ros.kwargs()))
    declared = {
        name: p.value for name, p in node._parameters.items() if name not in ROS_BUILTIN_PARAMETERS
    }
    assert values == declared


def test_garbage_inputs_never_raise_out_of_a_callback(ros: Ros) -> None:
    ctl = ros.add(PolicyControllerNode(**ros.kwargs()))
    assert ctl.handle_policy(policy_to_msg(constant_bundle(BIAS_A)))
    numbers = st.floats(allow_nan=True, allow_infinity=True, width=64)
    calls: list[int] = []

    @settings(max_examples=60, deadline=None)
    @given(
        names=st.lists(st.sampled_from([*JOINTS, "x"]), max_size=9),
        positions=st.lists(numbers, max_size=9),
        velocities=st.lists(numbers, max_size=9),
        sec=st.integers(-(2**31), 2**31 - 1),
        payload=st.binary(max_size=200),
    )
    def feed(names, positions, velocities, sec, payload) -> None:
        calls.append(1)
        state = JointState(name=names, position=positions, velocity=velocities)
        state.header.stamp.sec = sec
        ctl._on_joint_state(state)
        assert not ctl.handle_policy(policy_msg(payload))

    feed()
    assert ctl.status.dropped("policy") == len(calls) > 0
    assert ctl.status.dropped("joint_state") > 0
    assert ctl.status.snapshot()["policy_version"] == 1


REALTIME_PROBE = """
import json, os, sys, threading
from maml_ros.ros.common import set_realtime_priority
release = threading.Event()
waiter = threading.Thread(target=release.wait)
waiter.start()
problem = set_realtime_priority(7)
policies = sorted({os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")})
release.set()
waiter.join()
print(json.dumps([problem, policies]))
"""


def test_realtime_priority_puts_every_thread_under_sched_fifo_or_says_why_not() -> None:
    # In a child process: the test process itself must not run under SCHED_FIFO.
    out = subprocess.run(
        [sys.executable, "-c", REALTIME_PROBE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    problem, policies = json.loads(out.stdout.strip().splitlines()[-1])
    if problem is None:  # root or CAP_SYS_NICE: every thread, the waiting one too
        assert policies == [os.SCHED_FIFO]
    else:  # refused: said why, nothing changed
        assert "Error" in problem and os.SCHED_FIFO not in policies


def test_controller_imports_no_torch_pybullet_or_gymnasium() -> None:
    """A robot's controller needs rclpy and numpy: importing its module pulls in nothing else."""
    code = (
        "import sys\n"
        "import maml_ros.ros.policy_controller_node\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pybullet', "
        "'gymnasium', 'safetensors'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_tick_waits_for_no_lock_the_decoder_or_the_status_holds(ros: Ros) -> None:
    """The control path reads the active policy by reference: with the status's lock and the
    decoder's condition held by another thread, a joint state is still answered."""
    import threading

    ctl = ros.add(PolicyControllerNode(**ros.kwargs()))
    assert ctl.handle_policy(policy_to_msg(constant_bundle(BIAS_A)))
    state = arrays_to_joint_state(time.time_ns(), JOINTS, np.zeros(7), np.zeros(7))
    with ctl.status._lock, ctl._policy_cond:
        tick = threading.Thread(target=ctl._on_joint_state, args=(state,), daemon=True)
        tick.start()
        tick.join(timeout=5.0)
        answered = not tick.is_alive()
    assert answered, "the tick blocked on a lock held by another thread"
    assert ctl.status.snapshot()["ticks"] == 1


def test_joint_states_are_answered_while_the_nodes_executor_is_held_up(ros: Ros) -> None:
    """The tick has a node, an executor and a thread of its own: with every other callback of
    the process's executor held up, joint states are still answered."""
    import threading

    rig = Rig(ros)
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: rig.ctl.status.snapshot()["has_policy"])
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(10.0)

    timer = rig.node.create_timer(0.01, hold)
    assert held.wait(5.0)
    timer.cancel()
    try:
        before = rig.ctl._ticks
        for _ in range(10):
            rig.publish_state()
            time.sleep(0.02)
        answered = rig.ctl._ticks - before
    finally:
        release.set()
    assert answered >= 5, f"{answered} of 10 joint states answered while the executor was busy"


def test_no_tick_command_follows_the_hold_of_a_deactivate(ros: Ros) -> None:
    """deactivate's zero-velocity hold is the last command: a tick running on the control
    thread at that moment either commands before it or not at all."""
    import threading

    rig = Rig(ros, hold_rate_hz=0.1)  # no watchdog holds within the test
    ctl = rig.ctl
    assert ctl.handle_policy(policy_to_msg(constant_bundle(BIAS_A)))
    stop = threading.Event()

    def ticks() -> None:
        stamp = START_NS
        while not stop.is_set():
            stamp += 1_000_000
            ctl._on_joint_state(arrays_to_joint_state(stamp, JOINTS, np.zeros(7), np.zeros(7)))

    thread = threading.Thread(target=ticks, daemon=True)
    thread.start()
    wait_until(lambda: len(rig.commands) > 50)
    ctl.trigger_deactivate()
    time.sleep(0.05)
    stop.set()
    thread.join(timeout=5.0)
    time.sleep(0.3)  # the last commands on the wire
    zero = next(i for i, (_, c, _) in enumerate(rig.commands) if not c.any())
    assert all(not c.any() for _, c, _ in rig.commands[zero:]), "a command followed the hold"


def test_lifecycle_unconfigured_commands_nothing_and_deactivate_holds_position(ros: Ros) -> None:
    """autostart false: nothing is commanded until configure + activate; deactivate stops the
    policy and holds position with zero velocities; activate resumes."""
    from rclpy.lifecycle import TransitionCallbackReturn

    rig = Rig(ros, autostart=False, hold_rate_hz=50.0)
    ctl = rig.ctl
    expected = np.clip(np.clip(BIAS_A, -1, 1) * 1.5, -1.0, 1.0)  # action_scale, max_velocity
    assert ctl.status.snapshot()["lifecycle"] == "unconfigured"
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: ctl.status.snapshot()["has_policy"])  # received in any state
    rig.publish_state()
    time.sleep(0.3)
    assert rig.commands == [] and rig.actions == {}

    assert ctl.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert ctl.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert ctl.status.snapshot()["lifecycle"] == "active"
    command, _ = rig.tick()
    assert np.allclose(command, expected)

    assert ctl.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    held_from = time.monotonic()
    ticks = ctl.status.snapshot()["ticks"]
    for _ in range(5):
        rig.publish_state()
        time.sleep(0.02)
    wait_until(lambda: len([c for t, c, _ in rig.commands if t > held_from]) >= 3)
    held = [(c, s) for t, c, s in rig.commands if t > held_from]
    assert all(np.all(c == 0.0) and s == 0 for c, s in held), held
    assert ctl.status.snapshot()["ticks"] == ticks  # the policy no longer runs
    assert ctl.status.snapshot()["lifecycle"] == "inactive"

    assert ctl.trigger_activate() == TransitionCallbackReturn.SUCCESS
    command, _ = rig.tick()
    assert np.allclose(command, expected)


def test_a_configure_that_fails_keeps_the_node_unconfigured_with_the_reason(
    ros: Ros, tmp_path: Path
) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    missing = str(tmp_path / "missing.safetensors")
    overrides = [Parameter("autostart", value=False), Parameter("initial_policy", value=missing)]
    ctl = ros.add(PolicyControllerNode(**ros.kwargs(), parameter_overrides=overrides))
    assert ctl.trigger_configure() == TransitionCallbackReturn.FAILURE
    status = ctl.status.snapshot()
    assert (
        status["lifecycle"] == "unconfigured"
        and "missing.safetensors" in status["lifecycle_reason"]
    )


def test_a_non_finite_action_is_never_sent_and_the_last_good_policy_takes_over(ros: Ros) -> None:
    quiet = [Parameter("explore", value=False), Parameter("stale_timeout_s", value=60.0)]
    ctl = ros.add(PolicyControllerNode(**ros.kwargs(), parameter_overrides=quiet))
    ctl._commands_pub, ctl._actions_pub = commands, actions = ListPublisher(), ListPublisher()
    install(ctl, constant_bundle(BIAS_A, version=1))
    # Installed directly, past the probe: as a policy that passes it and still overflows on
    # some real state would be.
    install(ctl, overflowing_bundle(version=2))
    far = np.full(7, 2.0)  # 3e38 * 2 overflows float32
    ctl._on_joint_state(arrays_to_joint_state(START_NS, JOINTS, far, np.zeros(7)))
    assert actions.sent == [] and len(commands.sent) == 1
    assert list(commands.sent[0].data) == [0.0] * 7  # held position, answering that state
    assert command_stamp_ns(commands.sent[0]) == START_NS
    status = ctl.status.snapshot()
    assert status["policy_version"] == 1 and status["policy_fallbacks"] == 1
    assert "non-finite action from version 2" in status["last_drop_reason"]["policy"]
    ctl._on_joint_state(arrays_to_joint_state(START_NS + 1, JOINTS, far, np.zeros(7)))
    np.testing.assert_allclose(actions.sent[-1].velocity, BIAS_A, atol=1e-6)
    # The refused version is not taken again, and a probe stops it at the door anyway.
    assert not ctl.handle_policy(policy_to_msg(overflowing_bundle(version=2)))
    assert ctl.status.snapshot()["policy_version"] == 1
    # With no earlier policy to fall back to, nothing at all is sent after the hold.
    lone = ros.add(PolicyControllerNode(**ros.kwargs(), parameter_overrides=quiet))
    lone._commands_pub, lone._actions_pub = ListPublisher(), ListPublisher()
    install(lone, overflowing_bundle(version=5))
    for stamp in (START_NS, START_NS + 1):
        lone._on_joint_state(arrays_to_joint_state(stamp, JOINTS, far, np.zeros(7)))
    assert len(lone._commands_pub.sent) == 1 and lone._actions_pub.sent == []
    assert lone.status.snapshot()["has_policy"] is False


def test_every_way_in_probes_the_policy(ros: Ros, tmp_path) -> None:
    ctl = ros.add(PolicyControllerNode(**ros.kwargs()))
    assert not ctl.handle_policy(policy_to_msg(overflowing_bundle()))
    assert "policy probe: non-finite action" in ctl.status.snapshot()["last_drop_reason"]["policy"]
    assert ctl.status.snapshot()["has_policy"] is False
    checkpoint = save_bundle(tmp_path / "overflow.safetensors", overflowing_bundle())
    with pytest.raises(ValueError, match="policy probe: non-finite action"):
        PolicyControllerNode(
            **ros.kwargs(),
            parameter_overrides=[Parameter("initial_policy", value=str(checkpoint))],
        )


def _quiet_controller(ros: Ros, **params: Any) -> PolicyControllerNode:
    """A controller with a policy, driven by direct calls; what it publishes is kept."""
    values = {"explore": False, "stale_timeout_s": 60.0, **params}
    overrides = [Parameter(k, value=v) for k, v in values.items()]
    ctl = ros.add(PolicyControllerNode(**ros.kwargs(), parameter_overrides=overrides))
    ctl._commands_pub, ctl._actions_pub = ListPublisher(), ListPublisher()
    install(ctl, constant_bundle(BIAS_A))
    return ctl


def _answered(ctl: PolicyControllerNode) -> set[int]:
    return {stamp_to_ns(a.header.stamp) for a in ctl._actions_pub.sent}


def _state(stamp_ns: int) -> JointState:
    return arrays_to_joint_state(stamp_ns, JOINTS, np.zeros(7), np.zeros(7))


def test_future_stamped_states_are_dropped_and_cannot_silence_the_controller(ros: Ros) -> None:
    ctl = _quiet_controller(ros)
    hours = 3600 * 10**9
    stamp = time.time_ns()
    ctl._on_joint_state(_state(stamp + hours))  # one state an hour ahead
    real, fake = [], []
    for i in range(40):  # 40 Hz real states, 10 Hz states two hours ahead between them
        stamp += 25_000_000
        real.append(stamp)
        ctl._on_joint_state(_state(stamp))
        if i % 4 == 0:
            fake.append(stamp + 2 * hours)
            ctl._on_joint_state(_state(fake[-1]))
    assert _answered(ctl) == set(real)
    assert ctl.status.dropped("joint_state") == 1 + len(fake)
    reason = ctl.status.snapshot()["last_drop_reason"]["joint_state"]
    assert "from the node's clock (stamp_tolerance_s 600.0)" in reason, reason
    # Far behind is dropped too; 0 turns the check off.
    ctl._on_joint_state(_state(stamp - 2 * hours))
    assert ctl.status.dropped("joint_state") == 2 + len(fake)
    assert ctl.set_parameters([Parameter("stamp_tolerance_s", value=0.0)])[0].successful
    ctl._on_joint_state(_state(stamp + 2 * hours))
    assert stamp + 2 * hours in _answered(ctl)


def test_a_clock_going_backwards_is_resynchronised_and_reported(ros: Ros) -> None:
    ctl = _quiet_controller(ros)
    stamp = time.time_ns()
    for _ in range(5):
        stamp += 25_000_000
        ctl._on_joint_state(_state(stamp))
    ctl._on_joint_state(_state(stamp))  # a repeated stamp is only out of order
    ctl._on_joint_state(_state(stamp - 10**9))  # so is one late state
    ctl._on_joint_state(_state(stamp + 25_000_000))
    assert ctl.status.snapshot()["clock_resyncs"] == 0
    assert ctl.status.dropped("joint_state") == 2
    restarted = [stamp - 30 * 10**9 + i * 25_000_000 for i in range(10)]  # the driver restarted
    for s in restarted:
        ctl._on_joint_state(_state(s))
    assert _answered(ctl) >= set(restarted[RESYNC_STATES - 1 :])
    assert not _answered(ctl) & set(restarted[: RESYNC_STATES - 1])
    status = ctl.status.snapshot()
    assert status["clock_resyncs"] == 1 and "resynchronised" in status["last_resync"]
    assert status["dropped"]["joint_state"] == 2 + RESYNC_STATES - 1


def test_executable_survives_a_latched_policy_whose_actions_are_not_finite(ros: Ros) -> None:
    node = ros.add(Node("adaptation_stand_in", **ros.kwargs()))
    policies = node.create_publisher(UInt8MultiArray, "policy", LATCHED_QOS)
    policies.publish(policy_to_msg(overflowing_bundle(version=1)))  # latched before it starts
    statuses: list[dict] = []
    node.create_subscription(
        String, "policy_controller/status", lambda m: statuses.append(json.loads(m.data)), 10
    )
    states = node.create_publisher(JointState, "joint_states", JOINT_STATES_QOS)
    actions: list[JointState] = []
    node.create_subscription(JointState, "arm_controller/actions", actions.append, 100)
    proc = subprocess.Popen(
        [
            _executable("policy_controller_node"),
            "--ros-args",
            "-r",
            f"__ns:={ros.namespace}",
            "-p",
            "explore:=false",
        ],
        env=os.environ.copy(),
    )
    stamp = time.time_ns()

    def answered() -> bool:
        nonlocal stamp
        assert proc.poll() is None, f"the controller exited with {proc.returncode}"
        stamp += 25_000_000
        far = np.full(7, 2.0)  # where the bad policy's first layer computes inf - inf
        states.publish(arrays_to_joint_state(stamp, JOINTS, far, np.zeros(7)))
        time.sleep(0.05)
        return bool(actions)

    try:
        wait_until(
            lambda: answered() is False and any(s["dropped"].get("policy") for s in statuses),
            timeout=30.0,
        )
        assert "policy probe" in statuses[-1]["last_drop_reason"]["policy"]
        assert statuses[-1]["has_policy"] is False and actions == []
        policies.publish(policy_to_msg(constant_bundle(BIAS_A, version=2)))
        wait_until(answered, timeout=30.0)
        np.testing.assert_allclose(actions[-1].velocity, BIAS_A, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    assert code == 0


def test_actions_say_whether_they_explored(ros: Ros) -> None:
    """The actions message's header.frame_id follows the explore parameter at each tick, so a
    deterministic evaluation can tell that someone else switched exploration on."""
    quiet = [Parameter("explore", value=True), Parameter("stale_timeout_s", value=60.0)]
    ctl = ros.add(PolicyControllerNode(**ros.kwargs(), parameter_overrides=quiet))
    ctl._commands_pub, ctl._actions_pub = ListPublisher(), ListPublisher()
    install(ctl, constant_bundle(BIAS_A, version=1))
    ctl._on_joint_state(arrays_to_joint_state(START_NS, JOINTS, np.zeros(7), np.zeros(7)))
    assert ctl._actions_pub.sent[-1].header.frame_id == ACTION_EXPLORING
    assert action_exploring(ctl._actions_pub.sent[-1]) is True
    assert ctl.set_parameters([Parameter("explore", value=False)])[0].successful
    ctl._on_joint_state(arrays_to_joint_state(START_NS + 1, JOINTS, np.zeros(7), np.zeros(7)))
    assert ctl._actions_pub.sent[-1].header.frame_id == ACTION_DETERMINISTIC
    assert action_exploring(ctl._actions_pub.sent[-1]) is False


def publish_at(rig: Rig, positions: np.ndarray) -> tuple[int, np.ndarray]:
    """Publishes a state at ``positions``; returns (its stamp, the command answering it)."""
    for _ in range(20):
        rig.stamp_ns += 25_000_000
        stamp = rig.stamp_ns
        rig.states.publish(arrays_to_joint_state(stamp, JOINTS, positions, np.zeros(7)))
        try:
            wait_until(lambda s=stamp: rig.command_for(s) is not None, timeout=1.0)
        except AssertionError:
            continue  # a lost state: publish another
        return stamp, rig.command_for(stamp)
    raise AssertionError("the controller never answered a joint state")


def test_leaving_the_safety_envelope_holds_until_homing_brings_the_arm_back(ros: Ros) -> None:
    home = np.array([0.0, 0.2, 0.0, -0.2, 0.0, 0.1, 0.0])
    rig = Rig(
        ros,
        envelope_upper=[0.5],
        home_pose=home.tolist(),
        homing_gain=2.0,
        homing_tolerance=0.01,
        stale_timeout_s=5.0,
    )
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: rig.ctl.status.snapshot()["has_policy"])
    rig.tick()  # inside: the policy commands
    # A state outside the box (joint 2 above 0.5): zero velocities, no action echoed, reported.
    out = np.zeros(7)
    out[1] = 0.6
    stamp, command = publish_at(rig, out)
    assert np.all(command == 0.0)
    violation = rig.ctl.status.snapshot()["envelope_violation"]
    assert violation["stamp_ns"] == stamp and "lbr_iiwa_joint_2" in violation["reason"]
    # Still outside: still held, counted once.
    stamp, command = publish_at(rig, out)
    assert np.all(command == 0.0) and rig.ctl.status.snapshot()["envelope_violations"] == 1
    time.sleep(0.1)
    assert stamp not in rig.actions

    # Homing: a P-law towards home clamped to max_velocity, answered with the stamp at home.
    client = rig.node.create_client(Trigger, "arm_controller/home")
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(Trigger.Request())
    wait_until(lambda: rig.ctl.status.snapshot()["homing"])
    positions, homing_commands, homing_stamps = out.copy(), [], []
    while not future.done():
        stamp, command = publish_at(rig, positions)
        homing_commands.append(command)
        homing_stamps.append(stamp)
        positions = positions + 0.1 * command  # the arm integrates the velocity for 0.1 s
        assert len(homing_commands) < 200, "homing never ended"
    response = future.result()
    assert response.success, response.message
    assert response.message.endswith(f"stamp_ns={stamp}")
    assert np.all(homing_commands[-1] == 0.0)  # the state at home is answered with a hold
    np.testing.assert_allclose(positions, home, atol=0.011)
    moving = np.array(homing_commands[:-1])
    assert np.abs(moving).max() <= 1.0 + 1e-9  # max_velocity
    np.testing.assert_allclose(moving[0], np.clip(2.0 * (home - out), -1, 1), atol=1e-9)
    assert not set(homing_stamps) & set(rig.actions)  # homing is no policy action
    status = rig.ctl.status.snapshot()
    assert status["envelope_violation"] is None and not status["homing"]
    # The policy commands again from the next state on.
    _, action = rig.tick()
    np.testing.assert_allclose(action, BIAS_A, atol=1e-6)


def test_the_joint_limits_with_their_margin_are_the_default_envelope(ros: Ros) -> None:
    rig = Rig(ros, envelope_margin=0.05)
    rig.send_policy(constant_bundle(BIAS_A))
    wait_until(lambda: rig.ctl.status.snapshot()["has_policy"])
    upper = get_robot("kuka_iiwa").position_upper
    near = np.zeros(7)
    near[3] = upper[3] - 0.04  # inside the limit, but within the margin
    stamp, command = publish_at(rig, near)
    assert np.all(command == 0.0) and stamp not in rig.actions
    assert "lbr_iiwa_joint_4" in rig.ctl.status.snapshot()["envelope_violation"]["reason"]
    # Back inside (a driver's reset): the policy commands again, the violation cleared.
    _, action = rig.tick()
    np.testing.assert_allclose(action, BIAS_A, atol=1e-6)
    assert rig.ctl.status.snapshot()["envelope_violation"] is None


def test_homing_is_refused_while_busy_and_times_out_with_the_reason(ros: Ros) -> None:
    rig = Rig(ros, homing_timeout_s=0.3, stale_timeout_s=5.0)
    client = rig.node.create_client(Trigger, "arm_controller/home")
    assert client.wait_for_service(timeout_sec=10.0)
    first = client.call_async(Trigger.Request())
    wait_until(lambda: rig.ctl.status.snapshot()["homing"])
    second = client.call(Trigger.Request(), timeout_sec=10.0)
    assert not second.success and second.message == "busy"
    far = np.full(7, 1.0)  # never moves: the arm is stuck
    while not first.done():
        publish_at(rig, far)
    assert not first.result().success and "timed out" in first.result().message
    assert rig.ctl.status.snapshot()["homing_failures"] == 1
