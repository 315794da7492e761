"""The robot-facing inner update: :func:`adapt_policy` (training's inner step on a robot's
rollouts, eager on the CPU, a replayed CUDA graph on the GPU) and :func:`warm_up`.

Apart from :mod:`maml_ros.rl.pg` (the policy-gradient math) so that it can use both that and
:mod:`maml_ros.rl.graphed`, which builds on it, without an import circle.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch

from maml_ros.meta import settle_nonfinite
from maml_ros.rl.graphed import graphed_inner_update
from maml_ros.rl.pg import Rollouts, inner_update, make_pg_batch, pg_loss, resolve_device
from maml_ros.rl.policy import GaussianMLPPolicy, Params

if TYPE_CHECKING:
    from maml_ros.rl.checkpoint import PolicyBundle


def adapt_policy(
    bundle: PolicyBundle,
    rollouts: Rollouts,
    steps: int | None = None,
    device: str | torch.device = "cpu",
    loss_after: bool = False,
) -> tuple[PolicyBundle, dict[str, Any]]:
    """The inner update of training applied to ``rollouts`` (collected by ``bundle``'s policy).

    Same loss, PGConfig, inner lr (or Meta-SGD lrs) as the meta-objective; ``steps`` defaults
    to the bundle's inner steps. On CUDA the update is replayed from a CUDA graph
    (:mod:`maml_ros.rl.graphed`). Returns a new bundle (float32 CPU params, version + 1) and
    info: ``inner_loss`` (before the update), ``steps``, ``device``, ``n_transitions``,
    ``total_s`` and, when ``loss_after`` is set (one more forward pass), ``inner_loss_after``.
    Raises ``RolloutError`` on bad rollouts and ``NonFiniteError`` on a non-finite update
    (unless the bundle's inner config says "rollback").
    """
    t0 = time.perf_counter()
    n_steps = bundle.inner.steps if steps is None else steps
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or not 1 <= n_steps <= 100:
        raise ValueError(f"steps must be an integer in [1, 100], got {n_steps!r}")
    dev = resolve_device(device)
    data = rollouts.validated(bundle.spec)
    # No outer gradient on the robot: first-order gives the same update without a graph.
    cfg = dataclasses.replace(bundle.inner, steps=n_steps, first_order=True)
    if dev.type == "cuda":
        new_params, loss_before, finite = graphed_inner_update(bundle, data, cfg, dev)
    else:
        params = {k: _plain(v) for k, v in bundle.params.items()}
        lrs = None if bundle.lrs is None else {k: _plain(v) for k, v in bundle.lrs.items()}
        obs_mean, obs_std = _plain(bundle.obs_mean), _plain(bundle.obs_std)
        new_params, loss_before, finite = inner_update(
            params, lrs, data, bundle.pg, cfg, obs_mean, obs_std
        )
    new_params = settle_nonfinite(bundle.params, new_params, finite, cfg)
    new_params = {k: _plain_cpu(v) for k, v in new_params.items()}
    new_bundle = bundle.replace(
        params=new_params,
        version=bundle.version + 1,
        metadata={**bundle.metadata, "adapted_from_version": bundle.version},
    )
    info = {
        "inner_loss": float(loss_before),
        "steps": n_steps,
        "device": str(dev),
        "n_transitions": int(data.mask.sum()),
        "total_s": time.perf_counter() - t0,
    }
    if loss_after:
        info["inner_loss_after"] = _loss_after(bundle, new_params, data)
    return new_bundle, info


def _plain(value: torch.Tensor) -> torch.Tensor:
    """``value`` as float32 outside any autograd graph (itself when it already is)."""
    value = value.detach() if value.requires_grad else value
    return value if value.dtype == torch.float32 else value.float()


def _plain_cpu(value: torch.Tensor) -> torch.Tensor:
    """``value`` as a contiguous float32 CPU tensor outside any graph (itself if it is one)."""
    value = _plain(value)
    if value.device.type == "cpu" and value.is_contiguous():
        return value
    return value.to("cpu").contiguous()


def _loss_after(bundle: PolicyBundle, new_params: Params, data: Rollouts) -> float:
    """The inner loss at ``new_params`` on the rollouts (ratio to the sampling policy), CPU."""
    policy = GaussianMLPPolicy(bundle.spec, bundle.obs_mean, bundle.obs_std)
    batch = make_pg_batch(
        policy, bundle.params, data.obs, data.actions, data.rewards, data.mask, bundle.pg
    )
    with torch.no_grad():
        return float(pg_loss(policy, new_params, batch))


def warm_up(
    bundle: PolicyBundle,
    device: str | torch.device = "cpu",
    rollouts: int = 2,
    horizon: int = 3,
    steps: int | None = None,
) -> float:
    """Run one throw-away :func:`adapt_policy` on dummy rollouts of the given shape, so the
    first real adaptation pays no one-time set-up (torch.func's, seconds on a busy CPU; on
    CUDA the capture of that shape's graph); returns its seconds."""
    t0 = time.perf_counter()
    spec = bundle.spec
    dummy = Rollouts(
        torch.zeros(rollouts, horizon, spec.obs_dim),
        torch.zeros(rollouts, horizon, spec.act_dim),
        torch.randn(rollouts, horizon),
    )
    adapt_policy(bundle, dummy, steps=steps, device=device)
    return time.perf_counter() - t0
