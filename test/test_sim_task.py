"""TaskSpec JSON, validation and the seeded train/test samplers."""

import itertools
import json
import math

import pytest

from maml_ros.sim.task import (
    DEFAULT_GOAL,
    FAMILIES,
    GOAL_CELL_SIZE,
    GOAL_CUBE_CELLS,
    GOAL_CUBE_CENTER,
    GOAL_MARGIN,
    HOME_EE,
    MAX_JSON_CHARS,
    MIN_GOAL_DISTANCE,
    TaskSpec,
    TaskSpecError,
    sample_tasks,
    task_split,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_json_round_trip(family):
    for task in sample_tasks(family, 5, "train", seed=3) + sample_tasks(family, 5, "test", 3):
        text = task.to_json()
        assert len(text) < MAX_JSON_CHARS
        again = TaskSpec.from_json(text)
        assert again == task
        assert again.to_json() == text
        assert TaskSpec.from_json(text.encode()) == task


def test_defaults_fill_missing_fields():
    task = TaskSpec.from_json('{"family": "dynamics", "payload_kg": 2}')
    assert task.goal == DEFAULT_GOAL
    assert task.payload_kg == 2.0 and isinstance(task.payload_kg, float)
    assert task.joint_gain == (1.0,) * 7
    assert TaskSpec.from_json('{"family": "dynamics"}').nominal_body


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"family": "swim"}', "unknown family"),
        ('{"goal": [0.5, 0, 0.4]}', "missing key 'family'"),
        ('{"family": "reach", "goal": [0.5, 0.0]}', "goal must have 3 values"),
        ('{"family": "dynamics", "joint_gain": [1, 1, 1]}', "joint_gain must have 7"),
        ('{"family": "dynamics", "joint_gain": [1, 1, 1, 1, 1, 1, 1.5]}', "joint_gain[6]"),
        ('{"family": "dynamics", "payload_kg": -1}', "payload_kg[0] = -1.0 is outside"),
        ('{"family": "dynamics", "encoder_offset": [0, 0, 0, 0, 0, 0, 2]}', "outside"),
        ('{"family": "reach", "goal": [3.0, 0.0, 0.4]}', "outside the workspace"),
        ('{"family": "reach", "goal": [0.8, 0.4, 0.8]}', "out of reach"),
        ('{"family": "reach", "goal": [NaN, 0.0, 0.4]}', "must be finite"),
        ('{"family": "dynamics", "payload_kg": Infinity}', "must be finite"),
        ('{"family": "dynamics", "payload_kg": "2"}', "must be a number"),
        ('{"family": "dynamics", "payload_kg": true}', "must be a number"),
        ('{"family": "dynamics", "colour": "red"}', "unknown key(s) ['colour']"),
        ('["reach"]', "must be a JSON object"),
        ('"reach"', "must be a JSON object"),
        ('{"family": "reach"', "not valid JSON"),
        ('{"family": "reach", "payload_kg": 1.0}', "keeps the nominal body"),
        ('{"family": "dynamics", "goal": [0.5, 0.0, 0.4]}', "uses the fixed goal"),
    ],
)
def test_bad_specs_are_rejected_with_reason(text, reason):
    with pytest.raises(TaskSpecError) as err:
        TaskSpec.from_json(text)
    assert reason in str(err.value)


def test_too_long_json_is_rejected_before_parsing():
    text = '{"family": "dynamics"' + " " * MAX_JSON_CHARS + "}"
    with pytest.raises(TaskSpecError, match="too long"):
        TaskSpec.from_json(text)
    with pytest.raises(TaskSpecError, match="too long"):
        TaskSpec.from_json(text.encode())


def test_bad_utf8_and_non_text():
    with pytest.raises(TaskSpecError, match="UTF-8"):
        TaskSpec.from_json(b'{"family": "\xff"}')
    with pytest.raises(TaskSpecError, match="must be text"):
        TaskSpec.from_json(42)


