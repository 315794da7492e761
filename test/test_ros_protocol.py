"""The adaptation protocol in plain Python: the joiner, the rules, and whole adaptations
against a fake robot (no DDS, no executor; the protocol's worker is a plain thread).

The fake robot is a 7-joint velocity-controlled point in joint space whose reward is minus the
distance to a hidden goal. Each reset plays one whole episode of the deployed policy into the
joiner, so a working inner update measurably improves the return.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ros_harness import small_bundle

from maml_ros.rl.checkpoint import CheckpointError, PolicyBundle
from maml_ros.rl.policy import numpy_policy
from maml_ros.ros.adaptation_node import PARAMS
from maml_ros.ros.convert import ActiveTask, TaskChange, task_label
from maml_ros.ros.protocol import (
    NEXT_VERSION_KEY,
    STARVED_INPUTS,
    AdaptationProtocol,
    PartialRollout,
    StateFile,
    StepJoiner,
    episode_from_reset_message,
    update_problem,
)
from maml_ros.runtime import Deployment, replacement_refusal
from maml_ros.sim import sample_tasks

torch.set_num_threads(1)
GOAL = np.array([0.5, -0.4, 0.3, -0.5, 0.4, -0.3, 0.5])
DT_NS = 50_000_000
TASKS = sample_tasks("reach", 2, "test", seed=0)
FINAL = ("done", "rolled_back", "cancelled", "failed")
PARENT = "0" * 64
"""The parent-checkpoint digest the harness's state files carry."""


# ---------------------------------------------------------------------------------------------
# Pure parts.


def test_joiner_joins_parts_in_any_order_and_drops_incomplete_steps() -> None:
    drops: list[tuple[str, str]] = []
    joiner = StepJoiner(8, lambda kind, reason: drops.append((kind, reason)))
    pos, vel = np.arange(7.0), -np.arange(7.0)
    joiner.add_reward(10, -1.0, False, 3)
    joiner.add_action(10, np.ones(7))
    assert joiner.wait_step(0.0) is None
    joiner.add_state(10, pos, vel)
    step = joiner.wait_step(0.0)
    assert step is not None and step.stamp_ns == 10 and step.episode == 3
    assert step.reward == -1.0 and not step.success
    np.testing.assert_array_equal(step.positions, pos)
    np.testing.assert_array_equal(step.action, np.ones(7))
    # Stamp 20 lacks its action; when 30 completes, 20 can never complete: dropped, counted.
    joiner.add_state(20, pos, vel)
    joiner.add_reward(20, -1.0, False, 3)
    for part in ("state", "action", "reward"):
        {
            "state": lambda: joiner.add_state(30, pos, vel),
            "action": lambda: joiner.add_action(30, np.zeros(7)),
            "reward": lambda: joiner.add_reward(30, -0.5, True, 3),
        }[part]()
    assert [s.stamp_ns for s in [joiner.wait_step(0.0)]] == [30]
    assert drops and drops[0][0] == "step" and "missing action" in drops[0][1]


def test_joiner_is_bounded_and_detects_a_driver_restart() -> None:
    drops: list[tuple[str, str]] = []
    joiner = StepJoiner(4, lambda kind, reason: drops.append((kind, reason)))
    for stamp in range(1, 11):  # states only: they pile up, the oldest are evicted
        joiner.add_state(stamp * 10, np.zeros(7), np.zeros(7))
    assert len(drops) == 6 and all("buffer full" in r for _, r in drops)
    assert joiner.generation == 0
    joiner.add_state(5, np.zeros(7), np.zeros(7))  # stamps went backwards: restart
    assert joiner.generation == 1
    joiner.add_action(5, np.zeros(7))
    joiner.add_reward(5, 0.0, False, 0)
    step = joiner.wait_step(0.0)
    assert step is not None and step.generation == 1 and step.episode == 0
    joiner.add_action(5, np.zeros(7))
    assert "late or duplicate action" in drops[-1][1]


def test_joiner_period_is_a_median_that_one_stray_stamp_cannot_poison() -> None:
    joiner = StepJoiner(8, lambda kind, reason: None)
    assert joiner.period_ns is None
    period = 25_000_000
    stamp = 1_000_000_000
    for i in range(10):
        stamp += period
        joiner.add_state(stamp, np.zeros(7), np.zeros(7))
        if i == 3:
            joiner.add_state(stamp + 1, np.zeros(7), np.zeros(7))  # a duplicated driver
        if i == 5:
            stamp += 3 * period  # two lost states
    assert joiner.period_ns == period
    joiner.add_state(stamp + 60 * 10**9, np.zeros(7), np.zeros(7))  # a minute's pause
    assert joiner.period_ns == period


