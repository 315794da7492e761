"""A scripted reaching controller that knows the goal and the body: a yardstick, not a policy.

Damped least-squares on the end-effector Jacobian: ``dq = J^T (J J^T + λ²I)^-1 k (goal - ee)``,
with the columns of dead joints removed and weak joints' commands divided by their gain, then
scaled into the action box. Used to check that every sampled goal is reachable within the
horizon, to render the README picture, and as an upper reference in benchmarks.
"""

from __future__ import annotations

import numpy as np
import pybullet as pb

from maml_ros.sim.arm_env import ArmEnv

GAIN = 4.0
"""Proportional gain (1/s) from end-effector error to end-effector velocity."""
DAMPING = 0.05
"""Damped-least-squares λ (m)."""


def oracle_action(env: ArmEnv, gain: float = GAIN, damping: float = DAMPING) -> np.ndarray:
    """Action in [-1, 1]^joints that drives ``env``'s end effector toward its goal."""
    cid = {"physicsClientId": env.physics_client}
    dofs = env.dof_joints  # every movable joint, fingers included, as PyBullet wants them
    positions = [s[0] for s in pb.getJointStates(env.robot_id, dofs, **cid)]
    zeros = [0.0] * len(positions)
    linear, _ = pb.calculateJacobian(
        env.robot_id, env.ee_link, [0.0, 0.0, 0.0], positions, zeros, zeros, **cid
    )
    columns = [dofs.index(j) for j in env.arm_joints]
    jacobian = np.array(linear)[:, columns]
    joint_gain = np.array(env.task.joint_gain)
    jacobian[:, joint_gain == 0.0] = 0.0
    error = env.goal - env.ee_position()
    ee_velocity = gain * error
    inverse = np.linalg.solve(jacobian @ jacobian.T + damping**2 * np.eye(3), ee_velocity)
    joint_velocity = jacobian.T @ inverse
    weak = joint_gain > 0.0
    joint_velocity[weak] /= joint_gain[weak]
    action = joint_velocity / env.max_joint_velocity
    largest = np.abs(action).max()
    if largest > 1.0:
        action /= largest  # keep the direction, respect the box
    return action
