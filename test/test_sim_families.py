"""Task families as plug-ins: a family registered in the test samples, splits, validates and
changes the env without edits to the sim."""

from __future__ import annotations

import pytest

from maml_ros.sim import ArmEnv, TaskSpec, TaskSpecError, sample_tasks, task_split
from maml_ros.sim.task import (
    TaskFamily,
    family_names,
    goal_split,
    register_family,
    sample_goal,
    unregister_family,
)


def _low_goal(rng, split, robot):
    while True:  # the lower half of the goal cube only
        goal = sample_goal(rng, split, robot)
        if goal[2] < robot.goal_cube_center[2]:
            return {"goal": goal}


@pytest.fixture
def low_reach():
    applied: list[TaskSpec] = []
    family = TaskFamily(
        name="low_reach",
        sample=_low_goal,
        split=lambda task, robot: goal_split(task.goal, robot),
        problem=lambda task, robot: (
            None if task.goal[2] < robot.goal_cube_center[2] else "low_reach goals are low"
        ),
        apply=lambda env, task: applied.append(task),
        metrics=("return", "success"),
    )
    register_family(family)
    yield applied
    unregister_family("low_reach")


def test_a_registered_family_samples_splits_validates_and_applies(low_reach) -> None:
    assert family_names()[:3] == ("reach", "dynamics", "reach+dynamics")
    assert "low_reach" in family_names()
    for robot in ("kuka_iiwa", "xarm6"):
        train = sample_tasks("low_reach", 10, "train", seed=2, robot=robot)
        test = sample_tasks("low_reach", 10, "test", seed=2, robot=robot)
        assert {task_split(t) for t in train} == {"train"}
        assert {task_split(t) for t in test} == {"test"}
        assert all(TaskSpec.from_json(t.to_json()) == t for t in train)
    with pytest.raises(TaskSpecError, match="low_reach goals are low"):
        TaskSpec(family="low_reach", goal=(0.55, 0.0, 0.6))
    env = ArmEnv(train[0], robot="xarm6")
    env.close()
    assert low_reach[-1] == train[0]
    with pytest.raises(ValueError, match="already registered"):
        register_family(TaskFamily("reach", _low_goal, lambda t, r: None))


def test_an_unknown_family_is_refused_with_the_known_ones() -> None:
    with pytest.raises(TaskSpecError, match="unknown family 'swim'"):
        sample_tasks("swim", 1)


def test_the_readme_family_table_lists_the_registry() -> None:
    from pathlib import Path

    from maml_ros.sim.task import BUILTIN, get_family

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("<!-- task-families -->")[1].split("<!-- /task-families -->")[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in table.strip().splitlines()[2:]
    ]
    expected = []
    for name in BUILTIN:
        family = get_family(name)
        reports = ", ".join(family.metrics) + ("; the baselines" if family.baselines else "")
        reports += "".join(f"; {m.replace('_', ' ')}" for m in family.extra_metrics)
        expected.append([f"`{name}`", family.description, reports])
    assert rows == expected
