"""Message converters: validation, round trips, and fuzzing (only ValueError ever escapes)."""

import json
import math
import struct

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Vector3Stamped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle, bundle_to_bytes
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec
from maml_ros.ros import convert
from maml_ros.runtime import content_sha256

JOINTS = [f"J{i}" for i in range(7)]
STAMP_NS = 1_700_000_000_123_456_789
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
finite_float = st.floats(-1e6, 1e6, allow_nan=False)
stamps = st.builds(Time, sec=st.integers(-(2**31), 2**31 - 1), nanosec=st.integers(0, 2**32 - 1))


def joint_state(names, positions, velocities, stamp_ns=STAMP_NS) -> JointState:
    msg = JointState(name=list(names), position=list(positions), velocity=list(velocities))
    msg.header.stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return msg


def tiny_bundle(version: int = 3, run_id: str = "run-a", **metadata) -> PolicyBundle:
    spec = PolicySpec(obs_dim=14, act_dim=7, hidden=(8,))
    torch.manual_seed(0)
    return PolicyBundle(
        spec=spec,
        params=GaussianMLPPolicy(spec).params(),
        obs_mean=torch.zeros(14),
        obs_std=torch.ones(14),
        inner=InnerConfig(lr=0.05),
        version=version,
        run_id=run_id,
        metadata=metadata,
    )


# --------------------------------------------------------------------------- joint states


def test_joint_state_reorders_by_name():
    order = [3, 0, 6, 1, 5, 2, 4]
    names = [JOINTS[i] for i in order] + ["gripper"]
    positions = [float(i) for i in order] + [99.0]
    velocities = [-float(i) for i in order] + [98.0]
    pos, vel, stamp = convert.joint_state_to_arrays(
        joint_state(names, positions, velocities), JOINTS
    )
    np.testing.assert_array_equal(pos, np.arange(7.0))
    np.testing.assert_array_equal(vel, -np.arange(7.0))
    assert stamp == STAMP_NS


@pytest.mark.parametrize(
    ("names", "positions", "velocities", "reason"),
    [
        (JOINTS[:6], [0.0] * 6, [0.0] * 6, "missing"),
        ([*JOINTS, "J0"], [0.0] * 8, [0.0] * 8, "duplicate"),
        (JOINTS, [0.0] * 6, [0.0] * 7, "positions"),
        (JOINTS, [0.0] * 7, [], "velocities"),
        (JOINTS, [0.0] * 6 + [math.nan], [0.0] * 7, "NaN"),
        (JOINTS, [0.0] * 7, [math.inf] + [0.0] * 6, "NaN"),
    ],
)
def test_joint_state_rejects_malformed(names, positions, velocities, reason):
    with pytest.raises(ValueError, match=reason):
        convert.joint_state_to_arrays(joint_state(names, positions, velocities), JOINTS)


def test_stamps_far_from_the_clock_are_rejected():
    check = convert.check_stamp_near_clock
    now = STAMP_NS
    check(now + 10**9, now, 1.0)
    check(now - 10**9, now, 1.0)
    for stamp in (now + 10**9 + 1, now - 10**9 - 1):
        with pytest.raises(ValueError, match="from the node's clock"):
            check(stamp, now, 1.0)
    check(now + 10**18, now, 0.0)  # 0: no check
    check(now + 10**18, 0, 1.0)  # sim time before the first /clock: no check


def test_joint_state_rejects_bad_stamps():
    msg = joint_state(JOINTS, [0.0] * 7, [0.0] * 7, stamp_ns=STAMP_NS)
    with pytest.raises(ValueError, match="not after"):
        convert.joint_state_to_arrays(msg, JOINTS, last_stamp_ns=STAMP_NS)
    with pytest.raises(ValueError, match="not after"):
        convert.joint_state_to_arrays(msg, JOINTS, last_stamp_ns=STAMP_NS + 1)
    convert.joint_state_to_arrays(msg, JOINTS, last_stamp_ns=STAMP_NS - 1)
    with pytest.raises(ValueError, match="stale"):
        convert.joint_state_to_arrays(msg, JOINTS, max_age_ns=10**8, now_ns=STAMP_NS + 10**8 + 1)
    convert.joint_state_to_arrays(msg, JOINTS, max_age_ns=10**8, now_ns=STAMP_NS + 10**8)
    with pytest.raises(ValueError, match="zero"):
        convert.joint_state_to_arrays(joint_state(JOINTS, [0.0] * 7, [0.0] * 7, 0), JOINTS)
    msg.header.stamp.nanosec = 10**9
    with pytest.raises(ValueError, match="nanosec"):
        convert.joint_state_to_arrays(msg, JOINTS)