def test_spec_is_frozen_and_hashable():
    task = TaskSpec(family="reach", goal=[0.5, 0.0, 0.4])
    assert task.goal == (0.5, 0.0, 0.4)
    with pytest.raises(AttributeError):
        task.family = "dynamics"
    assert len({task, TaskSpec(family="reach", goal=(0.5, 0.0, 0.4))}) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_samplers_are_seeded(family):
    assert sample_tasks(family, 8, "train", 5) == sample_tasks(family, 8, "train", 5)
    assert sample_tasks(family, 8, "train", 5) != sample_tasks(family, 8, "train", 6)
    assert sample_tasks(family, 8, "test", 5)[:3] == sample_tasks(family, 3, "test", 5)
    assert all(t.family == family for t in sample_tasks(family, 4, "test", 0))


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_test_regions_are_disjoint(family):
    train = sample_tasks(family, 200, "train", seed=0)
    test = sample_tasks(family, 200, "test", seed=0)
    assert {task_split(t) for t in train} == {"train"}
    assert {task_split(t) for t in test} == {"test"}
    assert not set(train) & set(test)
    if family != "dynamics":
        closest = min(math.dist(a.goal, b.goal) for a, b in itertools.product(train, test))
        assert closest >= 2 * GOAL_MARGIN - 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_validation_and_test_share_the_held_out_region_on_independent_streams(family):
    validation = sample_tasks(family, 200, "validation", seed=0)
    test = sample_tasks(family, 200, "test", seed=0)
    assert {task_split(t) for t in validation} == {"test"}
    assert not set(validation) & set(test)
    assert not set(validation) & set(sample_tasks(family, 200, "test", seed=1))
    assert sample_tasks(family, 5, "validation", 3) == sample_tasks(family, 5, "validation", 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_out_of_range_tasks_lie_beyond_the_training_ranges(family):
    tasks = sample_tasks(family, 200, "out_of_range", seed=0)
    assert {task_split(t) for t in tasks} == {"out_of_range"}
    assert not {task_split(t) for t in sample_tasks(family, 200, "train", 0)} & {"out_of_range"}
    if family != "dynamics":
        half = 3 * 0.12 / 2
        for t in tasks:
            beyond = max(abs(v - c) for v, c in zip(t.goal, (0.55, 0.0, 0.45), strict=True))
            assert half + 0.02 - 1e-9 <= beyond <= half + 0.06 + 1e-9
    if family != "reach":
        assert all(t.payload_kg > 3.0 and min(t.joint_damping) > 2.0 for t in tasks)


def test_held_out_goals_span_a_30cm_cube_away_from_home():
    goals = [t.goal for t in sample_tasks("reach", 300, "test", seed=1)]
    assert min(math.dist(g, HOME_EE) for g in goals) >= MIN_GOAL_DISTANCE
    for axis in range(3):
        values = [g[axis] for g in goals]
        assert max(values) - min(values) >= 0.3


def test_dynamics_samples_cover_dead_and_weak_joints():
    tasks = sample_tasks("dynamics", 100, "train", seed=0)
    gains = [min(t.joint_gain) for t in tasks]
    assert any(g == 0.0 for g in gains) and any(0.0 < g < 1.0 for g in gains)
    assert all(t.goal == DEFAULT_GOAL for t in tasks)
    assert len({t.joint_gain.index(min(t.joint_gain)) for t in tasks}) == 7


def test_sampler_argument_errors():
    with pytest.raises(TaskSpecError, match="unknown family"):
        sample_tasks("swim", 1)
    with pytest.raises(ValueError, match="split"):
        sample_tasks("reach", 1, "valid")
    with pytest.raises(ValueError, match="seed"):
        sample_tasks("reach", 1, "train", seed=-1)
    with pytest.raises(ValueError, match="n must"):
        sample_tasks("reach", -1)


def test_to_dict_is_plain_json():
    task = sample_tasks("reach+dynamics", 1, "train", 0)[0]
    assert json.loads(json.dumps(task.to_dict())) == task.to_dict()


def test_every_point_of_the_goal_cube_is_a_valid_goal():
    half = GOAL_CUBE_CELLS * GOAL_CELL_SIZE / 2
    for signs in itertools.product((-1, 1), repeat=3):
        corner = tuple(c + s * half for c, s in zip(GOAL_CUBE_CENTER, signs, strict=True))
        TaskSpec(family="reach", goal=corner)  # raises if the sampler could ever raise
