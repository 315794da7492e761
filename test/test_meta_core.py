"""maml_ros.meta core: vmapped vs loop, finite differences, first/second order, guards."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from maml_ros.meta import (
    InnerConfig,
    NonFiniteError,
    adapt,
    adapt_batched,
    adapt_batched_with_status,
    adapt_per_task,
    init_meta_sgd_lrs,
    meta_loss,
    meta_loss_loop,
)

torch.set_num_threads(1)

NUM_TASKS = 4
SHOTS = 6


def _net(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
        torch.nn.Linear(8, 1),
    ).to(dtype)  # fmt: skip


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}


def _mse_loss(net: torch.nn.Module):
    def loss(params, batch):
        x, y = batch
        return ((functional_call(net, params, (x,)) - y) ** 2).mean()

    return loss


def _tasks(num_tasks: int = NUM_TASKS, seed: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    amp = 0.5 + 2 * torch.rand(num_tasks, 1, 1, generator=gen, dtype=dtype)
    phase = 3 * torch.rand(num_tasks, 1, 1, generator=gen, dtype=dtype)

    def draw():
        x = 10 * torch.rand(num_tasks, SHOTS, 1, generator=gen, dtype=dtype) - 5
        return x, amp * torch.sin(x + phase)

    return draw(), draw()


def _flat_grad(loss: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, tensors)
    return torch.cat([g.flatten() for g in grads])


CONFIGS = {
    "maml-2nd-order": (InnerConfig(lr=0.05, steps=1), False),
    "maml-3-steps-clip": (InnerConfig(lr=0.05, steps=3, grad_clip=0.5), False),
    "fomaml": (InnerConfig(lr=0.05, steps=2, first_order=True), False),
    "meta-sgd": (InnerConfig(lr=0.05, steps=2), True),
    "meta-sgd-rollback-mode": (InnerConfig(lr=0.05, steps=1, on_nonfinite="rollback"), True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vmapped_meta_gradient_equals_loop(name: str) -> None:
    cfg, use_lrs = CONFIGS[name]
    net = _net()
    params = _params(net)
    lrs = init_meta_sgd_lrs(params, 0.05) if use_lrs else None
    leaves = list(params.values()) + (list(lrs.values()) if lrs else [])
    support, query = _tasks()
    loss_fn = _mse_loss(net)

    vmapped = meta_loss(loss_fn, loss_fn, params, support, query, cfg, lrs)
    looped = meta_loss_loop(loss_fn, loss_fn, params, support, query, cfg, lrs)
    assert abs(vmapped.item() - looped.item()) <= 1e-12
    diff = (_flat_grad(vmapped, leaves) - _flat_grad(looped, leaves)).abs().max().item()
    assert diff <= 1e-10


def _finite_difference_check(use_lrs: bool, first_order: bool) -> tuple[float, float]:
    """Directional derivative of the meta-objective: autograd vs central differences."""
    net = _net()
    params = _params(net)
    lrs = init_meta_sgd_lrs(params, 0.1) if use_lrs else None
    support, query = _tasks()
    loss_fn = _mse_loss(net)
    cfg = InnerConfig(lr=0.1, steps=2, first_order=first_order)
    return _directional_check(
        lambda p, lr: meta_loss(loss_fn, loss_fn, p, support, query, cfg, lr), params, lrs
    )


def _directional_check(objective, params, lrs) -> tuple[float, float]:
    """``objective(params, lrs)``'s derivative along a random direction: autograd vs central
    differences."""
    leaves = list(params.values()) + (list(lrs.values()) if lrs else [])
    analytic = _flat_grad(objective(params, lrs), leaves)
    gen = torch.Generator().manual_seed(7)
    direction = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in leaves]
    eps = 1e-6

    def moved(sign: float) -> float:
        ts = [(t + sign * eps * d).detach() for t, d in zip(leaves, direction, strict=True)]
        p = dict(zip(params, ts[: len(params)], strict=True))
        lr = dict(zip(lrs, ts[len(params) :], strict=True)) if lrs else None
        return objective(p, lr).item()

    numeric = (moved(+1) - moved(-1)) / (2 * eps)
    directional = torch.dot(analytic, torch.cat([d.flatten() for d in direction])).item()
    return directional, numeric


@pytest.mark.parametrize("use_lrs", [False, True], ids=["maml", "meta-sgd"])
def test_second_order_meta_gradient_matches_finite_differences(use_lrs: bool) -> None:
    directional, numeric = _finite_difference_check(use_lrs, first_order=False)
    assert directional == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_first_order_meta_gradient_differs_from_finite_differences() -> None:
    directional, numeric = _finite_difference_check(use_lrs=False, first_order=True)
    assert abs(directional - numeric) > 1e-3 * abs(numeric)


def test_first_and_second_order_agree_when_inner_loss_is_linear() -> None:
    net = _net()
    params = _params(net)
    support, query = _tasks()
    outer = _mse_loss(net)

    def linear_inner(p, batch):  # linear in params: the Hessian term vanishes
        x, _ = batch
        return sum((w * x.mean()).sum() for w in p.values())

    grads = {}
    for first_order in (False, True):
        cfg = InnerConfig(lr=0.1, steps=2, first_order=first_order)
        loss = meta_loss(linear_inner, outer, params, support, query, cfg)
        grads[first_order] = _flat_grad(loss, list(params.values()))
    assert torch.allclose(grads[False], grads[True], rtol=0, atol=1e-12)

    cfg2, cfg1 = InnerConfig(lr=0.1, steps=2), InnerConfig(lr=0.1, steps=2, first_order=True)
    loss_fn = _mse_loss(net)
    leaves = list(params.values())
    second = _flat_grad(meta_loss(loss_fn, outer, params, support, query, cfg2), leaves)
    first = _flat_grad(meta_loss(loss_fn, outer, params, support, query, cfg1), leaves)
    assert (second - first).abs().max().item() > 1e-4


def _with_nan_in_task(task: int):
    support, query = _tasks()
    x, y = support
    y = y.clone()
    y[task, 0, 0] = float("nan")
    return (x, y), query


def test_nan_in_inner_loss_raises_naming_the_task() -> None:
    net = _net()
    params = _params(net)
    support, _ = _with_nan_in_task(2)
    with pytest.raises(NonFiniteError, match=r"task 2 step\(s\) \[0, 1\] \(of 4\)"):
        adapt_batched(_mse_loss(net), params, support, InnerConfig(steps=2))
    single = (support[0][2], support[1][2])
    with pytest.raises(NonFiniteError, match="step"):
        adapt(_mse_loss(net), params, single, InnerConfig())


def test_rollback_returns_theta_for_the_bad_task_only() -> None:
    net = _net()
    params = _params(net)
    loss_fn = _mse_loss(net)
    support, query = _with_nan_in_task(1)
    cfg = InnerConfig(lr=0.1, steps=2, on_nonfinite="rollback")
    adapted, task_ok = adapt_batched_with_status(loss_fn, params, support, cfg)
    assert task_ok.tolist() == [True, False, True, True]
    for name, p in params.items():
        assert torch.equal(adapted[name][1], p)
        for task in (0, 2, 3):
            assert not torch.equal(adapted[name][task], p)
            one = adapt(loss_fn, params, (support[0][task], support[1][task]), cfg)
            assert torch.allclose(adapted[name][task], one[name], rtol=0, atol=1e-12)

    # the meta-gradient stays finite and equals the per-task reference
    leaves = list(params.values())
    vmapped = _flat_grad(meta_loss(loss_fn, loss_fn, params, support, query, cfg), leaves)
    looped = _flat_grad(meta_loss_loop(loss_fn, loss_fn, params, support, query, cfg), leaves)
    assert torch.isfinite(vmapped).all()
    assert (vmapped - looped).abs().max().item() <= 1e-10

    single = adapt(loss_fn, params, (support[0][1], support[1][1]), cfg)
    assert all(torch.equal(single[k], params[k]) for k in params)


def test_grad_clip_bounds_the_step() -> None:
    net = _net()
    params = _params(net)
    x, y = _tasks()[0]
    batch = (x[0], 100 * y[0])  # large targets: a large gradient
    loss_fn = _mse_loss(net)
    lr, clip = 0.1, 0.25

    def step_norm(cfg: InnerConfig) -> float:
        new = adapt(loss_fn, params, batch, cfg)
        return math.sqrt(sum(((new[k] - params[k]) ** 2).sum().item() for k in params))

    unclipped = step_norm(InnerConfig(lr=lr))
    clipped = step_norm(InnerConfig(lr=lr, grad_clip=clip))
    assert unclipped > 10 * lr * clip
    assert clipped == pytest.approx(lr * clip, rel=1e-9)
    # a clip above the gradient norm leaves the step unchanged
    assert step_norm(InnerConfig(lr=lr, grad_clip=1e6)) == pytest.approx(unclipped, rel=1e-12)


def test_adapt_does_not_mutate_module_or_input_dict() -> None:
    net = _net()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    snapshot = {k: (v, v.detach().clone()) for k, v in params.items()}
    support, _ = _tasks()
    adapted = adapt(_mse_loss(net), params, (support[0][0], support[1][0]), InnerConfig(steps=3))
    adapt_batched(_mse_loss(net), params, support, InnerConfig(steps=2))

    assert adapted is not params
    assert set(params) == set(snapshot)
    for k, (tensor, value) in snapshot.items():
        assert params[k] is tensor
        assert torch.equal(params[k], value)
        assert not torch.equal(adapted[k], value)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_dtype_follows_params_and_zero_steps_is_identity() -> None:
    net = _net(torch.float32)
    params = _params(net)
    support, _ = _tasks(dtype=torch.float32)
    adapted = adapt_batched(_mse_loss(net), params, support, InnerConfig())
    assert all(v.dtype == torch.float32 and v.shape[0] == NUM_TASKS for v in adapted.values())
    same = adapt(_mse_loss(net), params, (support[0][0], support[1][0]), InnerConfig(steps=0))
    assert all(same[k] is params[k] for k in params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    net = _net()
    params = _params(net)
    support, query = _tasks()
    cfg = InnerConfig(lr=0.05, steps=2)
    loss_cpu = meta_loss(_mse_loss(net), _mse_loss(net), params, support, query, cfg)
    grad_cpu = _flat_grad(loss_cpu, list(params.values()))

    net_gpu = net.cuda()
    params_gpu = {k: v.detach().cuda().requires_grad_(True) for k, v in params.items()}
    to_gpu = lambda batch: tuple(t.cuda() for t in batch)  # noqa: E731
    loss_fn = _mse_loss(net_gpu)
    loss_gpu = meta_loss(loss_fn, loss_fn, params_gpu, to_gpu(support), to_gpu(query), cfg)
    assert loss_gpu.device.type == "cuda"
    grad_gpu = _flat_grad(loss_gpu, list(params_gpu.values())).cpu()
    assert torch.allclose(grad_cpu, grad_gpu, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.0},
        {"lr": -0.1},
        {"lr": float("nan")},
        {"lr": float("inf")},
        {"lr": "0.1"},
        {"lr": True},
        {"steps": -1},
        {"steps": 1.5},
        {"steps": True},
        {"first_order": 1},
        {"grad_clip": 0.0},
        {"grad_clip": -1.0},
        {"grad_clip": float("nan")},
        {"on_nonfinite": "skip"},
    ],
)
def test_inner_config_rejects_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        InnerConfig(**kwargs)


def test_inputs_are_validated() -> None:
    net = _net()
    params = _params(net)
    support, query = _tasks()
    loss_fn = _mse_loss(net)
    bad_lrs = init_meta_sgd_lrs(params, 0.1)
    bad_lrs["0.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="lrs"):
        adapt_batched(loss_fn, params, support, InnerConfig(), bad_lrs)
    with pytest.raises(ValueError, match="not in params"):
        adapt_batched(loss_fn, params, support, InnerConfig(), {"nope": torch.ones(1)})
    with pytest.raises(ValueError, match="leading task dimension"):
        adapt_batched(loss_fn, params, (support[0], support[1][:2]), InnerConfig())
    with pytest.raises(ValueError, match="tasks"):
        meta_loss(loss_fn, loss_fn, params, support, (query[0][:2], query[1][:2]), InnerConfig())
    with pytest.raises(TypeError, match="InnerConfig"):
        adapt(loss_fn, params, support, {"lr": 0.1})
    with pytest.raises(ValueError):
        init_meta_sgd_lrs(params, 0.0)


def _two_rounds(params, lrs, support, second, cfg, loss_fn):
    """Round 1 from theta on ``support``, round 2 from each task's result on ``second``."""
    return adapt_per_task(
        loss_fn, adapt_batched(loss_fn, params, support, cfg, lrs), second, cfg, lrs
    )