_READER = convert.JointStateReader(JOINTS)  # one reader across the examples: a stream


def _outcome(read, msg):
    try:
        return read(msg)
    except ValueError as err:
        return str(err)


@FUZZ
@given(
    names=st.lists(st.sampled_from([*JOINTS, "x", ""]), max_size=10)
    | st.permutations(JOINTS)
    | st.just(list(JOINTS)),
    values=st.lists(any_float | finite_float, min_size=20, max_size=20),
    lengths=st.tuples(st.integers(0, 10), st.integers(0, 10)) | st.just(None),
    stamp=stamps,
)
def test_a_joint_state_reader_reads_what_joint_state_to_arrays_reads(names, values, lengths, stamp):
    """The tick's reader (name lookup kept between messages, arrays re-used) gives the same
    values and the same errors as joint_state_to_arrays, message after message."""
    n_pos, n_vel = lengths or (len(names), len(names))
    msg = JointState(name=names, position=values[:n_pos], velocity=values[10 : 10 + n_vel])
    msg.header.stamp = stamp
    expected = _outcome(lambda m: convert.joint_state_to_arrays(m, JOINTS), msg)
    got = _outcome(_READER.read, msg)
    if isinstance(expected, str):
        assert got == expected
    else:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


@FUZZ
@given(
    names=st.lists(st.sampled_from([*JOINTS, "x", ""]), max_size=10),
    positions=st.lists(any_float, max_size=10),
    velocities=st.lists(any_float, max_size=10),
    stamp=stamps,
    last=st.none() | st.integers(0, 2**62),
)
def test_joint_state_fuzz(names, positions, velocities, stamp, last):
    msg = JointState(name=names, position=positions, velocity=velocities)
    msg.header.stamp = stamp
    try:
        pos, vel, stamp_ns = convert.joint_state_to_arrays(msg, JOINTS, last_stamp_ns=last)
    except ValueError:
        return
    assert pos.shape == vel.shape == (7,)
    assert np.isfinite(pos).all() and np.isfinite(vel).all()
    assert stamp_ns > 0 and (last is None or stamp_ns > last)


@FUZZ
@given(
    pos=st.lists(finite_float, min_size=7, max_size=7),
    vel=st.lists(finite_float, min_size=7, max_size=7),
    stamp_ns=st.integers(1, 2**31 * 10**9 - 1),
    perm=st.permutations(range(7)),
)
def test_joint_state_round_trip(pos, vel, stamp_ns, perm):
    names = [JOINTS[i] for i in perm]
    msg = convert.arrays_to_joint_state(
        stamp_ns, names, [pos[i] for i in perm], [vel[i] for i in perm]
    )
    p, v, s = convert.joint_state_to_arrays(msg, JOINTS)
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(v, vel)
    assert s == stamp_ns


# --------------------------------------------------------------------------- rewards


@FUZZ
@given(
    stamp_ns=st.integers(1, 2**31 * 10**9 - 1),
    reward=finite_float,
    success=st.booleans(),
    episode=st.integers(0, 2**53),
    label=st.sampled_from(["", "sha-0bcaa17036fe@3f2a9c", "reach:1@fake-2"]),
)
def test_reward_round_trip(stamp_ns, reward, success, episode, label):
    msg = convert.reward_to_msg(stamp_ns, reward, success, episode, label)
    assert convert.reward_from_msg(msg) == (stamp_ns, reward, success, episode, label)


@pytest.mark.parametrize("label", ["sha-1", "@s", "t@", "t@s@u", "t@s x", "t@" + "s" * 65])
def test_reward_task_label_must_be_task_at_session(label):
    msg = convert.reward_to_msg(STAMP_NS, 0.0, False, 0)
    msg.header.frame_id = label
    with pytest.raises(ValueError, match="task id>@<driver session"):
        convert.reward_from_msg(msg)
    with pytest.raises(ValueError, match="task label"):
        convert.reward_to_msg(STAMP_NS, 0.0, False, 0, label)
    assert convert.task_label("sha-1", "s") == "sha-1@s"


