"""Headless TinyRenderer images: the arm and the goal are in the picture, physics untouched."""

import numpy as np
import pytest

from maml_ros.sim import ArmEnv, TaskSpec
from maml_ros.sim.render import GOAL_RGBA, render_rgb, save_gif, save_png
from maml_ros.sim.render_demo import render_reach


def test_render_shows_the_arm_and_the_goal(tmp_path):
    env = ArmEnv(TaskSpec(family="reach", goal=(0.45, -0.15, 0.55)), render_mode="rgb_array")
    try:
        env.reset(seed=0)
        image = render_rgb(env, 120, 90)
        assert env.render().shape == (360, 480, 3)
    finally:
        env.close()
    assert image.shape == (90, 120, 3) and image.dtype == np.uint8
    green = np.array(GOAL_RGBA[:3]) * 255
    goal_pixels = (np.abs(image.astype(float) - green) < 60).all(axis=2)
    assert goal_pixels.sum() >= 3
    dark_or_colourful = (image.max(axis=2) - image.min(axis=2) > 60) | (image.max(axis=2) < 80)
    assert dark_or_colourful.sum() > 0.03 * image.shape[0] * image.shape[1]
    path = save_png(tmp_path / "arm.png", image)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rendering_does_not_change_the_physics():
    task = TaskSpec(family="reach", goal=(0.45, -0.15, 0.55))
    actions = np.random.default_rng(0).uniform(-1, 1, (10, 7))
    results = []
    for render in (False, True):
        env = ArmEnv(task)
        try:
            env.reset(seed=1)
            for action in actions:
                if render:
                    render_rgb(env, 32, 24)
                obs, *_ = env.step(action)
            results.append(obs)
        finally:
            env.close()
    np.testing.assert_array_equal(results[0], results[1])


def test_reach_frames_and_gif(tmp_path):
    pytest.importorskip("PIL")  # GIFs are optional: Pillow may be absent
    frames = render_reach(steps=3, width=48, height=36)
    assert len(frames) == 4 and not np.array_equal(frames[0], frames[-1])
    path = save_gif(tmp_path / "reach.gif", frames)
    assert path.read_bytes()[:6] == b"GIF89a"