@pytest.mark.parametrize("use_lrs", [False, True], ids=["maml", "meta-sgd"])
def test_a_second_round_per_task_equals_the_loop_and_its_gradient_finite_differences(
    use_lrs: bool,
) -> None:
    """adapt_per_task continues each task from its own adapted params: equal to adapting task
    by task, and its second-order gradient through both rounds is exact."""
    net = _net()
    params = _params(net)
    lrs = init_meta_sgd_lrs(params, 0.1) if use_lrs else None
    support, query = _tasks()
    second, _ = _tasks(seed=5)
    loss_fn = _mse_loss(net)
    cfg = InnerConfig(lr=0.1, steps=1)
    both = _two_rounds(params, lrs, support, second, cfg, loss_fn)
    for task in range(NUM_TASKS):
        one = adapt(loss_fn, params, (support[0][task], support[1][task]), cfg, lrs)
        two = adapt(loss_fn, one, (second[0][task], second[1][task]), cfg, lrs)
        for name in params:
            assert torch.allclose(both[name][task], two[name], rtol=0, atol=1e-12)

    def objective(p, lr) -> torch.Tensor:
        adapted = _two_rounds(p, lr, support, second, cfg, loss_fn)
        return torch.vmap(loss_fn)(adapted, query).mean()

    directional, numeric = _directional_check(objective, params, lrs)
    assert directional == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_a_second_round_rolls_a_bad_task_back_to_its_own_params() -> None:
    net = _net()
    params = _params(net)
    loss_fn = _mse_loss(net)
    support, _ = _tasks()
    bad, _ = _with_nan_in_task(2)
    cfg = InnerConfig(lr=0.1, steps=1, on_nonfinite="rollback")
    first = adapt_batched(loss_fn, params, support, cfg)
    second = adapt_per_task(loss_fn, first, bad, cfg)
    for name in params:
        assert torch.equal(second[name][2], first[name][2])
        assert not torch.equal(second[name][0], first[name][0])
    with pytest.raises(NonFiniteError):
        adapt_per_task(loss_fn, first, bad, InnerConfig(lr=0.1, steps=1))