@pytest.mark.parametrize(
    ("xyz", "reason"),
    [
        ((math.nan, 0.0, 0.0), "reward"),
        ((0.0, 0.5, 0.0), "success"),
        ((0.0, 0.0, -1.0), "episode"),
        ((0.0, 0.0, 1.5), "episode"),
        ((0.0, 1.0, math.inf), "episode"),
    ],
)
def test_reward_rejects(xyz, reason):
    msg = convert.reward_to_msg(STAMP_NS, 0.0, False, 0)
    msg.vector.x, msg.vector.y, msg.vector.z = xyz
    with pytest.raises(ValueError, match=reason):
        convert.reward_from_msg(msg)


@FUZZ
@given(stamp=stamps, x=any_float, y=any_float, z=any_float, frame=st.text(max_size=140))
def test_reward_fuzz(stamp, x, y, z, frame):
    msg = Vector3Stamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame
    msg.vector.x, msg.vector.y, msg.vector.z = x, y, z
    try:
        stamp_ns, reward, success, episode, label = convert.reward_from_msg(msg)
    except ValueError:
        return
    assert stamp_ns > 0 and math.isfinite(reward) and isinstance(success, bool)
    assert isinstance(episode, int) and episode >= 0
    assert label == "" or convert.TASK_LABEL_PATTERN.fullmatch(label)


# --------------------------------------------------------------------------- actions, commands


@FUZZ
@given(
    action=st.lists(finite_float, min_size=7, max_size=7),
    stamp_ns=st.integers(1, 2**31 * 10**9 - 1),
    perm=st.permutations(range(7)),
)
def test_action_round_trip(action, stamp_ns, perm):
    names = [JOINTS[i] for i in perm]
    msg = convert.action_to_msg(stamp_ns, names, [action[i] for i in perm])
    assert len(msg.position) == 0
    stamp, decoded = convert.action_from_msg(msg, JOINTS)
    assert stamp == stamp_ns
    np.testing.assert_array_equal(decoded, action)


@FUZZ
@given(
    names=st.lists(st.sampled_from([*JOINTS, "x"]), max_size=9),
    velocity=st.lists(any_float, max_size=9),
    stamp=stamps,
)
def test_action_fuzz(names, velocity, stamp):
    msg = JointState(name=names, velocity=velocity)
    msg.header.stamp = stamp
    try:
        stamp_ns, action = convert.action_from_msg(msg, JOINTS)
    except ValueError:
        return
    assert stamp_ns > 0 and action.shape == (7,) and np.isfinite(action).all()


def test_action_to_msg_accepts_a_time_stamp():
    stamp = Time(sec=12, nanosec=34)
    msg = convert.action_to_msg(stamp, JOINTS, np.zeros(7, np.float32))
    assert msg.header.stamp == stamp
    with pytest.raises(ValueError):
        convert.action_to_msg(stamp, JOINTS, np.zeros(6))
    with pytest.raises(ValueError):
        convert.action_to_msg(0, JOINTS, np.zeros(7))


@FUZZ
@given(data=st.lists(any_float, max_size=10))
def test_commands_fuzz_and_round_trip(data):
    msg = Float64MultiArray(data=data)
    try:
        velocities = convert.commands_from_msg(msg, 7)
    except ValueError:
        assert len(data) != 7 or not all(map(math.isfinite, data))
        return
    np.testing.assert_array_equal(velocities, data)
    np.testing.assert_array_equal(
        convert.commands_from_msg(convert.commands_to_msg(velocities), 7), data
    )


@FUZZ
@given(
    velocities=st.lists(finite_float, min_size=7, max_size=7),
    stamp_ns=st.just(0) | st.integers(1, 2**31 * 10**9 - 1),
)
def test_stamped_commands_round_trip(velocities, stamp_ns):
    msg = convert.commands_to_msg(velocities, stamp=stamp_ns)
    np.testing.assert_array_equal(convert.commands_from_msg(msg, 7), velocities)
    assert convert.command_stamp_ns(msg) == stamp_ns
    assert convert.command_stamp_ns(convert.commands_to_msg(velocities)) is None


@FUZZ
@given(
    velocities=st.lists(finite_float, min_size=7, max_size=7),
    action=st.lists(st.floats(-1e3, 1e3, width=32), min_size=7, max_size=7),
    stamp_ns=st.integers(1, 2**31 * 10**9 - 1),
    exploring=st.booleans(),
)
def test_tick_messages_equal_the_converters_messages_tick_after_tick(
    velocities, action, stamp_ns, exploring
):
    """The re-used command and echo hold what commands_to_msg / action_to_msg would build,
    also after an earlier tick wrote other values into them."""
    out = convert.TickMessages(JOINTS)
    for scale in (0.5, 1.0):  # the second tick overwrites the first
        out.velocities[:] = np.asarray(velocities) * scale
        out.action[:] = np.asarray(action, dtype=np.float32) * np.float32(scale)
        stamp = convert.as_stamp(stamp_ns)
        expected = convert.commands_to_msg(out.velocities.copy(), stamp=stamp_ns)
        assert out.command(stamp_ns) == expected
        echo = convert.action_to_msg(stamp, JOINTS, out.action.copy(), exploring=exploring)
        assert out.echo(stamp, exploring) == echo
        assert convert.action_exploring(out.echo(stamp, exploring)) is exploring


