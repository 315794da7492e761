"""Headless rendering of an :class:`~maml_ros.sim.arm_env.ArmEnv` with pybullet's TinyRenderer.

No GUI and no OpenGL: images come from ``getCameraImage(renderer=ER_TINY_RENDERER)``. PNGs are
written with matplotlib (imported lazily); GIFs need Pillow and raise ImportError without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pybullet as pb

if TYPE_CHECKING:
    from maml_ros.sim.arm_env import ArmEnv

GOAL_RGBA = (0.1, 0.75, 0.2, 1.0)
GOAL_RADIUS = 0.025
FLOOR_RGBA = (0.82, 0.82, 0.8, 1.0)


def _goal_marker(env: ArmEnv) -> int:
    """Visual-only goal sphere and floor (created once; the sphere follows the goal)."""
    cid = {"physicsClientId": env.physics_client}
    marker = getattr(env, "_goal_marker", None)
    if marker is None:
        # No collision shapes and no mass: the markers cannot touch the arm's physics.
        shape = pb.createVisualShape(pb.GEOM_SPHERE, radius=GOAL_RADIUS, rgbaColor=GOAL_RGBA, **cid)
        marker = pb.createMultiBody(baseMass=0.0, baseVisualShapeIndex=shape, **cid)
        floor = pb.createVisualShape(
            pb.GEOM_BOX, halfExtents=[1.0, 1.0, 0.005], rgbaColor=FLOOR_RGBA, **cid
        )
        pb.createMultiBody(
            baseMass=0.0, baseVisualShapeIndex=floor, basePosition=[0.3, 0.0, -0.005], **cid
        )
        env._goal_marker = marker
    goal = np.add(env.goal, env.base_position).tolist()
    pb.resetBasePositionAndOrientation(marker, goal, [0, 0, 0, 1], **cid)
    return marker


def render_rgb(
    env: ArmEnv,
    width: int = 480,
    height: int = 360,
    *,
    show_goal: bool = True,
    distance: float = 1.35,
    yaw: float = 40.0,
    pitch: float = -20.0,
    target: Sequence[float] = (0.3, 0.0, 0.35),
) -> np.ndarray:
    """One RGB frame (height, width, 3) uint8 of the arm, with the goal as a green sphere."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    cid = {"physicsClientId": env.physics_client}
    if show_goal:
        _goal_marker(env)
    view = pb.computeViewMatrixFromYawPitchRoll(
        cameraTargetPosition=np.add(target, env.base_position).tolist(),
        distance=distance,
        yaw=yaw,
        pitch=pitch,
        roll=0.0,
        upAxisIndex=2,
    )
    projection = pb.computeProjectionMatrixFOV(
        fov=50.0, aspect=width / height, nearVal=0.05, farVal=5.0
    )
    _, _, rgba, _, _ = pb.getCameraImage(
        width,
        height,
        viewMatrix=view,
        projectionMatrix=projection,
        renderer=pb.ER_TINY_RENDERER,
        **cid,
    )
    return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image as PNG with matplotlib; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, image)
    return path


def save_gif(path: str | Path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """Write frames as an animated GIF (needs Pillow); returns the path."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
