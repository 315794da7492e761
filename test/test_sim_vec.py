"""VecArmEnv: the same numbers as single envs, errors that surface, workers that go away."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from maml_ros.sim.arm_env import ArmEnv
from maml_ros.sim.task import sample_tasks
from maml_ros.sim.vec_env import VecArmEnv


@pytest.mark.parametrize("shared", [True, False])
def test_matches_single_envs_for_the_same_seeds(shared):
    """Joint states match bit for bit. With one world per worker, arms stand apart on a grid
    and PyBullet's single-precision world frame rounds end-effector positions (so distances
    and rewards) to ~1e-7 m; with one world per env everything matches bit for bit."""
    tolerance = 1e-6 if shared else 0.0
    tasks = [
        *sample_tasks("reach", 1, "train", 0),
        *sample_tasks("dynamics", 1, "test", 0),
        *sample_tasks("reach+dynamics", 1, "train", 1),
    ]
    seeds = [11, 12, 13]
    actions = np.random.default_rng(0).uniform(-1.2, 1.2, (12, 3, 7)).astype(np.float32)
    with VecArmEnv(3, n_workers=2, env_kwargs={"horizon": 10}, shared_world=shared) as vec:
        vec_obs = [vec.reset(tasks, seeds)]
        vec_out = [vec.step(a) for a in actions]
        vec_distance = vec.last_info["distance"]
    for i, (task, seed) in enumerate(zip(tasks, seeds, strict=True)):
        env = ArmEnv(task, horizon=10)
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs, vec_obs[0][i])
        for t, action in enumerate(actions):
            obs, reward, terminated, truncated, info = env.step(action[i])
            v_obs, v_reward, v_terminated, v_truncated, v_success = vec_out[t]
            np.testing.assert_array_equal(obs, v_obs[i])
            assert abs(np.float32(reward) - v_reward[i]) <= tolerance
            assert (terminated, truncated, info["success"]) == (
                v_terminated[i],
                v_truncated[i],
                v_success[i],
            )
        assert abs(np.float32(info["distance"]) - vec_distance[i]) <= tolerance
        env.close()
    assert vec_out[9][3].all() and not vec_out[8][3].any()  # truncated at the horizon


def test_reset_without_tasks_keeps_tasks_and_rng_streams():
    task = sample_tasks("reach", 1, "test", 3)[0]
    with VecArmEnv(2, n_workers=1) as vec:
        first = vec.reset([task, task], np.array([5, 5]))  # numpy ints are fine
        np.testing.assert_array_equal(first[0], first[1])
        vec.step(np.zeros((2, 7)))
        again = vec.reset()
        assert not np.array_equal(again[0], first[0])  # the env's RNG moved on
        vec.step(np.zeros((2, 7)))
        np.testing.assert_allclose(
            np.linalg.norm(vec.last_info["ee_pos"] - task.goal, axis=1),
            vec.last_info["distance"],
            rtol=1e-5,
        )


def test_bad_inputs_are_rejected():
    with VecArmEnv(2, n_workers=2) as vec:
        vec.reset()
        with pytest.raises(ValueError, match="shape"):
            vec.step(np.zeros((3, 7)))
        with pytest.raises(ValueError, match="non-finite"):
            vec.step(np.full((2, 7), np.nan))
        with pytest.raises(ValueError, match="need 2 tasks"):
            vec.reset([None])
        with pytest.raises(TypeError, match="TaskSpec"):
            vec.reset([{"family": "reach"}, None])
        with pytest.raises(TypeError, match="seeds"):
            vec.reset(None, [1, -1])
        obs, *_ = vec.step(np.zeros((2, 7)))  # still in step after the errors
        assert obs.shape == (2, 14)
    assert vec.closed
    with pytest.raises(RuntimeError, match="closed"):
        vec.step(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="n_envs"):
        VecArmEnv(0)


def test_worker_errors_surface_with_their_reason():
    with pytest.raises(RuntimeError, match="control_hz"):
        VecArmEnv(1, env_kwargs={"control_hz": 50})


def test_workers_die_with_a_killed_parent():
    script = textwrap.dedent(
        """
        import sys, time
        from maml_ros.sim.vec_env import VecArmEnv
        if __name__ == "__main__":
            vec = VecArmEnv(2, n_workers=2)
            print(" ".join(str(p.pid) for p in vec._procs), flush=True)
            time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if _alive(pid)]
        assert not alive
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_dead_worker_closes_the_vec_env_with_a_clear_error():
    with VecArmEnv(2, n_workers=2) as vec:
        vec.reset()
        vec._procs[1].kill()
        vec._procs[1].join(timeout=10)
        with pytest.raises(RuntimeError, match="worker 1 died"):
            vec.step(np.zeros((2, 7)))
        assert vec.closed
        assert not any(proc.is_alive() for proc in vec._procs)