def test_joiner_invalidates_a_step_whose_rewards_conflict_instead_of_taking_the_first() -> None:
    drops: list[tuple[str, str]] = []
    joiner = StepJoiner(8, lambda kind, reason: drops.append((kind, reason)))
    state = (np.zeros(7), np.zeros(7))
    # A spoofer's reward arrives first, then the driver's: the step never completes.
    joiner.add_reward(10, 5.0, True, 1, "t@s")
    joiner.add_reward(10, -1.0, False, 1, "t@s")
    joiner.add_state(10, *state)
    joiner.add_action(10, np.zeros(7))
    assert joiner.wait_step(0.0) is None and joiner.conflicted([10]) == [10]
    assert drops[-1][0] == "reward" and "conflicting rewards for stamp 10" in drops[-1][1]
    # An identical repeat is a harmless duplicate: the step completes.
    joiner.add_state(20, *state)
    joiner.add_action(20, np.zeros(7))
    joiner.add_reward(20, -1.0, False, 1, "t@s")
    assert joiner.wait_step(0.0).stamp_ns == 20
    joiner.add_reward(20, -1.0, False, 1, "t@s")
    assert "late or duplicate reward" in drops[-1][1] and joiner.conflicted([20]) == []
    # A different reward after the step completed: still queued, it is withdrawn; already
    # taken, the stamp is remembered for the protocol.
    for stamp in (30, 40):
        joiner.add_state(stamp, *state)
        joiner.add_action(stamp, np.zeros(7))
        joiner.add_reward(stamp, 5.0, True, 1, "t@s")
    assert joiner.wait_step(0.0).stamp_ns == 30
    joiner.add_reward(30, -1.0, False, 1, "t@s")
    joiner.add_reward(40, -1.0, False, 1, "t@s")
    assert joiner.wait_step(0.0) is None
    assert joiner.conflicted([20, 30, 40]) == [30, 40]


def test_reset_message_episode_and_update_checks() -> None:
    assert episode_from_reset_message("reset; episode 12 started") == 12
    assert episode_from_reset_message("Episode: 3") == 3
    assert episode_from_reset_message("ok") is None
    old = {"w": torch.ones(4), "b": torch.zeros(2)}
    assert update_problem(old, {"w": torch.ones(4) * 1.1, "b": torch.zeros(2)}, 1.0) is None
    assert "non-finite" in update_problem(
        old, {"w": torch.tensor([1.0, float("nan"), 1, 1]), "b": torch.zeros(2)}, 1.0
    )
    assert "exploding" in update_problem(old, {"w": torch.ones(4) * 50, "b": torch.zeros(2)}, 1.0)


# ---------------------------------------------------------------------------------------------
# The fake robot, the status sink and the harness.


class FakeRobot:
    """Driver and controller behind the protocol's Robot interface (see the module doc)."""

    def __init__(self, joiner: StepJoiner, horizon: int) -> None:
        self.joiner = joiner
        self.horizon = horizon
        self.protocol: AdaptationProtocol | None = None
        self.goal = GOAL.copy()
        self.rng = np.random.default_rng(0)
        self.policy = None
        self.deployed: list[PolicyBundle] = []
        self.explore = False
        self.explore_per_episode: list[bool] = []
        self.episode = 0
        self.stamp_ns = 1_000_000_000
        self.session = "fake-1"
        self.label = ""
        self.acks = True  # a controller that reports each policy it runs
        self.flip_goal_on_version: int | None = None
        self.on_reset: Callable[[FakeRobot], None] | None = None  # a fault to inject
        self.on_publish: Callable[[PolicyBundle], None] | None = None
        self.silent_resets = 0  # resets answered without any step following
        self.gaps = 0  # episodes that lose their 5th step
        self.unavailable = 0  # resets whose service is missing
        self.spoof_episodes: set[int] = set()  # a spoofer's reward beats the driver's (step 3)
        self.late_spoof_episodes: set[int] = set()  # ... at the next reset (step 3)
        self._late_spoof: tuple[int, int] | None = None
        self.unlabelled_episodes: set[int] = set()  # rewards of step 3 name no task
        self.forced_explore: bool | None = None  # another node's set_exploration wins
        self.labels_exploration = True  # actions say whether they explored (the controller)

    def confirm(self, change: TaskChange, session: str | None = None) -> None:
        """The driver takes up ``change`` and confirms it on active_task."""
        self.session = session or self.session
        self.label = task_label(change.id, self.session)
        since = self.stamp_ns + DT_NS
        self.protocol.on_active_task(ActiveTask(change.id, change.task.family, since, self.session))

    def services_ready(self) -> bool:
        return True

    def set_exploration(self, on: bool, timeout_s: float, check_cancel) -> tuple[bool, str]:
        check_cancel()
        self.explore = on
        return True, ""

    def publish_policy(self, bundle: PolicyBundle) -> None:
        if self.on_publish is not None:
            self.on_publish(bundle)
        self.deployed.append(bundle)
        self.policy = numpy_policy(bundle)
        if bundle.version == self.flip_goal_on_version:
            self.goal = -self.goal
        if self.acks:
            self.protocol.on_controller_ack(bundle.run_id, bundle.version)

    def reset(self, timeout_s: float, check_cancel) -> tuple[bool, str]:
        check_cancel()
        if self.unavailable:
            self.unavailable -= 1
            raise PartialRollout("service 'reset' is not available")
        if self._late_spoof is not None:  # the protocol has used that episode by now
            stamp, episode = self._late_spoof
            self._late_spoof = None
            self.joiner.add_reward(stamp, 0.0, True, episode, self.label)
        self.episode += 1
        if self.on_reset is not None:
            self.on_reset(self)
        if self.silent_resets:
            self.silent_resets -= 1
        else:
            self._play_episode()
        return True, f"home; episode {self.episode}"

    def _play_episode(self) -> None:
        explore = self.explore if self.forced_explore is None else self.forced_explore
        self.explore_per_episode.append(explore)
        pos, vel = np.zeros(7), np.zeros(7)
        lose_step = 5 if self.gaps else None
        self.gaps = max(self.gaps - 1, 0)
        for t in range(self.horizon):
            self.stamp_ns += DT_NS
            action = self.policy.act(np.concatenate([pos, vel]), explore, self.rng).copy()
            state = (pos.copy(), vel.copy())
            vel = np.clip(action, -1.0, 1.0).astype(np.float64)
            pos = pos + DT_NS * 1e-9 * vel
            distance = float(np.linalg.norm(pos - self.goal))
            if t == lose_step:
                continue
            self.joiner.add_state(self.stamp_ns, *state)
            self.joiner.add_action(
                self.stamp_ns, action, explore if self.labels_exploration else None
            )
            if t == 3 and self.episode in self.spoof_episodes:
                self.joiner.add_reward(self.stamp_ns, 0.0, True, self.episode, self.label)
            label = "" if t == 3 and self.episode in self.unlabelled_episodes else self.label
            self.joiner.add_reward(self.stamp_ns, -distance, distance < 0.05, self.episode, label)
            if t == 3 and self.episode in self.late_spoof_episodes:
                self._late_spoof = (self.stamp_ns, self.episode)


