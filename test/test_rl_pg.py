"""Policy-gradient inner loss: GAE and returns, baseline, gradient sign/scale, second order,
and the on-robot adapt_policy."""

import dataclasses

import numpy as np
import pytest
import torch

from maml_ros.meta import InnerConfig, adapt, adapt_batched
from maml_ros.rl.adapt import adapt_policy, warm_up
from maml_ros.rl.checkpoint import PolicyBundle
from maml_ros.rl.pg import (
    PGConfig,
    RolloutError,
    Rollouts,
    compute_advantages,
    discounted_cumsum,
    fit_linear_baseline,
    gae_advantages,
    inner_loss_fn,
    make_pg_batch,
    pg_grad_and_value,
    pg_loss,
)
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec, log_prob, normalize_obs


def reference_gae(rewards, values, mask, gamma, lam):
    """Straightforward loop: per episode, backwards over its real steps."""
    adv = np.zeros_like(rewards)
    for k in range(rewards.shape[0]):
        length = int(mask[k].sum())
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[k, t + 1] if t + 1 < length else 0.0
            delta = rewards[k, t] + gamma * next_value - values[k, t]
            running = delta + gamma * lam * running
            adv[k, t] = running
    return adv


def test_gae_matches_reference_loop():
    rng = np.random.default_rng(0)
    k, t = 5, 12
    rewards = rng.normal(size=(k, t))
    values = rng.normal(size=(k, t))
    lengths = [12, 7, 1, 12, 4]
    mask = np.array([[1.0 if s < n else 0.0 for s in range(t)] for n in lengths])
    rewards *= mask
    for gamma, lam in [(0.99, 1.0), (0.9, 0.95), (1.0, 0.0)]:
        got = gae_advantages(*(torch.tensor(x) for x in (rewards, values, mask)), gamma, lam)
        np.testing.assert_allclose(got.numpy(), reference_gae(rewards, values, mask, gamma, lam))


def test_discounted_cumsum_matches_loop_and_batches():
    x = torch.randn(3, 4, 9, dtype=torch.float64)
    expected = torch.zeros_like(x)
    running = torch.zeros(3, 4, dtype=torch.float64)
    for t in reversed(range(9)):
        running = x[..., t] + 0.9 * running
        expected[..., t] = running
    torch.testing.assert_close(discounted_cumsum(x, 0.9), expected)


def test_linear_baseline_recovers_a_linear_target():
    obs = torch.randn(2, 6, 10, 3, dtype=torch.float64)
    mask = torch.ones(2, 6, 10, dtype=torch.float64)
    steps = torch.arange(10, dtype=torch.float64) / 100
    target = 2.0 * obs[..., 0] - obs[..., 1] ** 2 + 5 * steps + 1.0
    values = fit_linear_baseline(obs, target, mask, reg=1e-10)
    torch.testing.assert_close(values, target, atol=1e-5, rtol=1e-5)


def test_advantages_are_normalised_per_task_on_real_steps():
    # More real steps than baseline features, so the baseline cannot fit the returns exactly
    # (advantages near 0 would make the 1e-8 in the normaliser matter).
    g = torch.Generator().manual_seed(0)
    obs, rewards = torch.randn(3, 4, 20, 14, generator=g), torch.randn(3, 4, 20, generator=g)
    mask = torch.ones(3, 4, 20)
    mask[1, 2, 12:] = 0
    adv = compute_advantages(obs, rewards * mask, mask, PGConfig())
    for task in range(3):
        real = adv[task][mask[task] > 0]
        assert abs(real.mean().item()) < 1e-5
        assert abs(real.std(unbiased=False).item() - 1) < 1e-4
    assert torch.all(adv[1, 2, 12:] == 0)


