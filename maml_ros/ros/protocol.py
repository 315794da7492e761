"""The on-robot adaptation protocol, in plain Python: no rclpy, no DDS.

:class:`AdaptationProtocol` runs one adaptation per accepted task change: wait for the
driver's confirmation that it runs the task (``active_task``), evaluate the policy, collect K
exploring rollouts, run the inner update (``maml_ros.rl.adapt_policy``), check it, publish the
adapted policy, evaluate it and roll back when it is worse. With ``adaptation_rounds`` > 1 each
further round does the same from the policy kept last, on K fresh rollouts of it (what
``outer.rounds`` meta-trains), until a round is rolled back. It reaches the arm only through a
:class:`Robot` (reset an episode, switch exploration, publish a policy) and the control steps
that :class:`StepJoiner` joins from the three streams, and reports through a :class:`StatusSink`.
``maml_ros.ros.adaptation_node`` wires topics and services to it; the unit tests drive it with a
fake robot.

Failure rules: a rollout that cannot be completed (a driver restart, a lost step, a missing or
silent service) is discarded and retried (:class:`PartialRollout`), up to
``max_discarded_rollouts`` in a row; a newer task change or a deactivate cancels
(:class:`Cancelled`); anything that stops the adaptation (:class:`AdaptationFailed`) leaves the
policy it started from deployed; an update that is non-finite, explodes or does worse than
before is rolled back.

Restarts: with a :class:`StateFile`, the last good policy (adapted or not, with its task, run
id and the next version to publish) is written atomically before every policy is published,
rollbacks included, so a process killed at any point leaves the file whole and at most one
publication ahead of it; a restarted protocol :meth:`~AdaptationProtocol.load` takes it and goes
on with the same run id and later versions (which the controller's acceptance rule takes).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from maml_ros.rl.adapt import adapt_policy, warm_up
from maml_ros.rl.checkpoint import CheckpointError, PolicyBundle, load_bundle, save_bundle
from maml_ros.rl.pg import Rollouts
from maml_ros.rl.policy import probe_problem
from maml_ros.runtime import observation_from_joint_state
from maml_ros.runtime.deployment import ADAPTED_KEY, OVERRIDE_KEY

if TYPE_CHECKING:  # only their fields are read: the protocol stays free of rclpy
    from maml_ros.ros.convert import ActiveTask, TaskChange

PHASES = (
    "idle",
    "confirming_task",
    "evaluating_pre",
    "collecting",
    "adapting",
    "evaluating_post",
    "done",
    "rolled_back",
    "cancelled",
    "failed",
)
"""The ``phase`` values of the status, in protocol order."""


# ---------------------------------------------------------------------------------------------
# Joining the three streams into control steps.


@dataclass(frozen=True)
class Step:
    """One control step: the state it was taken from, the action, its reward; one stamp."""

    stamp_ns: int
    positions: np.ndarray
    velocities: np.ndarray
    action: np.ndarray
    reward: float
    success: bool
    episode: int
    generation: int
    """Driver generation: increases whenever the joint-state stamps go backwards (restart)."""
    task_label: str = ""
    """``<task id>@<driver session>`` the reward was earned under ("" when not named)."""
    exploring: bool | None = None
    """Whether the controller's action explored (None: the controller did not say)."""


TASK_SWITCH_GRACE_S = 1.0
"""How long a driver's switch to another task (same session) waits for the task message that
explains it (then the adaptation is cancelled, not failed)."""
STARVED_INPUTS = {
    "state": "no valid joint states",
    "action": "no actions from the controller",
    "reward": "no rewards from the driver",
}
"""How :meth:`StepJoiner.starvation` names each input that did not arrive."""
PERIOD_WINDOW = 64
"""The control period is the median of the last this many joint-state stamp deltas."""
PERIOD_BOUNDS_NS = (100_000, 10_000_000_000)
"""Stamp deltas outside [0.1 ms, 10 s] are not control periods (a stray or duplicated state,
a pause) and never enter the estimate."""

CLEARED_RESULTS = {
    "rollouts_collected": 0,
    "rollouts_discarded": 0,
    "inner_loss": None,
    "return_pre": None,
    "success_pre": None,
    "return_post": None,
    "success_post": None,
    "adapt_latency_ms": None,
    "task_to_first_rollout_step_ms": None,
    "collect_ms": None,
    "policy_active_after_rollouts_ms": None,
    "task_to_policy_active_ms": None,
    "starved": None,
    "round": None,
    "round_returns": None,
}
"""Status fields of one adaptation, as they read before it has results."""