class FakeHomingRobot(FakeRobot):
    """An arm whose driver has no reset and no episode numbers (``reset_mode: homing``): the
    controller's home service answers with the stamp after which the episode starts, and the
    driver's episode field stays 0. While homing, 3 steps of the previous policy are still in
    flight (stamped before the answer). ``leave_envelope``: the homings (1-based) whose episode
    leaves the controller's safety envelope at step 5 (the controller then holds: no more
    actions)."""

    def __init__(self, joiner: StepJoiner, horizon: int) -> None:
        super().__init__(joiner, horizon)
        self.homings = 0
        self.leave_envelope: set[int] = set()

    def reset(self, timeout_s: float, check_cancel) -> tuple[bool, str]:
        check_cancel()
        self.homings += 1
        horizon = self.horizon
        self.horizon = 3
        self._play_episode()  # in flight: stamped before the homing answer
        self.explore_per_episode.pop()
        since = self.stamp_ns
        self.horizon = 5 if self.homings in self.leave_envelope else horizon
        self._play_episode()
        self.horizon = horizon
        if self.homings in self.leave_envelope:
            self.stamp_ns += DT_NS
            self.protocol.on_envelope_violation(self.stamp_ns, "joint 1 left the envelope")
        return True, f"home reached at stamp_ns={since}"


class RecordingStatus:
    """The protocol's status sink: the fields, every published phase and every drop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fields: dict[str, Any] = {}
        self.published: list[str | None] = []
        self.drops: list[tuple[str, str]] = []

    def set(self, **fields: Any) -> None:
        with self.lock:
            self.fields.update(fields)

    def publish(self) -> None:
        with self.lock:
            phase = self.fields.get("phase")
            if not self.published or self.published[-1] != phase:
                self.published.append(phase)

    def drop(self, kind: str, reason: str) -> None:
        with self.lock:
            self.drops.append((kind, reason))

    def get(self, name: str) -> Any:
        with self.lock:
            return self.fields.get(name)


class QuietLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warning = error = info


class Harness:
    """A protocol serving on its worker thread, with the fake robot and recording status."""

    def __init__(
        self,
        bundle: PolicyBundle,
        state_path: str | None = None,
        resume: bool = True,
        run_id: str = "run-1",
        robot_class: type[FakeRobot] | None = None,
        **overrides: Any,
    ) -> None:
        """``state_path``: a :class:`StateFile` there, loaded (``resume``) as the node does."""
        self.config = {
            **{p.name: p.default for p in PARAMS},
            "device": "cpu",
            "rollouts": 8,
            "horizon": 20,
            "eval_episodes": 1,
            "step_timeout_s": 0.2,
            "policy_ack_timeout_s": 0.5,
            "task_confirm_timeout_s": 0.5,
            **overrides,
        }
        self.status = RecordingStatus()
        self.logger = QuietLogger()
        joiner = StepJoiner(4096, self.status.drop)
        self.robot = (robot_class or FakeRobot)(joiner, self.config["horizon"])
        state = StateFile(state_path, PARENT, 1 << 24) if state_path else None
        self.protocol = AdaptationProtocol(
            self.robot, joiner, self.status, self.logger, lambda: self.config, run_id, state
        )
        self.robot.protocol = self.protocol
        resumed = state.load() if state is not None and resume else None
        self.protocol.load(bundle, resumed, override=state is not None and not resume)
        self.protocol.activate()
        self.worker = threading.Thread(target=self.protocol.serve, daemon=True)
        self.worker.start()

    def send(self, index: int = 0, task_id: str | None = None, confirm: bool = True) -> TaskChange:
        """Submits a task change (the driver confirming it first, as a real one may)."""
        change = TaskChange(task_id or f"task-{index}", TASKS[index])
        if confirm:
            self.robot.confirm(change)
        assert self.protocol.submit(change) is None
        return change

    def wait_final(self, adaptation_id: int = 1, timeout_s: float = 30.0) -> str:
        """The phase adaptation ``adaptation_id`` ended in."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            phase = self.status.get("phase")
            if self.status.get("adaptation_id") == adaptation_id and phase in FINAL:
                return phase
            time.sleep(0.01)
        raise AssertionError(f"timed out; status: {self.status.fields}")

    def versions(self) -> list[int]:
        return [b.version for b in self.robot.deployed]

    def close(self) -> None:
        self.protocol.stop()
        self.worker.join(timeout=5.0)
        assert not self.worker.is_alive()


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(bundle: PolicyBundle | None = None, **overrides: Any) -> Harness:
        made.append(Harness(bundle or small_bundle(), **overrides))
        return made[-1]

    yield factory
    for harness in made:
        harness.close()