def bandit_setup(n: int = 4000, seed: int = 0):
    """One-step bandit: constant observation, action mean = last-layer bias."""
    torch.manual_seed(seed)
    spec = PolicySpec(obs_dim=1, act_dim=1, hidden=(2,), init_log_std=0.0)
    policy = GaussianMLPPolicy(spec)
    params = policy.params()
    params["mlp.1.weight"] = torch.zeros(1, 2)
    params["mlp.1.bias"] = torch.zeros(1)
    obs = torch.zeros(n, 1, 1)
    actions = torch.randn(n, 1, 1)  # sampled from N(0, 1) = the policy
    return policy, params, obs, actions


def test_pg_gradient_sign_and_scale_on_a_bandit():
    policy, params, obs, actions = bandit_setup()
    target = 0.7
    rewards = -((actions[..., 0] - target) ** 2)
    cfg = PGConfig(gamma=1.0, normalize_advantages=False)
    batch = make_pg_batch(policy, params, obs, actions, rewards, torch.ones_like(rewards), cfg)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    (grad_bias,) = torch.autograd.grad(pg_loss(policy, params, batch), [params["mlp.1.bias"]])
    # Vanilla PG at sigma=1: d/dmu E[A] = E[A (a - mu)]; the loss is its negative.
    expected = -(batch["advantages"][..., 0] * actions[..., 0, 0]).mean()
    torch.testing.assert_close(grad_bias[0], expected)
    # True gradient of E[-(a - 0.7)^2] w.r.t. mu at mu=0 is 2*0.7; the estimate is close and the
    # loss gradient points the other way (descending it moves the mean toward the target).
    assert -grad_bias.item() == pytest.approx(2 * target, rel=0.15)
    new = adapt(inner_loss_fn(policy), params, batch, InnerConfig(lr=0.1))
    assert 0 < new["mlp.1.bias"].item() < target


@pytest.mark.parametrize(("reward_power", "far_over_near"), [(1.0, 1.0), (2.0, 2.0)])
def test_reward_power_two_makes_the_step_grow_with_the_distance(reward_power, far_over_near):
    # Reward = minus the distance to a goal 3 or 6 exploration widths away. Its gradient has
    # the same length for both goals; that of its signed square, -distance^2, doubles.
    policy, params, obs, actions = bandit_setup()
    cfg = PGConfig(gamma=1.0, normalize_advantages=False, reward_power=reward_power)
    steps = []
    for goal in (3.0, 6.0):
        rewards = -(actions[..., 0] - goal).abs()
        batch = make_pg_batch(policy, params, obs, actions, rewards, torch.ones_like(rewards), cfg)
        new = adapt(inner_loss_fn(policy), params, batch, InnerConfig(lr=0.01))
        steps.append(new["mlp.1.bias"].item())
    assert steps[0] > 0
    assert steps[1] / steps[0] == pytest.approx(far_over_near, rel=0.1)


def tiny_problem():
    torch.manual_seed(3)
    spec = PolicySpec(obs_dim=2, act_dim=2, hidden=(3,), init_log_std=-0.3)
    policy = GaussianMLPPolicy(spec).double()
    params = {k: v.double() for k, v in policy.params().items()}
    params = {k: v + 0.3 * torch.randn_like(v) for k, v in params.items()}

    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        obs = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
        actions = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
        rewards = torch.randn(3, 4, generator=g, dtype=torch.float64)
        mask = torch.ones(3, 4, dtype=torch.float64)
        return make_pg_batch(policy, params, obs, actions, rewards, mask, PGConfig(gamma=0.9))

    return policy, params, batch(1), batch(2)


