"""The Ray backend on a local Ray sized for 2 cores: the same episodes and meta-gradient as the
local backend, a killed actor replaced and its episodes re-sampled, a killed driver resumed;
and, without ray installed, a package that imports and an error that says how to install it.

The tests that need ray skip (with the reason) when it is not importable; with
MAML_ROS_REQUIRE_RAY=1 (CI) they fail instead.
"""

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
import yaml

from maml_ros.rl.config import config_from_dict
from maml_ros.rl.envs import make_env, make_task_source
from maml_ros.rl.policy import GaussianMLPPolicy
from maml_ros.rl.sampling import sample_rollouts
from maml_ros.rl.train import main as train_main
from maml_ros.rl.trainer import MetaTrainer

REPO = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None
REQUIRE_RAY = os.environ.get("MAML_ROS_REQUIRE_RAY") == "1"
needs_ray = pytest.mark.skipif(
    not HAVE_RAY and not REQUIRE_RAY,
    reason="ray is not installed (pip install -r requirements-ray.txt; make setup does)",
)

TINY = {
    "seed": 5,
    "iterations": 6,
    "checkpoint_every": 1,
    "obs_norm_episodes": 4,
    "env": {
        "name": "arm",
        "workers": 2,
        "num_envs": 4,
        "horizon": 10,
        "families": ["reach", "dynamics"],
        "family_weights": [0.5, 0.5],
    },
    "policy": {"hidden": [16, 16], "init_log_std": 0.0},
    "inner": {"lr": 2.0, "meta_sgd": True},
    "pg": {"gamma": 0.8, "normalize_advantages": False, "reward_power": 2.0},
    "outer": {"meta_batch": 2, "rollouts_per_task": 2, "epochs": 2, "lr": 0.001},
}
"""2 tasks x 2 episodes x horizon 10 on the arm, 2 workers: one wave of 4 envs."""


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, 200 MB object store), shut down at the end."""
    from maml_ros.sim.ray_env import init_ray

    started = init_ray(None, 2)
    import ray

    yield ray
    if started:
        ray.shutdown()


def trainer_on(backend: str, cfg=None) -> MetaTrainer:
    cfg = cfg or config_from_dict(TINY)
    env = make_env("arm", cfg.env.num_envs, cfg.env.workers, cfg.env.horizon, backend)
    return MetaTrainer(cfg, env, make_task_source("arm", cfg.env.families, cfg.env.family_weights))


class KillActorAt:
    """A BatchEnv proxy that ray.kill()s one sim actor before its ``at``-th step call."""

    def __init__(self, env, ray, at: int, actor: int = 0) -> None:
        self.env, self.ray, self.at, self.actor = env, ray, at, actor
        self.steps = 0
        self.killed_pid: int | None = None
        for name in ("num_envs", "obs_dim", "act_dim", "horizon"):
            setattr(self, name, getattr(env, name))

    def reset(self, tasks, seeds):
        return self.env.reset(tasks, seeds)

    def step(self, actions):
        self.steps += 1
        if self.steps == self.at:
            vec = self.env.vec
            self.killed_pid = vec.actor_info()[self.actor]["pid"]
            self.ray.kill(vec.actors[self.actor])
            deadline = time.monotonic() + 60
            while os.path.exists(f"/proc/{self.killed_pid}") and time.monotonic() < deadline:
                time.sleep(0.05)  # the actor is really gone before the next call
        return self.env.step(actions)

    def close(self):
        self.env.close()


@contextlib.contextmanager
def warnings_of(*names: str):
    """The messages logged at WARNING and above by the loggers ``names`` (pytest's caplog sees
    nothing here: the launch plugins rewire logging)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# --------------------------------------------------------------------------- without ray