def test_command_stamp_accepts_a_time_and_ignores_foreign_labels():
    msg = convert.commands_to_msg(np.zeros(7), stamp=Time(sec=3, nanosec=4))
    assert convert.command_stamp_ns(msg) == 3_000_000_004
    msg.layout.dim[0].label = "joints"
    assert convert.command_stamp_ns(msg) is None


@FUZZ
@given(label=st.text(max_size=30))
def test_command_stamp_fuzz(label):
    msg = convert.commands_to_msg(np.zeros(7), stamp=5)
    msg.layout.dim[0].label = "stamp_ns=" + label
    try:
        stamp = convert.command_stamp_ns(msg)
    except ValueError:
        return
    assert stamp == int(label) and stamp >= 0


def test_commands_reject_offset_layout_and_non_finite_output():
    msg = convert.commands_to_msg(np.zeros(7))
    msg.layout.data_offset = 1
    with pytest.raises(ValueError, match="data_offset"):
        convert.commands_from_msg(msg, 7)
    with pytest.raises(ValueError):
        convert.commands_to_msg([0.0, math.nan])


@pytest.mark.parametrize(
    "func",
    [
        lambda m: convert.joint_state_to_arrays(m, JOINTS),
        convert.reward_from_msg,
        lambda m: convert.action_from_msg(m, JOINTS),
        lambda m: convert.commands_from_msg(m, 7),
        convert.task_from_msg,
        lambda m: convert.policy_from_msg(m, 1000),
    ],
)
@pytest.mark.parametrize("wrong", [None, "text", 3, String(data="{}")])
def test_wrong_message_types_are_value_errors(func, wrong):
    if isinstance(wrong, String) and func is convert.task_from_msg:
        wrong = Float64MultiArray()
    with pytest.raises(ValueError):
        func(wrong)


# --------------------------------------------------------------------------- policies


def test_policy_round_trip():
    bundle = tiny_bundle(version=5, run_id="r1", joint_names=JOINTS)
    msg = convert.policy_to_msg(bundle)
    decoded = convert.policy_from_msg(msg, max_bytes=1 << 20)
    assert decoded.version == 5 and decoded.run_id == "r1"
    assert decoded.metadata["joint_names"] == JOINTS
    for name, tensor in bundle.params.items():
        torch.testing.assert_close(decoded.params[name], tensor, rtol=0, atol=0)


def test_policy_size_cap_is_checked_first():
    msg = UInt8MultiArray()
    msg.data = b"\xff" * 2000
    with pytest.raises(ValueError, match="oversized"):
        convert.policy_from_msg(msg, max_bytes=1000)


