"""adaptation_node in-process: the stream joiner, the adaptation cycle against a fake arm, faults.

The fake arm is a tiny node standing in for the driver and the controller at once: a 7-joint
velocity-controlled point in joint space whose reward is the distance to a hidden goal. It runs
the policy the adaptation node publishes, so a working inner update measurably improves it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from geometry_msgs.msg import Vector3Stamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_harness import read_jsonl, small_bundle, wait_until
from sensor_msgs.msg import JointState
from std_msgs.msg import String, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger

from maml_ros.rl.checkpoint import PolicyBundle, save_bundle
from maml_ros.rl.policy import NumpyPolicy, numpy_policy
from maml_ros.ros.adaptation_node import DEFAULT_JOINT_NAMES, AdaptationNode
from maml_ros.ros.common import ns_to_stamp
from maml_ros.ros.convert import (
    TaskChange,
    action_to_msg,
    active_task_to_msg,
    policy_from_msg,
    reward_to_msg,
    task_from_msg,
    task_label,
)
from maml_ros.ros.interfaces import JOINT_STATES_QOS, LATCHED_QOS, STREAM_QOS
from maml_ros.sim import sample_tasks

torch.set_num_threads(1)
NAMES = DEFAULT_JOINT_NAMES
GOAL = np.array([0.5, -0.4, 0.3, -0.5, 0.4, -0.3, 0.5])
DT = 0.05
REACH_TASK = sample_tasks("reach", 2, "test", seed=0)


# ---------------------------------------------------------------------------------------------
# The fake arm (driver + controller).


class FakeArm(Node):
    """Driver and controller in one: runs the received policy on a joint-space point mass."""

    def __init__(self, context: Context, goal: np.ndarray = GOAL, period_s: float = 0.004) -> None:
        super().__init__("fake_arm", context=context)
        self.goal = goal
        self.lock = threading.Lock()
        self.policy: NumpyPolicy | None = None
        self.policy_versions: list[int] = []
        self.run_id = ""
        self.explore = False
        self.rng = np.random.default_rng(0)
        self.episode = 0
        self.stamp_ns = 1_000_000_000
        self.pos = np.zeros(7)
        self.vel = np.zeros(7)
        self.log: list[dict] = []
        self.restart_at_step: int | None = None  # one simulated driver restart while exploring
        self.step_in_episode = 0
        self.drop_actions_left = 0  # exploring episodes that lose the action of their step 5
        self.flip_goal_on_version: int | None = None
        self.confirm_tasks = True  # a driver that confirms each task on active_task
        self.session = "fake-1"
        self.reward_label = ""  # the task@session label on rewards, set by confirm()
        self.ticks = 0
        self.state_pub = self.create_publisher(JointState, "joint_states", JOINT_STATES_QOS)
        self.action_pub = self.create_publisher(JointState, "arm_controller/actions", STREAM_QOS)
        self.reward_pub = self.create_publisher(Vector3Stamped, "reward", STREAM_QOS)
        self.status_pub = self.create_publisher(String, "policy_controller/status", LATCHED_QOS)
        self.active_task_pub = self.create_publisher(String, "active_task", LATCHED_QOS)
        self.create_subscription(String, "task", self.on_task, STREAM_QOS)
        self.create_subscription(UInt8MultiArray, "policy", self.on_policy, LATCHED_QOS)
        self.create_service(Trigger, "reset", self.on_reset)
        self.create_service(SetBool, "arm_controller/set_exploration", self.on_explore)
        self.create_timer(period_s, self.tick)

    def on_policy(self, msg: UInt8MultiArray) -> None:
        bundle = policy_from_msg(msg, 1 << 24)
        with self.lock:
            self.policy, self.run_id = numpy_policy(bundle), bundle.run_id
            self.policy_versions.append(bundle.version)
            if bundle.version == self.flip_goal_on_version:
                self.goal = -self.goal
        status = {"run_id": bundle.run_id, "policy_version": bundle.version}
        self.status_pub.publish(String(data=json.dumps(status)))

    def on_task(self, msg: String) -> None:
        try:
            change = task_from_msg(msg)
        except ValueError:
            return
        if self.confirm_tasks:
            self.confirm(change)

    def confirm(self, change: TaskChange) -> None:
        with self.lock:
            since = self.stamp_ns + int(DT * 1e9)
            self.reward_label = task_label(change.id, self.session)
        self.active_task_pub.publish(active_task_to_msg(change, since, self.session))

    def on_reset(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            self.episode += 1
            self.pos, self.vel = np.zeros(7), np.zeros(7)
            self.step_in_episode = 0
            response.success, response.message = True, f"home; episode {self.episode}"
        return response

    def on_explore(self, req: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.explore = bool(req.data)
        response.success = True
        return response

    def tick(self) -> None:
        with self.lock:
            if self.policy is None:
                return
            if self.explore and self.restart_at_step == self.step_in_episode:
                self.restart_at_step = None  # the driver restarts: clock and episode from zero
                self.stamp_ns, self.episode, self.step_in_episode = 1_000_000_000, 0, 0
                self.pos, self.vel = np.zeros(7), np.zeros(7)
            self.stamp_ns += int(DT * 1e9)
            self.ticks += 1
            stamp = ns_to_stamp(self.stamp_ns)
            state = JointState(name=list(NAMES), position=self.pos.tolist())
            state.velocity = self.vel.tolist()
            state.header.stamp = stamp
            obs = np.concatenate([self.pos, self.vel]).astype(np.float32)
            action = self.policy.act(obs, self.explore, self.rng).copy()
            self.state_pub.publish(state)
            if self.explore and self.drop_actions_left and self.step_in_episode == 5:
                self.drop_actions_left -= 1
            else:
                self.action_pub.publish(action_to_msg(stamp, NAMES, action))
            record = {
                "stamp_ns": self.stamp_ns,
                "episode": self.episode,
                "positions": self.pos.tolist(),
                "velocities": self.vel.tolist(),
                "action": [float(a) for a in action],
            }
            self.vel = np.clip(action, -1.0, 1.0).astype(np.float64)
            self.pos = self.pos + DT * self.vel
            distance = float(np.linalg.norm(self.pos - self.goal))
            reward, success = -distance, distance < 0.05
            record.update(reward=reward, success=success)
            self.log.append(record)
            self.step_in_episode += 1
            self.reward_pub.publish(
                reward_to_msg(stamp, reward, success, self.episode, self.reward_label)
            )


# ---------------------------------------------------------------------------------------------
# Harness.


class Harness:
    """A context, the fake arm and an adaptation node spinning in a background thread."""

    def __init__(self, tmp_path: Path, bundle: PolicyBundle, **overrides: object) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.checkpoint = tmp_path / "policy.safetensors"
        save_bundle(self.checkpoint, bundle)
        params = {
            "checkpoint": str(self.checkpoint),
            "device": "cpu",
            "rollouts": 8,
            "horizon": 20,
            "eval_episodes": 1,
            "step_timeout_s": 2.0,
            "policy_ack_timeout_s": 2.0,
            "stamp_tolerance_s": 0.0,  # the fake arm's time starts at 1 s and runs 12.5x fast
            **overrides,
        }
        self.arm = FakeArm(self.context)
        self.node = AdaptationNode(
            context=self.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.arm)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.task_pub = self.arm.create_publisher(String, "task", STREAM_QOS)

    def send_task(self, index: int = 0) -> None:
        self.task_pub.publish(String(data=REACH_TASK[index].to_json()))

    def status(self) -> dict:
        return self.node.status.snapshot()

    def wait_for_first_policy(self) -> None:
        self.wait_for(lambda _: bool(self.arm.policy_versions), 10.0)

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.02)
        raise AssertionError(f"timed out; last status: {self.status()}")

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.arm.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture
def harness_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(bundle: PolicyBundle | None = None, **overrides: object) -> Harness:
        made.append(Harness(tmp_path, bundle or small_bundle(), **overrides))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def finished(status: dict) -> bool:
    return status.get("phase") in ("done", "rolled_back", "failed")


# ---------------------------------------------------------------------------------------------
# The node.


def test_ready_means_warmed_up_and_the_services_found(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    status = h.wait_for(lambda s: s.get("ready"), 20.0)
    assert status["services_ready"] is True and status["warm_up_ms"] > 0
    lonely = harness_factory(controller_name="no_such_controller", service_timeout_s=0.5)
    status = lonely.wait_for(lambda s: s.get("ready"), 20.0)
    assert status["services_ready"] is False


def test_adapts_to_a_task_change_and_dumps_what_the_arm_executed(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    dump = tmp_path / "buffer.jsonl"
    h = harness_factory(buffer_dump=str(dump))
    h.wait_for_first_policy()
    assert h.arm.policy_versions == [0] and h.arm.run_id == h.node.protocol.run_id
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] == "done", status
    assert status["task_family"] == "reach"
    assert status["rollouts_collected"] == 8
    assert status["policy_version"] == 1 and h.arm.policy_versions[-1] == 1
    assert status["return_post"] > status["return_pre"], status
    assert status["adapt_latency_ms"] > 0 and np.isfinite(status["inner_loss"])
    # The node's own clock: task -> first rollout step, the rollouts, rollouts -> policy active.
    first, collect = status["task_to_first_rollout_step_ms"], status["collect_ms"]
    active, whole = status["policy_active_after_rollouts_ms"], status["task_to_policy_active_ms"]
    assert first > 0 and collect > 0 and status["adapt_latency_ms"] <= active
    assert first < whole and collect + active <= whole + 1.0
    records = read_jsonl(dump)
    assert len(records) == 8 * 20
    executed = {r["stamp_ns"]: r for r in h.arm.log}
    for record in records:
        assert record == executed[record["stamp_ns"]]
    by_episode: dict[int, list[int]] = {}
    for record in records:
        by_episode.setdefault(record["episode"], []).append(record["stamp_ns"])
    assert len(by_episode) == 8 and all(len(s) == 20 for s in by_episode.values())


def test_a_driver_restart_mid_collection_discards_the_partial_rollout(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    dump = tmp_path / "buffer.jsonl"
    h = harness_factory(buffer_dump=str(dump), rollouts=4)
    h.wait_for_first_policy()
    h.arm.restart_at_step = 7
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] in ("done", "rolled_back"), status
    assert status["rollouts_discarded"] >= 1 and status["dropped"].get("rollout", 0) >= 1
    assert "driver restart" in status["last_drop_reason"]["rollout"]
    records = read_jsonl(dump)
    episodes: dict[int, int] = {}
    for record in records:
        episodes[record["episode"]] = episodes.get(record["episode"], 0) + 1
    assert sorted(episodes.values()) == [20] * 4  # no partial episode got through


def test_a_task_change_during_an_adaptation_cancels_and_restarts(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(rollouts=30)
    h.wait_for_first_policy()
    h.send_task(0)
    h.wait_for(lambda s: s["phase"] == "collecting" and s["rollouts_collected"] >= 2)
    h.send_task(1)
    status = h.wait_for(lambda s: s.get("cancellations", 0) >= 1)
    status = h.wait_for(finished, timeout_s=60.0)
    assert status["cancellations"] == 1 and status["phase"] == "done", status
    assert status["rollouts_collected"] == 30 and status["adaptations"] == 1


def test_a_task_the_driver_never_confirms_fails_with_the_policy_unchanged(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(task_confirm_timeout_s=0.5)
    h.wait_for_first_policy()
    h.arm.confirm_tasks = False
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] == "failed", status
    assert "did not confirm task" in status["reason"] and "policy unchanged" in status["reason"]
    assert status["rollouts_collected"] == 0 and status["return_pre"] is None
    assert h.arm.policy_versions == [0] and status["policy_version"] == 0


def test_a_driver_switching_task_mid_collection_fails_without_mixing_tasks(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(rollouts=30)
    h.wait_for_first_policy()
    h.send_task(0)
    h.wait_for(lambda s: s["phase"] == "collecting" and s["rollouts_collected"] >= 2)
    h.arm.session = "fake-2"  # the driver restarted: it runs its initial task again
    h.arm.confirm(TaskChange("initial", REACH_TASK[1]))
    status = h.wait_for(finished)
    assert status["phase"] == "failed", status
    assert "switched from task" in status["reason"] and "fake-2" in status["reason"]
    assert status["adaptations"] == 0 and h.arm.policy_versions == [0]


def test_rewards_of_another_driver_session_fail_before_its_confirmation_arrives(
    harness_factory: Callable[..., Harness],
) -> None:
    """A restarted driver's steps can reach the node before its latched active_task does (two
    topics, matched separately): the task label on each reward catches them."""
    h = harness_factory(rollouts=30)
    h.wait_for_first_policy()
    h.send_task(0)
    h.wait_for(lambda s: s["phase"] == "collecting" and s["rollouts_collected"] >= 2)
    with h.arm.lock:
        h.arm.reward_label = task_label("initial", "fake-2")  # no active_task published
    status = h.wait_for(finished)
    assert status["phase"] == "failed", status
    assert "initial@fake-2" in status["reason"] and "on a reward" in status["reason"], status
    assert status["adaptations"] == 0 and h.arm.policy_versions == [0]


def test_a_repeated_task_message_is_acknowledged_and_changes_nothing(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(rollouts=6)
    acks: list[dict] = []
    h.arm.create_subscription(
        String, "task_ack", lambda m: acks.append(json.loads(m.data)), STREAM_QOS
    )
    h.wait_for_first_policy()
    h.send_task()
    h.wait_for(lambda s: s["phase"] == "collecting")
    h.send_task()  # a sender repeating the message until every node acknowledged it
    status = h.wait_for(finished)
    assert status["phase"] == "done" and status["cancellations"] == 0, status
    assert status["task_id"] == task_from_msg(String(data=REACH_TASK[0].to_json())).id
    node = h.node.get_fully_qualified_name()
    mine = [a for a in acks if a["node"] == node]
    assert len(mine) == 2 and all(a["accepted"] and a["id"] == status["task_id"] for a in mine)


def test_a_rollout_with_a_missing_step_is_discarded(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    dump = tmp_path / "buffer.jsonl"
    h = harness_factory(rollouts=3, buffer_dump=str(dump))
    h.arm.drop_actions_left = 2
    h.wait_for_first_policy()
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] in ("done", "rolled_back"), status
    assert status["dropped"]["step"] >= 2
    assert "missing action" in status["last_drop_reason"]["step"]
    assert status["rollouts_discarded"] == 2, status
    assert "1 control step(s) missing" in status["last_drop_reason"]["rollout"]
    stamps: dict[int, list[int]] = {}
    for record in read_jsonl(dump):
        stamps.setdefault(record["episode"], []).append(record["stamp_ns"])
    period = int(DT * 1e9)
    assert len(stamps) == 3
    for episode in stamps.values():  # every kept rollout is contiguous
        assert np.diff(episode).tolist() == [period] * 19


def test_one_state_stamped_1_ns_after_a_real_one_does_not_disable_adaptation(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(rollouts=3)
    h.wait_for_first_policy()
    h.wait_for(lambda _: h.arm.ticks > 5, 10.0)
    with h.arm.lock:  # right after a real state, before the next one
        stray = JointState(name=list(NAMES), position=[0.0] * 7, velocity=[0.0] * 7)
        stray.header.stamp = ns_to_stamp(h.arm.stamp_ns + 1)
        h.arm.state_pub.publish(stray)
    h.wait_for(lambda _: h.arm.ticks > 10, 10.0)
    assert h.node.joiner.period_ns == int(DT * 1e9)
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] in ("done", "rolled_back"), status
    assert status["rollouts_collected"] == 3 and status["rollouts_discarded"] == 0, status


def test_inputs_stamped_far_from_the_clock_are_dropped_not_taken_for_a_restart(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(stamp_tolerance_s=600.0)  # (drops every state of the fake arm too)
    joiner = h.node.joiner
    two_hours = 2 * 3600 * 10**9
    now = time.time_ns()
    for stamp in (now + two_hours, now - two_hours):
        state = JointState(name=list(NAMES), position=[0.0] * 7, velocity=[0.0] * 7)
        state.header.stamp = ns_to_stamp(stamp)
        h.node._on_joint_state(state)
        h.node._on_action(action_to_msg(stamp, NAMES, np.zeros(7)))
        h.node._on_reward(reward_to_msg(stamp, -1.0, False, 99))
    assert joiner._newest_state_ns is None and joiner.generation == 0
    assert joiner.last_episode is None and not joiner._pending
    status = h.status()
    assert status["dropped"]["actions"] >= 2 and status["dropped"]["reward"] >= 2
    assert (
        "from the node's clock (stamp_tolerance_s 600.0)" in (status["last_drop_reason"]["reward"])
    )
    state = JointState(name=list(NAMES), position=[0.0] * 7, velocity=[0.0] * 7)
    state.header.stamp = ns_to_stamp(time.time_ns())
    h.node._on_joint_state(state)  # a state stamped now is taken
    assert joiner._newest_state_ns is not None


def test_an_exploding_update_is_rolled_back(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(small_bundle(lr=1e4), rollouts=3)
    h.wait_for_first_policy()
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] == "rolled_back" and "exploding" in status["reason"], status
    assert status["policy_version"] == 0 and h.arm.policy_versions == [0]


def test_a_worse_policy_after_the_update_is_rolled_back(
    harness_factory: Callable[..., Harness],
) -> None:
    # The world changes behind the node's back once the adapted policy is out: the goal
    # flips, so the policy adapted toward the old goal does worse than the one before.
    h = harness_factory(rollouts=8, rollback_margin=0.0)
    h.wait_for_first_policy()
    h.arm.flip_goal_on_version = 1
    h.send_task()
    status = h.wait_for(finished)
    assert status["phase"] == "rolled_back", status
    assert status["return_post"] < status["return_pre"]
    assert status["policy_version"] == 2
    h.wait_for(lambda _: h.arm.policy_versions[-1] == 2, 5.0)
    assert h.arm.policy_versions == [0, 1, 2]
    # The republished version carries the pre-update weights.
    protocol = h.node.protocol
    assert torch.equal(protocol.current.params["log_std"], protocol.meta_bundle.params["log_std"])


def test_bad_messages_are_dropped_and_counted(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    h.wait_for_first_policy()
    h.task_pub.publish(String(data='{"family": "fly"}'))
    bad_state = JointState(name=["a"], position=[0.0], velocity=[0.0])
    bad_state.header.stamp = ns_to_stamp(5)
    h.arm.state_pub.publish(bad_state)
    bad_reward = Vector3Stamped()
    bad_reward.header.stamp = ns_to_stamp(5)
    bad_reward.vector.x = float("nan")
    h.arm.reward_pub.publish(bad_reward)
    h.wait_for(lambda s: {"task", "joint_states", "reward"} <= set(s["dropped"]), 10.0)
    assert h.status()["phase"] == "idle"


def test_hostile_controller_status_and_unusable_buffer_dump_paths_are_refused(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = harness_factory()
    h.node._on_controller_status(String(data="[" * 100000))  # over the size limit
    h.node._on_controller_status(String(data="[" * 50000))  # RecursionError in the parser
    status = h.status()
    assert status["dropped"]["controller_status"] == 2
    assert "RecursionError" in status["last_drop_reason"]["controller_status"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    unusable = {
        str(tmp_path): "is a directory",
        str(tmp_path / ("x" * 300)): "longer than the file system allows (255 bytes)",
        str(tmp_path / ("x" * 300) / "dump.jsonl"): "longer than the file system allows",
        "/" + "d/" * 3000 + "dump.jsonl": "path is longer than the file system allows",
        str(fifo): "not a regular file",
        str(tmp_path / "missing" / "dump.jsonl"): "does not exist",
    }
    for value, why in unusable.items():
        result = h.node.set_parameters([Parameter("buffer_dump", value=value)])[0]
        assert not result.successful and why in result.reason, (value[:60], result.reason)
        with pytest.raises(ValueError, match="buffer_dump"):
            AdaptationNode(
                context=h.context,
                parameter_overrides=[
                    Parameter("checkpoint", value=str(h.checkpoint)),
                    Parameter("buffer_dump", value=value),
                ],
            )
    good = h.node.set_parameters([Parameter("buffer_dump", value=str(tmp_path / "d.jsonl"))])
    assert good[0].successful
    assert h.node.status.dropped("buffer_dump") == 0


def test_invalid_parameters_are_rejected(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = harness_factory()
    results = h.node.set_parameters(
        [Parameter("rollouts", value=0), Parameter("device", value="tpu")]
    )
    assert not any(r.successful for r in results)
    assert not h.node.set_parameters([Parameter("checkpoint", value="x")])[0].successful
    assert h.node.set_parameters([Parameter("horizon", value=30)])[0].successful
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        AdaptationNode(
            context=h.context, parameter_overrides=[Parameter("checkpoint", value=str(bad))]
        )


def test_config_section_lists_every_parameter_with_its_default() -> None:
    import yaml

    from maml_ros.ros.adaptation_node import PARAMS

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "adapt.yaml").read_text())
    section = config["/**/adaptation"]["ros__parameters"]
    assert section == {spec.name: spec.default for spec in PARAMS}


def test_default_joint_names_are_the_simulated_arms() -> None:
    from maml_ros.sim import ArmEnv

    env = ArmEnv()
    try:
        assert list(env.joint_names) == DEFAULT_JOINT_NAMES
    finally:
        env.close()


def test_deactivate_cancels_keeps_the_good_policy_and_refuses_tasks(
    harness_factory: Callable[..., Harness],
) -> None:
    """Lifecycle: deactivate mid-collection cancels the adaptation and republishes the last
    good (evaluated) policy; an inactive node refuses tasks; activate takes them again."""
    h = harness_factory(rollouts=6)
    h.wait_for_first_policy()
    h.send_task(0)
    done = h.wait_for(finished)
    assert done["phase"] == "done", done
    good = h.node.protocol.good
    assert good.version == done["policy_version"]

    h.send_task(1)  # starts from the meta-trained policy (reset_to_meta), published anew
    h.wait_for(lambda s: s["phase"] == "collecting" and s["adaptation_id"] == 2)
    h.node.trigger_deactivate()
    status = h.wait_for(lambda s: s["phase"] == "cancelled")
    assert status["reason"] == "deactivate" and status["lifecycle"] == "inactive"
    wait_until(lambda: h.node.protocol.current.version > good.version + 1)
    kept = h.node.protocol.current
    assert all(torch.equal(kept.params[k], good.params[k]) for k in good.params)
    wait_until(lambda: h.arm.policy_versions[-1] == kept.version)  # the arm got it

    assert h.node.protocol.submit(TaskChange("while-inactive", REACH_TASK[0])) is not None
    h.node.trigger_activate()
    assert h.node.protocol.submit(TaskChange("active-again", REACH_TASK[0])) is None


def test_a_checkpoint_whose_actions_are_not_finite_is_refused(tmp_path: Path) -> None:
    bundle = small_bundle()
    weight = torch.zeros_like(bundle.params["mlp.0.weight"])
    weight[0, 0], weight[0, 1] = 3e38, -3e38  # finite weights, inf - inf in the first layer
    path = save_bundle(
        tmp_path / "overflow.safetensors",
        bundle.replace(params={**bundle.params, "mlp.0.weight": weight}),
    )
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match=r"cannot load checkpoint.*policy probe"):
            AdaptationNode(
                context=context, parameter_overrides=[Parameter("checkpoint", value=str(path))]
            )
    finally:
        rclpy.try_shutdown(context=context)


def test_a_checkpoint_for_another_robot_is_refused(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """A Panda checkpoint has the iiwa's sizes (7 joints): only its robot tells them apart."""
    h = harness_factory()
    panda = small_bundle().replace(
        metadata={"robot": "franka_panda", "joint_names": [f"panda_joint{i}" for i in range(1, 8)]}
    )
    path = tmp_path / "panda.safetensors"
    save_bundle(path, panda)
    with pytest.raises(ValueError, match="policy is for robot 'franka_panda'"):
        AdaptationNode(
            context=h.context, parameter_overrides=[Parameter("checkpoint", value=str(path))]
        )
    node = AdaptationNode(
        context=h.context,
        parameter_overrides=[
            Parameter("checkpoint", value=str(path)),
            Parameter("robot", value="franka_panda"),
        ],
    )
    try:
        assert node.joint_names == [f"panda_joint{i}" for i in range(1, 8)]
        assert node.protocol.meta_bundle is not None
    finally:
        node.destroy_node()