def test_the_package_imports_and_trains_locally_without_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` raises ImportError
        "import maml_ros.rl.train, maml_ros.rl.evaluate, maml_ros.sim.ray_env\n"
        "from maml_ros.rl.envs import make_env\n"
        "env = make_env('arm', 2, 1, 5); env.close()\n"
        "assert 'ray' not in sys.modules or sys.modules['ray'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_a_missing_ray_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install -r requirements-ray.txt"):
        make_env("arm", 2, 2, backend="ray")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(config), "--out", str(tmp_path / "o"), "--backend", "ray"])
    assert exit_info.value.code == 2
    assert "requirements-ray.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--config", str(config), "--ray-address", "auto"])  # needs --backend ray


# --------------------------------------------------------------------------- with ray


@needs_ray
def test_same_seed_same_episodes_and_meta_gradient_as_the_local_backend(local_ray):
    cfg = config_from_dict(TINY)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(cfg.policy_spec(14, 7))
    tasks = make_task_source("arm", cfg.env.families, cfg.env.family_weights).sample(2, "train", 3)
    batches, grads, metrics = {}, {}, {}
    for backend in ("local", "ray"):
        trainer = trainer_on(backend, cfg)
        try:
            batches[backend] = sample_rollouts(trainer.env, policy, policy.params(), tasks, 2, 9)
            metrics[backend] = [trainer.step(), trainer.step()]
            grads[backend] = trainer.last_meta_grad
        finally:
            trainer.env.close()
    local, ray_batch = batches["local"], batches["ray"]
    for name in ("obs", "actions", "rewards", "mask", "success"):
        a, b = getattr(local, name), getattr(ray_batch, name)
        assert torch.equal(a, b), name  # bit-equal: the same groups of envs, the same seeds
    assert float(local.mask.sum()) == 2 * 2 * 10
    rel = (grads["ray"] - grads["local"]).abs().max() / grads["local"].abs().max()
    assert float(rel) <= 1e-6, float(rel)
    for a, b in zip(metrics["local"], metrics["ray"], strict=True):
        for key in ("pre_return", "post_return", "surrogate_before", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key


@needs_ray
def test_a_killed_actor_is_replaced_and_its_episodes_resampled(local_ray):
    reference = trainer_on("local")
    try:
        expected = reference.step()
        expected_grad = reference.last_meta_grad
    finally:
        reference.env.close()
    trainer = trainer_on("ray")
    # Steps 1-10 fix the normalisation; step 13 is 3 steps into the pre-update sampling's wave.
    proxy = KillActorAt(trainer.env, local_ray, at=13, actor=1)
    trainer.env = proxy
    try:
        with warnings_of("maml_ros.ray", "maml_ros.sampling") as lines:
            metrics = trainer.step()  # the iteration completes
        grad = trainer.last_meta_grad
        vec = proxy.env.vec
        assert vec.replacements == 1
        pids = [info["pid"] for info in vec.actor_info()]
        assert proxy.killed_pid not in pids and len(set(pids)) == 2
        assert trainer.step()["iteration"] == 1.0  # and the run goes on
    finally:
        proxy.close()
    text = "\n".join(lines)
    assert "sim actor 1 died during step" in text and "re-created its 2 envs" in text
    assert "re-sampling episodes 0-3" in text
    # The same seeds and noise: the re-sampled episodes are the ones the local backend ran.
    assert metrics["pre_return"] == pytest.approx(expected["pre_return"], rel=1e-6)
    assert metrics["post_return"] == pytest.approx(expected["post_return"], rel=1e-6)
    rel = (grad - expected_grad).abs().max() / expected_grad.abs().max()
    assert float(rel) <= 1e-6, float(rel)


@needs_ray
@pytest.mark.slow
def test_the_driver_killed_mid_run_resumes(tmp_path):
    """maml-ros-train --backend ray, SIGKILLed after its second checkpoint, then --resume."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "maml_ros.rl.train",
        "--config",
        str(config),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--workers",
        "2",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    driver = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and driver.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, driver.communicate()[1].decode()[-2000:]
        driver.kill()  # SIGKILL: no atexit, no Ray shutdown
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_group(driver.pid)  # the local Ray the driver started, if it outlived it
    # The resumable state is what --resume reads: a kill between the bundles and the state
    # leaves policy_latest one checkpoint ahead of it.
    with safetensors.safe_open(out / "state.safetensors", framework="pt") as state:
        saved = int(state.metadata()["iteration"])
    assert 1 <= saved < TINY["iterations"]
    resumed = subprocess.run(
        [*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at iteration {saved}" in resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["meta"]["iterations"] == TINY["iterations"]
    assert json.loads((out / "policy_latest.json").read_text())["iteration"] == TINY["iterations"]


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the process group the test started (Ray's own processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@needs_ray
def test_eval_runs_on_the_ray_backend(local_ray, tmp_path):
    from maml_ros.rl.evaluate import EvalConfig, run_eval

    trainer = trainer_on("local")
    try:
        trainer.step()
        bundle = trainer.bundle()
    finally:
        trainer.env.close()
    cfg = dataclasses.replace(
        EvalConfig.quick(), n_reach=2, n_dynamics=0, k=2, eval_episodes=1, seeds=(0,), workers=2
    )
    summary = {
        backend: run_eval(bundle, None, cfg, tmp_path / backend, backend=backend)
        for backend in ("local", "ray")
    }
    for key in ("reach_return_pre", "reach_return_post1"):
        assert summary["ray"][key] == pytest.approx(summary["local"][key], rel=1e-6)
    assert np.isfinite(summary["ray"]["reach_return_post1"])


def test_eval_batches_take_turns_on_the_actors_cpus(local_ray, tmp_path):
    """Two eval batches (reach, then reach+dynamics) of 2 envs and 2 actors each on a 2-CPU
    Ray: their actors share the CPUs instead of the second batch waiting for CPUs that never
    free."""
    from maml_ros.rl.evaluate import EvalConfig, eval_batches, run_eval

    trainer = trainer_on("local")
    try:
        bundle = trainer.bundle()
    finally:
        trainer.env.close()
    families = ["reach", "reach+dynamics"]
    bundle = bundle.replace(metadata={**bundle.metadata, "task_families": families})
    assert len(eval_batches(families)) == 2
    cfg = dataclasses.replace(
        EvalConfig.quick(), n_reach=2, n_other=2, k=2, eval_episodes=1, k_curve=(), workers=2
    )
    summary = run_eval(bundle, None, cfg, tmp_path, backend="ray")
    assert np.isfinite(summary["reach_return_post1"])
    assert np.isfinite(summary["reach+dynamics_return_post1"])
    assert local_ray.cluster_resources()["CPU"] == 2
