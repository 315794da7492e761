"""MAML / Meta-SGD inner adaptation and meta-objective, written with torch.func.

Parameters are plain dicts of tensors (``Params``); a loss is any pure function
``loss_fn(params, batch) -> scalar tensor`` (typically wrapping ``torch.func.functional_call``),
where ``batch`` is any pytree of tensors. Nothing here touches an ``nn.Module``.

Inner step (Finn et al. 2017; per-parameter ``lrs`` as in Meta-SGD, Li et al. 2017)::

    theta' = theta - alpha * clip(grad L_support(theta))

The meta-batch is adapted in one ``torch.func.vmap`` pass over tasks (``torch.func.grad``
inside); the outer gradient is taken by ordinary ``.backward()`` on the returned meta-loss.
Second-order by default (differentiable through the inner steps); ``first_order=True`` detaches
the inner gradient (FOMAML).

Loss functions used under vmap must be vmappable: no ``.item()``, no data-dependent Python
control flow, no in-place updates of captured tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_leaves, tree_map

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, Any], torch.Tensor]

_CLIP_EPS = 1e-12


class NonFiniteError(RuntimeError):
    """An inner loss or gradient was NaN/inf and the configuration says to raise."""


@dataclass(frozen=True)
class InnerConfig:
    """How the inner (task-specific) adaptation runs.

    lr: alpha, ignored for keys present in Meta-SGD ``lrs``. steps: number of inner steps k
    (0 returns theta unchanged). first_order: detach the inner gradient. grad_clip: maximum
    global gradient norm per inner step (None: no clipping). on_nonfinite: "raise" raises
    ``NonFiniteError`` naming the tasks and steps; "rollback" returns theta for those tasks.
    """

    lr: float = 0.01
    steps: int = 1
    first_order: bool = False
    grad_clip: float | None = None
    on_nonfinite: Literal["raise", "rollback"] = "raise"

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float):
            raise ValueError(f"InnerConfig.lr must be a number, got {self.lr!r}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"InnerConfig.lr must be finite and > 0, got {self.lr!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"InnerConfig.steps must be an int >= 0, got {self.steps!r}")
        if not isinstance(self.first_order, bool):
            raise ValueError(f"InnerConfig.first_order must be a bool, got {self.first_order!r}")
        if self.grad_clip is not None:
            clip = self.grad_clip
            if isinstance(clip, bool) or not isinstance(clip, int | float):
                raise ValueError(f"InnerConfig.grad_clip must be a number or None, got {clip!r}")
            if not math.isfinite(clip) or clip <= 0:
                raise ValueError(f"InnerConfig.grad_clip must be finite and > 0, got {clip!r}")
        if self.on_nonfinite not in ("raise", "rollback"):
            raise ValueError(
                f"InnerConfig.on_nonfinite must be 'raise' or 'rollback', got {self.on_nonfinite!r}"
            )


def init_meta_sgd_lrs(params: Params, lr: float) -> Params:
    """Learnable per-parameter inner learning rates (Meta-SGD), all equal to ``lr`` at start.

    Returns new leaf tensors with ``requires_grad=True``, same shape/device/dtype as ``params``.
    """
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Meta-SGD initial lr must be finite and > 0, got {lr!r}")
    _check_params(params)
    return {
        name: torch.full_like(p.detach(), float(lr)).requires_grad_(True)
        for name, p in params.items()
    }


def adapt(
    loss_fn: LossFn, params: Params, batch: Any, cfg: InnerConfig, lrs: Params | None = None
) -> Params:
    """Adapt ``params`` to one task: ``cfg.steps`` gradient steps on ``loss_fn(params, batch)``.

    Returns a new dict (differentiable w.r.t. ``params`` and ``lrs`` unless first-order);
    the input dict and its tensors are left untouched.
    """
    adapted, finite = adapt_with_flags(loss_fn, params, batch, cfg, lrs)
    return settle_nonfinite(params, adapted, finite, cfg)


def adapt_with_flags(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    cfg: InnerConfig,
    lrs: Params | None = None,
    grad_and_value: Callable[[Params, Any], tuple[Params, torch.Tensor]] | None = None,
) -> tuple[Params, torch.Tensor]:
    """:func:`adapt` without its one host synchronisation, so it can be captured in a CUDA
    graph: the adapted params and a bool tensor ``[steps]``, False where a step's loss or
    gradient was non-finite. :func:`settle_nonfinite` turns them into what ``adapt`` returns.

    ``grad_and_value(params, batch)``, if given, returns the gradient of ``loss_fn`` and its
    value in closed form, used instead of autograd (e.g.
    :func:`maml_ros.rl.policy.log_prob_vjp`); the result is second order only if it is
    differentiable in ``params``.
    """
    _check_inputs(params, cfg, lrs)
    if cfg.steps == 0:
        return dict(params), torch.ones(0, dtype=torch.bool, device=_device_of(params))
    grad_fn = _autograd_grad_and_value if grad_and_value is None else lambda _: grad_and_value
    return _adapt_one(loss_fn, params, batch, lrs, cfg, grad_fn)


def settle_nonfinite(
    params: Params, adapted: Params, finite: torch.Tensor, cfg: InnerConfig
) -> Params:
    """``adapted`` if every step was finite; else raise ``NonFiniteError`` or return theta,
    as ``cfg.on_nonfinite`` says."""
    bad_steps = [s for s, ok in enumerate(finite.tolist()) if not ok]
    if not bad_steps:
        return adapted
    if cfg.on_nonfinite == "raise":
        raise NonFiniteError(f"non-finite inner loss or gradient at step(s) {bad_steps}")
    return dict(params)


def adapt_batched(
    loss_fn: LossFn, params: Params, batches: Any, cfg: InnerConfig, lrs: Params | None = None
) -> Params:
    """Adapt ``params`` to each task of a meta-batch in one vmapped pass.

    ``batches`` is a pytree whose leaves all have the task dimension first. The result maps
    each name to a tensor with a leading task dimension. In "rollback" mode, tasks with a
    non-finite inner loss/gradient get theta back (with a clean gradient path to theta: the
    remaining tasks are re-adapted without them, so NaNs never reach the outer gradient).
    """
    adapted, _ = adapt_batched_with_status(loss_fn, params, batches, cfg, lrs)
    return adapted


def adapt_batched_with_status(
    loss_fn: LossFn, params: Params, batches: Any, cfg: InnerConfig, lrs: Params | None = None
) -> tuple[Params, torch.Tensor]:
    """``adapt_batched`` plus a bool tensor [num_tasks]: False where a task was rolled back."""
    _check_inputs(params, cfg, lrs)
    num_tasks = _num_tasks(batches)
    device = _device_of(params)
    if cfg.steps == 0:
        same = {k: p.unsqueeze(0).expand(num_tasks, *p.shape) for k, p in params.items()}
        return same, torch.ones(num_tasks, dtype=torch.bool, device=device)

    def run(subset: Any) -> tuple[Params, torch.Tensor]:
        return _vmapped_adapt(loss_fn, params, subset, lrs, cfg)

    return _settle_batched(run, params, batches, cfg)


def adapt_per_task(
    loss_fn: LossFn, params: Params, batches: Any, cfg: InnerConfig, lrs: Params | None = None
) -> Params:
    """:func:`adapt_batched` from a starting point per task: ``params`` has the task dimension
    first, as ``adapt_batched`` returns it (a second round of adaptation, each task's adapted
    params on a fresh batch of its own). Rolled-back tasks keep their own ``params``."""
    _check_inputs({k: v[0] for k, v in params.items()}, cfg, lrs)
    if cfg.steps == 0:
        return dict(params)

    def run(subset: Any) -> tuple[Params, torch.Tensor]:
        starts, task_batches = subset
        return vmap(lambda p, b: _adapt_one(loss_fn, p, b, lrs, cfg))(starts, task_batches)

    adapted, _ = _settle_batched(run, params, (params, batches), cfg, per_task=True)
    return adapted


def meta_loss(
    inner_loss_fn: LossFn,
    outer_loss_fn: LossFn,
    params: Params,
    support: Any,
    query: Any,
    cfg: InnerConfig,
    lrs: Params | None = None,
) -> torch.Tensor:
    """Mean over tasks of ``outer_loss_fn(adapt(params, support_i), query_i)``, vmapped.

    Call ``.backward()`` on the result for the meta-gradient w.r.t. ``params`` (and ``lrs``).
    """
    _check_same_tasks(support, query)
    adapted = adapt_batched(inner_loss_fn, params, support, cfg, lrs)
    return vmap(outer_loss_fn)(adapted, query).mean()


def meta_loss_loop(
    inner_loss_fn: LossFn,
    outer_loss_fn: LossFn,
    params: Params,
    support: Any,
    query: Any,
    cfg: InnerConfig,
    lrs: Params | None = None,
) -> torch.Tensor:
    """Reference for tests and benchmarks: ``meta_loss`` as a Python loop over tasks."""
    num_tasks = _check_same_tasks(support, query)
    losses = []
    for i in range(num_tasks):
        support_i = tree_map(lambda x, i=i: x[i], support)
        query_i = tree_map(lambda x, i=i: x[i], query)
        adapted = adapt(inner_loss_fn, params, support_i, cfg, lrs)
        losses.append(outer_loss_fn(adapted, query_i))
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- internals


def _check_same_tasks(support: Any, query: Any) -> int:
    """The number of tasks, which support and query must share."""
    num_tasks = _num_tasks(support)
    if num_tasks != _num_tasks(query):
        raise ValueError(f"support has {num_tasks} tasks but query has {_num_tasks(query)}")
    return num_tasks


GradAndValue = Callable[[LossFn], Callable[[Params, Any], tuple[Params, torch.Tensor]]]


def _autograd_grad_and_value(loss_fn: LossFn) -> Callable[[Params, Any], tuple[Params, Any]]:
    """``torch.func.grad_and_value`` for one task outside vmap, on plain ``torch.autograd``.

    Same values and the same differentiability (a graph through the gradient when ``params``
    require grad), with about 0.7 ms less dispatch overhead per step on a small policy.
    """

    def run(params: Params, batch: Any) -> tuple[Params, torch.Tensor]:
        second_order = any(p.requires_grad for p in params.values())
        inputs = {
            k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()
        }
        with torch.enable_grad():
            loss = loss_fn(inputs, batch)
            grads = torch.autograd.grad(
                loss, list(inputs.values()), create_graph=second_order, allow_unused=True
            )
        grads = {
            k: torch.zeros_like(p) if g is None else g
            for (k, p), g in zip(inputs.items(), grads, strict=True)
        }
        return grads, loss if second_order else loss.detach()

    return run


def _inner_step(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    lrs: Params | None,
    cfg: InnerConfig,
    grad_fn: GradAndValue = grad_and_value,
) -> tuple[Params, torch.Tensor]:
    """One inner step (vmappable with the default ``grad_fn``); returns the new params and a
    0-d finite flag."""
    grad_input = {k: p.detach() for k, p in params.items()} if cfg.first_order else params
    grads, loss = grad_fn(loss_fn)(grad_input, batch)
    # x * 0 == 0 exactly where x is finite: one check over everything, 2 ops (isfinite is 4).
    flat = torch.cat([loss.detach().reshape(-1)] + [g.detach().reshape(-1) for g in grads.values()])
    finite = (flat * 0.0 == 0.0).all()
    if cfg.grad_clip is not None:
        norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
        scale = torch.clamp(cfg.grad_clip / (norm + _CLIP_EPS), max=1.0)
        grads = {k: g * scale for k, g in grads.items()}
    new_params = {}
    for k, p in params.items():
        if lrs is not None and k in lrs:
            new_params[k] = torch.addcmul(p, lrs[k], grads[k], value=-1.0)
        else:
            new_params[k] = torch.add(p, grads[k], alpha=-cfg.lr)
    return new_params, finite


def _adapt_one(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    lrs: Params | None,
    cfg: InnerConfig,
    grad_fn: GradAndValue = grad_and_value,
) -> tuple[Params, torch.Tensor]:
    """``cfg.steps`` inner steps for one task; returns adapted params and per-step flags.

    After a non-finite step the task keeps its previous params (torch.where, vmappable), so
    later steps run on finite values; the caller decides what to do with flagged tasks.
    """
    current = params
    flags = []
    for _ in range(cfg.steps):
        stepped, finite = _inner_step(loss_fn, current, batch, lrs, cfg, grad_fn)
        if cfg.on_nonfinite == "rollback":
            stepped = {k: torch.where(finite, stepped[k], current[k]) for k in current}
        current = stepped
        flags.append(finite)
    return current, torch.stack(flags)


def _vmapped_adapt(
    loss_fn: LossFn, params: Params, batches: Any, lrs: Params | None, cfg: InnerConfig
) -> tuple[Params, torch.Tensor]:
    def one_task(batch: Any) -> tuple[Params, torch.Tensor]:
        return _adapt_one(loss_fn, params, batch, lrs, cfg)

    return vmap(one_task)(batches)


BatchedAdapt = Callable[[Any], tuple[Params, torch.Tensor]]
"""Adapts a meta-batch (a pytree, task dimension first): params [T, ...], finite flags
[T, steps]."""


def _settle_batched(
    run: BatchedAdapt, params: Params, batches: Any, cfg: InnerConfig, per_task: bool = False
) -> tuple[Params, torch.Tensor]:
    """``run(batches)`` with its non-finite tasks handled as ``cfg.on_nonfinite`` says: the
    adapted params and a bool tensor [tasks], False where a task was rolled back (to
    ``params``, per task when ``per_task``)."""
    adapted, finite = run(batches)
    task_ok = finite.all(dim=1)
    if bool(task_ok.all()):
        return adapted, task_ok
    if cfg.on_nonfinite == "raise":
        raise NonFiniteError(f"non-finite inner loss or gradient: {_describe_bad(finite)}")
    return _rollback(run, params, batches, task_ok, per_task), task_ok


def _rollback(
    run: BatchedAdapt, params: Params, batches: Any, task_ok: torch.Tensor, per_task: bool
) -> Params:
    """theta (or each task's own ``params``) for the flagged tasks, a clean re-adaptation for
    the others."""
    num_tasks = task_ok.shape[0]
    if per_task:
        out = dict(params)
    else:
        out = {k: p.unsqueeze(0).expand(num_tasks, *p.shape) for k, p in params.items()}
    ok_index = task_ok.nonzero().flatten()
    if ok_index.numel() == 0:
        return out
    subset = tree_map(lambda x: x[ok_index.to(x.device)], batches)
    adapted, finite = run(subset)
    if not bool(finite.all()):
        raise NonFiniteError(
            "inner loss became non-finite on re-adaptation of tasks that were finite before "
            "(is loss_fn deterministic?)"
        )
    return {k: out[k].index_copy(0, ok_index.to(out[k].device), adapted[k]) for k in out}


def _describe_bad(finite: torch.Tensor, shown: int = 8) -> str:
    """'task 2 step(s) [0, 1], ...' for the first ``shown`` tasks with a non-finite step."""
    bad = (~finite.all(dim=1)).nonzero().flatten().tolist()
    parts = [f"task {t} step(s) {(~finite[t]).nonzero().flatten().tolist()}" for t in bad[:shown]]
    more = f" and {len(bad) - shown} more task(s)" if len(bad) > shown else ""
    return ", ".join(parts) + more + f" (of {finite.shape[0]})"


def _device_of(params: Params) -> torch.device:
    return next(iter(params.values())).device


def _check_params(params: Params) -> None:
    if not isinstance(params, dict) or not params:
        raise TypeError("params must be a non-empty dict[str, Tensor]")
    for name, p in params.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"params[{name!r}] must be a floating-point tensor")


def _check_inputs(params: Params, cfg: InnerConfig, lrs: Params | None) -> None:
    if not isinstance(cfg, InnerConfig):
        raise TypeError(f"cfg must be an InnerConfig, got {type(cfg).__name__}")
    _check_params(params)
    if lrs is None:
        return
    if not isinstance(lrs, dict):
        raise TypeError("lrs must be a dict[str, Tensor] or None")
    for name, lr in lrs.items():
        if name not in params:
            raise ValueError(f"lrs has key {name!r} that is not in params")
        if not isinstance(lr, torch.Tensor) or lr.shape != params[name].shape:
            raise ValueError(f"lrs[{name!r}] must be a tensor of shape {tuple(params[name].shape)}")


def _num_tasks(batches: Any) -> int:
    leaves = tree_leaves(batches)
    if not leaves or not all(isinstance(x, torch.Tensor) for x in leaves):
        raise TypeError("a task batch must be a non-empty pytree of tensors")
    sizes = {x.shape[0] if x.dim() > 0 else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"every leaf of a task batch needs the same leading task dimension, got "
            f"{[tuple(x.shape) for x in leaves]}"
        )
    (num_tasks,) = sizes
    if num_tasks < 1:
        raise ValueError("a task batch needs at least one task")
    return num_tasks
