"""Every sampled task is solvable within the horizon (by a controller that knows the task)."""

import numpy as np
import pytest

from maml_ros.sim import ArmEnv, TaskSpec, sample_tasks
from maml_ros.sim.oracle import oracle_action


@pytest.fixture(scope="module")
def env():
    arm = ArmEnv()
    yield arm
    arm.close()


@pytest.mark.parametrize("family", ["reach", "dynamics", "reach+dynamics"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_oracle_solves_sampled_tasks_within_the_horizon(env, family, split):
    for i, task in enumerate(sample_tasks(family, 6, split, seed=4)):
        env.reset(seed=i, options={"task": task})
        successes = [env.step(oracle_action(env))[4]["success"] for _ in range(env.horizon)]
        assert any(successes), f"{task.to_json()} not reached"


def test_doing_nothing_does_not_succeed(env):
    env.reset(seed=0, options={"task": TaskSpec(family="reach", goal=(0.7, 0.15, 0.3))})
    infos = [env.step(np.zeros(7))[4] for _ in range(10)]
    assert not any(info["success"] for info in infos)
    assert min(info["distance"] for info in infos) > 0.05
