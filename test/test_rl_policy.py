"""Gaussian MLP policy: spec validation, log-density, and the numpy twin."""

import math

import numpy as np
import pytest
import torch

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle
from maml_ros.rl.policy import (
    GaussianMLPPolicy,
    PolicySpec,
    action_mean,
    gaussian_kl,
    log_prob,
    log_prob_vjp,
    make_policy,
    normalize_obs,
    numpy_policy,
)
from maml_ros.runtime import PolicySpecError


def random_bundle(seed: int = 0, spec: PolicySpec | None = None) -> PolicyBundle:
    spec = spec or PolicySpec()
    gen = torch.Generator().manual_seed(seed)
    policy = GaussianMLPPolicy(spec)
    params = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in policy.params().items()}
    return PolicyBundle(
        spec=spec,
        params=params,
        obs_mean=torch.randn(spec.obs_dim, generator=gen),
        obs_std=torch.rand(spec.obs_dim, generator=gen) + 0.5,
        inner=InnerConfig(lr=0.1),
    )


def test_param_shapes_match_module():
    spec = PolicySpec(obs_dim=5, act_dim=3, hidden=(8, 4))
    policy = GaussianMLPPolicy(spec)
    assert {k: tuple(v.shape) for k, v in policy.params().items()} == spec.param_shapes()


@pytest.mark.parametrize(
    "bad",
    [
        {"obs_dim": 0},
        {"act_dim": 2.5},
        {"hidden": []},
        {"hidden": [64, -1]},
        {"activation": "relu"},
        {"init_log_std": float("nan")},
        {"action_low": 1.0, "action_high": -1.0},
    ],
)
def test_spec_rejects_invalid(bad):
    with pytest.raises(PolicySpecError):
        PolicySpec.from_dict({**PolicySpec().to_dict(), **bad})


def test_spec_rejects_unknown_keys_and_round_trips():
    spec = PolicySpec(hidden=(32, 16))
    assert PolicySpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(PolicySpecError, match="unknown"):
        PolicySpec.from_dict({**spec.to_dict(), "depth": 3})


def test_log_prob_matches_torch_distributions():
    bundle = random_bundle(1)
    policy = make_policy(bundle)
    obs, actions = torch.randn(4, 6, 14), torch.randn(4, 6, 7)
    mean = action_mean(policy, bundle.params, obs)
    dist = torch.distributions.Normal(mean, bundle.params["log_std"].exp())
    expected = dist.log_prob(actions).sum(-1)
    torch.testing.assert_close(log_prob(policy, bundle.params, obs, actions), expected)


@pytest.mark.parametrize("hidden", [(5,), (6, 4), (3, 5, 4)])
def test_closed_form_log_prob_vjp_equals_autograd(hidden):
    spec = PolicySpec(obs_dim=3, act_dim=2, hidden=hidden)
    gen = torch.Generator().manual_seed(1)
    policy = GaussianMLPPolicy(spec, torch.randn(3, generator=gen), torch.rand(3, generator=gen))
    policy.double()
    params = {k: v.double() + 0.3 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
              for k, v in policy.params().items()}  # fmt: skip
    # One log_std below the clamp's range: no gradient reaches it, as with autograd.
    params["log_std"] = torch.tensor([-0.4, -7.0], dtype=torch.float64)
    obs = 3 * torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    actions = torch.randn(4, 6, 2, generator=gen, dtype=torch.float64)
    weights = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    obs_norm = normalize_obs(obs, policy.obs_mean, policy.obs_std)
    logp, vjp = log_prob_vjp(params, obs_norm, actions)
    torch.testing.assert_close(logp, log_prob(policy, params, obs, actions), rtol=0, atol=1e-12)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    expected = torch.autograd.grad(
        (weights * log_prob(policy, leaves, obs, actions)).sum(), list(leaves.values())
    )
    got = vjp(weights)
    assert set(got) == set(params)
    for name, grad in zip(leaves, expected, strict=True):
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-12)
    assert got["log_std"][1] == 0


def test_gaussian_kl_matches_torch():
    p = torch.distributions.Normal(torch.randn(3, 7), torch.rand(7) + 0.2)
    q = torch.distributions.Normal(torch.randn(3, 7), torch.rand(7) + 0.2)
    expected = torch.distributions.kl_divergence(p, q).sum(-1)
    got = gaussian_kl(p.mean, p.stddev.log(), q.mean, q.stddev.log())
    torch.testing.assert_close(got, expected)


def test_numpy_policy_equals_torch_policy():
    bundle = random_bundle(2)
    policy = make_policy(bundle)
    np_policy = numpy_policy(bundle)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = rng.normal(0, 3, size=14).astype(np.float32)
        expected = action_mean(policy, bundle.params, torch.from_numpy(obs)).detach().numpy()
        np.testing.assert_allclose(np_policy.act(obs, explore=False), expected, atol=1e-5)


def test_numpy_policy_reuses_its_buffer_and_explores_with_the_policy_std():
    bundle = random_bundle(3)
    np_policy = numpy_policy(bundle)
    obs = np.zeros(14, dtype=np.float32)
    first = np_policy.act(obs, explore=False)
    mean = first.copy()
    assert np_policy.act(obs, explore=False) is first  # no new array per call
    rng = np.random.default_rng(1)
    samples = np.stack([np_policy.act(obs, True, rng).copy() for _ in range(4000)])
    std = np.exp(bundle.params["log_std"].numpy())
    np.testing.assert_allclose(samples.mean(0), mean, atol=4 * std.max() / math.sqrt(4000) + 1e-3)
    np.testing.assert_allclose(samples.std(0), std, rtol=0.1)
    out = np.empty(7, dtype=np.float32)
    assert np_policy.act(obs, False, out=out) is out


def test_numpy_policy_rejects_bad_observation_and_missing_rng():
    np_policy = numpy_policy(random_bundle(4))
    with pytest.raises(ValueError, match="shape"):
        np_policy.act(np.zeros(13, dtype=np.float32), explore=False)
    with pytest.raises(ValueError, match="rng"):
        np_policy.act(np.zeros(14, dtype=np.float32), explore=True)
