"""sim_arm_node: stamped states and rewards, commands, lockstep, reset, bad inputs, executable."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import Vector3Stamped
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_harness import ROS_BUILTIN_PARAMETERS, Ros, read_jsonl, wait_until
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from maml_ros.ros.common import stamp_to_ns
from maml_ros.ros.convert import active_task_from_msg, commands_to_msg, task_to_msg
from maml_ros.ros.interfaces import (
    COMMAND_QOS,
    JOINT_STATES_QOS,
    LATCHED_QOS,
    STREAM_QOS,
    commands_topic,
)
from maml_ros.ros.sim_arm_node import PARAMS, SimArmNode
from maml_ros.sim import HOME_POSE, sample_tasks

PERIOD_NS = 25_000_000
FAST = {"real_time_factor": 0.0, "lockstep": True, "command_wait_s": 0.5}


def sim_node(ros: Ros, **params: Any) -> SimArmNode:
    overrides = [Parameter(k, value=v) for k, v in {**FAST, **params}.items()]
    return ros.add(SimArmNode(**ros.kwargs(), parameter_overrides=overrides))


class Probe:
    """Records joint states and rewards; optionally answers each state with a command."""

    def __init__(
        self,
        ros: Ros,
        answer: Callable[[JointState], np.ndarray] | None = None,
        stamped: bool = False,
    ) -> None:
        self.node = ros.add(Node("probe", **ros.kwargs()))
        self.stamped = stamped
        self.states: list[JointState] = []
        self.rewards: list[Vector3Stamped] = []
        self.answer = answer
        self.commands = self.node.create_publisher(
            Float64MultiArray, commands_topic("arm_controller"), COMMAND_QOS
        )
        self.node.create_subscription(JointState, "joint_states", self._state, JOINT_STATES_QOS)
        self.node.create_subscription(Vector3Stamped, "reward", self.rewards.append, STREAM_QOS)

    def _state(self, msg: JointState) -> None:
        self.states.append(msg)
        if self.answer is not None:
            stamp = msg.header.stamp if self.stamped else None
            self.commands.publish(commands_to_msg(self.answer(msg), stamp=stamp))


def test_publishes_stamped_states_and_rewards(ros: Ros) -> None:
    node = sim_node(ros, lockstep=False, real_time_factor=2.0)
    probe = Probe(ros)
    wait_until(lambda: len(probe.rewards) >= 30 and len(probe.states) >= 30)
    states, rewards = list(probe.states), list(probe.rewards)
    assert list(states[0].name) == list(node.env.joint_names)
    assert all(len(s.position) == len(s.velocity) == 7 for s in states)
    stamps = [stamp_to_ns(s.header.stamp) for s in states]
    gaps = np.diff(stamps)
    # The sim clock advances exactly one control period per tick; best-effort delivery may
    # lose a state now and then, which shows as a multiple of the period, never as a repeat.
    assert (gaps > 0).all() and (gaps % PERIOD_NS == 0).all(), gaps
    assert (gaps == PERIOD_NS).mean() > 0.8, gaps
    # Every reward is stamped with the state its step was taken from (the two subscriptions
    # match at different moments, so compare from the first state received on).
    rewards = [r for r in rewards if stamps[0] <= stamp_to_ns(r.header.stamp) <= stamps[-1]]
    assert len(rewards) >= 10
    state_stamps = set(stamps)
    matched = [r for r in rewards if stamp_to_ns(r.header.stamp) in state_stamps]
    assert len(matched) >= 0.8 * len(rewards)  # the rest: states lost on best-effort delivery
    for reward in rewards:
        assert stamp_to_ns(reward.header.stamp) % PERIOD_NS == stamps[0] % PERIOD_NS
        assert reward.vector.x < 0.0  # minus the distance to the goal
        assert reward.vector.y in (0.0, 1.0)
        assert reward.vector.z == 0.0


def test_commands_move_joints_and_lockstep_executes_the_answer(ros: Ros, tmp_path) -> None:
    log = tmp_path / "transitions.jsonl"
    late: set[int] = set()

    def answer(state: JointState) -> np.ndarray:
        # Joint 0 up, joint 3 down; joint 6's command encodes the state's tick parity, so the
        # log shows whether each step executed the answer to its own state. A few answers come
        # after command_wait_s: they must not be taken for the next state.
        tick = stamp_to_ns(state.header.stamp) // PERIOD_NS
        if tick % 7 == 3 and len(late) < 3:
            late.add(tick)
            time.sleep(0.3)
        return np.array([1.0, 0, 0, -1.0, 0, 0, 0.75 if tick % 2 else -0.75])

    probe = Probe(ros, answer, stamped=True)
    node = sim_node(ros, transition_log=str(log), hold_after_episode=False, command_wait_s=0.1)

    def answered_steps() -> int:
        snapshot = node.status.snapshot()
        return snapshot["ticks"] - snapshot["lockstep_misses"]

    wait_until(lambda: answered_steps() >= 45 and len(late) == 3)
    states = list(probe.states)
    first, last = np.array(states[0].position), np.array(states[-1].position)
    assert last[0] - first[0] > 0.5, "joint 0 should move up at ~1 rad/s for > 1 s of sim time"
    assert last[3] - first[3] < -0.3, "joint 3 should move down (to its -2.09 rad limit)"
    assert abs(last[1] - first[1]) < 0.2

    misses = node.status.snapshot()["lockstep_misses"]
    lines = read_jsonl(log)
    answered = [rec for rec in lines if rec["answered"]]
    assert len(answered) >= 45 and len(lines) - len(answered) >= 3 and misses >= 3
    for rec in answered:
        tick = rec["stamp_ns"] // PERIOD_NS
        assert tick not in late
        assert rec["action"][6] == pytest.approx((0.75 if tick % 2 else -0.75) / 1.5), rec
        assert rec["action"][0] == pytest.approx(1.0 / 1.5)
    by_stamp = {stamp_to_ns(s.header.stamp): s for s in states}
    for rec in lines:
        if rec["stamp_ns"] in by_stamp:
            assert rec["positions"] == list(by_stamp[rec["stamp_ns"]].position)
            assert rec["velocities"] == list(by_stamp[rec["stamp_ns"]].velocity)
    assert {rec["episode"] for rec in lines} == {0}


def test_reset_service_starts_a_new_episode_at_home(ros: Ros) -> None:
    node = sim_node(ros, hold_after_episode=False)
    probe = Probe(ros, lambda s: np.full(7, 1.0))
    client = probe.node.create_client(Trigger, "reset")
    assert client.wait_for_service(timeout_sec=10.0)
    wait_until(lambda: len(probe.states) >= 20)
    assert np.abs(np.array(probe.states[-1].position) - HOME_POSE).max() > 0.3

    probe.answer = None  # let the arm hold still after the reset
    response = client.call(Trigger.Request(), timeout_sec=10.0)
    assert response.success and "episode 1" in response.message
    assert node.status.snapshot()["episode"] == 1  # the status is up to date when reset returns
    wait_until(lambda: any(r.vector.z == 1.0 for r in probe.rewards))
    first_new = next(
        s for s in probe.states if stamp_to_ns(s.header.stamp) >= _first_stamp_of(probe, 1)
    )
    assert np.abs(np.array(first_new.position) - HOME_POSE).max() < 0.05
    assert node.status.snapshot()["episode"] == 1


def _first_stamp_of(probe: Probe, episode: int) -> int:
    return min(stamp_to_ns(r.header.stamp) for r in probe.rewards if r.vector.z == episode)


def test_holds_still_after_episode_steps(ros: Ros, tmp_path) -> None:
    log = tmp_path / "transitions.jsonl"
    probe = Probe(ros, lambda s: np.full(7, 1.0), stamped=True)
    node = sim_node(ros, episode_steps=10, hold_after_episode=True, transition_log=str(log))
    # Discovery matches each direction on its own: wait until the probe's commands arrive,
    # then start a fresh episode whose every state the probe can answer.
    wait_until(lambda: node.status.snapshot()["commands_received"] > 0)
    client = probe.node.create_client(Trigger, "reset")
    assert client.wait_for_service(timeout_sec=10.0)
    assert client.call(Trigger.Request(), timeout_sec=10.0).success
    wait_until(lambda: (now := node.status.snapshot())["episode"] == 1 and now["step"] >= 30)
    assert node.status.snapshot()["episode_over"]
    records = [rec for rec in read_jsonl(log) if rec["episode"] == 1]
    answered = [rec for rec in records[:10] if rec["answered"]]  # best effort may lose a state
    assert len(answered) >= 8 and all(rec["action"] == [1.0 / 1.5] * 7 for rec in answered)
    assert all(not rec["answered"] and rec["action"] == [0.0] * 7 for rec in records[10:])
    moved = np.array(records[10]["positions"]) - records[0]["positions"]
    assert moved.max() > 0.1, "the commands moved the arm during the episode"
    held = np.array(records[29]["positions"]) - records[20]["positions"]
    assert np.abs(held).max() < 0.02, "the arm must hold after episode_steps"


def test_command_timeout_holds_still_and_clock_follows_the_stamps(ros: Ros, tmp_path) -> None:
    log = tmp_path / "transitions.jsonl"
    sim_node(
        ros,
        lockstep=False,
        real_time_factor=2.0,
        command_timeout_s=0.3,
        publish_clock=True,
        transition_log=str(log),
    )
    probe = Probe(ros)
    clocks: list[int] = []
    probe.node.create_subscription(
        Clock, "/clock", lambda m: clocks.append(stamp_to_ns(m.clock)), 10
    )
    wait_until(lambda: probe.commands.get_subscription_count() and len(probe.states) > 3)
    probe.commands.publish(commands_to_msg(np.full(7, 0.75)))  # unstamped, 0.5 in env units
    sent = time.monotonic()
    wait_until(lambda: time.monotonic() > sent + 1.0 and len(clocks) > 10)
    actions = [rec["action"][0] for rec in read_jsonl(log)]
    first = actions.index(0.5)
    last = len(actions) - 1 - actions[::-1].index(0.5)
    assert actions[first : last + 1] == [0.5] * (last - first + 1)
    assert 4 <= last - first + 1 <= 40, "held for ~0.3 s of wall time (~24 ticks at 2x)"
    assert actions[last + 1 :] and set(actions[last + 1 :]) == {0.0}
    state_stamps = {stamp_to_ns(s.header.stamp) for s in probe.states}
    assert len(set(clocks) & state_stamps) >= 5


def test_bad_inputs_are_dropped_and_counted_and_valid_task_applies(ros: Ros) -> None:
    node = sim_node(ros)
    helper = ros.add(Node("helper", **ros.kwargs()))
    tasks = helper.create_publisher(String, "task", COMMAND_QOS)
    commands = helper.create_publisher(
        Float64MultiArray, commands_topic("arm_controller"), COMMAND_QOS
    )
    wait_until(lambda: tasks.get_subscription_count() and commands.get_subscription_count())
    tasks.publish(String(data='{"family": "reach", "goal": [9, 9, 9]}'))
    tasks.publish(String(data="not json"))
    commands.publish(Float64MultiArray(data=[1.0, 2.0]))
    commands.publish(Float64MultiArray(data=[float("nan")] * 7))
    wait_until(lambda: node.status.dropped("task") == 2 and node.status.dropped("command") == 2)

    task = sample_tasks("reach+dynamics", 1, split="test", seed=3)[0]
    tasks.publish(String(data=task.to_json()))
    wait_until(lambda: node.env.task == task)
    ticks = node.status.snapshot()["ticks"]
    wait_until(lambda: node.status.snapshot()["ticks"] > ticks + 5)  # still stepping
    assert node.status.snapshot()["task_family"] == "reach+dynamics"


def test_a_task_is_acknowledged_and_confirmed_from_the_first_state_under_it(ros: Ros) -> None:
    node = sim_node(ros, real_time_factor=2.0, lockstep=False)
    helper = ros.add(Node("helper", **ros.kwargs()))
    tasks = helper.create_publisher(String, "task", COMMAND_QOS)
    active, acks, stamps = [], [], []
    helper.create_subscription(String, "active_task", active.append, LATCHED_QOS)
    helper.create_subscription(String, "task_ack", acks.append, STREAM_QOS)
    helper.create_subscription(
        JointState,
        "joint_states",
        lambda m: stamps.append(stamp_to_ns(m.header.stamp)),
        JOINT_STATES_QOS,
    )
    wait_until(lambda: active and tasks.get_subscription_count() and stamps)
    initial = active_task_from_msg(active[-1])
    assert initial.id == node.status.snapshot()["task_id"] and initial.family == "dynamics"

    task = sample_tasks("reach", 1, split="test", seed=4)[0]
    for _ in range(3):  # a sender repeating the message until it is acknowledged
        tasks.publish(task_to_msg(task, "t-1"))
    wait_until(lambda: len(acks) >= 3 and len(active) >= 2)
    time.sleep(0.3)
    assert len(active) == 2, "a repeated id must not be confirmed (or applied) again"
    confirmed = active_task_from_msg(active[-1])
    assert (confirmed.id, confirmed.family) == ("t-1", "reach")
    assert confirmed.driver_session == initial.driver_session
    assert confirmed.since_stamp_ns in stamps or confirmed.since_stamp_ns > stamps[-1]
    assert node.env.task == task and node.status.snapshot()["task_id"] == "t-1"
    assert all('"accepted": true' in a.data and '"t-1"' in a.data for a in acks[-3:])


def test_clock_is_advertised_only_while_publish_clock_is_on(ros: Ros) -> None:
    node = sim_node(ros)
    assert node.count_publishers("/clock") == 0
    node.set_parameters([Parameter("publish_clock", value=True)])
    assert node.count_publishers("/clock") == 1
    node.set_parameters([Parameter("publish_clock", value=False)])
    assert node.count_publishers("/clock") == 0


def test_rejects_invalid_parameters(ros: Ros) -> None:
    node = sim_node(ros)
    results = node.set_parameters(
        [
            Parameter("real_time_factor", value=-1.0),
            Parameter("command_wait_s", value=float("nan")),
            Parameter("episode_steps", value=0),
            Parameter("controller", value="other"),
        ]
    )
    assert [r.successful for r in results] == [False] * 4
    assert node.params["real_time_factor"] == 0.0
    assert node.set_parameters([Parameter("real_time_factor", value=2.0)])[0].successful
    assert node.params["real_time_factor"] == 2.0
    with pytest.raises(ValueError, match="initial_task"):
        SimArmNode(
            **ros.kwargs(),
            parameter_overrides=[Parameter("initial_task", value='{"family": "walk"}')],
        )


def _executable(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not on PATH: run `make setup` and `source tools/env.sh`"
    return path


def test_executable_publishes_and_shuts_down_cleanly(ros: Ros) -> None:
    proc = subprocess.Popen(
        [
            _executable("sim_arm_node"),
            "--ros-args",
            "-r",
            f"__ns:={ros.namespace}",
            "-p",
            "real_time_factor:=0.0",
            "-p",
            "command_wait_s:=3.0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        probe = Probe(ros)  # it does not answer: every lockstep wait runs its full 3 s
        client = probe.node.create_client(Trigger, "reset")
        wait_until(lambda: client.service_is_ready() or proc.poll() is not None, timeout=60.0)
        assert proc.poll() is None, "sim_arm_node exited early"
        seen = len(probe.states)
        wait_until(lambda: len(probe.states) > seen, timeout=30.0)  # a wait has just begun
        started = time.monotonic()
        response = client.call(Trigger.Request(), timeout_sec=30.0)
        assert response.success and "episode 1" in response.message
        assert time.monotonic() - started < 1.5, "a reset pre-empts the lockstep wait"
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output


def test_executable_exits_2_on_invalid_parameter() -> None:
    proc = subprocess.run(
        [_executable("sim_arm_node"), "--ros-args", "-p", "real_time_factor:=-3.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "real_time_factor" in proc.stderr + proc.stdout


def test_config_lists_every_parameter_with_its_default(ros: Ros) -> None:
    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "adapt.yaml").read_text())
    values = config["/**/sim_arm"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in PARAMS}
    node = sim_node(ros)
    assert set(values) == {name for name in node._parameters if name not in ROS_BUILTIN_PARAMETERS}


def test_garbage_inputs_never_raise_out_of_a_callback(ros: Ros) -> None:
    node = sim_node(ros, real_time_factor=50.0)
    numbers = st.floats(allow_nan=True, allow_infinity=True, width=64)

    @settings(max_examples=60, deadline=None)
    @given(
        data=st.lists(numbers, max_size=9),
        label=st.text(max_size=20),
        text=st.text(max_size=60),
    )
    def feed(data: list[float], label: str, text: str) -> None:
        msg = Float64MultiArray(data=data)
        msg.layout.dim = [MultiArrayDimension(label=label)]
        node._on_command(msg)
        node.task_inbox.receive(String(data=text))

    before = node.status.dropped()
    feed()
    assert node.status.dropped() > before
    wait_until(lambda: node.status.snapshot()["ticks"] >= 2)  # the physics loop lives on


def test_a_reset_while_another_is_pending_is_answered_busy_at_once(ros: Ros) -> None:
    """The reset callback does not hold the executor while the physics thread is busy: a
    second call is answered ("busy") while the first is still waiting, and the first is
    answered when the physics thread applies it."""
    node = sim_node(ros)
    apply_requests = node._apply_requests
    stalled = threading.Event()
    stalled.set()

    def busy_physics() -> None:  # the physics thread is busy: nothing is applied yet
        if stalled.is_set():
            time.sleep(0.01)
            return
        apply_requests()

    node._apply_requests = busy_physics
    probe = ros.add(Node("probe", **ros.kwargs()))
    first_client = probe.create_client(Trigger, "reset")
    second_client = probe.create_client(Trigger, "reset")
    assert first_client.wait_for_service(timeout_sec=10.0)
    assert second_client.wait_for_service(timeout_sec=10.0)
    first = first_client.call_async(Trigger.Request())
    wait_until(lambda: node._pending_resets)
    second = second_client.call(Trigger.Request(), timeout_sec=10.0)
    assert second is not None, "the second reset was not answered while the first waited"
    assert not second.success and second.message == "busy"
    assert not first.done(), "the first reset waits for the physics thread"
    assert node.status.dropped("reset") == 1
    stalled.clear()
    wait_until(first.done)
    assert first.result().success and "episode 1" in first.result().message
