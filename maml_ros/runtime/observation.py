"""The policy observation: the one place it is built from a joint state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_NUM_JOINTS = 7
"""Joints of the simulated KUKA iiwa (``maml_ros.sim.NUM_JOINTS``)."""


def observation_from_joint_state(
    positions: Sequence[float] | np.ndarray,
    velocities: Sequence[float] | np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The policy observation ``[positions, velocities]`` as float32.

    The env, the controller and the adaptation node all call it. With ``out`` (float32, two
    values per joint) it is written there and nothing is allocated; without it the arm has
    :data:`DEFAULT_NUM_JOINTS` joints. Raises ValueError on a wrong length or a non-finite
    value (also one that overflows float32).
    """
    obs = np.empty(2 * DEFAULT_NUM_JOINTS, dtype=np.float32) if out is None else out
    n = obs.shape[0] // 2
    try:
        obs[:n] = positions
        obs[n:] = velocities
        if len(positions) != n or len(velocities) != n:
            raise ValueError("wrong length")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"a joint state needs {n} positions and {n} velocities: {exc}") from None
    if not np.isfinite(obs).all():
        raise ValueError("joint state holds a non-finite value")
    return obs