def test_policy_rejects_truncated_and_nan():
    data = bundle_to_bytes(tiny_bundle())
    msg = UInt8MultiArray()
    msg.data = data[: len(data) // 2]
    with pytest.raises(ValueError):
        convert.policy_from_msg(msg, max_bytes=1 << 20)
    bad = tiny_bundle()
    # Write a NaN into the raw bytes: encode a bundle, then patch the last float (a bias of 0).
    raw = bytearray(bundle_to_bytes(bad))
    raw[-4:] = np.array([np.nan], dtype="<f4").tobytes()
    msg.data = bytes(raw)
    with pytest.raises(ValueError, match="checksum mismatch"):
        convert.policy_from_msg(msg, max_bytes=1 << 20)
    msg.data = resigned(bytes(raw))  # a writer that signs NaN weights: the NaN check refuses
    with pytest.raises(ValueError, match="NaN"):
        convert.policy_from_msg(msg, max_bytes=1 << 20)


def resigned(data: bytes) -> bytes:
    """``data`` with its checksum recomputed, so the check under test is the one refusing it."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["sha256"] = content_sha256(header, data[8 + n :])
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data[8 + n :]


_VALID_POLICY = bundle_to_bytes(tiny_bundle())


@FUZZ
@given(
    cut=st.integers(0, len(_VALID_POLICY)),
    flips=st.lists(
        st.tuples(st.integers(0, len(_VALID_POLICY) - 1), st.integers(0, 255)), max_size=4
    ),
)
def test_policy_fuzz_mutations(cut, flips):
    raw = bytearray(_VALID_POLICY[:cut])
    for position, value in flips:
        if position < len(raw):
            raw[position] = value
    msg = UInt8MultiArray()
    msg.data = bytes(raw)
    try:
        bundle = convert.policy_from_msg(msg, max_bytes=1 << 20)
    except ValueError:
        return
    assert all(bool(torch.isfinite(t).all()) for t in bundle.params.values())


@FUZZ
@given(data=st.binary(max_size=300))
def test_policy_fuzz_garbage(data):
    msg = UInt8MultiArray()
    msg.data = data
    with pytest.raises(ValueError):
        convert.policy_from_msg(msg, max_bytes=1 << 20)


# --------------------------------------------------------------------------- tasks


def test_task_round_trip():
    from maml_ros.sim import sample_tasks

    for family in ("reach", "dynamics", "reach+dynamics"):
        for task in sample_tasks(family, 3, split="test", seed=1):
            change = convert.task_from_msg(convert.task_to_msg(task))
            assert change == convert.TaskChange(convert.task_id_of(task), task)
            assert convert.task_from_msg(convert.task_to_msg(task, "cli-1")).id == "cli-1"


def test_task_id_without_one_is_the_same_digest_in_every_node():
    """A plain `ros2 topic pub` carries no id: every node must derive the same one."""
    text = '{"family": "reach", "goal": [0.5, 0.1, 0.4]}'
    spaced = '{ "goal": [0.5, 0.1, 0.4],  "family": "reach" }'
    a, b = (convert.task_from_msg(String(data=t)) for t in (text, spaced))
    assert a.id == b.id and a.id.startswith("sha-")
    other = convert.task_from_msg(String(data='{"family": "reach", "goal": [0.5, 0.1, 0.41]}'))
    assert other.id != a.id


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, 3, None, ["id"], "ü"])
def test_task_id_is_validated(bad):
    data = {"family": "reach", "goal": [0.5, 0.1, 0.4], "id": bad}
    with pytest.raises(ValueError, match="task id"):
        convert.task_from_msg(String(data=json.dumps(data)))


def test_active_task_round_trip_and_validation():
    task = convert.task_from_msg(String(data='{"family": "reach", "goal": [0.5, 0.1, 0.4]}'))
    active = convert.active_task_from_msg(convert.active_task_to_msg(task, 25_000_000, "s1"))
    assert active == convert.ActiveTask(task.id, "reach", 25_000_000, "s1")
    for bad in ("", "[]", '{"id": "a"}', "[" * 50_000):
        with pytest.raises(ValueError, match="active_task"):
            convert.active_task_from_msg(String(data=bad))
    negative = json.loads(convert.active_task_to_msg(task, 0, "s1").data)
    for since in (-1, True, "7"):
        with pytest.raises(ValueError, match="since_stamp_ns"):
            convert.active_task_from_msg(
                String(data=json.dumps({**negative, "since_stamp_ns": since}))
            )


def test_task_rejects_oversized_before_parsing():
    with pytest.raises(ValueError, match="limit"):
        convert.task_from_msg(String(data="[" * (convert.MAX_TASK_BYTES + 1)))
    with pytest.raises(ValueError):
        convert.task_from_msg(String(data="[" * 50_000))  # deep nesting within the cap


@FUZZ
@given(
    text=st.text(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | any_float | st.integers() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "family",
                        "goal",
                        "joint_gain",
                        "joint_damping",
                        "payload_kg",
                        "encoder_offset",
                    ]
                )
                | st.text(max_size=5),
                children,
                max_size=6,
            )
        ),
        max_leaves=20,
    ).map(json.dumps)
)
def test_task_fuzz(text):
    try:
        change = convert.task_from_msg(String(data=text))
    except ValueError:
        return
    assert convert.task_from_msg(convert.task_to_msg(change.task, change.id)) == change


def test_action_exploration_label_round_trip_and_bad_labels():
    for exploring, label in ((True, "explore"), (False, "mean"), (None, "")):
        msg = convert.action_to_msg(5, JOINTS, np.zeros(7), exploring=exploring)
        assert msg.header.frame_id == label
        assert convert.action_exploring(msg) is exploring
    msg = convert.action_to_msg(5, JOINTS, np.zeros(7))
    msg.header.frame_id = "sometimes"
    with pytest.raises(ValueError, match="frame_id"):
        convert.action_exploring(msg)
