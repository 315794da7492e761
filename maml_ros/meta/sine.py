"""Sinusoid regression (Finn et al. 2017, section 5.1): task sampler, model, meta-training, eval.

Tasks: y = A sin(x + phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]. Model: 1-40-40-1 ReLU
MLP, MSE loss. Usable without ROS::

    model, params = make_sine_model(seed=0)
    result = meta_train(model, params, SineTrainConfig(shots=5, iterations=1000))
    print(evaluate(model, result.params, shots=5, lrs=result.lrs))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.func import functional_call

from maml_ros.meta.core import (
    InnerConfig,
    LossFn,
    Params,
    adapt_batched_with_status,
    init_meta_sgd_lrs,
    meta_loss,
)
from maml_ros.meta.mlp import MLP, mlp_mse_meta_loss

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


@dataclass(frozen=True)
class SineTasks:
    """A set of sinusoid tasks: amplitude and phase, each of shape [num_tasks]."""

    amplitude: torch.Tensor
    phase: torch.Tensor

    @classmethod
    def sample(
        cls, num_tasks: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> SineTasks:
        """Draw ``num_tasks`` tasks (amplitude U[0.1, 5], phase U[0, pi])."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        return cls(
            amplitude=_uniform(num_tasks, AMPLITUDE_RANGE, generator, dtype),
            phase=_uniform(num_tasks, PHASE_RANGE, generator, dtype),
        )

    def points(
        self, num_points: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_points`` (x, y) pairs per task, x ~ U[-5, 5]; shapes [num_tasks, num_points, 1]."""
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        num_tasks = self.amplitude.shape[0]
        x = _uniform(num_tasks * num_points, INPUT_RANGE, generator, self.amplitude.dtype)
        x = x.view(num_tasks, num_points, 1)
        y = self.amplitude.view(-1, 1, 1) * torch.sin(x + self.phase.view(-1, 1, 1))
        return x, y


def _uniform(
    n: int, bounds: tuple[float, float], generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator, dtype=dtype)


def make_sine_model(hidden: int = 40, seed: int = 0) -> tuple[torch.nn.Module, Params]:
    """The 1-hidden-hidden-1 ReLU regressor and a fresh, trainable copy of its parameters."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(1, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    return model, params


def mse_loss_fn(model: torch.nn.Module) -> LossFn:
    """``loss(params, (x, y))``: mean squared error of ``model`` run with ``params``."""

    def loss(params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return loss


def sine_meta_loss(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``meta_loss_fn(params, support, query, cfg, lrs)``: the MSE meta-loss of ``model``.

    For a plain MLP (as :func:`make_sine_model` builds) it is the closed-form batched path,
    :func:`~maml_ros.meta.mlp.mlp_mse_meta_loss`; for any other model, the generic vmapped
    :func:`~maml_ros.meta.core.meta_loss`. Both give the same value and meta-gradient.
    """
    try:
        mlp = MLP.from_sequential(model)
    except ValueError:
        loss_fn = mse_loss_fn(model)
        return partial(meta_loss, loss_fn, loss_fn)
    return partial(mlp_mse_meta_loss, mlp)


@dataclass(frozen=True)
class SineTrainConfig:
    """Meta-training set-up; defaults follow Finn et al. 2017 (sinusoid)."""

    shots: int = 5
    iterations: int = 70_000
    meta_batch: int = 25
    inner: InnerConfig = field(default_factory=InnerConfig)  # alpha 0.01, 1 step
    outer_lr: float = 1e-3  # Adam beta
    meta_sgd: bool = False  # learn a per-parameter alpha (Meta-SGD)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("shots", "iterations", "meta_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SineTrainConfig.{name} must be an int >= 1, got {value!r}")
        if not math.isfinite(self.outer_lr) or self.outer_lr <= 0:
            raise ValueError(f"SineTrainConfig.outer_lr must be finite > 0, got {self.outer_lr}")


@dataclass
class SineTrainResult:
    """Meta-trained parameters, Meta-SGD rates (or None) and the meta-loss every iteration."""

    params: Params
    lrs: Params | None
    losses: list[float]


def meta_train(model: torch.nn.Module, params: Params, cfg: SineTrainConfig) -> SineTrainResult:
    """Meta-train ``params`` (updated in place by Adam) on freshly sampled sinusoid tasks."""
    generator = torch.Generator().manual_seed(cfg.seed)
    dtype = next(iter(params.values())).dtype
    lrs = init_meta_sgd_lrs(params, cfg.inner.lr) if cfg.meta_sgd else None
    trainable = list(params.values()) + (list(lrs.values()) if lrs else [])
    optimizer = torch.optim.Adam(trainable, lr=cfg.outer_lr)
    meta_loss_fn = sine_meta_loss(model)
    losses = []
    for _ in range(cfg.iterations):
        tasks = SineTasks.sample(cfg.meta_batch, generator, dtype)
        support = tasks.points(cfg.shots, generator)
        query = tasks.points(cfg.shots, generator)
        loss = meta_loss_fn(params, support, query, cfg.inner, lrs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return SineTrainResult(params=params, lrs=lrs, losses=losses)


@dataclass(frozen=True)
class EvalResult:
    """Held-out MSE after some inner steps: mean and 95% CI half-width over the tasks that
    stayed finite, and how many tasks diverged (non-finite inner loss; left out of the mean)."""

    mse: float
    ci95: float
    diverged: int
    num_tasks: int


def evaluate(
    model: torch.nn.Module,
    params: Params,
    shots: int,
    lrs: Params | None = None,
    alpha: float = 0.01,
    steps: tuple[int, ...] = (0, 1, 10),
    num_tasks: int = 600,
    query_points: int = 100,
    seed: int = 1_000_000,
) -> dict[int, EvalResult]:
    """MSE on held-out tasks after each number of inner steps in ``steps``.

    Each task gets a ``shots``-point support set and ``query_points`` query points; the inner
    steps use ``alpha`` (or the Meta-SGD ``lrs``) at every step. The default seed is far from
    the training seeds, so the evaluation tasks are disjoint from any training draw.
    """
    if num_tasks < 2:
        raise ValueError(f"num_tasks must be >= 2 for a confidence interval, got {num_tasks}")
    generator = torch.Generator().manual_seed(seed)
    frozen = {k: v.detach() for k, v in params.items()}
    frozen_lrs = {k: v.detach() for k, v in lrs.items()} if lrs else None
    dtype = next(iter(frozen.values())).dtype
    tasks = SineTasks.sample(num_tasks, generator, dtype)
    support = tasks.points(shots, generator)
    query_x, query_y = tasks.points(query_points, generator)
    loss_fn = mse_loss_fn(model)
    results = {}
    for k in steps:
        inner = InnerConfig(lr=alpha, steps=k, first_order=True, on_nonfinite="rollback")
        adapted, finite = adapt_batched_with_status(loss_fn, frozen, support, inner, frozen_lrs)
        with torch.no_grad():
            pred = torch.func.vmap(lambda p, x: functional_call(model, p, (x,)))(adapted, query_x)
            per_task = ((pred - query_y) ** 2).mean(dim=(1, 2))
        finite = finite & torch.isfinite(per_task)
        kept = per_task[finite]
        count = kept.numel()
        mean = kept.mean().item() if count else math.nan
        ci95 = 1.96 * kept.std().item() / math.sqrt(count) if count > 1 else math.nan
        results[k] = EvalResult(mean, ci95, diverged=num_tasks - count, num_tasks=num_tasks)
    return results
