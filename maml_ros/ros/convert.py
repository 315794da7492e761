"""The one place ROS messages become domain objects and back.

Every ``*_from_msg`` / ``*_to_arrays`` function validates its input and raises ``ValueError``
with the reason; nodes catch it, call ``NodeStatus.drop(kind, reason)`` and carry on. No
other exception type escapes a converter for any message content.

Conventions (see :mod:`maml_ros.ros.interfaces`): a stamp is the ``header.stamp`` of the joint
state a message belongs to, as integer nanoseconds (> 0); ``reward`` packs (reward, success,
episode) into a Vector3Stamped and names the task it was earned under in ``header.frame_id``;
``actions`` is a JointState whose ``velocity`` is the action in policy units; ``commands`` are
joint velocities in rad/s. The layout of the MultiArray messages is not used (the payload is
``data``, with ``layout.data_offset`` required to be 0).

The sim and rl layers are imported when a task or policy is converted, so the joint-state,
reward, action and command converters do not pull in PyBullet or torch.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Vector3Stamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String, UInt8MultiArray

from maml_ros.ros.common import ns_to_stamp, stamp_to_ns
from maml_ros.ros.interfaces import ACTION_DETERMINISTIC, ACTION_EXPLORING

if TYPE_CHECKING:
    from maml_ros.rl.checkpoint import PolicyBundle
    from maml_ros.runtime import PolicyData
    from maml_ros.sim import TaskSpec

MAX_TASK_BYTES = 64 * 1024
"""Largest task JSON accepted (checked before parsing)."""
MAX_EPISODE = 2**53
"""Episode counters must be exactly representable in the float64 ``vector.z``."""
_NS_PER_S = 1_000_000_000
# Exceptions a parser may raise on hostile input besides ValueError (deep JSON nesting,
# wrong JSON types reaching a constructor, huge numbers).
_PARSER_ERRORS = (TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError)


# ---------------------------------------------------------------------------------------------
# Stamps


def stamp_ns_of(stamp: Time) -> int:
    """A header stamp as integer nanoseconds; rejects a zero or malformed stamp."""
    if not isinstance(stamp, Time):
        raise ValueError(f"stamp must be a builtin_interfaces/Time, got {type(stamp).__name__}")
    if not 0 <= stamp.nanosec < _NS_PER_S:
        raise ValueError(f"stamp nanosec must be in [0, 1e9), got {stamp.nanosec}")
    if stamp.sec < 0:
        raise ValueError(f"stamp sec must be >= 0, got {stamp.sec}")
    ns = stamp_to_ns(stamp)
    if ns == 0:
        raise ValueError("stamp is zero (unset header.stamp)")
    return ns


def check_stamp_near_clock(stamp_ns: int, now_ns: int, tolerance_s: float) -> None:
    """Raises ValueError when ``stamp_ns`` is more than ``tolerance_s`` ahead of or behind
    ``now_ns`` (a node's clock). No check when ``tolerance_s`` is 0 or the clock reads 0 (sim
    time before the first /clock message)."""
    if tolerance_s > 0 and now_ns > 0 and abs(stamp_ns - now_ns) > tolerance_s * _NS_PER_S:
        raise ValueError(
            f"stamp {stamp_ns} ns is {(stamp_ns - now_ns) / _NS_PER_S:+.3f} s from the node's "
            f"clock (stamp_tolerance_s {tolerance_s})"
        )


def as_stamp(stamp: Time | int) -> Time:
    """A Time from a Time or from positive integer nanoseconds."""
    if isinstance(stamp, Time):
        stamp_ns_of(stamp)
        return stamp
    if isinstance(stamp, bool) or not isinstance(stamp, int | np.integer):
        raise ValueError(f"stamp must be a Time or integer nanoseconds, got {type(stamp).__name__}")
    if not 0 < int(stamp) < 2**31 * _NS_PER_S:
        raise ValueError(f"stamp must be in (0, 2^31 s) as nanoseconds, got {stamp}")
    return ns_to_stamp(int(stamp))


def _check_type(msg: object, expected: type) -> None:
    if not isinstance(msg, expected):
        raise ValueError(f"expected {expected.__name__}, got {type(msg).__name__}")


def _finite_vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


def _name_indices(names: Sequence[str], wanted: Sequence[str], what: str) -> np.ndarray:
    """Index into ``names`` of every name in ``wanted``; rejects duplicates and missing names."""
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        dupes = sorted(name for name, count in Counter(names).items() if count > 1)
        raise ValueError(f"{what}: duplicate joint names {dupes}")
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(f"{what}: missing joints {missing}")
    return np.fromiter((index[name] for name in wanted), dtype=np.intp, count=len(wanted))


# ---------------------------------------------------------------------------------------------
# sensor_msgs/JointState (joint_states)


def joint_state_to_arrays(
    msg: JointState,
    joint_names: Sequence[str],
    *,
    last_stamp_ns: int | None = None,
    max_age_ns: int | None = None,
    now_ns: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(positions, velocities, stamp_ns) of ``joint_names``, in that order (float64 arrays).

    The message may list the joints in any order and carry extra joints. Rejected: missing or
    duplicate names, position/velocity lengths that differ from the names, NaN/Inf in the
    wanted joints, a zero stamp, a stamp not after ``last_stamp_ns``, and (when ``max_age_ns``
    and ``now_ns`` are given) a stamp older than ``max_age_ns``.
    """
    _check_type(msg, JointState)
    stamp_ns = stamp_ns_of(msg.header.stamp)
    if last_stamp_ns is not None and stamp_ns <= last_stamp_ns:
        raise ValueError(f"stamp {stamp_ns} ns is not after the previous stamp {last_stamp_ns} ns")
    if max_age_ns is not None and now_ns is not None and now_ns - stamp_ns > max_age_ns:
        raise ValueError(
            f"stale joint state: {(now_ns - stamp_ns) / 1e9:.3f} s old "
            f"(limit {max_age_ns / 1e9:.3f} s)"
        )
    positions, velocities, _ = JointStateReader(joint_names).read(msg)  # arrays of its own
    return positions, velocities, stamp_ns


