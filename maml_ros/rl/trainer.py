"""Meta-training: ProMP-style MAML (Rothfuss et al. 2018) with a PPO-clip outer objective.

One iteration:

1. sample a meta-batch of train tasks; run K pre-update episodes per task with theta;
2. adapt per task with the PG inner loss (:func:`maml_ros.rl.pg.pg_loss`) and ``inner_cfg``;
3. run K post-update episodes per task with the adapted parameters;
4. a few epochs of Adam on the PPO-clip objective of the post-update episodes, differentiated
   through the inner step (second order unless ``first_order``), plus an optional KL penalty
   between the pre-update policy before and after the step.

The *same* ``InnerConfig`` object (``self.inner_cfg``) adapts for sampling (step 2) and inside
the meta-objective (step 4); at the first epoch the recomputed adapted policy must reproduce
the sampling policy's log-densities, which every iteration checks (``ratio_dev``).

With ``outer.rounds`` R > 1, steps 2-3 repeat R times: round r adapts each task's round r-1
params on K fresh episodes of them (the post-update episodes of round r-1), as
``maml-ros-eval``'s post2 / post3 do, and the objective averages every round's post-update
PPO-clip term, differentiated through the whole chain (:func:`maml_ros.meta.adapt_per_task`).

``algo: multitask`` trains the baseline instead: PPO-clip on pre-update episodes, no adaptation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from maml_ros.meta import adapt_batched, adapt_per_task, init_meta_sgd_lrs
from maml_ros.rl.checkpoint import PolicyBundle, clone_params
from maml_ros.rl.config import TrainConfig
from maml_ros.rl.envs import BatchEnv, TaskSource
from maml_ros.rl.pg import Batch, PGConfig, compute_advantages, inner_loss_fn
from maml_ros.rl.policy import (
    GaussianMLPPolicy,
    Params,
    action_mean,
    gaussian_kl,
    log_prob,
    log_std_of,
)
from maml_ros.rl.sampling import RolloutBatch, per_task_params, sample_rollouts

RATIO_TOLERANCE = 1e-3
"""Largest |log pi_objective - log pi_sampling| accepted at the first epoch."""


class InnerMismatchError(RuntimeError):
    """The meta-objective's adapted policy differs from the one that sampled the episodes."""


def iteration_seed(seed: int, iteration: int, stream: int) -> int:
    """A seed for (run seed, iteration, stream) that does not depend on history (resumable)."""
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0])