def test_second_order_meta_gradient_matches_finite_differences():
    policy, params, support, query = tiny_problem()
    cfg = InnerConfig(lr=0.5, steps=1)
    loss_fn = inner_loss_fn(policy)

    def objective(p):
        return loss_fn(adapt(loss_fn, p, support, cfg), query)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(objective(leaves), list(leaves.values()))
    analytic = torch.cat([g.flatten() for g in grads])
    numeric = []
    eps = 1e-6
    for name, value in params.items():
        for i in range(value.numel()):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            numeric.append((objective(plus) - objective(minus)) / (2 * eps))
    numeric = torch.stack(numeric).detach()
    torch.testing.assert_close(analytic, numeric, atol=1e-7, rtol=1e-5)
    # The first-order gradient differs: the test would catch a detached inner step.
    first = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    fo_cfg = InnerConfig(lr=0.5, steps=1, first_order=True)
    fo = torch.autograd.grad(
        loss_fn(adapt(loss_fn, first, support, fo_cfg), query), list(first.values())
    )
    assert (torch.cat([g.flatten() for g in fo]) - numeric).abs().max() > 1e-4


@pytest.mark.parametrize("at_sampling_params", [True, False])
def test_closed_form_pg_gradient_equals_autograd(at_sampling_params):
    policy, params, support, _ = tiny_problem()
    if at_sampling_params:
        support = {k: v for k, v in support.items() if k != "logp_old"}
    else:  # away from the sampling params: ratios differ from 1
        params = {k: v + 0.2 for k, v in params.items()}
    obs_norm = normalize_obs(support["obs"], policy.obs_mean, policy.obs_std)
    grads, loss = pg_grad_and_value(obs_norm)(params, support)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    expected_loss = pg_loss(policy, leaves, support)
    expected = torch.autograd.grad(expected_loss, list(leaves.values()))
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-12, atol=1e-14)
    for name, grad in zip(leaves, expected, strict=True):
        torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-12)


def make_bundle(lrs=None) -> PolicyBundle:
    spec = PolicySpec(hidden=(16, 16))
    return PolicyBundle(
        spec=spec,
        params=GaussianMLPPolicy(spec).params(),
        obs_mean=torch.zeros(14),
        obs_std=torch.ones(14),
        inner=InnerConfig(lr=0.1, steps=1),
        lrs=lrs,
        version=3,
    )


def make_rollouts(k=4, t=10, seed=0) -> Rollouts:
    g = torch.Generator().manual_seed(seed)
    return Rollouts(
        torch.randn(k, t, 14, generator=g),
        torch.randn(k, t, 7, generator=g),
        torch.randn(k, t, generator=g),
    )


def test_adapt_policy_equals_the_training_inner_step():
    bundle, rollouts = make_bundle(), make_rollouts()
    new, info = adapt_policy(bundle, rollouts, loss_after=True)
    assert new.version == 4 and bundle.version == 3
    assert set(info) >= {"inner_loss", "steps", "device", "n_transitions", "total_s"}
    assert isinstance(info["inner_loss"], float)
    assert info["inner_loss_after"] < info["inner_loss"]
    # The meta-training path: vmapped over a task dimension, same loss and config.
    policy = GaussianMLPPolicy(bundle.spec)
    mask = torch.ones(4, 10)
    batch = make_pg_batch(
        policy, bundle.params, rollouts.obs, rollouts.actions, rollouts.rewards, mask, bundle.pg
    )
    # The loss reported before the update (no forward pass) is the loss at theta_old.
    with torch.no_grad():
        assert info["inner_loss"] == pytest.approx(
            float(pg_loss(policy, bundle.params, batch)), abs=1e-6
        )
    batched = adapt_batched(
        inner_loss_fn(policy), bundle.params, {k: v[None] for k, v in batch.items()}, bundle.inner
    )
    for name, value in new.params.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value, batched[name][0])
    assert any(not torch.equal(new.params[k], bundle.params[k]) for k in bundle.params)


def test_adapt_policy_with_three_steps_equals_the_training_inner_steps():
    """Several steps keep the ratio to the sampling policy (log pi_old), as training does."""
    bundle, rollouts = make_bundle(), make_rollouts()
    new, _ = adapt_policy(bundle, rollouts, steps=3)
    policy = GaussianMLPPolicy(bundle.spec)
    batch = make_pg_batch(
        policy,
        bundle.params,
        rollouts.obs,
        rollouts.actions,
        rollouts.rewards,
        torch.ones(4, 10),
        bundle.pg,
    )
    cfg = dataclasses.replace(bundle.inner, steps=3)
    batched = adapt_batched(
        inner_loss_fn(policy), bundle.params, {k: v[None] for k, v in batch.items()}, cfg
    )
    for name, value in new.params.items():
        torch.testing.assert_close(value, batched[name][0])