# ---------------------------------------------------------------------------------------------
# Whole adaptations.


def test_an_adaptation_improves_the_return_and_deploys_the_adapted_policy(make) -> None:
    h = make()
    h.send()
    assert h.wait_final() == "done"
    s = h.status.fields
    assert s["return_post"] > s["return_pre"] + 0.5
    assert s["rollouts_collected"] == 8 and s["rollouts_discarded"] == 0
    assert h.status.published[-6:] == [
        "confirming_task", "evaluating_pre", "collecting", "adapting", "evaluating_post", "done"
    ]  # fmt: skip
    assert h.versions() == [0, 1]  # the meta policy, then the adapted one
    assert h.protocol.good is h.protocol.current and h.protocol.current.version == 1
    # Evaluations run without exploration, the K collected rollouts with it.
    assert h.robot.explore_per_episode == [False] + [True] * 8 + [False]
    assert s["task_to_policy_active_ms"] is not None  # the controller acknowledged version 1


def test_homing_episodes_are_the_steps_after_the_homing_answer(make) -> None:
    """reset_mode homing: no driver episode numbers; each episode is the horizon steps stamped
    after the stamp the home service names, the in-flight ones before it skipped."""
    h = make(robot_class=FakeHomingRobot, reset_mode="homing")
    h.send()
    assert h.wait_final() == "done", h.status.fields["reason"]
    s = h.status.fields
    assert s["rollouts_collected"] == 8 and s["rollouts_discarded"] == 0
    assert s["return_post"] > s["return_pre"] + 0.5
    assert h.robot.homings == 10 and h.robot.episode == 0


def test_a_rollout_that_leaves_the_safety_envelope_is_discarded_with_the_reason(make) -> None:
    h = make(robot_class=FakeHomingRobot, reset_mode="homing", step_timeout_s=5.0)
    h.robot.leave_envelope = {3}  # the second collected rollout
    started = time.monotonic()
    h.send()
    assert h.wait_final() == "done", h.status.fields["reason"]
    s = h.status.fields
    assert s["rollouts_collected"] == 8 and s["rollouts_discarded"] == 1
    assert s["envelope_discards"] == 1
    reasons = [r for kind, r in h.status.drops if kind == "rollout"]
    assert len(reasons) == 1 and "safety envelope left" in reasons[0]
    assert "joint 1 left the envelope" in reasons[0]
    assert time.monotonic() - started < 5.0  # at once, not after a step timeout
    assert h.robot.homings == 11


def test_with_the_driver_reset_an_envelope_exit_discards_its_rollout_too(make) -> None:
    h = make(step_timeout_s=5.0)

    def leave_the_envelope_in_the_third_episode(robot: FakeRobot) -> None:
        if robot.episode == 3:
            robot.silent_resets = 1  # this reset plays the partial episode below only
            horizon, robot.horizon = robot.horizon, 5
            robot._play_episode()
            robot.horizon = horizon
            robot.stamp_ns += DT_NS
            robot.protocol.on_envelope_violation(robot.stamp_ns, "joint 1 left the envelope")

    h.robot.on_reset = leave_the_envelope_in_the_third_episode
    h.send()
    assert h.wait_final() == "done", h.status.fields["reason"]
    s = h.status.fields
    assert s["envelope_discards"] == 1 and s["rollouts_discarded"] == 1
    assert s["rollouts_collected"] == 8


def test_a_newer_task_change_cancels_and_the_newer_task_is_adapted_to(make) -> None:
    h = make()

    def second_task_at_the_third_reset(robot: FakeRobot) -> None:
        if robot.episode == 3:
            robot.on_reset = None
            h.send(1)

    h.robot.on_reset = second_task_at_the_third_reset
    h.send(0)
    assert h.wait_final(adaptation_id=2) == "done"
    assert h.status.fields["cancellations"] == 1
    assert "cancelled" in h.status.published
    assert h.status.fields["task_id"] == "task-1"
    assert h.versions() == [0, 1]  # nothing adapted to the cancelled task was deployed


