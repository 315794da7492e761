"""sim layer: the PyBullet arm gymnasium env (any ``RobotSpec``, the KUKA iiwa by default), task
specs, task families and samplers, vectorised rollouts.

No torch, rl or ros imports here.
"""

from maml_ros.runtime.robots import DEFAULT_ROBOT, ROBOTS, RobotSpec, get_robot, register_robot
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
    SPLITS,
    TaskFamily,
    TaskSpec,
    TaskSpecError,
    family_names,
    get_family,
    nominal_task,
    register_family,
    sample_tasks,
    task_split,
)
from maml_ros.sim.vec_env import VecArmEnv

__all__ = [
    "ACT_DIM",
    "DEFAULT_GOAL",
    "DEFAULT_ROBOT",
    "FAMILIES",
    "HOME_POSE",
    "JOINT_FORCE_LIMITS",
    "MAX_JSON_CHARS",
    "NUM_JOINTS",
    "OBS_DIM",
    "ROBOTS",
    "SPLITS",
    "ArmEnv",
    "RobotSpec",
    "TaskFamily",
    "TaskSpec",
    "TaskSpecError",
    "VecArmEnv",
    "family_names",
    "get_family",
    "get_robot",
    "nominal_task",
    "observation_from_joint_state",
    "register_family",
    "register_robot",
    "sample_tasks",
    "task_split",
]
