"""The CUDA-graph inner update: its Cholesky baseline, its buffer packing (run eagerly on the
CPU, as CI has no GPU) and, where CUDA is available, adapt_policy on the GPU against the CPU."""

import dataclasses

import pytest
import torch
from test_rl_pg import make_bundle, make_rollouts

from maml_ros.meta import InnerConfig, NonFiniteError
from maml_ros.rl import graphed
from maml_ros.rl.adapt import adapt_policy, warm_up
from maml_ros.rl.graphed import GraphedInnerUpdate, graphed_inner_update
from maml_ros.rl.pg import Rollouts, fit_linear_baseline

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CPU = torch.device("cpu")


def padded_rollouts(seed=0) -> Rollouts:
    r = make_rollouts(seed=seed)
    mask = torch.ones(4, 10)
    mask[2, 6:] = 0
    return Rollouts(r.obs, r.actions, r.rewards * mask, mask)


def plain_bundle():
    """Rates small enough that three steps on random rollouts stay well-behaved (with larger
    ones the ratio blows up and float32 results differ by rounding alone)."""
    return make_bundle().replace(inner=InnerConfig(lr=0.02, steps=1))


def meta_sgd_bundle():
    bundle = plain_bundle()
    lrs = {k: torch.full_like(v, 0.01) for k, v in bundle.params.items()}
    lrs["log_std"] = torch.full((7,), 0.04)
    return bundle.replace(lrs=lrs)


def assert_same_update(got, expected, atol=1e-5, rtol=1e-4):
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=atol, rtol=rtol)


def test_cholesky_and_lstsq_baselines_agree_per_task():
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(3, 5, 12, 14, generator=g)
    returns = torch.randn(3, 5, 12, generator=g)
    mask = torch.ones(3, 5, 12)
    mask[1, 2, 7:] = 0
    lstsq = fit_linear_baseline(obs, returns, mask, 1e-5, "lstsq")
    cholesky = fit_linear_baseline(obs, returns, mask, 1e-5, "cholesky")
    torch.testing.assert_close(cholesky, lstsq, atol=1e-4, rtol=1e-4)
    assert bool((cholesky[1, 2, 7:] == 0).all())
    with pytest.raises(ValueError, match="solver"):
        fit_linear_baseline(obs, returns, mask, 1e-5, "qr")


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("make", [plain_bundle, meta_sgd_bundle], ids=["lr", "meta_sgd"])
def test_graphed_update_run_eagerly_equals_adapt_policy(steps, make):
    bundle, rollouts = make(), padded_rollouts()
    expected, info = adapt_policy(bundle, rollouts, steps=steps)
    cfg = dataclasses.replace(bundle.inner, steps=steps, first_order=True)
    params, loss, finite = graphed_inner_update(bundle, rollouts.validated(bundle.spec), cfg, CPU)
    assert_same_update(params, expected.params)
    assert float(loss) == pytest.approx(info["inner_loss"], abs=1e-5)
    assert finite.dtype == torch.bool and finite.tolist() == [True] * steps


def test_graphed_update_reads_its_inputs_on_every_call_and_owns_its_outputs():
    bundle = make_bundle()
    cfg = dataclasses.replace(bundle.inner, first_order=True)
    update = GraphedInnerUpdate(bundle.spec, bundle.pg, cfg, None, 4, 10, CPU)
    first_data, second_data = padded_rollouts(0), padded_rollouts(1)
    first, _, _ = update(bundle, first_data.validated(bundle.spec))
    other_bundle = bundle.replace(obs_std=torch.full((14,), 2.0))
    second, _, _ = update(other_bundle, second_data.validated(bundle.spec))
    assert_same_update(first, adapt_policy(bundle, first_data)[0].params)
    assert_same_update(second, adapt_policy(other_bundle, second_data)[0].params)
    assert not torch.equal(first["mlp.0.weight"], second["mlp.0.weight"])


def test_graphed_update_flags_a_non_finite_step():
    bundle = make_bundle()
    overflow = Rollouts(make_rollouts().obs, make_rollouts().actions, torch.full((4, 10), 1e38))
    cfg = dataclasses.replace(bundle.inner, first_order=True)
    _, loss, finite = graphed_inner_update(bundle, overflow.validated(bundle.spec), cfg, CPU)
    assert finite.tolist() == [False] and not torch.isfinite(loss)


@needs_cuda
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("make", [plain_bundle, meta_sgd_bundle], ids=["lr", "meta_sgd"])
def test_adapt_policy_on_cuda_replays_a_graph_equal_to_the_cpu_update(steps, make):
    bundle = make()
    for seed in (0, 1):  # the second call replays the graph the first one captured
        rollouts = padded_rollouts(seed)
        cpu, cpu_info = adapt_policy(bundle, rollouts, steps=steps, device="cpu")
        gpu, gpu_info = adapt_policy(bundle, rollouts, steps=steps, device="cuda")
        assert gpu_info["device"].startswith("cuda")
        assert all(v.device.type == "cpu" for v in gpu.params.values())
        assert_same_update(gpu.params, cpu.params)
        assert gpu_info["inner_loss"] == pytest.approx(cpu_info["inner_loss"], abs=1e-5)
    assert graphed._update_for.cache_info().hits >= 1


@needs_cuda
def test_adapt_policy_on_cuda_raises_on_a_non_finite_update_like_the_cpu():
    bundle = make_bundle()
    overflow = Rollouts(make_rollouts().obs, make_rollouts().actions, torch.full((4, 10), 1e38))
    for device in ("cpu", "cuda"):
        with pytest.raises(NonFiniteError):
            adapt_policy(bundle, overflow, device=device)


@needs_cuda
def test_warm_up_on_cuda_captures_the_graph_of_the_real_shape():
    bundle = make_bundle()
    graphed._update_for.cache_clear()
    warm_up(bundle, "cuda", rollouts=4, horizon=10, steps=1)
    adapt_policy(bundle, padded_rollouts(), steps=1, device="cuda")
    info = graphed._update_for.cache_info()
    assert (info.misses, info.hits) == (1, 1)