class JointStateReader:
    """The joint-state checks of :func:`joint_state_to_arrays` (which uses a fresh one per
    message) for one stream of joint states (a controller's tick): the name lookup kept for the
    name list last seen, the values written into ``positions`` / ``velocities`` (re-used: read
    them before the next call)."""

    def __init__(self, joint_names: Sequence[str]) -> None:
        self._wanted = list(joint_names)
        self._names: list[str] | None = None
        self._indices = np.zeros(0, dtype=np.intp)
        self.positions = np.empty(len(joint_names))
        self.velocities = np.empty(len(joint_names))

    def read(self, msg: JointState) -> tuple[np.ndarray, np.ndarray, int]:
        """(positions, velocities, stamp_ns) of the wanted joints; ValueError as
        :func:`joint_state_to_arrays` raises it."""
        _check_type(msg, JointState)
        stamp_ns = stamp_ns_of(msg.header.stamp)
        names = msg.name
        if len(msg.position) != len(names) or len(msg.velocity) != len(names):
            raise ValueError(
                f"joint state has {len(names)} names, {len(msg.position)} positions and "
                f"{len(msg.velocity)} velocities (all must be equal)"
            )
        if names != self._names:
            self._indices = _name_indices(names, self._wanted, "joint state")
            self._names = list(names)
        np.take(np.frombuffer(msg.position), self._indices, out=self.positions)
        np.take(np.frombuffer(msg.velocity), self._indices, out=self.velocities)
        if not (np.isfinite(self.positions).all() and np.isfinite(self.velocities).all()):
            raise ValueError("joint state contains NaN or infinite positions/velocities")
        return self.positions, self.velocities, stamp_ns


def arrays_to_joint_state(
    stamp: Time | int,
    joint_names: Sequence[str],
    positions: Sequence[float] | np.ndarray,
    velocities: Sequence[float] | np.ndarray,
) -> JointState:
    """A stamped JointState (name, position, velocity; effort empty)."""
    positions = _finite_vector(positions, "positions")
    velocities = _finite_vector(velocities, "velocities")
    if not len(joint_names) == len(positions) == len(velocities):
        raise ValueError("joint_names, positions and velocities must have the same length")
    msg = JointState()
    msg.header.stamp = as_stamp(stamp)
    msg.name = list(joint_names)
    msg.position = positions.tolist()
    msg.velocity = velocities.tolist()
    return msg