class StepJoiner:
    """Bounded buffers joining joint states, actions and rewards on their stamp.

    A step completes when all three parts of a stamp have arrived; parts of older stamps that
    are still incomplete then can never complete (each stream is FIFO) and are dropped through
    ``on_drop("step", reason)``. Completed steps wait in a bounded queue for :meth:`wait_step`.
    Joint-state stamps that go backwards mean the driver restarted: pending parts are discarded
    and ``generation`` increases. The control period (:attr:`period_ns`) is the median of the
    recent stamp deltas within :data:`PERIOD_BOUNDS_NS`, so one state stamped 1 ns after
    another cannot poison it.

    Two rewards for one stamp that differ (two senders racing: a spoofer and the driver) make
    that step invalid instead of letting the first one win: a pending step is never completed,
    a completed one still queued is withdrawn, and the stamp is remembered
    (:meth:`conflicted`) so that the protocol discards a rollout that already used it. An
    identical repeat is a harmless duplicate (dropped).
    """

    def __init__(self, capacity: int, on_drop: Callable[[str, str], None]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._on_drop = on_drop
        self._pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._completed: deque[Step] = deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._newest_state_ns: int | None = None
        self._last_completed_ns: int | None = None
        self.generation = 0
        self._deltas: deque[int] = deque(maxlen=PERIOD_WINDOW)
        self.last_episode: int | None = None
        self.steps_joined = 0
        self._recent_rewards: OrderedDict[int, tuple] = OrderedDict()  # completed stamps
        self._conflicted: OrderedDict[int, None] = OrderedDict()
        self._arrived: dict[str, float] = {}  # part -> time.monotonic() of its last arrival

    def add_state(self, stamp_ns: int, positions: np.ndarray, velocities: np.ndarray) -> None:
        """Buffers the joint state of ``stamp_ns``."""
        with self._cond:
            if self._newest_state_ns is not None and stamp_ns < self._newest_state_ns:
                self.generation += 1
                self._pending.clear()
                self._last_completed_ns = None
            elif self._newest_state_ns is not None and stamp_ns > self._newest_state_ns:
                delta = stamp_ns - self._newest_state_ns
                if PERIOD_BOUNDS_NS[0] <= delta <= PERIOD_BOUNDS_NS[1]:
                    self._deltas.append(delta)
            self._newest_state_ns = stamp_ns
            self._add(stamp_ns, "state", (positions, velocities))

    @property
    def newest_state_ns(self) -> int | None:
        """The stamp of the newest joint state buffered (None before the first)."""
        with self._cond:
            return self._newest_state_ns

    @property
    def period_ns(self) -> int | None:
        """Control period: the median of the last :data:`PERIOD_WINDOW` stamp deltas within
        :data:`PERIOD_BOUNDS_NS` (None before the first)."""
        with self._cond:
            deltas = sorted(self._deltas)
        return deltas[(len(deltas) - 1) // 2] if deltas else None

    def add_action(self, stamp_ns: int, action: np.ndarray, exploring: bool | None = None) -> None:
        """Buffers the action taken from the state of ``stamp_ns`` (``exploring``: whether
        the controller says it explored, None when it does not say)."""
        with self._cond:
            self._add(stamp_ns, "action", (action, exploring))

    def starvation(self, window_s: float) -> str:
        """Which inputs starved the joiner in the last ``window_s``: "no joint states for
        2.0 s", "no actions from the controller ...", "no rewards from the driver ...", or,
        when all three arrive, that their stamps do not join."""
        since = time.monotonic() - window_s
        with self._cond:
            missing = [
                what
                for part, what in STARVED_INPUTS.items()
                if self._arrived.get(part, -math.inf) < since
            ]
        if not missing:
            return (
                f"joint states, actions and rewards arrive but no step completed for "
                f"{window_s} s (their stamps do not match)"
            )
        return ", ".join(missing) + f" for {window_s} s"

    def add_reward(
        self, stamp_ns: int, reward: float, success: bool, episode: int, task_label: str = ""
    ) -> None:
        """Buffers the reward of the step taken from the state of ``stamp_ns``, earned under
        ``task_label`` (:func:`~maml_ros.ros.convert.task_label`; "" when not named)."""
        with self._cond:
            self.last_episode = episode
            self._add(stamp_ns, "reward", (reward, success, episode, task_label))

    def wait_step(self, timeout_s: float) -> Step | None:
        """The oldest completed step, waiting up to ``timeout_s``; None on timeout."""
        with self._cond:
            if not self._completed:
                self._cond.wait(timeout_s)
            return self._completed.popleft() if self._completed else None

    def clear(self) -> None:
        """Forgets every completed step (pending parts stay: they may still complete)."""
        with self._cond:
            self._completed.clear()

    def conflicted(self, stamps: Sequence[int]) -> list[int]:
        """Those of ``stamps`` that received two different rewards (bounded memory: the last
        ``capacity`` conflicts)."""
        with self._cond:
            return [s for s in stamps if s in self._conflicted]

    def _conflict(self, stamp_ns: int, first: tuple, second: tuple) -> None:
        """Two different rewards for ``stamp_ns``: the step is invalid (see the class doc)."""
        self._conflicted[stamp_ns] = None
        if len(self._conflicted) > self._capacity:
            self._conflicted.popitem(last=False)
        queued = [s for s in self._completed if s.stamp_ns == stamp_ns]
        for step in queued:
            self._completed.remove(step)
        self._on_drop(
            "reward",
            f"conflicting rewards for stamp {stamp_ns} ({first[0]!r:.20} from "
            f"{first[3] or 'no label'!r:.80}, then {second[0]!r:.20} from "
            f"{second[3] or 'no label'!r:.80}): two senders; the step is invalid",
        )

    def _add(self, stamp_ns: int, part: str, value: Any) -> None:
        self._arrived[part] = time.monotonic()
        if self._last_completed_ns is not None and stamp_ns <= self._last_completed_ns:
            earlier = self._recent_rewards.get(stamp_ns) if part == "reward" else None
            if earlier is not None and earlier != value:
                self._conflict(stamp_ns, earlier, value)
                return
            self._on_drop("step", f"late or duplicate {part} for stamp {stamp_ns}")
            return
        entry = self._pending.get(stamp_ns)
        if entry is None:
            entry = self._pending[stamp_ns] = {}
            if len(self._pending) > self._capacity:
                old_stamp, old = self._pending.popitem(last=False)
                self._drop_incomplete(old_stamp, old, "buffer full")
        if part in entry:
            if part == "reward" and entry[part] != value:
                entry["conflict"] = True  # never completes: neither reward can be trusted
                self._conflict(stamp_ns, entry[part], value)
                return
            self._on_drop("step", f"duplicate {part} for stamp {stamp_ns}")
            return
        entry[part] = value
        if "conflict" not in entry and len(entry) == 3:
            del self._pending[stamp_ns]
            self._last_completed_ns = stamp_ns
            for old_stamp in [s for s in self._pending if s < stamp_ns]:
                self._drop_incomplete(old_stamp, self._pending.pop(old_stamp), "never completed")
            self._recent_rewards[stamp_ns] = entry["reward"]
            if len(self._recent_rewards) > self._capacity:
                self._recent_rewards.popitem(last=False)
            (positions, velocities), (action, exploring) = entry["state"], entry["action"]
            reward, success, episode, task_label = entry["reward"]
            self._completed.append(
                Step(
                    stamp_ns=stamp_ns,
                    positions=positions,
                    velocities=velocities,
                    action=action,
                    reward=float(reward),
                    success=bool(success),
                    episode=int(episode),
                    generation=self.generation,
                    task_label=task_label,
                    exploring=exploring,
                )
            )
            self.steps_joined += 1
            self._cond.notify_all()

    def _drop_incomplete(self, stamp_ns: int, entry: dict[str, Any], why: str) -> None:
        if entry.get("conflict"):
            return  # counted when the conflict arrived
        missing = sorted({"state", "action", "reward"} - set(entry))
        self._on_drop("step", f"stamp {stamp_ns} {why}: missing {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# Small pure helpers.


class Cancelled(Exception):
    """The adaptation in progress was cancelled by a newer task change."""


class PartialRollout(Exception):
    """A rollout could not be completed (driver restart, timeout, failed reset); discard it."""


class AdaptationFailed(RuntimeError):
    """The adaptation cannot go on (services missing, too many partial rollouts)."""


def episode_from_reset_message(message: str) -> int | None:
    """The episode number a driver's reset response names ("... episode 3 ..."), if any."""
    match = re.search(r"episode\D{0,8}?(\d+)", message, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def stamp_from_reset_message(message: str) -> int | None:
    """The stamp a homing answer names ("... stamp_ns=123"): its episode is the steps stamped
    after it (see ``<controller>/home`` in :mod:`maml_ros.ros.interfaces`); None if none."""
    match = re.search(r"stamp_ns=(\d+)", message)
    return int(match.group(1)) if match else None


def episode_return(steps: Sequence[Step]) -> tuple[float, bool]:
    """(sum of rewards, success at any step) of one episode."""
    return float(sum(s.reward for s in steps)), any(s.success for s in steps)


def update_problem(
    old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], max_ratio: float
) -> str | None:
    """Why an inner update must be rolled back (non-finite or exploding), or None if it is fine.

    ``old`` and ``new`` are parameter dicts of tensors; exploding means the update's global L2
    norm exceeds ``max_ratio`` times the parameters' norm.
    """
    if set(old) != set(new):
        return "the update changed the parameter names"
    delta_sq, norm_sq = 0.0, 0.0
    for name, before in old.items():
        after = new[name]
        if not bool(torch.isfinite(after).all()):
            return f"non-finite values in {name} after the update"
        delta_sq += float((after.double() - before.double()).pow(2).sum())
        norm_sq += float(before.double().pow(2).sum())
    ratio = math.sqrt(delta_sq) / max(math.sqrt(norm_sq), 1e-12)
    if not math.isfinite(ratio) or ratio > max_ratio:
        return f"exploding update: |delta|/|params| = {ratio:.3g} > {max_ratio}"
    return None


def append_rollout_jsonl(path: str, steps: Sequence[Step]) -> None:
    """Appends one rollout's steps to ``path`` as JSON lines; OSError or ValueError when the
    file cannot be written (it is opened non-blocking, so a FIFO fails instead of blocking)."""
    lines = [
        json.dumps(
            {
                "stamp_ns": s.stamp_ns,
                "episode": s.episode,
                "positions": [float(x) for x in s.positions],
                "velocities": [float(x) for x in s.velocities],
                "action": [float(x) for x in s.action],
                "reward": s.reward,
                "success": s.success,
            }
        )
        + "\n"
        for s in steps
    ]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    with open(fd, "a", encoding="utf-8") as out:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        out.write("".join(lines))


def rollouts_from_episodes(episodes: Sequence[Sequence[Step]]) -> Rollouts:
    """Complete episodes of equal length as ``maml_ros.rl.pg.Rollouts``."""
    n = len(episodes[0][0].positions)
    obs = np.empty((len(episodes), len(episodes[0]), 2 * n), dtype=np.float32)
    for e, episode in enumerate(episodes):
        for t, s in enumerate(episode):
            observation_from_joint_state(s.positions, s.velocities, out=obs[e, t])
    actions = np.array([[s.action for s in ep] for ep in episodes], dtype=np.float32)
    rewards = np.array([[s.reward for s in ep] for ep in episodes], dtype=np.float32)
    return Rollouts.from_numpy(obs, actions, rewards)


# ---------------------------------------------------------------------------------------------
# The state that survives a restart.

PARENT_KEY = "parent_checkpoint_sha256"
"""State metadata: SHA-256 of the checkpoint file the saved policy descends from."""
NEXT_VERSION_KEY = "next_version"
"""State metadata: the version the next publication takes (versions never repeat)."""


class StateFile:
    """The adaptation's state on disk: the last good policy (a policy checkpoint, checksummed,
    written atomically) with the next version to publish and its parent checkpoint."""

    def __init__(self, path: str, parent_sha256: str, max_bytes: int) -> None:
        self.path = path
        self.parent_sha256 = parent_sha256
        self.max_bytes = max_bytes

    def save(self, good: PolicyBundle, next_version: int) -> None:
        """Writes ``good`` and ``next_version`` atomically (OSError, CheckpointError)."""
        metadata = {
            **good.metadata,
            PARENT_KEY: self.parent_sha256,
            NEXT_VERSION_KEY: next_version,
        }
        metadata.pop(OVERRIDE_KEY, None)
        save_bundle(self.path, good.replace(metadata=metadata))

    def load(self) -> tuple[PolicyBundle, int] | None:
        """(the saved good policy, the next version), or None without a file; CheckpointError
        for a file that does not verify or whose parent is not the configured checkpoint."""
        if not os.path.lexists(self.path):
            return None
        bundle = load_bundle(self.path, self.max_bytes)
        parent = bundle.metadata.get(PARENT_KEY)
        if parent != self.parent_sha256:
            raise CheckpointError(
                f"{self.path}: saved state descends from checkpoint sha256 {parent!s:.16}..., "
                f"not from the configured one ({self.parent_sha256:.16}...): refused (start from "
                "the checkpoint with resume:=false, or configure its checkpoint)"
            )
        next_version = bundle.metadata.get(NEXT_VERSION_KEY)
        if not isinstance(next_version, int) or not bundle.version < next_version < 2**63:
            raise CheckpointError(f"{self.path}: invalid {NEXT_VERSION_KEY} {next_version!r}")
        return bundle, next_version


# ---------------------------------------------------------------------------------------------
# What the protocol needs of the outside world.


CheckCancel = Callable[[], None]
"""Raises :class:`Cancelled` when the adaptation in progress must stop."""


class Robot(Protocol):
    """The arm, as the protocol sees it (the node implements it with ROS services and topics).

    ``reset`` and ``set_exploration`` block for ``timeout_s`` at most, calling ``check_cancel``
    at least every 50 ms; a service that is missing or does not answer in time raises
    :class:`PartialRollout`. They return the service's (success, message)."""

    def services_ready(self) -> bool:
        """Whether the reset and exploration services can be called now."""
        ...

    def reset(self, timeout_s: float, check_cancel: CheckCancel) -> tuple[bool, str]:
        """Starts a new episode; the message names its number ("... episode 3 ...") or, for a
        robot without episode numbers (homing), the stamp after which it starts
        ("... stamp_ns=<ns>")."""
        ...

    def set_exploration(
        self, on: bool, timeout_s: float, check_cancel: CheckCancel
    ) -> tuple[bool, str]:
        """Switches the controller's exploration noise on or off."""
        ...

    def publish_policy(self, bundle: PolicyBundle) -> None:
        """Deploys ``bundle`` (latched: a controller that starts later receives it)."""
        ...


class StatusSink(Protocol):
    """Where the protocol reports (``maml_ros.ros.common.NodeStatus`` in the node)."""

    def set(self, **fields: Any) -> None: ...

    def publish(self) -> None: ...

    def drop(self, kind: str, reason: str) -> None: ...


class Logger(Protocol):
    """An rclpy logger or any object with these methods."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


# ---------------------------------------------------------------------------------------------
# The protocol.


class AdaptationProtocol:
    """One adaptation per accepted task change, on the thread that calls :meth:`serve`.

    The inputs (:meth:`submit`, :meth:`on_active_task`, :meth:`on_controller_ack`,
    :meth:`activate`, :meth:`deactivate`, :meth:`stop`) may come from any thread and never
    block for long. ``config()`` returns the parameters (the node's table), read once per
    adaptation.
    """

    def __init__(
        self,
        robot: Robot,
        joiner: StepJoiner,
        status: StatusSink,
        logger: Logger,
        config: Callable[[], Mapping[str, Any]],
        run_id: str,
        state: StateFile | None = None,
    ) -> None:
        self.robot = robot
        self.state = state
        self.joiner = joiner
        self.status = status
        self.logger = logger
        self.config = config
        self.run_id = run_id
        self.meta_bundle: PolicyBundle | None = None  # load() sets it
        self.current: PolicyBundle | None = None  # the policy deployed last
        self.good: PolicyBundle | None = None  # what deactivate keeps
        self.adaptations = 0  # inner updates run
        self.adaptation_id = 0  # task changes taken up
        self.cancellations = 0
        self.rollouts_discarded = 0
        self.exploration_mismatches = 0
        self.envelope_discards = 0
        self._violation: tuple[int, str] | None = None  # the controller's last envelope exit
        self._discarded_for: int | None = None  # the stamp of the exit that discarded last
        self._next_version = 0
        self._accepting = False
        self._stopping = threading.Event()
        self._cancel = threading.Event()
        self._wake = threading.Condition()
        self._pending_task: TaskChange | None = None
        self._pending_since = self._task_since = time.monotonic()
        self._adapting_id: str | None = None
        self._active_cond = threading.Condition()
        self._active_task: ActiveTask | None = None
        self._confirmed: ActiveTask | None = None
        self._ack_cond = threading.Condition()
        self._controller_ack: tuple[str, int] | None = None
        self._first_rollout_step_pending = False
        self._resumed: PolicyBundle | None = None
        self._override_next = False
        self._kept: PolicyBundle | None = None  # this adaptation's start, then its kept rounds

    # -- inputs (any thread) -------------------------------------------------------------------

    def load(
        self,
        bundle: PolicyBundle,
        resumed: tuple[PolicyBundle, int] | None = None,
        override: bool = False,
    ) -> None:
        """Takes the meta-trained policy; versions continue from the checkpoint's.

        ``resumed`` (a :meth:`StateFile.load`): the saved good policy is deployed first, under
        its run id, and versions continue from the saved next version. ``override``: the first
        publication carries the operator's override (starting from the checkpoint over an
        adapted policy of another run)."""
        if resumed is not None:
            saved, next_version = resumed
            metadata = {k: v for k, v in saved.metadata.items() if k != NEXT_VERSION_KEY}
            self._resumed = saved.replace(metadata=metadata)
            self.run_id = saved.run_id
        self.meta_bundle = bundle.replace(
            run_id=self.run_id, metadata={**bundle.metadata, ADAPTED_KEY: False}
        )
        self._next_version = next_version if resumed is not None else bundle.version
        self._override_next = override and resumed is None

    def activate(self) -> None:
        """Deploys the resumed or the meta-trained policy (once) and takes tasks from now on."""
        if self.current is None:
            self._publish_policy(self._resumed or self.meta_bundle, good=True)
        self._accepting = True

    def deactivate(self) -> None:
        """Refuses tasks; a running adaptation is cancelled and the good policy kept."""
        with self._wake:
            self._accepting = False
            self._pending_task = None
            self._cancel.set()
            self._wake.notify_all()
            idle = self._adapting_id is None
        if idle:
            self._keep_good_policy()

    def submit(self, change: TaskChange) -> str | None:
        """Takes a task change (cancelling the adaptation in progress); returns why it is
        refused, or None. The id being adapted to already is acknowledged, no more."""
        with self._wake:
            if not self._accepting:
                return "not active (lifecycle): activate the node first"
            if change.id in (self._adapting_id, getattr(self._pending_task, "id", None)):
                return None
            self._pending_task = change
            self._pending_since = time.monotonic()
            self._cancel.set()
            self._wake.notify_all()
        self.logger.info(f"task change: {change.id} ({change.task.family})")
        return None

    def on_active_task(self, active: ActiveTask) -> None:
        """The driver's latest confirmation of the task it runs."""
        with self._active_cond:
            self._active_task = active
            self._active_cond.notify_all()

    def on_envelope_violation(self, stamp_ns: int, reason: str) -> None:
        """The controller reports that the joint state ``stamp_ns`` left its safety envelope
        (it holds the arm): a rollout with steps from before that state up to it is
        discarded."""
        self._violation = (stamp_ns, reason)  # one reference swap: read by the worker

    def on_controller_ack(self, run_id: str, version: int) -> None:
        """The controller reports that it runs ``version`` of run ``run_id``."""
        with self._ack_cond:
            self._controller_ack = (run_id, version)
            self._ack_cond.notify_all()

    def stop(self) -> None:
        """Makes :meth:`serve` return (cancelling any adaptation within 50 ms)."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()

    # -- the worker ------------------------------------------------------------------------------

    def serve(self) -> None:
        """The worker thread: warm up, then one adaptation per task change until stopped."""
        self.warm_up()
        while True:
            with self._wake:
                while self._pending_task is None and not self._stopping.is_set():
                    self._wake.wait()
                if self._stopping.is_set():
                    return
                change, self._pending_task = self._pending_task, None
                self._task_since = self._pending_since
                self._adapting_id = change.id
                self._cancel.clear()
            try:
                self.handle(change)
            finally:
                with self._wake:
                    self._adapting_id = None

    def warm_up(self) -> None:
        """Readies the first adaptation: one throw-away inner update of the real shape (no
        one-time start-up cost, the CUDA graph captured), then waits for the robot's services
        (up to ``service_timeout_s``; a task can come before, it waits)."""
        t0 = time.perf_counter()
        cfg = self.config()
        try:
            warm_up(
                self.meta_bundle, cfg["device"], cfg["rollouts"], cfg["horizon"], cfg["inner_steps"]
            )
        except (ValueError, RuntimeError) as err:
            self.logger.warning(f"warm-up update failed: {err}")
        warm_up_ms = (time.perf_counter() - t0) * 1e3
        deadline = time.monotonic() + cfg["service_timeout_s"]
        while not self.robot.services_ready() and time.monotonic() < deadline:
            if self._stopping.wait(0.02) or self._pending_task is not None:
                break
        self.status.set(
            ready=True, warm_up_ms=warm_up_ms, services_ready=self.robot.services_ready()
        )
        self.status.publish()

    def handle(self, change: TaskChange) -> None:
        """Runs the adaptation to ``change`` and reports how it ended (never raises but on
        stop): done, rolled_back, cancelled or failed."""
        try:
            self._adapt_to(change)
        except Cancelled:
            if self._stopping.is_set():
                return
            self.cancellations += 1
            why = "a newer task change" if self._accepting else "deactivate"
            if not self._accepting:
                self._keep_good_policy()
            self.status.set(phase="cancelled", cancellations=self.cancellations, reason=why)
            self.status.publish()
            self.logger.info(f"adaptation cancelled by {why}")
        except Exception as err:  # AdaptationFailed, or a bug: it must not kill the worker
            if self._stopping.is_set():
                return
            reason = (
                str(err) if isinstance(err, AdaptationFailed) else f"{type(err).__name__}: {err}"
            )
            self.status.set(phase="failed", reason=reason)
            self.status.publish()
            self.logger.error(f"adaptation failed: {reason}")

    def _phase(self, phase: str, **fields: Any) -> None:
        self._check_cancel()
        self.status.set(phase=phase, **fields)
        self.status.publish()

    def _check_cancel(self) -> None:
        if self._cancel.is_set() or self._stopping.is_set():
            raise Cancelled

    def _publish_policy(self, bundle: PolicyBundle, good: bool = False) -> PolicyBundle:
        """Deploys ``bundle``'s weights as the next version (``good``: as the good policy too);
        the state is saved first. Returns the deployed bundle."""
        published = bundle.replace(version=self._next_version, run_id=self.run_id)
        if self._override_next:
            self._override_next = False
            published = published.replace(metadata={**published.metadata, OVERRIDE_KEY: True})
        self._next_version += 1
        if good:
            self.good = published
        self._save_state()
        self.robot.publish_policy(published)
        self.current = published
        self.status.set(policy_version=published.version)
        self.status.publish()
        return published

    def _save_state(self) -> None:
        """Writes the good policy and the next version (before anything newer is published);
        a failed write is counted (``state_file``) and the protocol goes on."""
        if self.state is None or self.good is None:
            return
        try:
            self.state.save(self.good, self._next_version)
        except (OSError, CheckpointError) as err:
            self.status.drop("state_file", f"state not saved: {type(err).__name__}: {err}")
            self.logger.error(f"adaptation state not saved to {self.state.path}: {err}")

    def _keep_good_policy(self) -> None:
        """Redeploys the last good policy when another one is deployed."""
        good = self.good
        if good is not None and self.current is not None and self.current.params is not good.params:
            self._publish_policy(good, good=True)

    def _wait_policy_ack(self, version: int, cfg: Mapping[str, Any]) -> bool:
        """Waits until the controller reports ``version`` of this run: True, or False after
        ``policy_ack_timeout_s`` (the protocol goes on)."""
        deadline = time.monotonic() + cfg["policy_ack_timeout_s"]
        with self._ack_cond:
            while True:
                ack = self._controller_ack
                if ack is not None and ack[0] == self.run_id and ack[1] >= version:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ack_cond.wait(min(left, 0.05))
                self._check_cancel()
        self.logger.warning(
            f"controller did not confirm policy version {version} within "
            f"{cfg['policy_ack_timeout_s']} s; going on"
        )
        return False

    # -- one adaptation --------------------------------------------------------------------------

    def _adapt_to(self, change: TaskChange) -> None:
        cfg = dict(self.config())
        self.rollouts_discarded = 0
        self.adaptation_id += 1
        self._phase(
            "confirming_task",
            adaptation_id=self.adaptation_id,
            task_id=change.id,
            task_family=change.task.family,
            **CLEARED_RESULTS,
            reason=None,
        )
        self._confirmed = self._wait_task_confirmation(change.id, cfg)
        self._phase("evaluating_pre")
        start = self.current
        if cfg["reset_to_meta"] and self.current.params is not self.meta_bundle.params:
            start = self._publish_policy(self.meta_bundle)
        self._kept = start
        try:
            self._adapt_from(start, change, cfg)
        except AdaptationFailed:
            if self.current.params is not self._kept.params:
                # the start, or a round kept for this task: never one adapted to another task
                self._publish_policy(self._kept)
            raise

    def _wait_task_confirmation(self, task_id: str, cfg: Mapping[str, Any]) -> ActiveTask:
        """The driver's confirmation that it runs ``task_id``; AdaptationFailed when it does
        not come within ``task_confirm_timeout_s`` (nothing has changed yet then)."""
        deadline = time.monotonic() + cfg["task_confirm_timeout_s"]
        with self._active_cond:
            while self._active_task is None or self._active_task.id != task_id:
                left = deadline - time.monotonic()
                if left <= 0:
                    running = self._active_task.id if self._active_task else "nothing confirmed"
                    raise AdaptationFailed(
                        f"the driver did not confirm task {task_id} on 'active_task' within "
                        f"{cfg['task_confirm_timeout_s']} s (it runs: {running}); "
                        "policy unchanged"
                    )
                self._active_cond.wait(min(left, 0.05))
                self._check_cancel()
            return self._active_task

    def _check_task_unchanged(self, step: Step | None = None) -> None:
        """Raises AdaptationFailed when the driver's task or session changed under us: on its
        ``active_task``, or on the task label of ``step``'s reward (which can arrive before
        a restarted driver's ``active_task`` does)."""
        confirmed = self._confirmed
        if step is not None and step.task_label and step.task_label != confirmed.label:
            session = step.task_label.partition("@")[2]
            now = f"'{step.task_label}' (task@session, on a reward)"
        elif self._active_task.label != confirmed.label:
            session = self._active_task.driver_session
            now = f"task {self._active_task.id} (session {session})"
        else:
            return
        # The driver may read a newer task message before this node does: a switch within
        # the same session is a cancellation when that message follows within the grace.
        if session == confirmed.driver_session:
            self._cancel.wait(TASK_SWITCH_GRACE_S)
            self._check_cancel()
        raise AdaptationFailed(
            f"the driver switched from task {confirmed.id} (session "
            f"{confirmed.driver_session}) to {now}: a restart or another sender; no steps of "
            "two tasks are mixed"
        )

    def _adapt_from(self, start: PolicyBundle, change: TaskChange, cfg: Mapping[str, Any]) -> None:
        """Evaluates ``start``, then ``adaptation_rounds`` rounds (each collects K rollouts of
        the policy kept last, updates, publishes and evaluates it, and is rolled back when it
        does worse than that policy); the first round rolled back ends the adaptation."""
        self._wait_policy_ack(start.version, cfg)
        return_pre, success_pre = self._evaluate(cfg)
        kept_return, kept_success = return_pre, success_pre
        round_returns: list[float] = []
        self.status.set(return_pre=return_pre, success_pre=success_pre)
        for round_ in range(1, cfg["adaptation_rounds"] + 1):
            outcome = self._adapt_round(self._kept, change, cfg, round_, kept_return)
            if isinstance(outcome, str):  # rolled back: the kept policy stays
                if round_ == 1:
                    self.status.set(phase="rolled_back", reason=outcome)
                    self.logger.warning(f"update rolled back, policy kept: {outcome}")
                    self.status.publish()
                    return
                self.status.set(reason=f"round {round_} rolled back: {outcome}")
                self.logger.warning(f"round {round_} rolled back, round {round_ - 1} kept")
                break
            self._kept, kept_return, kept_success = outcome
            round_returns.append(kept_return)
            self.good = self._kept
            self._save_state()
            self.status.set(round_returns=list(round_returns))
        self.status.set(phase="done", return_post=kept_return, success_post=kept_success)
        self.logger.info(
            f"adapted to {change.task.family} in {len(round_returns)} round(s): return "
            f"{return_pre:.3f} -> {kept_return:.3f}, success {success_pre} -> {kept_success}"
        )
        self.status.publish()

    def _adapt_round(
        self,
        start: PolicyBundle,
        change: TaskChange,
        cfg: Mapping[str, Any],
        round_: int,
        return_before: float,
    ) -> tuple[PolicyBundle, float, float] | str:
        """One round from ``start`` (deployed, its return ``return_before``): the adapted
        policy deployed with its return and success, or why it was rolled back (``start``
        deployed again)."""
        self._phase("collecting", round=round_)
        collect_start = time.monotonic()
        rollouts = rollouts_from_episodes(self._episodes(cfg, cfg["rollouts"], collecting=True))
        rollouts_done = time.monotonic()
        self.status.set(collect_ms=(rollouts_done - collect_start) * 1e3)

        self._phase("adapting")
        t0 = time.perf_counter()
        try:
            adapted, info = adapt_policy(start, rollouts, cfg["inner_steps"], cfg["device"])
            tags = {ADAPTED_KEY: True, "task_id": change.id, "task_family": change.task.family}
            adapted = adapted.replace(metadata={**adapted.metadata, **tags, "round": round_})
            problem = update_problem(start.params, adapted.params, cfg["max_update_ratio"])
            problem = problem or probe_problem(adapted)
            if problem is None and not math.isfinite(info["inner_loss"]):
                problem = f"non-finite inner loss {info['inner_loss']}"
        except (ValueError, RuntimeError) as err:  # NonFiniteError, RolloutError, ...
            adapted, info, problem = None, {}, f"{type(err).__name__}: {err}"
        latency_ms = (time.perf_counter() - t0) * 1e3
        inner_loss = info.get("inner_loss")
        self.adaptations += 1
        self.status.set(
            inner_device=info.get("device"),
            adapt_latency_ms=latency_ms,
            inner_loss=inner_loss if inner_loss is not None and math.isfinite(inner_loss) else None,
            adaptations=self.adaptations,
        )
        if problem is not None:
            return problem
        self._check_cancel()
        published = self._publish_policy(adapted)
        self._phase("evaluating_post")
        if self._wait_policy_ack(published.version, cfg):
            active = time.monotonic()
            self.status.set(
                policy_active_after_rollouts_ms=(active - rollouts_done) * 1e3,
                task_to_policy_active_ms=(active - self._task_since) * 1e3,
            )
        return_post, success_post = self._evaluate(cfg)
        self.status.set(return_post=return_post, success_post=success_post)
        if return_post < return_before - cfg["rollback_margin"]:
            self._publish_policy(start, good=True)
            before = "pre-update" if round_ == 1 else f"round {round_ - 1}'s"
            return (
                f"post-update return {return_post:.3f} is worse than {before} "
                f"{return_before:.3f} by more than {cfg['rollback_margin']}"
            )
        return published, return_post, success_post

    def _evaluate(self, cfg: Mapping[str, Any]) -> tuple[float, float]:
        """Mean return and success rate of ``eval_episodes`` deterministic episodes."""
        results = [
            episode_return(steps)
            for steps in self._episodes(cfg, cfg["eval_episodes"], collecting=False)
        ]
        return float(np.mean([r for r, _ in results])), float(np.mean([s for _, s in results]))

    def _episodes(self, cfg: Mapping[str, Any], count: int, collecting: bool) -> list[list[Step]]:
        """``count`` complete episodes; partial ones are discarded (counted) and retried.

        Collected episodes explore, others do not; the controller is told so before every
        episode (a restarted controller starts without exploration). Collected episodes are
        counted in the status and go to ``buffer_dump``.
        """
        if collecting:
            self._first_rollout_step_pending = True
        episodes: list[list[Step]] = []
        discarded_in_a_row = 0
        # A conflicting reward may arrive after its step was used: the episodes are checked
        # again whenever one is added, and once more when there are enough.
        while len(episodes) < count or self._drop_spoiled(episodes):
            try:
                self._set_exploration(collecting, cfg)
                steps = self._run_episode(cfg, explore=collecting)
            except PartialRollout as err:
                self.status.drop("rollout", str(err))
                self.rollouts_discarded += 1
                self.status.set(rollouts_discarded=self.rollouts_discarded)
                discarded_in_a_row += 1
                if discarded_in_a_row >= cfg["max_discarded_rollouts"]:
                    raise AdaptationFailed(
                        f"{discarded_in_a_row} rollouts in a row were discarded; last: {err}"
                    ) from err
                continue
            discarded_in_a_row = 0
            self._drop_spoiled(episodes)
            episodes.append(steps)
            if collecting:
                if cfg["buffer_dump"]:
                    try:
                        append_rollout_jsonl(cfg["buffer_dump"], steps)
                    except (OSError, ValueError) as err:
                        why = f"rollout not written: {type(err).__name__}: {err}"
                        self.status.drop("buffer_dump", why)
                self.status.set(rollouts_collected=len(episodes))
                self.status.publish()
        return episodes

    def _drop_spoiled(self, episodes: list[list[Step]]) -> bool:
        """Removes (and counts) the episodes with a conflicting reward; True if there were."""
        spoiled = [(e, p) for e in episodes if (p := self._conflict_problem(e))]
        gone = {id(e) for e, _ in spoiled}
        episodes[:] = [e for e in episodes if id(e) not in gone]  # by identity: Steps hold arrays
        for _, problem in spoiled:
            self.status.drop("rollout", problem)
            self.rollouts_discarded += 1
            self.status.set(rollouts_discarded=self.rollouts_discarded)
        return bool(spoiled)

    def _conflict_problem(self, steps: Sequence[Step]) -> str | None:
        """Why ``steps`` cannot be used: a stamp of theirs got two different rewards."""
        conflicted = self.joiner.conflicted([s.stamp_ns for s in steps])
        if not conflicted:
            return None
        return (
            f"conflicting rewards for {len(conflicted)} step(s) of the episode (stamp "
            f"{conflicted[0]}): another sender raced the driver"
        )

    def _set_exploration(self, on: bool, cfg: Mapping[str, Any]) -> None:
        ok, message = self.robot.set_exploration(on, cfg["service_timeout_s"], self._check_cancel)
        if not ok:
            raise AdaptationFailed(f"set_exploration({on}) refused: {message}")

    def _run_episode(self, cfg: Mapping[str, Any], explore: bool) -> list[Step]:
        """Resets the driver and gathers the next ``horizon`` steps of the new episode; a step
        whose action explored when ``explore`` is off (or the other way round) loses it."""
        self.joiner.clear()
        episode_before = self.joiner.last_episode
        newest_before = self.joiner.newest_state_ns  # the new episode's states come after it
        ok, message = self.robot.reset(cfg["service_timeout_s"], self._check_cancel)
        if not ok:
            raise PartialRollout(f"reset failed: {message}")
        target = episode_from_reset_message(message)
        since = stamp_from_reset_message(message)  # homing: the episode starts after it
        # An envelope exit stamped after this belongs to this episode.
        after_ns = since if since is not None else newest_before
        steps: list[Step] = []
        # Steps of the previous episode still in flight are skipped, for step_timeout_s at most.
        start_deadline = time.monotonic() + cfg["step_timeout_s"]
        while len(steps) < cfg["horizon"]:
            step = self._next_step(cfg, after_ns)
            if not steps:
                if since is not None:
                    stale = step.stamp_ns <= since
                elif target is not None:
                    stale = step.episode != target
                else:
                    stale = episode_before is not None and step.episode == episode_before
                if stale:
                    if time.monotonic() > start_deadline:
                        raise PartialRollout(
                            f"episode {target if since is None else f'after {since}'} never "
                            f"started after the reset (still seeing episode {step.episode}, "
                            f"stamp {step.stamp_ns})"
                        )
                    continue
            elif step.episode != steps[0].episode or step.generation != steps[0].generation:
                raise PartialRollout(
                    f"episode changed from {steps[0].episode} to {step.episode} after "
                    f"{len(steps)} steps (driver restart?)"
                )
            else:
                period = self.joiner.period_ns
                gap = step.stamp_ns - steps[-1].stamp_ns
                if period and gap > 1.5 * period:
                    raise PartialRollout(
                        f"{round(gap / period) - 1} control step(s) missing after "
                        f"{len(steps)} steps (lost messages)"
                    )
            if step.exploring is not None and step.exploring != explore:
                self.exploration_mismatches += 1
                self.status.set(exploration_mismatches=self.exploration_mismatches)
                raise PartialRollout(
                    f"step {len(steps)} of {'a collected rollout' if explore else 'an evaluation'}"
                    f" was taken {'without' if explore else 'with'} exploration, which was "
                    f"asked {'on' if explore else 'off'} (set_exploration changed by another "
                    "node?)"
                )
            steps.append(step)
            if self._first_rollout_step_pending:
                self._first_rollout_step_pending = False
                since_task = (time.monotonic() - self._task_since) * 1e3
                self.status.set(task_to_first_rollout_step_ms=since_task)
        problem = self._conflict_problem(steps)
        if problem:
            raise PartialRollout(problem)
        return steps

    def _check_envelope(self, after_ns: int | None) -> None:
        """PartialRollout (counted in ``envelope_discards``) when the controller left its
        safety envelope at a state stamped after ``after_ns`` (None: no check yet); each exit
        discards one rollout."""
        violation = self._violation
        if violation is None or after_ns is None or violation[0] <= after_ns:
            return
        if violation[0] == self._discarded_for:
            return  # that exit has discarded its rollout already
        self._discarded_for = violation[0]
        self.envelope_discards += 1
        self.status.set(envelope_discards=self.envelope_discards)
        raise PartialRollout(f"safety envelope left at stamp {violation[0]}: {violation[1]}")

    def _next_step(self, cfg: Mapping[str, Any], after_ns: int | None = None) -> Step:
        """The next complete step taken under the confirmed task; PartialRollout when the
        controller reports a safety-envelope exit stamped after ``after_ns``."""
        deadline = time.monotonic() + cfg["step_timeout_s"]
        while True:
            self._check_cancel()
            self._check_task_unchanged()
            self._check_envelope(after_ns)
            left = deadline - time.monotonic()
            if left <= 0:
                starved = self.joiner.starvation(cfg["step_timeout_s"])
                self.status.set(starved=starved)
                raise PartialRollout(
                    f"no complete control step for {cfg['step_timeout_s']} s: {starved}"
                )
            step = self.joiner.wait_step(min(left, 0.05))
            if step is None:
                continue
            if step.stamp_ns < self._confirmed.since_stamp_ns:
                self.status.drop("step", f"stamp {step.stamp_ns} is from before the task change")
                continue
            self._check_task_unchanged(step)
            if not step.task_label:
                self.status.drop(
                    "step",
                    f"stamp {step.stamp_ns}: its reward names no task@session; only rewards of "
                    f"the confirmed driver ({self._confirmed.label}) are used",
                )
                continue
            return step