def test_a_worse_policy_after_the_update_is_rolled_back(make) -> None:
    h = make()
    h.robot.flip_goal_on_version = 1  # the adapted policy meets a goal on the other side
    h.send()
    assert h.wait_final() == "rolled_back"
    assert "worse than pre-update" in h.status.fields["reason"]
    assert h.versions() == [0, 1, 2]
    restored = h.robot.deployed[-1]
    assert torch.equal(restored.params["log_std"], h.robot.deployed[0].params["log_std"])
    assert h.protocol.good is h.protocol.current is restored


def test_each_round_adapts_the_policy_kept_before_on_fresh_rollouts_of_it(make) -> None:
    h = make(adaptation_rounds=2)
    played_with: list[int] = []
    h.robot.on_reset = lambda robot: played_with.append(robot.deployed[-1].version)
    h.send()
    assert h.wait_final() == "done", h.status.fields["reason"]
    s = h.status.fields
    assert s["round"] == 2 and len(s["round_returns"]) == 2
    assert s["return_post"] == s["round_returns"][-1]
    assert s["round_returns"][0] > s["return_pre"] + 0.5
    assert s["round_returns"][1] >= s["round_returns"][0] - h.config["rollback_margin"]
    assert h.versions() == [0, 1, 2]
    assert [b.metadata.get("round") for b in h.robot.deployed] == [None, 1, 2]
    # pre, 8 rollouts of theta, post1; 8 fresh rollouts of round 1's policy, post2
    assert h.robot.explore_per_episode == ([False] + [True] * 8) * 2 + [False]
    assert played_with == [0] * 9 + [1] * 9 + [2]
    assert h.protocol.good is h.protocol.current and h.protocol.current.version == 2


def test_a_worse_second_round_is_rolled_back_to_the_first_rounds_policy(make) -> None:
    h = make(adaptation_rounds=3)
    h.robot.flip_goal_on_version = 2  # round 2's policy meets a goal on the other side
    h.send()
    assert h.wait_final() == "done", h.status.fields["reason"]
    s = h.status.fields
    assert "round 2 rolled back" in s["reason"] and "worse than round 1's" in s["reason"]
    assert len(s["round_returns"]) == 1 and s["return_post"] == s["round_returns"][0]
    assert h.versions() == [0, 1, 2, 3]  # no third round after the rollback
    first, restored = h.robot.deployed[1], h.robot.deployed[3]
    assert all(torch.equal(first.params[k], restored.params[k]) for k in first.params)
    assert h.protocol.good is h.protocol.current is restored


def test_a_failure_in_a_later_round_keeps_the_round_kept_for_this_task(make) -> None:
    h = make(adaptation_rounds=2, max_discarded_rollouts=2)

    def silent_from_the_second_collection(robot: FakeRobot) -> None:
        if robot.deployed[-1].version == 1 and robot.explore:
            robot.silent_resets = 1

    h.robot.on_reset = silent_from_the_second_collection
    h.send()
    assert h.wait_final() == "failed"
    assert h.versions() == [0, 1]  # round 1's policy stays: it was kept for this task
    assert h.protocol.good is h.protocol.current and h.protocol.current.version == 1


def test_an_exploding_update_is_rolled_back_before_it_is_deployed(make) -> None:
    h = make(small_bundle(lr=1e6))
    h.send()
    assert h.wait_final() == "rolled_back"
    assert "exploding update" in h.status.fields["reason"]
    assert h.versions() == [0]


def test_a_driver_that_never_sends_a_step_fails_the_adaptation_with_the_policy_kept(make) -> None:
    h = make(max_discarded_rollouts=3)
    h.robot.silent_resets = 100
    h.send()
    assert h.wait_final() == "failed"
    reason = h.status.fields["reason"]
    assert reason.startswith("3 rollouts in a row were discarded")
    assert "no complete control step for 0.2 s" in reason
    assert h.status.fields["rollouts_discarded"] == 3
    assert h.versions() == [0]


def test_partial_rollouts_are_discarded_counted_and_replaced(make) -> None:
    h = make()
    h.robot.gaps = 3  # the pre-update evaluation and the first two rollouts lose a step
    h.send()
    assert h.wait_final() == "done"
    assert h.status.fields["rollouts_discarded"] == 3
    assert h.status.fields["rollouts_collected"] == 8
    rollout_drops = [r for kind, r in h.status.drops if kind == "rollout"]
    assert len(rollout_drops) == 3 and all("1 control step(s) missing" in r for r in rollout_drops)


def test_a_missing_reset_service_only_loses_that_rollout(make) -> None:
    h = make()
    h.robot.unavailable = 2
    h.send()
    assert h.wait_final() == "done"
    assert h.status.fields["rollouts_discarded"] == 2
    assert [r for kind, r in h.status.drops if kind == "rollout"] == [
        "service 'reset' is not available"
    ] * 2


