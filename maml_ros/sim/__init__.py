"""sim layer: the PyBullet KUKA iiwa gymnasium env, task specs and samplers, vectorised rollouts.

No torch, rl or ros imports here.
"""

from maml_ros.sim.arm_env import (
    ACT_DIM,
    HOME_POSE,
    JOINT_FORCE_LIMITS,
    OBS_DIM,
    ArmEnv,
    observation_from_joint_state,
)
from maml_ros.sim.task import (
    DEFAULT_GOAL,
    FAMILIES,
    MAX_JSON_CHARS,
    NUM_JOINTS,
    TaskSpec,
    TaskSpecError,
    nominal_task,
    sample_tasks,
    task_split,
)
from maml_ros.sim.vec_env import VecArmEnv

__all__ = [
    "ACT_DIM",
    "DEFAULT_GOAL",
    "FAMILIES",
    "HOME_POSE",
    "JOINT_FORCE_LIMITS",
    "MAX_JSON_CHARS",
    "NUM_JOINTS",
    "OBS_DIM",
    "ArmEnv",
    "TaskSpec",
    "TaskSpecError",
    "VecArmEnv",
    "nominal_task",
    "observation_from_joint_state",
    "sample_tasks",
    "task_split",
]
