"""Helpers shared by the bench scripts: machine info, percentiles, the JSON last line, a policy
bundle of the shipped architecture, real arm rollouts, and node processes in an isolated domain.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the working tree, not an install

from maml_ros.meta import init_meta_sgd_lrs  # noqa: E402
from maml_ros.rl.checkpoint import PolicyBundle, load_bundle  # noqa: E402
from maml_ros.rl.config import load_config  # noqa: E402
from maml_ros.rl.pg import Rollouts  # noqa: E402
from maml_ros.rl.policy import GaussianMLPPolicy, numpy_policy  # noqa: E402

SHIPPED_CHECKPOINT = REPO / "models" / "arm_maml.safetensors"
DEFAULT_CONFIG = REPO / "config" / "train.yaml"


# --------------------------------------------------------------------------- reporting


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (goes into every bench's JSON)."""
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(),
    }


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean in milliseconds of samples in seconds."""
    if not samples_s:
        nan = float("nan")
        return {"n": 0, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "n": int(ms.size),
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p90": round(float(np.percentile(ms, 90)), 4),
        "p99": round(float(np.percentile(ms, 99)), 4),
        "max": round(float(ms.max()), 4),
        "mean": round(float(ms.mean()), 4),
    }


def emit_json(result: dict[str, Any]) -> None:
    """Print the one JSON object that must be the bench's last line (NaN becomes null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    sys.stdout.flush()
    print(json.dumps(clean(result)), flush=True)


# --------------------------------------------------------------------------- policies and data


def shipped_bundle(
    checkpoint: str | Path | None = None, hidden: Sequence[int] | None = None, seed: int = 0
) -> tuple[PolicyBundle, str]:
    """The policy the robot runs and where it came from.

    ``checkpoint`` (or the shipped models/arm_maml.safetensors when it exists and ``hidden`` is
    not given); otherwise a freshly initialised bundle of the default training config's
    architecture (hidden sizes, Meta-SGD lrs, inner lr/steps, PG config), ``hidden`` overriding
    the layer widths.
    """
    path = Path(checkpoint) if checkpoint else SHIPPED_CHECKPOINT
    if hidden is None and (checkpoint or SHIPPED_CHECKPOINT.exists()):
        return load_bundle(path), str(path)
    cfg = load_config(DEFAULT_CONFIG)
    spec = cfg.policy_spec(14, 7)
    if hidden is not None:
        spec = type(spec).from_dict({**spec.to_dict(), "hidden": list(hidden)})
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(spec)
    params = policy.params()
    inner = cfg.inner.inner_config()
    lrs = init_meta_sgd_lrs(params, inner.lr) if cfg.inner.meta_sgd else None
    bundle = PolicyBundle(
        spec=spec,
        params=params,
        obs_mean=torch.zeros(spec.obs_dim),
        obs_std=torch.ones(spec.obs_dim),
        inner=inner,
        pg=cfg.pg,
        lrs=None if lrs is None else {k: v.detach().clone() for k, v in lrs.items()},
        run_id="bench",
    )
    return bundle, f"fresh init of {DEFAULT_CONFIG.name} sizes, hidden={list(spec.hidden)}"


def arm_rollouts(bundle: PolicyBundle, k: int, seed: int = 0, task: Any = None) -> Rollouts:
    """``k`` exploring episodes of the default horizon on the PyBullet arm, by ``bundle``."""
    from maml_ros.sim import ArmEnv, sample_tasks

    env = ArmEnv()
    env.set_task(task or sample_tasks("reach", 1, "test", seed)[0])
    policy = numpy_policy(bundle)
    rng = np.random.default_rng(seed)
    horizon = env.horizon
    obs_buf = np.zeros((k, horizon, bundle.spec.obs_dim), np.float32)
    act_buf = np.zeros((k, horizon, bundle.spec.act_dim), np.float32)
    rew_buf = np.zeros((k, horizon), np.float32)
    mask = np.zeros((k, horizon), np.float32)
    try:
        for episode in range(k):
            obs, _ = env.reset(seed=seed + episode)
            for t in range(horizon):
                action = policy.act(obs, explore=True, rng=rng).copy()
                obs_buf[episode, t], act_buf[episode, t], mask[episode, t] = obs, action, 1.0
                obs, reward, terminated, truncated, _ = env.step(action)
                rew_buf[episode, t] = reward
                if terminated or truncated:
                    break
    finally:
        env.close()
    return Rollouts.from_numpy(obs_buf, act_buf, rew_buf, mask)