def test_adapt_policy_uses_meta_sgd_lrs_and_steps():
    bundle = make_bundle()
    lrs = {k: torch.zeros_like(v) for k, v in bundle.params.items()}
    lrs["log_std"] = torch.full((7,), 0.1)
    new, _ = adapt_policy(bundle.replace(lrs=lrs), make_rollouts())
    for name, value in new.params.items():
        assert torch.equal(value, bundle.params[name]) == (name != "log_std")
    one, _ = adapt_policy(bundle, make_rollouts(), steps=1)
    three, info = adapt_policy(bundle, make_rollouts(), steps=3)
    assert info["steps"] == 3
    assert not torch.equal(one.params["log_std"], three.params["log_std"])


def test_adapt_policy_handles_padded_episodes():
    rollouts = make_rollouts()
    mask = torch.ones(4, 10)
    mask[1, 6:] = 0
    padded = Rollouts(rollouts.obs, rollouts.actions, rollouts.rewards * mask, mask)
    changed = Rollouts(padded.obs.clone(), padded.actions, padded.rewards, mask)
    changed.obs[1, 7:] = 1e3  # padding content must not matter
    bundle = make_bundle()
    a, info = adapt_policy(bundle, padded)
    b, _ = adapt_policy(bundle, changed)
    assert info["n_transitions"] == 36
    for name in bundle.params:
        torch.testing.assert_close(a.params[name], b.params[name])
    unpadded, _ = adapt_policy(bundle, Rollouts(rollouts.obs, rollouts.actions, padded.rewards))
    assert not torch.equal(unpadded.params["mlp.2.bias"], a.params["mlp.2.bias"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: Rollouts(r.obs[..., :13], r.actions, r.rewards), "obs"),
        (lambda r: Rollouts(r.obs, r.actions[:, :5], r.rewards), "actions"),
        (lambda r: Rollouts(r.obs, r.actions, r.rewards[:, :3]), "rewards"),
        (lambda r: Rollouts(r.obs, r.actions, r.rewards * float("nan")), "NaN"),
        (lambda r: Rollouts(r.obs, r.actions, r.rewards, torch.zeros(4, 10)), "mask"),
        (lambda r: Rollouts(r.obs, r.actions, r.rewards, torch.full((4, 10), 0.5)), "mask"),
    ],
)
def test_adapt_policy_rejects_bad_rollouts(change, reason):
    with pytest.raises(RolloutError, match=reason):
        adapt_policy(make_bundle(), change(make_rollouts()))


def test_adapt_policy_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        adapt_policy(make_bundle(), make_rollouts(), steps=0)


def test_likelihood_ratio_loss_value_is_minus_mean_advantage_at_theta_old():
    bundle = make_bundle()
    policy = GaussianMLPPolicy(bundle.spec)
    r = make_rollouts()
    batch = make_pg_batch(
        policy,
        bundle.params,
        r.obs,
        r.actions,
        r.rewards,
        torch.ones(4, 10),
        PGConfig(normalize_advantages=False),
    )
    torch.testing.assert_close(pg_loss(policy, bundle.params, batch), -batch["advantages"].mean())
    assert torch.allclose(log_prob(policy, bundle.params, r.obs, r.actions), batch["logp_old"])


def test_warm_up_runs_an_adaptation_and_leaves_the_bundle_alone():
    bundle = make_bundle()
    before = {k: v.clone() for k, v in bundle.params.items()}
    assert warm_up(bundle) > 0
    assert all(torch.equal(before[k], bundle.params[k]) for k in before)
