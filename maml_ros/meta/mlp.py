"""Fast path of :mod:`maml_ros.meta.core` for a plain MLP with a mean-squared-error loss.

:func:`~maml_ros.meta.core.meta_loss` works for any loss function: it adapts the meta-batch
with ``vmap(grad(loss_fn))``, so every op goes through torch.func's dispatch and the inner
gradient's graph is built by autograd's double backward. For a plain MLP (``Linear`` layers
with one elementwise activation between them) under the MSE loss, the inner gradient has a
closed form, the textbook backward pass. Here it is written out with the task axis as the
batch dimension of ``bmm``/``baddbmm``: one call per layer for the whole meta-batch.

The closed form is made of ordinary differentiable tensor ops, so the outer gradient, taken
by ``.backward()`` on the meta-loss as usual, is still the exact second-order MAML gradient
(autograd differentiates through the inner gradient; ReLU's second derivative is 0 almost
everywhere there as in autograd's, tanh's is differentiated). The same ``InnerConfig`` and
Meta-SGD ``lrs`` apply, with the same semantics (clipping, first order, non-finite handling)::

    mlp = MLP.from_sequential(model)         # the layers' parameter names and activation
    loss = mlp_mse_meta_loss(mlp, params, support, query, cfg, lrs)   # == meta_loss(...)
    loss.backward()

Tasks are ``(x, y)`` with ``x`` ``[tasks, points, in]`` and ``y`` ``[tasks, points, out]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from maml_ros.meta.core import (
    _CLIP_EPS,
    InnerConfig,
    Params,
    _check_inputs,
    _check_same_tasks,
    _settle_batched,
)

Activation = Literal["relu", "tanh"]
_ACTIVATIONS: dict[type[nn.Module], Activation] = {nn.ReLU: "relu", nn.Tanh: "tanh"}
Task = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class MLP:
    """A plain MLP on a ``Params`` dict: ``layers`` are the (weight, bias) names of its
    ``Linear`` layers from input to output, with ``activation`` after each but the last."""

    layers: tuple[tuple[str, str], ...]
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("an MLP needs at least one layer")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")

    @classmethod
    def from_sequential(cls, model: nn.Module) -> MLP:
        """The MLP of an ``nn.Sequential`` of ``Linear`` layers (with biases) alternating with
        one kind of activation (``ReLU`` or ``Tanh``); ``ValueError`` for anything else."""
        if not isinstance(model, nn.Sequential):
            raise ValueError(f"not an nn.Sequential: {type(model).__name__}")
        layers: list[tuple[str, str]] = []
        kinds: set[Activation] = set()
        children = list(model.named_children())
        for i, (name, child) in enumerate(children):
            if i % 2 == 0:
                if type(child) is not nn.Linear or child.bias is None:
                    raise ValueError(f"layer {name} is not a Linear layer with a bias")
                layers.append((f"{name}.weight", f"{name}.bias"))
            elif type(child) in _ACTIVATIONS:
                kinds.add(_ACTIVATIONS[type(child)])
            else:
                raise ValueError(f"layer {name} ({type(child).__name__}) is not ReLU or Tanh")
        if not children or len(children) % 2 == 0 or len(kinds) > 1:
            raise ValueError("expected Linear, activation, Linear, ..., Linear (one activation)")
        return cls(tuple(layers), kinds.pop() if kinds else "relu")

    @property
    def names(self) -> set[str]:
        """Every parameter name the MLP uses."""
        return {name for layer in self.layers for name in layer}


def mlp_forward(mlp: MLP, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Outputs ``[tasks, points, out]`` for inputs ``x`` ``[tasks, points, in]``; ``params``
    shared by all tasks or per task (a leading task dimension, as ``adapt_batched`` returns)."""
    h = x
    last = len(mlp.layers) - 1
    for i, (w_name, b_name) in enumerate(mlp.layers):
        h = _linear(h, params[w_name], params[b_name])
        if i < last:
            h = _activate(h, mlp.activation)
    return h


def mlp_mse_adapt_batched_with_status(
    mlp: MLP, params: Params, support: Task, cfg: InnerConfig, lrs: Params | None = None
) -> tuple[Params, torch.Tensor]:
    """:func:`~maml_ros.meta.core.adapt_batched_with_status` for ``mlp`` under the MSE loss
    (``mean((mlp(x) - y) ** 2)`` per task): adapted params with a leading task dimension and
    a bool tensor [tasks], False where a task was rolled back."""
    _check_inputs(params, cfg, lrs)
    x, y = _check_task(mlp, params, support)
    num_tasks = x.shape[0]
    if cfg.steps == 0:
        same = {k: p.unsqueeze(0).expand(num_tasks, *p.shape) for k, p in params.items()}
        return same, torch.ones(num_tasks, dtype=torch.bool, device=x.device)

    def run(task: Task) -> tuple[Params, torch.Tensor]:
        return _adapt(mlp, params, task[0], task[1], cfg, lrs)

    return _settle_batched(run, params, (x, y), cfg)