def test_a_reward_spoofer_racing_the_driver_only_loses_the_rollouts_it_touched(make) -> None:
    h = make()
    h.robot.spoof_episodes = {3}  # a collected rollout: the spoofer's reward comes first
    h.robot.late_spoof_episodes = {5}  # the spoofer's comes after the step was used
    h.send()
    assert h.wait_final() == "done"
    s = h.status.fields
    assert s["rollouts_collected"] == 8 and s["rollouts_discarded"] == 2
    rollout_drops = [r for kind, r in h.status.drops if kind == "rollout"]
    # Episode 3's step never completed (a gap); episode 5 was withdrawn after it was used.
    assert len(rollout_drops) == 2 and "1 control step(s) missing" in rollout_drops[0]
    assert "conflicting rewards for 1 step(s)" in rollout_drops[1]
    reward_drops = [r for kind, r in h.status.drops if kind == "reward"]
    assert len(reward_drops) == 2 and all("two senders" in r for r in reward_drops)
    # The spoofed reward (0.0, success) never reached the update: 8 + 2 discarded + 2 evals.
    assert h.robot.episode == 12


def test_rewards_that_name_no_task_are_not_used(make) -> None:
    h = make()
    h.robot.unlabelled_episodes = {2}
    h.send()
    assert h.wait_final() == "done"
    assert h.status.fields["rollouts_discarded"] == 1
    assert any("names no task@session" in r for kind, r in h.status.drops if kind == "step")


def test_a_task_the_driver_never_confirms_fails_with_the_policy_unchanged(make) -> None:
    h = make()
    h.send(confirm=False)
    assert h.wait_final() == "failed"
    assert "did not confirm task task-0" in h.status.fields["reason"]
    assert h.versions() == [0] and h.robot.episode == 0


def test_a_driver_restart_with_a_new_session_fails_without_mixing_tasks(make) -> None:
    h = make()

    def restart_at_the_fourth_reset(robot: FakeRobot) -> None:
        if robot.episode == 4:
            robot.on_reset = None
            robot.label = task_label("task-0", "fake-2")  # its rewards beat its active_task

    h.robot.on_reset = restart_at_the_fourth_reset
    h.send()
    assert h.wait_final() == "failed"
    assert "'task-0@fake-2' (task@session, on a reward)" in h.status.fields["reason"]
    assert h.status.fields["rollouts_collected"] == 2  # episodes 2 and 3; the 4th was refused
    assert h.versions() == [0]


def test_a_controller_that_never_acknowledges_delays_but_does_not_stop_adaptation(make) -> None:
    h = make(policy_ack_timeout_s=0.05)
    h.robot.acks = False
    h.send()
    assert h.wait_final() == "done"
    assert h.status.fields["task_to_policy_active_ms"] is None
    # Version 0 was acknowledged before the controller fell silent; version 1 never was.
    warnings = [line for line in h.logger.lines if "did not confirm policy version" in line]
    assert len(warnings) == 1 and "version 1 " in warnings[0]


def test_deactivate_cancels_keeps_the_good_policy_and_refuses_tasks(make) -> None:
    h = make()
    h.send(0)
    assert h.wait_final() == "done"
    good = h.protocol.good
    second_reset = h.robot.episode + 2

    def deactivate_at_the_second_reset(robot: FakeRobot) -> None:
        if robot.episode == second_reset:
            robot.on_reset = None
            h.protocol.deactivate()

    h.robot.on_reset = deactivate_at_the_second_reset
    h.send(1)
    assert h.wait_final(adaptation_id=2) == "cancelled"
    assert h.status.fields["reason"] == "deactivate"
    # reset_to_meta deployed the meta weights first; deactivate redeployed the good policy.
    kept = h.robot.deployed[-1]
    assert kept.version > good.version + 1 and kept.params is good.params
    assert h.protocol.submit(TaskChange("while-inactive", TASKS[0])) is not None
    h.protocol.activate()
    assert h.versions()[-1] == kept.version  # activating again deploys nothing new


