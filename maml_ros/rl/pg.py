"""Policy-gradient inner loss: rollouts, GAE, linear feature baseline, on-robot adaptation.

Everything is batched over leading dims (``[..., K, T]``: tasks, rollouts, time) and computed
without a Python loop over time: discounted sums are one matmul with a precomputed ``[T, T]``
discount matrix. The inner loss is in likelihood-ratio form,
``-mean(exp(log pi_theta(a|s) - log pi_old(a|s)) * A)`` with ``log pi_old`` the log-density
under the policy that collected the data (ProMP / DiCE style): its gradient at theta_old is the
vanilla policy gradient and its second derivative is the right one for MAML.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from maml_ros.meta import InnerConfig, adapt_with_flags
from maml_ros.rl.policy import (
    GaussianMLPPolicy,
    Params,
    PolicySpec,
    log_prob,
    log_prob_vjp,
    normalize_obs,
)

if TYPE_CHECKING:
    pass

Batch = dict[str, torch.Tensor]
BaselineSolver = Literal["lstsq", "cholesky"]


class RolloutError(ValueError):
    """Rollouts are malformed (shape, dtype, non-finite values, empty)."""


@dataclass(frozen=True)
class PGConfig:
    """How advantages are computed for the inner policy-gradient loss."""

    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    baseline_reg: float = 1e-5
    reward_power: float = 1.0
    """The inner loss sees ``sign(r) * |r| ** reward_power`` (order-preserving). With a reward
    of minus a distance, 2 makes its gradient, and the step, grow with the distance (use it
    with ``normalize_advantages: false``, which would divide that scale out)."""

    def __post_init__(self) -> None:
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.normalize_advantages, bool):
            raise ValueError("normalize_advantages must be a boolean")
        for name in ("baseline_reg", "reward_power"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PGConfig:
        """Validated PGConfig from its JSON form (unknown keys rejected)."""
        if not isinstance(data, dict):
            raise ValueError("pg config must be an object")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown pg config keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class Rollouts:
    """K episodes of T steps: obs ``[K, T, obs_dim]``, actions ``[K, T, act_dim]``,
    rewards ``[K, T]`` (float32). ``mask`` ``[K, T]`` is 1 on real steps, 0 on padding after an
    episode ended early (None: every step is real)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor | None = None

    @classmethod
    def from_numpy(
        cls,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> Rollouts:
        """Rollouts from numpy arrays (copied to float32 tensors)."""
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32)).clone()  # noqa: E731
        return cls(as_t(obs), as_t(actions), as_t(rewards), None if mask is None else as_t(mask))

    def validated(self, spec: PolicySpec) -> Rollouts:
        """These rollouts as float32 tensors with a mask, checked against ``spec``."""
        for name in ("obs", "actions", "rewards"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise RolloutError(f"{name} must be a torch tensor")
        obs, actions, rewards = self.obs.float(), self.actions.float(), self.rewards.float()
        if obs.ndim != 3 or obs.shape[-1] != spec.obs_dim:
            raise RolloutError(f"obs must be [K, T, {spec.obs_dim}], got {tuple(obs.shape)}")
        k, t = obs.shape[:2]
        if k < 1 or t < 1:
            raise RolloutError(f"need at least one step of one episode, got K={k}, T={t}")
        if tuple(actions.shape) != (k, t, spec.act_dim):
            raise RolloutError(
                f"actions must be [{k}, {t}, {spec.act_dim}], got {tuple(actions.shape)}"
            )
        if tuple(rewards.shape) != (k, t):
            raise RolloutError(f"rewards must be [{k}, {t}], got {tuple(rewards.shape)}")
        mask = torch.ones(k, t) if self.mask is None else self.mask.float()
        if tuple(mask.shape) != (k, t):
            raise RolloutError(f"mask must be [{k}, {t}], got {tuple(mask.shape)}")
        # Every value check at once, one host synchronisation (x * 0 == 0: x is finite);
        # the checks below only run to name the problem.
        values = torch.cat([obs.reshape(-1), actions.reshape(-1), rewards.reshape(-1)])
        ok = (values * 0 == 0).all()
        if self.mask is not None:  # 0/1, 1 first, never 0 then 1: a prefix of ones
            ok &= ((mask == 0) | (mask == 1)).all() & (mask[:, 0] == 1).all()
            ok &= (mask[:, 1:] <= mask[:, :-1]).all()
        if bool(ok):
            return Rollouts(obs, actions, rewards, mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise RolloutError("mask must hold only 0 and 1")
        if not bool((mask[:, 0] == 1).all()):
            raise RolloutError("every episode needs at least one real step (mask[:, 0] == 1)")
        if not bool((mask[:, 1:] <= mask[:, :-1]).all()):
            raise RolloutError("mask must be 1 on a prefix of each episode, then 0")
        for name, value in (("obs", obs), ("actions", actions), ("rewards", rewards)):
            if not bool(torch.isfinite(value).all()):
                raise RolloutError(f"{name} contain NaN or infinite values")
        raise AssertionError("unreachable: a value check failed but none names a problem")


# ---------------------------------------------------------------------------------------------
# Returns, baseline, advantages (batched, no loop over time).


@lru_cache(maxsize=32)
def discount_matrix(
    horizon: int, factor: float, dtype: torch.dtype = torch.float32, device: Any = None
) -> torch.Tensor:
    """``M[t, s] = factor ** (s - t)`` for ``s >= t``, else 0 (so ``x @ M.T`` discounts).

    Cached per (horizon, factor, dtype, device): treat the result as read-only.
    """
    idx = torch.arange(horizon, device=device, dtype=dtype)
    lag = idx[None, :] - idx[:, None]
    return torch.where(lag >= 0, torch.as_tensor(factor, dtype=dtype) ** lag.clamp(min=0), 0.0)


def discounted_cumsum(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``y[..., t] = sum_{s >= t} factor^(s-t) x[..., s]`` along the last dim."""
    return x @ discount_matrix(x.shape[-1], factor, x.dtype, x.device).T


@lru_cache(maxsize=32)
def _time_features(horizon: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """``[t, t^2, t^3, 1]`` (t = step/100) for every step: ``[horizon, 4]``, read-only."""
    t = (torch.arange(horizon, dtype=dtype, device=device) / 100.0).unsqueeze(-1)
    return torch.cat([t, t * t, t**3, torch.ones_like(t)], dim=-1)


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rllab linear-baseline features ``[o, o^2, t, t^2, t^3, 1]`` (t = step/100), masked."""
    o = obs.clamp(-10.0, 10.0)
    t = _time_features(obs.shape[-2], obs.dtype, obs.device).expand(*obs.shape[:-1], 4)
    return torch.cat([o, o * o, t], dim=-1) * mask.unsqueeze(-1)


def fit_linear_baseline(
    obs: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    reg: float,
    solver: BaselineSolver = "lstsq",
) -> torch.Tensor:
    """Values ``[..., K, T]`` of a ridge-regularised linear fit of returns on the features.

    One ridge problem ``min |X w - y|^2 + reg |w|^2`` per leading index (task), solved in one
    batched call (float64). ``"lstsq"``: ``torch.linalg.lstsq`` (QR) on the augmented system
    ``[X; sqrt(reg) I] w = [y; 0]``. ``"cholesky"``: Cholesky of the normal equations
    ``(X^T X + reg I) w = X^T y``; the same solution with no host synchronisation, so a CUDA
    graph can capture it (lstsq checks its result on the host).
    """
    feats = baseline_features(obs, mask)
    lead = feats.shape[:-3]
    n_feat = feats.shape[-1]
    x = feats.reshape(*lead, -1, n_feat).double()
    y = (returns * mask).reshape(*lead, -1, 1).double()
    eye = _eye(n_feat, x.dtype, x.device)
    if solver == "lstsq":
        x_aug = torch.cat([x, math.sqrt(reg) * eye.expand(*lead, n_feat, n_feat)], dim=-2)
        y_aug = torch.cat([y, y.new_zeros(*lead, n_feat, 1)], dim=-2)
        # The ridge rows make the system full rank, so QR ("gels") is safe.
        weights = torch.linalg.lstsq(x_aug, y_aug, driver="gels").solution
    elif solver == "cholesky":
        factor, _ = torch.linalg.cholesky_ex(torch.add(x.mT @ x, eye, alpha=reg))
        weights = torch.cholesky_solve(x.mT @ y, factor)
    else:
        raise ValueError(f"solver must be 'lstsq' or 'cholesky', got {solver!r}")
    values = (x @ weights).reshape(returns.shape)
    return values.to(obs.dtype) * mask


@lru_cache(maxsize=8)
def _eye(n: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    return torch.eye(n, dtype=dtype, device=device)


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE(gamma, lambda) ``[..., K, T]``; the value after an episode's last step is 0."""
    values = values * mask
    next_values = torch.nn.functional.pad(values[..., 1:], (0, 1))
    deltas = (torch.add(rewards, next_values, alpha=gamma) - values) * mask
    return discounted_cumsum(deltas, gamma * lam) * mask


def normalize_per_task(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-std advantages over the real steps of each task (dims -2, -1)."""
    count = mask.sum(dim=(-2, -1), keepdim=True).clamp(min=1.0)
    mean = (adv * mask).sum(dim=(-2, -1), keepdim=True) / count
    var = (((adv - mean) * mask) ** 2).sum(dim=(-2, -1), keepdim=True) / count
    return (adv - mean) / (var.sqrt() + 1e-8) * mask


def compute_advantages(
    obs: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    cfg: PGConfig,
    solver: BaselineSolver = "lstsq",
) -> torch.Tensor:
    """Advantages for ``[..., K, T]`` rollouts: rewards to ``reward_power``, baseline refit on
    this batch, GAE, per-task normalisation if configured."""
    with torch.no_grad():
        if cfg.reward_power == 2.0:
            rewards = rewards * rewards.abs()  # the same, bit for bit, in two ops fewer
        elif cfg.reward_power != 1.0:
            rewards = rewards.sign() * rewards.abs().pow(cfg.reward_power)
        returns = discounted_cumsum(rewards * mask, cfg.gamma) * mask
        values = fit_linear_baseline(obs, returns, mask, cfg.baseline_reg, solver)
        adv = gae_advantages(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.normalize_advantages:
            adv = normalize_per_task(adv, mask)
    return adv


# ---------------------------------------------------------------------------------------------
# The inner loss.


def make_pg_batch(
    policy: GaussianMLPPolicy,
    params: Params,
    obs: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    cfg: PGConfig,
    with_logp_old: bool = True,
    solver: BaselineSolver = "lstsq",
) -> Batch:
    """Data of the inner loss for rollouts collected by ``params`` (leading dims: one task).

    ``with_logp_old=False`` saves a forward pass when the loss will only be evaluated at
    ``params`` themselves (a single inner step): see :func:`pg_loss`. ``solver``: that of
    :func:`fit_linear_baseline`.
    """
    batch = {
        "obs": obs,
        "actions": actions,
        "advantages": compute_advantages(obs, rewards, mask, cfg, solver),
        "mask": mask,
    }
    if with_logp_old:
        with torch.no_grad():
            batch["logp_old"] = log_prob(policy, params, obs, actions)
    return batch


def pg_loss(policy: GaussianMLPPolicy, params: Params, batch: Batch) -> torch.Tensor:
    """Likelihood-ratio policy-gradient loss ``-mean(ratio * A)`` over the real steps.

    A batch without ``logp_old`` must be evaluated at the parameters that collected it: the
    ratio is then ``exp(logp - logp.detach())``, 1 in value with the gradient of ``logp``.
    """
    logp = log_prob(policy, params, batch["obs"], batch["actions"])
    ratio = torch.exp(logp - batch.get("logp_old", logp.detach()))
    mask = batch["mask"]
    return -(ratio * batch["advantages"] * mask).sum() / mask.sum()


def pg_loss_at_sampling_policy(batch: Batch) -> torch.Tensor:
    """:func:`pg_loss` at the parameters that collected ``batch``: every ratio is exactly 1
    there, so no forward pass is needed."""
    mask = batch["mask"]
    return -(batch["advantages"] * mask).sum() / mask.sum()


def inner_loss_fn(policy: GaussianMLPPolicy):
    """``loss_fn(params, batch)`` for :func:`maml_ros.meta.adapt` bound to ``policy``."""
    return partial(pg_loss, policy)


# ---------------------------------------------------------------------------------------------
# On-robot adaptation.


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pg_grad_and_value(
    obs_norm: torch.Tensor,
) -> Callable[[Params, Batch], tuple[Params, torch.Tensor]]:
    """``grad_and_value(params, batch)``: :func:`pg_loss`'s gradient and value in closed form
    (:func:`~maml_ros.rl.policy.log_prob_vjp`), for ``batch``'s observations normalised
    once, ``obs_norm``. First order: for ``adapt_with_flags(..., grad_and_value=...)``.

    ``loss = -sum(ratio * A * mask) / sum(mask)`` with ``ratio = exp(logp - logp_old)``, so its
    gradient is the vector-Jacobian product of the log-probs with ``-ratio * A * mask / n``.
    Without ``logp_old`` the batch is at the sampling params: every ratio is 1.
    """

    def grad_and_value(params: Params, batch: Batch) -> tuple[Params, torch.Tensor]:
        ratio_needed = "logp_old" in batch
        logp, vjp = log_prob_vjp(params, obs_norm, batch["actions"], ratio_needed)
        mask = batch["mask"]
        minus_weights = batch["advantages"] * mask / -mask.sum()  # d loss / d log-prob
        if ratio_needed:
            minus_weights = torch.exp(logp - batch["logp_old"]) * minus_weights
        return vjp(minus_weights), minus_weights.sum()

    return grad_and_value


def inner_update(
    params: Params,
    lrs: Params | None,
    data: Rollouts,
    pg: PGConfig,
    inner: InnerConfig,
    obs_mean: torch.Tensor,
    obs_std: torch.Tensor,
    solver: BaselineSolver = "cholesky",
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """The on-robot update of ``params`` on validated rollouts, with no host synchronisation
    (so a CUDA graph can capture it; ``solver="lstsq"`` syncs), first order.

    The training inner step (:func:`make_pg_batch`, :func:`pg_loss`, ``adapt``) with the
    gradient in closed form (:func:`pg_grad_and_value`) instead of autograd: no module, no
    graph. Returns the adapted params, the inner loss before the update (0-d) and the
    per-step finite flags of :func:`maml_ros.meta.adapt_with_flags`.
    """
    obs_norm = normalize_obs(data.obs, obs_mean, obs_std)
    batch = {
        "actions": data.actions,
        "advantages": compute_advantages(data.obs, data.rewards, data.mask, pg, solver),
        "mask": data.mask,
    }
    # One step evaluates the loss only at the sampling params: no log pi_old needed.
    if inner.steps > 1:
        batch["logp_old"] = log_prob_vjp(params, obs_norm, data.actions)[0]
    loss_before = pg_loss_at_sampling_policy(batch)
    cfg = dataclasses.replace(inner, first_order=True) if not inner.first_order else inner
    if inner.steps == 1:
        grad_and_value = pg_grad_and_value(obs_norm)
        loss_fn = lambda p, b: grad_and_value(p, b)[1]  # noqa: E731
        adapted, finite = adapt_with_flags(loss_fn, params, batch, cfg, lrs, grad_and_value)
    else:
        # Several steps: the ratio to pi_old compounds rounding; autograd on the same
        # forward keeps the result equal to the training step's to float32 tolerance.
        adapted, finite = adapt_with_flags(partial(_pg_loss_of, obs_norm), params, batch, cfg, lrs)
    return adapted, loss_before, finite


def _pg_loss_of(obs_norm: torch.Tensor, params: Params, batch: Batch) -> torch.Tensor:
    """:func:`pg_loss` on normalised observations, without a module."""
    logp = log_prob_vjp(params, obs_norm, batch["actions"])[0]
    ratio = torch.exp(logp - batch["logp_old"])
    mask = batch["mask"]
    return -(ratio * batch["advantages"] * mask).sum() / mask.sum()


__all__ = [
    "BaselineSolver",
    "Batch",
    "InnerConfig",
    "PGConfig",
    "RolloutError",
    "Rollouts",
    "compute_advantages",
    "discount_matrix",
    "discounted_cumsum",
    "fit_linear_baseline",
    "gae_advantages",
    "inner_loss_fn",
    "inner_update",
    "make_pg_batch",
    "normalize_per_task",
    "pg_grad_and_value",
    "pg_loss",
    "resolve_device",
]