def batched_log_prob(
    policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """log pi for per-task params (leading task dim on params, obs and actions)."""
    return vmap(lambda p, o, a: log_prob(policy, p, o, a))(params, obs, actions)


def ppo_clip_loss(
    policy: GaussianMLPPolicy, clip_eps: float, params: Params, batch: Batch
) -> torch.Tensor:
    """``-mean(min(r A, clip(r, 1 - eps, 1 + eps) A))`` over the real steps of one task."""
    ratio = torch.exp(log_prob(policy, params, batch["obs"], batch["actions"]) - batch["logp_old"])
    adv = batch["advantages"]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    mask = batch["mask"]
    return -(surrogate * mask).sum() / mask.sum()


class MetaTrainer:
    """Owns theta (and Meta-SGD lrs), the outer optimiser, and runs iterations."""

    def __init__(self, cfg: TrainConfig, env: BatchEnv, tasks: TaskSource) -> None:
        self.cfg = cfg
        self.env = env
        self.tasks = tasks
        self.spec = cfg.policy_spec(env.obs_dim, env.act_dim)
        torch.manual_seed(cfg.seed)
        self.policy = GaussianMLPPolicy(self.spec)
        for p in self.policy.parameters():
            p.requires_grad_(False)
        self.params = {k: v.requires_grad_(True) for k, v in self.policy.params().items()}
        self.inner_cfg = cfg.inner.inner_config()
        self.outer_pg = dataclasses.replace(cfg.pg, reward_power=1.0)
        """The meta-objective is the task's own return: ``reward_power`` shapes the inner loss."""
        self.adapts = cfg.outer.algo == "promp"
        self.lrs = init_meta_sgd_lrs(self.params, cfg.inner.lr) if cfg.inner.meta_sgd else None
        groups: list[dict[str, Any]] = [{"params": list(self.params.values())}]
        if self.lrs is not None:
            groups.append({"params": list(self.lrs.values()), "lr": cfg.outer.lrs_lr})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.outer.lr)
        self.inner_loss = inner_loss_fn(self.policy)
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.normalized = False
        self.last_meta_grad: torch.Tensor | None = None
        """The first epoch's gradient of the last iteration, flat over params then lrs."""

    # -- observation normalisation ------------------------------------------------------------

    def init_obs_normalization(self) -> None:
        """Fix obs_mean/obs_std from episodes of the initial policy on train tasks."""
        n = self.cfg.obs_norm_episodes
        seed = iteration_seed(self.cfg.seed, -1 % 2**31, 0)
        tasks = self.tasks.sample(n, "train", seed)
        batch = sample_rollouts(self.env, self.policy, self.params, tasks, 1, seed)
        real = batch.obs[batch.mask > 0]
        mean = real.mean(0)
        std = real.std(0).clamp(min=self.cfg.obs_std_floor)
        self.set_obs_normalization(mean, std)

    def set_obs_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install fixed normalisation statistics."""
        self.policy.obs_mean.copy_(mean)
        self.policy.obs_std.copy_(std)
        self.normalized = True

    # -- one iteration ------------------------------------------------------------------------

    def _pg_batch(self, rollouts: RolloutBatch, logp_old: torch.Tensor, pg: PGConfig) -> Batch:
        adv = compute_advantages(rollouts.obs, rollouts.rewards, rollouts.mask, pg)
        return {
            "obs": rollouts.obs,
            "actions": rollouts.actions,
            "advantages": adv,
            "logp_old": logp_old.detach(),
            "mask": rollouts.mask,
        }

    def _detached(self) -> tuple[Params, Params | None]:
        params = {k: v.detach() for k, v in self.params.items()}
        lrs = None if self.lrs is None else {k: v.detach() for k, v in self.lrs.items()}
        return params, lrs

    def sample_adapted(self, support: Batch, per_task: Params | None = None) -> Params:
        """Adapted params per task for post-update sampling (same inner_cfg as the objective):
        from theta, or from the previous round's ``per_task`` params."""
        params, lrs = self._detached()
        if per_task is None:
            adapted = adapt_batched(self.inner_loss, params, support, self.inner_cfg, lrs)
        else:
            adapted = adapt_per_task(self.inner_loss, per_task, support, self.inner_cfg, lrs)
        return {k: v.detach() for k, v in adapted.items()}

    def objective_rounds(self, supports: list[Batch]) -> list[Params]:
        """Each round's adapted params per task inside the meta-objective, the first from theta,
        the later ones from the previous round's (all differentiable w.r.t. theta and the
        lrs)."""
        theta, lrs, cfg = self.params, self.lrs, self.inner_cfg
        rounds = [adapt_batched(self.inner_loss, theta, supports[0], cfg, lrs)]
        for support in supports[1:]:
            rounds.append(adapt_per_task(self.inner_loss, rounds[-1], support, cfg, lrs))
        return rounds

    def step(self) -> dict[str, float]:
        """One meta-iteration; returns its metrics (also appended to ``history``)."""
        if not self.normalized:
            self.init_obs_normalization()
        cfg, it = self.cfg, self.iteration
        t0 = time.perf_counter()
        tasks = self.tasks.sample(cfg.outer.meta_batch, "train", iteration_seed(cfg.seed, it, 0))
        k = cfg.outer.rollouts_per_task
        params, _ = self._detached()
        pre = sample_rollouts(
            self.env, self.policy, params, tasks, k, iteration_seed(cfg.seed, it, 1)
        )
        support = self._pg_batch(
            pre,
            log_prob(self.policy, params, pre.obs, pre.actions),
            cfg.pg if self.adapts else self.outer_pg,
        )
        t_pre = time.perf_counter()
        supports, queries, posts = [support], [], []
        if self.adapts:
            adapted: Params | None = None
            for r in range(cfg.outer.rounds):  # round r adapts on supports[r]
                adapted = self.sample_adapted(supports[r], adapted)
                post = sample_rollouts(
                    self.env,
                    self.policy,
                    adapted,
                    tasks,
                    k,
                    iteration_seed(cfg.seed, it, 2 + r),
                    batched_params=True,
                )
                logp = batched_log_prob(self.policy, adapted, post.obs, post.actions)
                posts.append(post)
                queries.append(self._pg_batch(post, logp, self.outer_pg))
                if r + 1 < cfg.outer.rounds:  # the next round's support: the same episodes
                    supports.append(self._pg_batch(post, logp, cfg.pg))
        else:
            posts, queries = [pre], [support]
        post = posts[0]
        t_post = time.perf_counter()
        outer_fn = vmap(lambda p, b: ppo_clip_loss(self.policy, cfg.outer.clip_eps, p, b))
        n_tasks = len(tasks)
        old_mean = action_mean(self.policy, params, pre.obs)
        old_log_std = log_std_of(params)
        metrics: dict[str, float] = {}
        for epoch in range(cfg.outer.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            if self.adapts:
                rounds = self.objective_rounds(supports)
            else:
                rounds = [per_task_params(self.params, n_tasks)]
            surrogate = torch.stack(
                [outer_fn(p, q).mean() for p, q in zip(rounds, queries, strict=True)]
            ).mean()
            kl = gaussian_kl(
                old_mean,
                old_log_std,
                action_mean(self.policy, self.params, pre.obs),
                log_std_of(self.params),
            )
            kl = (kl * pre.mask).sum() / pre.mask.sum()
            loss = surrogate + cfg.outer.kl_coef * kl
            if epoch == 0:
                metrics["ratio_dev"] = max(
                    self._ratio_deviation(p, q) for p, q in zip(rounds, queries, strict=True)
                )
                metrics["surrogate_before"] = float(surrogate.detach())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite outer loss at iteration {it}, epoch {epoch}")
            loss.backward()
            leaves = list(self.params.values()) + (
                [] if self.lrs is None else list(self.lrs.values())
            )
            if epoch == 0:  # the meta-gradient at theta (before clipping and any step)
                self.last_meta_grad = torch.cat(
                    [
                        torch.zeros(leaf.numel()) if leaf.grad is None else leaf.grad.flatten()
                        for leaf in leaves
                    ]
                ).detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(leaves, cfg.outer.max_grad_norm)
            self.optimizer.step()
        t_opt = time.perf_counter()
        metrics.update(
            iteration=float(it),
            pre_return=float(pre.returns.mean()),
            post_return=float(post.returns.mean()),
            pre_success=float(pre.success.float().mean()),
            post_success=float(post.success.float().mean()),
            surrogate_after=float(surrogate.detach()),
            kl=float(kl.detach()),
            grad_norm=float(grad_norm),
            log_std=float(self.params["log_std"].detach().mean()),
            time_sample_pre=t_pre - t0,
            time_sample_post=t_post - t_pre,
            time_optimize=t_opt - t_post,
            time_iteration=t_opt - t0,
            episodes=float(n_tasks * k * (1 + len(posts) if self.adapts else 1)),
        )
        if len(posts) > 1:
            metrics.update(
                {f"post{r + 1}_return": float(p.returns.mean()) for r, p in enumerate(posts)}
            )
        if self.lrs is not None:
            metrics["meta_sgd_lr_mean"] = float(
                torch.cat([v.detach().flatten() for v in self.lrs.values()]).mean()
            )
        self.iteration += 1
        self.history.append(metrics)
        return metrics

    def _ratio_deviation(self, new_params: Params, query: Batch) -> float:
        """Max |log pi_objective - log pi_sampling| on the query steps; raises if too large."""
        with torch.no_grad():
            params = {k: v.detach() for k, v in new_params.items()}
            logp = batched_log_prob(self.policy, params, query["obs"], query["actions"])
            dev = float(((logp - query["logp_old"]).abs() * query["mask"]).max())
        if not dev <= RATIO_TOLERANCE:
            raise InnerMismatchError(
                f"the meta-objective's adapted policy differs from the sampling policy "
                f"(max |delta log pi| = {dev:.3g} > {RATIO_TOLERANCE}): the inner lr/steps used "
                "for post-update sampling must equal those inside the meta-objective"
            )
        return dev

    # -- bundles and resumable state ----------------------------------------------------------

    def bundle(self, metadata: dict[str, Any] | None = None, run_id: str = "") -> PolicyBundle:
        """The current theta as a shippable PolicyBundle."""
        return PolicyBundle(
            spec=self.spec,
            params=clone_params(self.params),
            obs_mean=self.policy.obs_mean.detach().clone(),
            obs_std=self.policy.obs_std.detach().clone(),
            inner=self.inner_cfg,
            pg=self.cfg.pg,
            lrs=None if self.lrs is None else clone_params(self.lrs),
            version=0,
            run_id=run_id,
            metadata=dict(metadata or {}),
        )

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Resumable state as safetensors tensors + string metadata (no pickle)."""
        tensors = {f"params/{k}": v.detach().clone() for k, v in self.params.items()}
        if self.lrs is not None:
            tensors.update({f"lrs/{k}": v.detach().clone() for k, v in self.lrs.items()})
        tensors["obs_mean"] = self.policy.obs_mean.clone()
        tensors["obs_std"] = self.policy.obs_std.clone()
        opt = self.optimizer.state_dict()
        for idx, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"opt/{idx}/{key}"] = torch.as_tensor(value).detach().clone()
        metadata = {
            "iteration": str(self.iteration),
            "history": json.dumps(self.history),
            "param_groups": json.dumps(opt["param_groups"]),
            "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
        }
        return {k: v.contiguous() for k, v in tensors.items()}, metadata

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Restore what :meth:`state_tensors` saved (params, lrs, normalisation, Adam state)."""
        saved_cfg = json.loads(metadata["config"])
        current = json.loads(json.dumps(self.cfg.to_dict(), sort_keys=True))
        for key in ("env", "policy", "inner", "outer", "pg", "seed"):
            if saved_cfg.get(key) != current.get(key):
                raise ValueError(
                    f"cannot resume: config section {key!r} differs from the saved run"
                )
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(tensors[f"params/{k}"])
            if self.lrs is not None:
                for k, v in self.lrs.items():
                    v.copy_(tensors[f"lrs/{k}"])
        self.set_obs_normalization(tensors["obs_mean"], tensors["obs_std"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("opt/"):
                _, idx, key = name.split("/", 2)
                state.setdefault(int(idx), {})[key] = value
        groups = json.loads(metadata["param_groups"])
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.iteration = int(metadata["iteration"])
        self.history = json.loads(metadata["history"])


def smoothed(values: list[float], window: int = 5) -> float:
    """Mean of the last ``window`` values (nan when empty)."""
    tail = values[-window:]
    return float(np.mean(tail)) if tail else math.nan
