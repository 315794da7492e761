"""The batched-MLP fast path (maml_ros.meta.mlp) against the generic vmapped meta_loss."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from maml_ros.meta import (
    MLP,
    InnerConfig,
    NonFiniteError,
    adapt_batched_with_status,
    init_meta_sgd_lrs,
    meta_loss,
    mlp_forward,
    mlp_mse_adapt_batched_with_status,
    mlp_mse_meta_loss,
)
from maml_ros.meta.sine import SineTasks, make_sine_model, mse_loss_fn, sine_meta_loss

torch.set_num_threads(1)


def _net(activation: type[torch.nn.Module], hidden: int = 8) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(1, hidden), activation(), torch.nn.Linear(hidden, hidden), activation(),
        torch.nn.Linear(hidden, 2),
    ).double()  # fmt: skip


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}


def _tasks(num_tasks: int = 5, shots: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)

    def draw():
        x = 10 * torch.rand(num_tasks, shots, 1, generator=gen, dtype=torch.float64) - 5
        y = torch.cat([torch.sin(x + 0.3), torch.cos(2 * x)], dim=-1)
        return x, y * (1 + torch.arange(num_tasks, dtype=torch.float64).view(-1, 1, 1))

    return draw(), draw()


def _flat_grad(loss: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, tensors)])


CONFIGS = {
    "maml-2nd-order": (InnerConfig(lr=0.05, steps=1), False),
    "maml-3-steps-clip": (InnerConfig(lr=0.05, steps=3, grad_clip=0.5), False),
    "fomaml": (InnerConfig(lr=0.05, steps=2, first_order=True), False),
    "meta-sgd": (InnerConfig(lr=0.05, steps=2), True),
    "meta-sgd-rollback-mode": (InnerConfig(lr=0.05, steps=1, on_nonfinite="rollback"), True),
}


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh], ids=["relu", "tanh"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_meta_gradient_equals_the_generic_path(name: str, activation) -> None:
    cfg, use_lrs = CONFIGS[name]
    net = _net(activation)
    mlp = MLP.from_sequential(net)
    assert mlp.activation == ("relu" if activation is torch.nn.ReLU else "tanh")
    params = _params(net)
    lrs = init_meta_sgd_lrs(params, 0.05) if use_lrs else None
    leaves = list(params.values()) + (list(lrs.values()) if lrs else [])
    support, query = _tasks()
    loss_fn = mse_loss_fn(net)
    generic = meta_loss(loss_fn, loss_fn, params, support, query, cfg, lrs)
    fast = mlp_mse_meta_loss(mlp, params, support, query, cfg, lrs)
    assert abs(generic.item() - fast.item()) <= 1e-12
    diff = (_flat_grad(generic, leaves) - _flat_grad(fast, leaves)).abs().max().item()
    assert diff <= 1e-12


def test_fast_second_order_meta_gradient_matches_finite_differences() -> None:
    net = _net(torch.nn.Tanh)
    mlp = MLP.from_sequential(net)
    params = _params(net)
    lrs = init_meta_sgd_lrs(params, 0.1)
    support, query = _tasks()
    cfg = InnerConfig(lr=0.1, steps=2)
    leaves = list(params.values()) + list(lrs.values())
    analytic = _flat_grad(mlp_mse_meta_loss(mlp, params, support, query, cfg, lrs), leaves)
    gen = torch.Generator().manual_seed(7)
    direction = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in leaves]
    eps = 1e-6

    def objective(sign: float) -> float:
        moved = [(t + sign * eps * d).detach() for t, d in zip(leaves, direction, strict=True)]
        p = dict(zip(params, moved[: len(params)], strict=True))
        lr = dict(zip(lrs, moved[len(params) :], strict=True))
        return mlp_mse_meta_loss(mlp, p, support, query, cfg, lr).item()

    numeric = (objective(+1) - objective(-1)) / (2 * eps)
    directional = torch.dot(analytic, torch.cat([d.flatten() for d in direction])).item()
    assert directional == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    # ... and the first-order gradient is not it (the test sees a detached inner step).
    fo = InnerConfig(lr=0.1, steps=2, first_order=True)
    first = _flat_grad(mlp_mse_meta_loss(mlp, params, support, query, fo, lrs), leaves)
    first_directional = torch.dot(first, torch.cat([d.flatten() for d in direction])).item()
    assert abs(first_directional - numeric) > 1e-3 * abs(numeric)


def test_the_sine_model_fast_path_equals_the_generic_one_in_float32() -> None:
    model, params = make_sine_model(seed=3)
    gen = torch.Generator().manual_seed(0)
    tasks = SineTasks.sample(25, gen)
    support, query = tasks.points(10, gen), tasks.points(10, gen)
    cfg = InnerConfig()
    fast = sine_meta_loss(model)(params, support, query, cfg)
    loss_fn = mse_loss_fn(model)
    generic = meta_loss(loss_fn, loss_fn, params, support, query, cfg)
    leaves = list(params.values())
    torch.testing.assert_close(fast, generic)
    torch.testing.assert_close(_flat_grad(fast, leaves), _flat_grad(generic, leaves))


def test_adapted_params_and_forward_equal_the_generic_path() -> None:
    net = _net(torch.nn.ReLU)
    mlp = MLP.from_sequential(net)
    params = _params(net)
    support, query = _tasks()
    cfg = InnerConfig(lr=0.05, steps=2)
    fast, ok = mlp_mse_adapt_batched_with_status(mlp, params, support, cfg)
    generic, _ = adapt_batched_with_status(mse_loss_fn(net), params, support, cfg)
    assert ok.tolist() == [True] * 5
    for name in params:
        assert fast[name].shape == generic[name].shape
        torch.testing.assert_close(fast[name], generic[name], rtol=0, atol=1e-12)
    expected = torch.func.vmap(lambda p, x: functional_call(net, p, (x,)))(generic, query[0])
    torch.testing.assert_close(mlp_forward(mlp, fast, query[0]), expected)
    shared = mlp_forward(mlp, params, query[0])
    torch.testing.assert_close(shared, net(query[0]))
    zero, _ = mlp_mse_adapt_batched_with_status(mlp, params, support, InnerConfig(steps=0))
    assert all(torch.equal(zero[k][2], params[k]) for k in params)


def _with_nan_in_task(task: int):
    support, query = _tasks()
    y = support[1].clone()
    y[task, 0, 0] = float("nan")
    return (support[0], y), query


def test_non_finite_tasks_raise_or_roll_back_as_the_generic_path() -> None:
    net = _net(torch.nn.Tanh)
    mlp = MLP.from_sequential(net)
    params = _params(net)
    support, query = _with_nan_in_task(3)
    with pytest.raises(NonFiniteError, match=r"task 3 step\(s\) \[0, 1\] \(of 5\)"):
        mlp_mse_adapt_batched_with_status(mlp, params, support, InnerConfig(steps=2))
    cfg = InnerConfig(lr=0.1, steps=2, on_nonfinite="rollback")
    adapted, ok = mlp_mse_adapt_batched_with_status(mlp, params, support, cfg)
    assert ok.tolist() == [True, True, True, False, True]
    assert all(torch.equal(adapted[k][3], params[k]) for k in params)
    loss_fn = mse_loss_fn(net)
    leaves = list(params.values())
    fast = _flat_grad(mlp_mse_meta_loss(mlp, params, support, query, cfg), leaves)
    generic = _flat_grad(meta_loss(loss_fn, loss_fn, params, support, query, cfg), leaves)
    assert torch.isfinite(fast).all()
    assert (fast - generic).abs().max().item() <= 1e-12


def test_only_plain_mlps_and_matching_inputs_are_accepted() -> None:
    with pytest.raises(ValueError, match="Sequential"):
        MLP.from_sequential(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="ReLU or Tanh"):
        MLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.Sigmoid(),
                                                torch.nn.Linear(2, 1)))  # fmt: skip
    with pytest.raises(ValueError, match="one activation"):
        MLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.ReLU()))
    mixed = torch.nn.Sequential(
        torch.nn.Linear(1, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2), torch.nn.Tanh(),
        torch.nn.Linear(2, 1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="one activation"):
        MLP.from_sequential(mixed)
    with pytest.raises(ValueError, match="bias"):
        MLP.from_sequential(torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False)))
    net = _net(torch.nn.ReLU)
    mlp = MLP.from_sequential(net)
    params = _params(net)
    support, query = _tasks()
    with pytest.raises(ValueError, match="not those of the MLP"):
        mlp_mse_meta_loss(mlp, {"0.weight": params["0.weight"]}, support, query, InnerConfig())
    with pytest.raises(ValueError, match="tasks"):
        mlp_mse_meta_loss(mlp, params, support, (query[0][:2], query[1][:2]), InnerConfig())
    with pytest.raises(ValueError, match="points"):
        flat = (support[0][0], support[1][0])
        mlp_mse_adapt_batched_with_status(mlp, params, flat, InnerConfig())