def test_the_protocol_module_imports_no_rclpy() -> None:
    """The protocol is plain Python: importing it pulls in neither rclpy nor a message package."""
    code = (
        "import sys\n"
        "import maml_ros.ros.protocol\n"
        "ros = sorted({m.split('.')[0] for m in sys.modules} & {'rclpy', 'std_msgs', "
        "'sensor_msgs', 'geometry_msgs', 'std_srvs'})\n"
        "assert not ros, ros\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Restarts: the state file, resuming, and SIGKILL at every phase.


def digest(bundle: PolicyBundle) -> str:
    """The weights' identity (the params' bytes, by name)."""
    h = hashlib.sha256()
    for name in sorted(bundle.params):
        h.update(bundle.params[name].numpy().tobytes())
    return h.hexdigest()


def test_the_state_is_saved_before_each_publication_and_a_restart_resumes_it(
    make, tmp_path
) -> None:
    path = str(tmp_path / "state.safetensors")
    h = make(state_path=path)
    saved_at_publish: list[tuple[int, int]] = []

    def check_saved_first(bundle: PolicyBundle) -> None:
        _, next_version = StateFile(path, PARENT, 1 << 24).load()
        saved_at_publish.append((bundle.version, next_version))

    h.robot.on_publish = check_saved_first
    h.send()
    assert h.wait_final() == "done"
    adapted = h.protocol.good
    assert adapted.metadata["adapted"] is True and adapted.metadata["task_id"] == "task-0"
    assert saved_at_publish and all(nxt > version for version, nxt in saved_at_publish)
    good, next_version = StateFile(path, PARENT, 1 << 24).load()
    assert digest(good) == digest(adapted) and good.version == adapted.version
    assert next_version == h.protocol._next_version and good.run_id == "run-1"
    h.close()

    # A new process (run id run-2 by default) resumes the run and its versions.
    again = make(state_path=path, run_id="run-2")
    first = again.robot.deployed[0]
    assert again.protocol.run_id == "run-1" and first.run_id == "run-1"
    assert first.version == next_version and digest(first) == digest(adapted)
    assert first.metadata["adapted"] is True and NEXT_VERSION_KEY not in first.metadata
    assert "override" not in first.metadata
    current = Deployment.of(adapted.run_id, adapted.version, adapted.metadata)
    resumed = Deployment.of("run-1", first.version, first.metadata)
    assert replacement_refusal(current, resumed) is None


def test_a_saved_state_of_another_checkpoint_is_refused_and_resume_false_overrides(
    make, tmp_path
) -> None:
    path = str(tmp_path / "state.safetensors")
    h = make(state_path=path)
    h.send()
    assert h.wait_final() == "done"
    adapted = h.protocol.good
    h.close()
    with pytest.raises(CheckpointError, match="descends from checkpoint"):
        StateFile(path, "1" * 64, 1 << 24).load()
    fresh = make(state_path=path, resume=False, run_id="run-2")
    first = fresh.robot.deployed[0]
    assert first.run_id == "run-2" and first.metadata["adapted"] is False
    assert first.metadata["override"] is True
    # The controller takes it over the adapted policy only thanks to the override.
    current = Deployment.of(adapted.run_id, adapted.version, adapted.metadata)
    assert replacement_refusal(current, Deployment.of("run-2", 0, first.metadata)) is None
    assert "downgrade" in replacement_refusal(current, Deployment.of("run-2", 0, {}))
    good, _ = StateFile(path, PARENT, 1 << 24).load()
    assert good.run_id == "run-2" and "override" not in good.metadata


def test_a_rollback_is_saved_as_the_good_policy_before_it_is_published(make, tmp_path) -> None:
    path = str(tmp_path / "state.safetensors")
    h = make(state_path=path)
    saved_good: list[str] = []
    h.robot.on_publish = lambda _: saved_good.append(
        digest(StateFile(path, PARENT, 1 << 24).load()[0])
    )
    h.robot.flip_goal_on_version = 1  # the adapted policy does worse: rolled back
    h.send()
    assert h.wait_final() == "rolled_back"
    restored = h.robot.deployed[-1]
    assert restored.metadata["adapted"] is False and restored.version == 2
    assert saved_good[-1] == digest(restored)  # on disk before the rollback went out
    good, next_version = StateFile(path, PARENT, 1 << 24).load()
    assert (good.version, next_version) == (2, 3)


KILLED_AT_A_PHASE = """
import json, os, signal, sys
from test_ros_protocol import Harness, digest, small_bundle

state_path, log_path, kill_at = sys.argv[1:4]
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
second = lambda: harness.protocol.adaptation_id == 2
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)

def publish(bundle, original):
    if kill_at == "before_publish" and second() and bundle.metadata.get("adapted"):
        kill()  # the state is saved, the policy not yet published
    original(bundle)  # the controller takes it: logged as it does
    record = {"run_id": bundle.run_id, "version": bundle.version, "digest": digest(bundle),
              "metadata": {k: bundle.metadata.get(k) for k in ("adapted", "override", "task_id")}}
    os.write(log, (json.dumps(record) + "\\n").encode())
    if kill_at == "waiting_for_ack" and second() and bundle.metadata.get("adapted"):
        kill()

harness = Harness(small_bundle(), state_path=state_path)
original = harness.robot.publish_policy
harness.robot.publish_policy = lambda bundle: publish(bundle, original)
harness.send(0)
assert harness.wait_final(1) == "done"
publish_status = harness.status.publish

def status_publish():
    publish_status()
    if second() and harness.status.get("phase") == kill_at:
        kill()

harness.status.publish = status_publish
if kill_at == "mid_write":  # the first state write of the second adaptation dies in fsync
    os.fsync = lambda fd: kill() if second() else None
harness.robot.flip_goal_on_version = None
harness.send(1)
harness.wait_final(2)
sys.exit(3)  # never killed
"""

KILL_POINTS = (
    "confirming_task",
    "evaluating_pre",
    "collecting",
    "adapting",
    "before_publish",
    "waiting_for_ack",
    "evaluating_post",
    "mid_write",
)


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_sigkill_at_any_phase_loses_nothing_adapted(make, tmp_path, kill_at: str) -> None:
    """The node's process is SIGKILLed during its second adaptation; the first one's policy
    (adapted, judged good) survives in a whole state file, and a restarted protocol resumes
    it under the same run with a version the controller takes."""
    state, log = tmp_path / "state.safetensors", tmp_path / "controller.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, str(Path(__file__).parent)])}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_AT_A_PHASE, str(state), str(log), kill_at],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    published = [json.loads(line) for line in log.read_text().splitlines()]
    adapted_first = [p for p in published if p["metadata"]["task_id"] == "task-0"]
    assert len(adapted_first) == 1  # the first adaptation's policy, judged good
    # The controller, following its rule, ran the last publication it took.
    current = None
    for p in published:
        new = Deployment.of(p["run_id"], p["version"], p["metadata"])
        if replacement_refusal(current, new) is None:
            current = new
    leftovers = list(tmp_path.glob(".state.safetensors.*.tmp"))
    assert len(leftovers) == (1 if kill_at == "mid_write" else 0)

    restarted = make(state_path=str(state), run_id="run-2")  # loads and verifies the file
    resumed = restarted.robot.deployed[0]
    assert resumed.run_id == "run-1" and resumed.metadata["task_id"] == "task-0"
    assert digest(resumed) == adapted_first[0]["digest"]
    assert resumed.version > max(p["version"] for p in published)
    new = Deployment.of(resumed.run_id, resumed.version, resumed.metadata)
    assert replacement_refusal(current, new) is None  # the controller takes it back
    assert not list(tmp_path.glob(".state.safetensors.*.tmp"))  # the next write swept it
    restarted.send(1)
    assert restarted.wait_final() == "done"  # and the restarted node adapts on


# Exploration that does not match what was asked, and starved inputs.


def test_an_evaluation_taken_while_exploring_is_discarded_with_the_reason(make) -> None:
    """Another node switches exploration on for the first (deterministic) evaluation episode:
    that episode is discarded, counted and replaced; the adaptation completes."""
    h = make()
    h.robot.forced_explore = True

    def flood_ends_after_the_first_episode(robot: FakeRobot) -> None:
        if robot.episode == 2:
            robot.forced_explore = None

    h.robot.on_reset = flood_ends_after_the_first_episode
    h.send()
    assert h.wait_final() == "done"
    assert h.status.fields["rollouts_discarded"] == 1
    assert h.status.fields["exploration_mismatches"] == 1
    reasons = [r for kind, r in h.status.drops if kind == "rollout"]
    assert len(reasons) == 1 and "an evaluation was taken with exploration" in reasons[0]
    # The evaluation that counted ran deterministic: the first episode was the discarded one.
    assert h.robot.explore_per_episode[:2] == [True, False]


def test_a_lasting_exploration_flood_fails_the_adaptation_with_the_policy_kept(make) -> None:
    h = make(max_discarded_rollouts=3)
    h.robot.forced_explore = True  # every episode explores, whatever the protocol asks
    h.send()
    assert h.wait_final() == "failed"
    reason = h.status.fields["reason"]
    assert "3 rollouts in a row" in reason and "taken with exploration" in reason, reason
    assert h.versions() == [0]  # nothing was deployed from a wrongly evaluated policy


def test_collected_rollouts_that_do_not_explore_are_discarded(make) -> None:
    h = make(max_discarded_rollouts=2)
    h.robot.forced_explore = False  # exploration switched off under the collection
    h.send()
    assert h.wait_final() == "failed"
    assert "collected rollout was taken without exploration" in h.status.fields["reason"]


def test_a_controller_that_does_not_label_its_actions_is_not_checked(make) -> None:
    h = make()
    h.robot.labels_exploration = False
    h.robot.forced_explore = True
    h.send()
    assert h.wait_final() == "done"
    assert h.status.fields["rollouts_discarded"] == 0


class StreamingRobot(FakeRobot):
    """Each reset starts a stream (one step every 10 ms for 1 s) that lacks the ``starved``
    inputs, as a real graph whose controller or driver has stopped publishing one of them."""

    starved: frozenset[str] = frozenset()

    def _play_episode(self) -> None:
        threading.Thread(target=self._stream, args=(self.episode,), daemon=True).start()

    def _stream(self, episode: int) -> None:
        for _ in range(100):
            self.stamp_ns += DT_NS
            if "state" not in self.starved:
                self.joiner.add_state(self.stamp_ns, np.zeros(7), np.zeros(7))
            if "action" not in self.starved:
                self.joiner.add_action(self.stamp_ns, np.zeros(7), self.explore)
            if "reward" not in self.starved:
                self.joiner.add_reward(self.stamp_ns, -1.0, False, episode, self.label)
            time.sleep(0.01)


@pytest.mark.parametrize(
    ("starved", "named"),
    [
        ({"state"}, "no valid joint states for 0.2 s"),
        ({"action"}, "no actions from the controller for 0.2 s"),
        ({"reward"}, "no rewards from the driver for 0.2 s"),
        ({"action", "reward"}, "no actions from the controller, no rewards from the driver"),
    ],
)
def test_the_status_names_the_input_that_starved_the_episode(
    make, starved: set[str], named: str
) -> None:
    h = make(max_discarded_rollouts=2)
    robot = StreamingRobot(h.protocol.joiner, h.config["horizon"])
    robot.starved = frozenset(starved)
    robot.protocol, robot.policy = h.protocol, h.robot.policy
    h.protocol.robot = h.robot = robot
    h.send()
    assert h.wait_final() == "failed"
    assert named in h.status.fields["reason"], h.status.fields["reason"]
    assert named in h.status.fields["starved"]
    others = {"state", "action", "reward"} - starved
    for part in others:  # the inputs that did arrive are not blamed
        assert STARVED_INPUTS[part] not in h.status.fields["starved"]
