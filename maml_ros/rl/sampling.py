"""Batched rollouts: many envs, each with its own task and its own (adapted) policy parameters.

Inference for all envs runs in the main process in one ``vmap(functional_call)`` per control
step under ``torch.no_grad``; the envs (e.g. :class:`maml_ros.sim.VecArmEnv` workers) only
simulate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from maml_ros.rl.envs import BatchEnv, EpisodesLost
from maml_ros.rl.policy import GaussianMLPPolicy, Params, action_mean, log_std_of

log = logging.getLogger("maml_ros.sampling")
MAX_WAVE_RETRIES = 3
"""How many times one wave is re-sampled after its env lost episodes, before giving up."""


@dataclass
class RolloutBatch:
    """Episodes grouped by task: obs ``[N, K, T, obs_dim]``, actions ``[N, K, T, act_dim]``,
    rewards / mask ``[N, K, T]``, success ``[N, K]`` (reached at any step)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    success: torch.Tensor

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return of every episode ``[N, K]``."""
        return (self.rewards * self.mask).sum(-1)

    def task(self, i: int) -> RolloutBatch:
        """The episodes of task ``i`` as a one-task batch."""
        return RolloutBatch(*(x[i : i + 1] for x in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.obs, self.actions, self.rewards, self.mask, self.success)


def per_task_params(params: Params, num_tasks: int) -> Params:
    """Broadcast shared params to a leading task dim (no copy)."""
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


def _run_wave(
    env: BatchEnv,
    mean_fn: Any,
    env_params: Params,
    std: torch.Tensor,
    wave_tasks: list[Any],
    seeds: list[int],
    gen: torch.Generator,
    explore: bool,
    ids: slice,
    real: int,
    buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """One wave of ``env.num_envs`` episodes into ``buffers[ids]``; returns their success."""
    obs, actions, rewards, mask = buffers
    n_envs = env.num_envs
    o = torch.from_numpy(env.reset(wave_tasks, seeds)).float()
    alive = torch.ones(n_envs, dtype=torch.bool)
    wave_success = torch.zeros(n_envs, dtype=torch.bool)
    for buffer in buffers:  # a re-sampled wave starts from zeros, as the first attempt did
        buffer[ids] = 0.0
    for t in range(env.horizon):
        mean = mean_fn(env_params, o)
        a = mean + std * torch.randn(mean.shape, generator=gen) if explore else mean
        obs[ids, t] = o[:real]
        actions[ids, t] = a[:real]
        mask[ids, t] = alive[:real].float()
        o_next, r, terminated, truncated, succ = env.step(a.numpy().astype(np.float32))
        r_t = torch.as_tensor(np.asarray(r, dtype=np.float32))
        rewards[ids, t] = r_t[:real] * alive[:real].float()
        wave_success |= torch.as_tensor(np.asarray(succ, dtype=bool)) & alive
        alive &= ~torch.as_tensor(np.asarray(terminated) | np.asarray(truncated), dtype=torch.bool)
        o = torch.from_numpy(np.asarray(o_next, dtype=np.float32))
        if not bool(alive.any()):
            break
    return wave_success


def sample_rollouts(
    env: BatchEnv,
    policy: GaussianMLPPolicy,
    params: Params,
    tasks: Sequence[Any],
    episodes_per_task: int,
    seed: int,
    explore: bool = True,
    batched_params: bool = False,
) -> RolloutBatch:
    """Run ``episodes_per_task`` episodes on every task; params per task if ``batched_params``.

    Episodes are laid out task-major over waves of ``env.num_envs`` envs; a last partial wave
    is padded with repeats whose results are dropped. Actions are stored as the policy sampled
    them (before the env clips). Deterministic given ``seed``. A wave whose episodes the env
    lost (:class:`EpisodesLost`: a simulation worker died) is sampled again with the same
    seeds and exploration noise, up to :data:`MAX_WAVE_RETRIES` times.
    """
    n_tasks, k = len(tasks), episodes_per_task
    if n_tasks < 1 or k < 1:
        raise ValueError("need at least one task and one episode per task")
    if not batched_params:
        params = per_task_params(params, n_tasks)
    params = {name: v.detach() for name, v in params.items()}
    horizon, n_envs = env.horizon, env.num_envs
    total = n_tasks * k
    obs = torch.zeros(total, horizon, env.obs_dim)
    actions = torch.zeros(total, horizon, env.act_dim)
    rewards = torch.zeros(total, horizon)
    mask = torch.zeros(total, horizon)
    success = torch.zeros(total, dtype=torch.bool)
    gen = torch.Generator().manual_seed(int(seed))
    seed_rng = np.random.default_rng(seed)
    mean_fn = vmap(lambda p, o: action_mean(policy, p, o))
    with torch.no_grad():
        for start in range(0, total, n_envs):
            episode_ids = [(start + i) % total for i in range(n_envs)]
            real = min(n_envs, total - start)
            task_ids = torch.tensor([e // k for e in episode_ids])
            env_params = {name: v[task_ids] for name, v in params.items()}
            std = torch.exp(log_std_of(env_params))
            seeds = seed_rng.integers(0, 2**31 - 1, size=n_envs).tolist()
            wave_tasks = [tasks[int(t)] for t in task_ids]
            noise_state = gen.get_state()
            for attempt in range(MAX_WAVE_RETRIES + 1):
                try:
                    wave_success = _run_wave(
                        env,
                        mean_fn,
                        env_params,
                        std,
                        wave_tasks,
                        seeds,
                        gen,
                        explore,
                        slice(start, start + real),
                        real,
                        (obs, actions, rewards, mask),
                    )
                    break
                except EpisodesLost as exc:
                    if attempt == MAX_WAVE_RETRIES:
                        raise
                    # The same seeds and the same exploration noise: the same episodes.
                    gen.set_state(noise_state)
                    log.warning(
                        "sampling: %s; re-sampling episodes %d-%d (attempt %d of %d)",
                        exc,
                        start,
                        start + real - 1,
                        attempt + 2,
                        MAX_WAVE_RETRIES + 1,
                    )
            success[start : start + real] = wave_success[:real]
    shape = (n_tasks, k)
    return RolloutBatch(
        obs=obs.reshape(*shape, horizon, env.obs_dim),
        actions=actions.reshape(*shape, horizon, env.act_dim),
        rewards=rewards.reshape(*shape, horizon),
        mask=mask.reshape(*shape, horizon),
        success=success.reshape(shape),
    )