# ---------------------------------------------------------------------------------------------
# std_msgs/String (task)


TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""A task id: 1 to 64 letters, digits, ``_``, ``.``, ``:`` or ``-``."""
TASK_LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}@[A-Za-z0-9_.:-]{1,64}")
"""A reward's task label: ``<task id>@<driver session>``."""


@dataclass(frozen=True)
class TaskChange:
    """One task-change message: the task and its id (given, or derived from the task)."""

    id: str
    task: TaskSpec


def task_id_of(task: TaskSpec) -> str:
    """The id of a task message that carries none: a digest of the task's canonical JSON, so
    every node derives the same id from the same message."""
    return "sha-" + hashlib.sha256(task.to_json().encode()).hexdigest()[:12]


def check_task_id(value: object) -> str:
    """``value`` if it is a valid task id (:data:`TASK_ID_PATTERN`); raises ValueError."""
    if not isinstance(value, str) or not TASK_ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"task id must be 1-64 letters, digits, '_', '.', ':' or '-', got {value!r:.80}"
        )
    return value


def task_from_msg(msg: String, max_bytes: int = MAX_TASK_BYTES) -> TaskChange:
    """The task change in a task message (optional ``"id"`` beside the task's fields); the
    size is capped before parsing."""
    from maml_ros.sim import TaskSpec, TaskSpecError

    _check_type(msg, String)
    size = len(msg.data.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise ValueError(f"task message is {size} bytes, over the limit of {max_bytes}")
    try:
        data = json.loads(msg.data)
        task_id = None
        if isinstance(data, dict) and "id" in data:
            data = dict(data)
            task_id = check_task_id(data.pop("id"))
        task = TaskSpec.from_json(json.dumps(data))
    except TaskSpecError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"invalid task: {exc}") from exc
    except _PARSER_ERRORS as exc:
        raise ValueError(f"invalid task: {type(exc).__name__}: {exc}") from exc
    return TaskChange(task_id or task_id_of(task), task)


def task_to_msg(task: TaskSpec, task_id: str | None = None) -> String:
    """A task message: ``task.to_json()``, with ``"id"`` added when one is given."""
    if task_id is None:
        return String(data=task.to_json())
    data = {**task.to_dict(), "id": check_task_id(task_id)}
    return String(data=json.dumps(data, separators=(",", ":"), sort_keys=True))


def task_ack_to_msg(node: str, task_id: str | None, reason: str | None = None) -> String:
    """A ``task_ack`` message: ``node`` accepted the task ``task_id`` (or refused it)."""
    ack = {"node": node, "id": task_id, "accepted": reason is None, "reason": reason}
    return String(data=json.dumps(ack))


def active_task_to_msg(change: TaskChange, since_stamp_ns: int, driver_session: str) -> String:
    """The driver's ``active_task`` confirmation: it runs ``change`` from ``since_stamp_ns``."""
    active = {
        "id": change.id,
        "family": change.task.family,
        "since_stamp_ns": since_stamp_ns,
        "driver_session": driver_session,
    }
    return String(data=json.dumps(active))


@dataclass(frozen=True)
class ActiveTask:
    """What the driver confirms it runs: a task id, since the state of ``since_stamp_ns``, in
    the driver process ``driver_session`` (a restarted driver has a new one)."""

    id: str
    family: str
    since_stamp_ns: int
    driver_session: str

    @property
    def label(self) -> str:
        """The ``task_label`` the driver puts on the rewards it publishes under this task."""
        return task_label(self.id, self.driver_session)


def task_label(task_id: str, driver_session: str) -> str:
    """``"<task id>@<driver session>"``: which task, in which driver process, a reward was
    earned under (the reward's ``header.frame_id``)."""
    return f"{check_task_id(task_id)}@{check_task_id(driver_session)}"


