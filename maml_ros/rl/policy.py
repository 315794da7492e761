"""Gaussian MLP policy: the torch module (functional use) over :mod:`maml_ros.runtime`'s spec.

Parameters are plain dicts (``Params``) named like the module's ``named_parameters``:
``mlp.0.weight``, ``mlp.0.bias``, ..., ``log_std``. The torch functions here are pure in the
parameters so they compose with ``torch.func`` (``functional_call``, ``vmap``, ``grad``).
Observations are normalised with fixed statistics (``obs_mean``, ``obs_std``) that travel with
the weights in a :class:`~maml_ros.rl.checkpoint.PolicyBundle`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from maml_ros.runtime.policy import (
    LOG_STD_RANGE,
    OBS_CLIP,
    NumpyPolicy,
    PolicySpec,
)
from maml_ros.runtime.policy import probe_problem as runtime_probe_problem

if TYPE_CHECKING:
    from maml_ros.rl.checkpoint import PolicyBundle

Params = dict[str, torch.Tensor]


class GaussianMLPPolicy(nn.Module):
    """tanh MLP -> action mean, with a state-independent learned ``log_std``.

    ``forward(obs)`` takes raw observations, normalises them with the ``obs_mean`` /
    ``obs_std`` buffers and returns the action mean. Use :func:`torch.func.functional_call`
    with a ``Params`` dict to evaluate other (e.g. adapted) parameters.
    """

    def __init__(
        self,
        spec: PolicySpec,
        obs_mean: torch.Tensor | None = None,
        obs_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.mlp = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in spec.layer_sizes)
        self.log_std = nn.Parameter(torch.full((spec.act_dim,), float(spec.init_log_std)))
        mean = torch.zeros(spec.obs_dim) if obs_mean is None else obs_mean.detach().clone()
        std = torch.ones(spec.obs_dim) if obs_std is None else obs_std.detach().clone()
        self.register_buffer("obs_mean", mean.to(torch.float32))
        self.register_buffer("obs_std", std.to(torch.float32))
        # Small last layer: the initial policy's mean is near zero (rllab/garage practice).
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Action mean for raw observations ``[..., obs_dim]``."""
        x = ((obs - self.obs_mean) / self.obs_std).clamp(-OBS_CLIP, OBS_CLIP)
        for layer in self.mlp[:-1]:
            x = torch.tanh(layer(x))
        return self.mlp[-1](x)

    def params(self) -> Params:
        """The parameters as a detached dict (float32, own storage)."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}


def action_mean(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Action mean of ``params`` (pure in ``params``; composes with vmap/grad)."""
    weights = {k: v for k, v in params.items() if k != "log_std"}
    return functional_call(policy, weights, (obs,), strict=False)


def log_std_of(params: Params) -> torch.Tensor:
    """The clamped log standard deviation of ``params``."""
    return params["log_std"].clamp(*LOG_STD_RANGE)


def log_prob(
    policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """Gaussian log-density of ``actions`` (summed over action dims): shape ``obs.shape[:-1]``."""
    mean = action_mean(policy, params, obs)
    log_std = log_std_of(params)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)


def normalize_obs(obs: torch.Tensor, obs_mean: torch.Tensor, obs_std: torch.Tensor) -> torch.Tensor:
    """Observations as the policy's first layer sees them (what ``forward`` computes first)."""
    return ((obs - obs_mean) / obs_std).clamp(-OBS_CLIP, OBS_CLIP)


_tanh_backward = torch.ops.aten.tanh_backward.default


def log_prob_vjp(
    params: Params, obs_norm: torch.Tensor, actions: torch.Tensor, with_log_prob: bool = True
) -> tuple[torch.Tensor | None, Callable[[torch.Tensor], Params]]:
    """:func:`log_prob` of normalised observations (:func:`normalize_obs`) and, in closed
    form, its vector-Jacobian product: ``vjp(w)`` is the gradient w.r.t. ``params`` of
    ``sum(w * log_prob)`` (``w`` shaped like the log-probs).

    The textbook backward pass of the tanh MLP and the Gaussian log-density, written out
    with matmuls: no autograd graph, no ``nn.Module``. It equals autograd's gradient (up to
    float rounding; ``test_rl_policy`` checks it), including the clamp of ``log_std`` (no
    gradient outside :data:`LOG_STD_RANGE`). It is not itself differentiable w.r.t. ``params``
    (first order only). ``with_log_prob=False`` skips the log-probs (None) when only the
    gradient is needed.
    """
    n_layers = sum(1 for name in params if name.endswith(".weight"))
    weights = [params[f"mlp.{i}.weight"] for i in range(n_layers)]
    biases = [params[f"mlp.{i}.bias"] for i in range(n_layers)]
    lead = obs_norm.shape[:-1]
    h = obs_norm.reshape(-1, obs_norm.shape[-1])
    inputs = [h]
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        h = torch.tanh(torch.addmm(b, h, w.t()))
        inputs.append(h)
    mean = torch.addmm(biases[-1], h, weights[-1].t())
    raw_log_std = params["log_std"]
    log_std = raw_log_std.clamp(*LOG_STD_RANGE)
    inv_std = torch.exp(-log_std)
    z = (actions.reshape(mean.shape) - mean) * inv_std
    logp = None
    if with_log_prob:
        logp = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1).reshape(lead)
    low, high = LOG_STD_RANGE

    def vjp(w: torch.Tensor) -> Params:
        wz = w.reshape(-1, 1) * z
        # d log p / d mean = z / std; d log p / d log_std = z^2 - 1 (inside the clamp's range).
        grads = {
            "log_std": ((wz * z).sum(0) - w.sum()) * ((raw_log_std >= low) & (raw_log_std <= high))
        }
        g = wz * inv_std
        for i in range(n_layers - 1, -1, -1):
            a = inputs[i]
            grads[f"mlp.{i}.weight"] = g.t() @ a
            grads[f"mlp.{i}.bias"] = g.sum(0)
            if i > 0:
                g = _tanh_backward(g @ weights[i], a)  # g * (1 - a^2), one kernel
        return grads

    return logp, vjp


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dim."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5
    return kl.sum(-1)


def make_policy(bundle: PolicyBundle) -> GaussianMLPPolicy:
    """A torch policy carrying the bundle's spec, normalisation and parameters."""
    policy = GaussianMLPPolicy(bundle.spec, bundle.obs_mean, bundle.obs_std)
    policy.load_state_dict(
        {**bundle.params, "obs_mean": bundle.obs_mean, "obs_std": bundle.obs_std}, strict=True
    )
    return policy


def numpy_policy(bundle: PolicyBundle) -> NumpyPolicy:
    """The torch-free, allocation-free inference object (:mod:`maml_ros.runtime`) of a bundle."""
    to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    params = {name: to_np(value) for name, value in bundle.params.items()}
    return NumpyPolicy(
        bundle.spec, params, to_np(bundle.obs_mean), to_np(bundle.obs_std), bundle.version
    )


def probe_problem(bundle: PolicyBundle) -> str | None:
    """Why ``bundle``'s policy may produce a non-finite action, or None: the controller's own
    check (:func:`maml_ros.runtime.probe_problem`: probe observations and a layer bound), so
    every loader refuses what the controller would. Finite weights can still compute inf - inf;
    this catches what the tensor checks cannot."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        problem = runtime_probe_problem(numpy_policy(bundle))
    return None if problem is None else f"policy probe: {problem}"
