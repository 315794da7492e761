"""The adaptation protocol in plain Python: the joiner, the rules, and whole adaptations
against a fake robot (no DDS, no executor; the protocol's worker is a plain thread).

The fake robot is a 7-joint velocity-controlled point in joint space whose reward is minus the
distance to a hidden goal. Each reset plays one whole episode of the deployed policy into the
joiner, so a working inner update measurably improves the return.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from ros_harness import small_bundle

from maml_ros.rl.checkpoint import PolicyBundle
from maml_ros.rl.policy import numpy_policy
from maml_ros.ros.adaptation_node import PARAMS
from maml_ros.ros.convert import ActiveTask, TaskChange, task_label
from maml_ros.ros.protocol import (
    STARVED_INPUTS,
    AdaptationProtocol,
    PartialRollout,
    StepJoiner,
    episode_from_reset_message,
    update_problem,
)
from maml_ros.sim import sample_tasks

torch.set_num_threads(1)
GOAL = np.array([0.5, -0.4, 0.3, -0.5, 0.4, -0.3, 0.5])
DT_NS = 50_000_000
TASKS = sample_tasks("reach", 2, "test", seed=0)
FINAL = ("done", "rolled_back", "cancelled", "failed")


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
        self.silent_resets = 0  # resets answered without any step following
        self.gaps = 0  # episodes that lose their 5th step
        self.unavailable = 0  # resets whose service is missing
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
            self.joiner.add_reward(
                self.stamp_ns, -distance, distance < 0.05, self.episode, self.label
            )


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

    def __init__(self, bundle: PolicyBundle, **overrides: Any) -> None:
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
        self.robot = FakeRobot(joiner, self.config["horizon"])
        self.protocol = AdaptationProtocol(
            self.robot, joiner, self.status, self.logger, lambda: self.config, run_id="run-1"
        )
        self.robot.protocol = self.protocol
        self.protocol.load(bundle)
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