def active_task_from_msg(msg: String) -> ActiveTask:
    """The validated confirmation in an ``active_task`` message."""
    _check_type(msg, String)
    if len(msg.data) > MAX_TASK_BYTES:
        raise ValueError(f"active_task message over {MAX_TASK_BYTES} bytes")
    try:
        data = json.loads(msg.data)
        since = data["since_stamp_ns"]
        if type(since) is not int or not 0 <= since < 2**63:
            raise ValueError(f"since_stamp_ns {since!r:.40}")
        return ActiveTask(
            id=check_task_id(data["id"]),
            family=str(data["family"]),
            since_stamp_ns=since,
            driver_session=check_task_id(data["driver_session"]),
        )
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid active_task: {exc}") from exc
    except _PARSER_ERRORS as exc:
        raise ValueError(f"invalid active_task: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# std_msgs/UInt8MultiArray (policy)


def policy_to_msg(bundle: PolicyBundle, deploy_key: bytes | None = None) -> UInt8MultiArray:
    """A policy message: the bundle's safetensors bytes (rl's codec), signed with
    ``deploy_key`` when given (``layout.dim[0].label`` = ``hmac-sha256=<hex>``)."""
    from maml_ros.rl.checkpoint import bundle_to_bytes
    from maml_ros.runtime.deployment import SIGNATURE_LABEL, policy_signature

    msg = UInt8MultiArray()
    data = bundle_to_bytes(bundle)
    msg.data = data
    if deploy_key is not None:
        label = SIGNATURE_LABEL + policy_signature(deploy_key, data)
        msg.layout.dim = [MultiArrayDimension(label=label, size=len(data), stride=len(data))]
    return msg


def _policy_bytes(msg: UInt8MultiArray, max_bytes: int) -> bytes:
    """The bytes of a policy message; the type, size and layout are checked first."""
    _check_type(msg, UInt8MultiArray)
    if len(msg.data) > max_bytes:
        raise ValueError(f"oversized policy: {len(msg.data)} bytes, limit {max_bytes}")
    if msg.layout.data_offset != 0:
        raise ValueError(f"policy layout.data_offset must be 0, got {msg.layout.data_offset}")
    return bytes(msg.data)


def policy_from_msg(msg: UInt8MultiArray, max_bytes: int) -> PolicyBundle:
    """The validated PolicyBundle (torch tensors) in a policy message."""
    from maml_ros.rl.checkpoint import bundle_from_bytes

    return bundle_from_bytes(_policy_bytes(msg, max_bytes), max_bytes=max_bytes)


def policy_data_from_msg(
    msg: UInt8MultiArray, max_bytes: int, deploy_key: bytes | None = None
) -> PolicyData:
    """The validated, probed policy (numpy, no torch) in a policy message: the controller's.

    With ``deploy_key`` the message must carry the bytes' signature under it; it is checked
    before anything is parsed (ValueError: unsigned, or signed with another key)."""
    from maml_ros.runtime import check_signature, policy_from_bytes

    data = _policy_bytes(msg, max_bytes)
    if deploy_key is not None:
        label = msg.layout.dim[0].label if msg.layout.dim else None
        check_signature(deploy_key, data, label)
    return policy_from_bytes(data, max_bytes=max_bytes)


# ---------------------------------------------------------------------------------------------
# geometry_msgs/Vector3Stamped (reward)


def reward_from_msg(msg: Vector3Stamped) -> tuple[int, float, bool, int, str]:
    """(stamp_ns, reward, success, episode, task_label) of a reward message; ``task_label``
    is ``""`` when the sender names no task (:func:`task_label`)."""
    _check_type(msg, Vector3Stamped)
    stamp_ns = stamp_ns_of(msg.header.stamp)
    label = msg.header.frame_id
    if label and not TASK_LABEL_PATTERN.fullmatch(label):
        raise ValueError(
            f"reward header.frame_id must be empty or '<task id>@<driver session>', "
            f"got {label!r:.80}"
        )
    reward, success, episode = msg.vector.x, msg.vector.y, msg.vector.z
    if not math.isfinite(reward):
        raise ValueError(f"reward must be finite, got {reward}")
    if success not in (0.0, 1.0):
        raise ValueError(f"success (vector.y) must be 0.0 or 1.0, got {success}")
    if not (math.isfinite(episode) and episode == int(episode) and 0 <= episode <= MAX_EPISODE):
        raise ValueError(f"episode (vector.z) must be a non-negative integer, got {episode}")
    return stamp_ns, float(reward), success == 1.0, int(episode), label


def reward_to_msg(
    stamp: Time | int, reward: float, success: bool, episode: int, task_label: str = ""
) -> Vector3Stamped:
    """A reward message (x = reward, y = success, z = episode, frame_id = task label)."""
    if not math.isfinite(reward):
        raise ValueError(f"reward must be finite, got {reward}")
    if isinstance(episode, bool) or not isinstance(episode, int | np.integer):
        raise ValueError(f"episode must be an integer, got {episode!r}")
    if not 0 <= episode <= MAX_EPISODE:
        raise ValueError(f"episode must be in [0, 2^53], got {episode}")
    msg = Vector3Stamped()
    if task_label and not TASK_LABEL_PATTERN.fullmatch(task_label):
        raise ValueError(f"task label must be '<task id>@<driver session>', got {task_label!r}")
    msg.header.stamp = as_stamp(stamp)
    msg.header.frame_id = task_label
    msg.vector.x = float(reward)
    msg.vector.y = 1.0 if success else 0.0
    msg.vector.z = float(episode)
    return msg


# ---------------------------------------------------------------------------------------------
# sensor_msgs/JointState (<controller>/actions)


def action_to_msg(
    stamp: Time | int,
    joint_names: Sequence[str],
    action: Sequence[float] | np.ndarray,
    exploring: bool | None = None,
) -> JointState:
    """An action echo: ``name`` = joints, ``velocity`` = action (policy units), no positions;
    ``header.frame_id`` says whether the action explored (:data:`ACTION_EXPLORING`,
    :data:`ACTION_DETERMINISTIC`; None: left empty, not said)."""
    action = _finite_vector(action, "action")
    if len(action) != len(joint_names):
        raise ValueError(f"action has {len(action)} values for {len(joint_names)} joints")
    msg = JointState()
    msg.header.stamp = as_stamp(stamp)
    if exploring is not None:
        msg.header.frame_id = ACTION_EXPLORING if exploring else ACTION_DETERMINISTIC
    msg.name = list(joint_names)
    msg.velocity = action.tolist()
    return msg


class TickMessages:
    """The command and the action echo of a controller tick, allocated once and re-used.

    The tick writes the command into ``velocities`` and the action into ``action``: numpy views
    of the messages' own float64 arrays, so nothing is converted or allocated per tick, and
    ``command(stamp_ns)`` / ``echo(stamp, exploring)`` return the messages as
    :func:`commands_to_msg` and :func:`action_to_msg` would build them (the caller publishes one
    before writing the next; publishing serialises a message at once)."""

    def __init__(self, joint_names: Sequence[str]) -> None:
        n = len(joint_names)
        self._command = Float64MultiArray()
        self._command.data = array.array("d", bytes(8 * n))
        self._dim = MultiArrayDimension(size=n, stride=n)
        self._command.layout.dim = [self._dim]
        self._echo = JointState()
        self._echo.name = list(joint_names)
        self._echo.velocity = array.array("d", bytes(8 * n))
        self.velocities = np.frombuffer(self._command.data, dtype=np.float64)
        self.action = np.frombuffer(self._echo.velocity, dtype=np.float64)

    def command(self, stamp_ns: int) -> Float64MultiArray:
        """The command message holding ``velocities``, answering the state of ``stamp_ns``."""
        self._dim.label = f"{COMMAND_STAMP_LABEL}{stamp_ns}"
        return self._command

    def echo(self, stamp: Time, exploring: bool) -> JointState:
        """The action echo holding ``action``, stamped with the state's ``stamp``."""
        self._echo.header.stamp = stamp
        self._echo.header.frame_id = ACTION_EXPLORING if exploring else ACTION_DETERMINISTIC
        return self._echo


def action_from_msg(msg: JointState, joint_names: Sequence[str]) -> tuple[int, np.ndarray]:
    """(stamp_ns, action) of an action echo, reordered to ``joint_names`` (float64)."""
    _check_type(msg, JointState)
    stamp_ns = stamp_ns_of(msg.header.stamp)
    names = list(msg.name)
    if len(msg.velocity) != len(names):
        raise ValueError(
            f"action message has {len(names)} names but {len(msg.velocity)} velocities"
        )
    indices = _name_indices(names, joint_names, "action")
    action = np.asarray(msg.velocity, dtype=np.float64)[indices]
    if not np.isfinite(action).all():
        raise ValueError("action contains NaN or infinite values")
    return stamp_ns, action


def action_exploring(msg: JointState) -> bool | None:
    """Whether an action echo explored (``header.frame_id``, see :mod:`interfaces`): True,
    False, or None when the controller did not say; ValueError for any other label."""
    label = msg.header.frame_id
    if label == "":
        return None
    if label in (ACTION_EXPLORING, ACTION_DETERMINISTIC):
        return label == ACTION_EXPLORING
    raise ValueError(
        f"action header.frame_id must be '', {ACTION_EXPLORING!r} or {ACTION_DETERMINISTIC!r}, "
        f"got {label[:80]!r}"
    )


# ---------------------------------------------------------------------------------------------
# std_msgs/Float64MultiArray (<controller>/commands)


COMMAND_STAMP_LABEL = "stamp_ns="
"""Prefix of ``layout.dim[0].label`` on a command that answers the joint state of that stamp."""


def commands_to_msg(
    velocities: Sequence[float] | np.ndarray, stamp: Time | int | None = None
) -> Float64MultiArray:
    """A forward-command message of joint velocities (rad/s).

    With ``stamp`` (the joint state the command answers; 0 = no state, e.g. a hold command)
    the message carries one layout dimension labelled ``stamp_ns=<ns>``: ros2_control's
    forward-command controllers ignore the layout, and the simulated driver uses it to pair
    each command with its state in lockstep.
    """
    msg = Float64MultiArray()
    msg.data = _finite_vector(velocities, "commands").tolist()
    if stamp is not None:
        stamp_ns = 0 if isinstance(stamp, int) and stamp == 0 else stamp_to_ns(as_stamp(stamp))
        size = len(msg.data)
        msg.layout.dim = [
            MultiArrayDimension(label=f"{COMMAND_STAMP_LABEL}{stamp_ns}", size=size, stride=size)
        ]
    return msg


def commands_from_msg(msg: Float64MultiArray, n_joints: int) -> np.ndarray:
    """The ``n_joints`` joint velocities (rad/s, float64) of a command message."""
    _check_type(msg, Float64MultiArray)
    if msg.layout.data_offset != 0:
        raise ValueError(f"commands layout.data_offset must be 0, got {msg.layout.data_offset}")
    if len(msg.data) != n_joints:
        raise ValueError(f"commands have {len(msg.data)} values, expected {n_joints}")
    velocities = np.asarray(msg.data, dtype=np.float64)
    if not np.isfinite(velocities).all():
        raise ValueError("commands contain NaN or infinite values")
    return velocities


def command_stamp_ns(msg: Float64MultiArray) -> int | None:
    """The stamp (ns) of the joint state a command answers; None for an unstamped command.

    0 means the command answers no state (a hold). A malformed stamp label is a ValueError;
    layouts with other labels (from other publishers) count as unstamped.
    """
    _check_type(msg, Float64MultiArray)
    if not msg.layout.dim or not msg.layout.dim[0].label.startswith(COMMAND_STAMP_LABEL):
        return None
    text = msg.layout.dim[0].label.removeprefix(COMMAND_STAMP_LABEL)
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise ValueError(f"malformed command stamp label {msg.layout.dim[0].label[:40]!r}")
    return int(text)


__all__ = [
    "COMMAND_STAMP_LABEL",
    "MAX_TASK_BYTES",
    "JointStateReader",
    "TickMessages",
    "action_exploring",
    "action_from_msg",
    "action_to_msg",
    "arrays_to_joint_state",
    "as_stamp",
    "check_stamp_near_clock",
    "command_stamp_ns",
    "commands_from_msg",
    "commands_to_msg",
    "joint_state_to_arrays",
    "policy_data_from_msg",
    "policy_from_msg",
    "policy_to_msg",
    "reward_from_msg",
    "reward_to_msg",
    "stamp_ns_of",
    "task_from_msg",
    "task_label",
    "task_to_msg",
]