def mlp_mse_meta_loss(
    mlp: MLP,
    params: Params,
    support: Task,
    query: Task,
    cfg: InnerConfig,
    lrs: Params | None = None,
) -> torch.Tensor:
    """``meta_loss(mse, mse, params, support, query, cfg, lrs)`` for ``mlp`` with the closed
    form inner gradient: the mean over tasks of the query MSE after adaptation."""
    _check_same_tasks(support, query)
    adapted, _ = mlp_mse_adapt_batched_with_status(mlp, params, support, cfg, lrs)
    query_x, query_y = _check_task(mlp, params, query)
    diff = mlp_forward(mlp, adapted, query_x) - query_y
    return (diff * diff).mean()  # tasks are the same size: the mean of the per-task means


# --------------------------------------------------------------------------- internals


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 2:  # shared by the tasks: one matmul over all of them
        return torch.nn.functional.linear(h, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


_threshold_backward = torch.ops.aten.threshold_backward.default


def _activate(z: torch.Tensor, activation: Activation) -> torch.Tensor:
    return torch.relu(z) if activation == "relu" else torch.tanh(z)


def _grad_and_loss(
    mlp: MLP, params: Params, x: torch.Tensor, y: torch.Tensor
) -> tuple[Params, torch.Tensor]:
    """Per-task gradients (leading task dimension) of the MSE and the per-task losses [T]."""
    inputs = [x]
    h = x
    last = len(mlp.layers) - 1
    for i, (w_name, b_name) in enumerate(mlp.layers):
        h = _linear(h, params[w_name], params[b_name])
        if i < last:
            h = _activate(h, mlp.activation)
            inputs.append(h)
    diff = h - y
    with torch.no_grad():  # the inner loss value is only checked, never differentiated
        loss = (diff * diff).mean(dim=(1, 2))
    g = diff * (2.0 / (diff.shape[1] * diff.shape[2]))  # d loss / d output
    grads: Params = {}
    for i in range(last, -1, -1):
        w_name, b_name = mlp.layers[i]
        a = inputs[i]
        grads[w_name] = torch.bmm(g.transpose(1, 2), a)
        grads[b_name] = g.sum(dim=1)
        if i > 0:
            weight = params[w_name]
            g = g @ weight if weight.dim() == 2 else torch.bmm(g, weight)
            # The activation's derivative from its output: relu' = [a > 0] (autograd's own
            # relu backward, differentiable in g), tanh' = 1 - a^2.
            g = _threshold_backward(g, a, 0.0) if mlp.activation == "relu" else g * (1 - a * a)
    return grads, loss


def _per_task(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [T] tensor shaped to broadcast against ``like`` (leading task dimension)."""
    return value.view(-1, *([1] * (like.dim() - 1)))


def _adapt(
    mlp: MLP,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: InnerConfig,
    lrs: Params | None,
) -> tuple[Params, torch.Tensor]:
    """``cfg.steps`` inner steps for every task: params [T, ...] and finite flags [T, steps],
    as ``core._adapt_one`` under vmap."""
    current = params
    flags = []
    for _ in range(cfg.steps):
        grad_input = {k: p.detach() for k, p in current.items()} if cfg.first_order else current
        grads, loss = _grad_and_loss(mlp, grad_input, x, y)
        with torch.no_grad():  # x * 0 == 0 exactly where x is finite (2 ops; isfinite: 4)
            flat = [loss.unsqueeze(1)] + [g.flatten(1) for g in grads.values()]
            finite = torch.cat(flat, dim=1).mul_(0.0).eq_(0.0).all(dim=1)
        if cfg.grad_clip is not None:
            norm = torch.sqrt(sum((g * g).flatten(1).sum(dim=1) for g in grads.values()))
            scale = torch.clamp(cfg.grad_clip / (norm + _CLIP_EPS), max=1.0)
            grads = {k: g * _per_task(scale, g) for k, g in grads.items()}
        stepped = {}
        for k, p in current.items():
            if lrs is not None and k in lrs:
                stepped[k] = torch.addcmul(p, lrs[k], grads[k], value=-1.0)
            else:
                stepped[k] = torch.add(p, grads[k], alpha=-cfg.lr)
        if cfg.on_nonfinite == "rollback":
            stepped = {
                k: torch.where(_per_task(finite, v), v, current[k]) for k, v in stepped.items()
            }
        current = stepped
        flags.append(finite)
    return current, torch.stack(flags, dim=1)


def _check_task(mlp: MLP, params: Params, task: Task) -> Task:
    if set(params) != mlp.names:
        raise ValueError(f"params {sorted(params)} are not those of the MLP {sorted(mlp.names)}")
    if not isinstance(task, tuple | list) or len(task) != 2:
        raise TypeError("a task batch must be a pair (x, y)")
    x, y = task
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError("a task batch must be a pair of tensors (x, y)")
    if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"x and y must be [tasks, points, features] with the same tasks and points, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


__all__ = ["MLP", "mlp_forward", "mlp_mse_adapt_batched_with_status", "mlp_mse_meta_loss"]
