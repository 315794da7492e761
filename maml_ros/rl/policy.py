"""Gaussian MLP policy: spec, torch module (functional use), and an allocation-free numpy twin.

Parameters are plain dicts (``Params``) named like the module's ``named_parameters``:
``mlp.0.weight``, ``mlp.0.bias``, ..., ``log_std``. The torch functions here are pure in the
parameters so they compose with ``torch.func`` (``functional_call``, ``vmap``, ``grad``).
Observations are normalised with fixed statistics (``obs_mean``, ``obs_std``) that travel with
the weights in a :class:`~maml_ros.rl.checkpoint.PolicyBundle`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

if TYPE_CHECKING:
    from maml_ros.rl.checkpoint import PolicyBundle

Params = dict[str, torch.Tensor]

SUPPORTED_ACTIVATIONS = ("tanh",)
OBS_CLIP = 10.0
"""Normalised observations are clipped to [-OBS_CLIP, OBS_CLIP]."""
LOG_STD_RANGE = (-5.0, 2.0)
"""log_std is clamped to this range when the distribution is built."""


class PolicySpecError(ValueError):
    """A policy spec (architecture or observation/action spec) is invalid."""


@dataclass(frozen=True)
class PolicySpec:
    """Architecture and observation/action spec of a Gaussian MLP policy (JSON-able)."""

    obs_dim: int = 14
    act_dim: int = 7
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    init_log_std: float = -0.5
    action_low: float = -1.0
    action_high: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        problem = self._problem()
        if problem is not None:
            raise PolicySpecError(problem)

    def _problem(self) -> str | None:
        for name in ("obs_dim", "act_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                return f"{name} must be an integer in [1, 4096], got {value!r}"
        if not 1 <= len(self.hidden) <= 8:
            return f"hidden must have 1..8 layers, got {len(self.hidden)}"
        for width in self.hidden:
            if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 4096:
                return f"hidden widths must be integers in [1, 4096], got {width!r}"
        if self.activation not in SUPPORTED_ACTIVATIONS:
            return f"activation must be one of {SUPPORTED_ACTIVATIONS}, got {self.activation!r}"
        for name in ("init_log_std", "action_low", "action_high"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                return f"{name} must be a finite number, got {value!r}"
        if not LOG_STD_RANGE[0] <= self.init_log_std <= LOG_STD_RANGE[1]:
            return f"init_log_std must be in {LOG_STD_RANGE}, got {self.init_log_std}"
        if not self.action_low < self.action_high:
            return "action_low must be < action_high"
        return None

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer, input to output."""
        sizes = [self.obs_dim, *self.hidden, self.act_dim]
        return list(itertools.pairwise(sizes))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter the spec implies (float32 in a checkpoint)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(self.layer_sizes):
            shapes[f"mlp.{i}.weight"] = (n_out, n_in)
            shapes[f"mlp.{i}.bias"] = (n_out,)
        shapes["log_std"] = (self.act_dim,)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PolicySpec:
        """Parse and validate the JSON form; raises PolicySpecError."""
        if not isinstance(data, dict):
            raise PolicySpecError(f"policy spec must be an object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise PolicySpecError(f"unknown policy spec keys: {sorted(unknown)}")
        kwargs = dict(data)
        if "hidden" in kwargs:
            if not isinstance(kwargs["hidden"], list | tuple):
                raise PolicySpecError("hidden must be a list of integers")
            kwargs["hidden"] = tuple(kwargs["hidden"])
        return cls(**kwargs)


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


class NumpyPolicy:
    """Torch-free inference of a bundle's policy, with preallocated buffers.

    ``act`` for one observation allocates nothing: it writes into internal buffers and returns
    the action buffer (valid until the next call; pass ``out`` to write elsewhere).
    """

    def __init__(self, bundle: PolicyBundle) -> None:
        spec = bundle.spec
        self.spec = spec
        self.version = bundle.version
        to_np = lambda t: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)  # noqa: E731
        self._weights = [
            to_np(bundle.params[f"mlp.{i}.weight"]) for i in range(len(spec.hidden) + 1)
        ]
        self._biases = [to_np(bundle.params[f"mlp.{i}.bias"]) for i in range(len(spec.hidden) + 1)]
        log_std = np.clip(to_np(bundle.params["log_std"]), *LOG_STD_RANGE)
        self.std = np.exp(log_std).astype(np.float32)
        self._obs_mean = to_np(bundle.obs_mean)
        self._inv_obs_std = (1.0 / to_np(bundle.obs_std)).astype(np.float32)
        self._x = np.empty(spec.obs_dim, dtype=np.float32)
        self._hidden = [np.empty(width, dtype=np.float32) for width in spec.hidden]
        self._mean = np.empty(spec.act_dim, dtype=np.float32)
        self._noise = np.empty(spec.act_dim, dtype=np.float32)

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action mean (the internal buffer; valid until the next call)."""
        if obs.shape != (self.spec.obs_dim,):
            raise ValueError(f"observation must have shape ({self.spec.obs_dim},), got {obs.shape}")
        x = self._x
        np.subtract(obs, self._obs_mean, out=x)
        np.multiply(x, self._inv_obs_std, out=x)
        np.clip(x, -OBS_CLIP, OBS_CLIP, out=x)
        for w, b, h in zip(self._weights[:-1], self._biases[:-1], self._hidden, strict=True):
            np.matmul(w, x, out=h)
            np.add(h, b, out=h)
            np.tanh(h, out=h)
            x = h
        np.matmul(self._weights[-1], x, out=self._mean)
        np.add(self._mean, self._biases[-1], out=self._mean)
        return self._mean

    def act(
        self,
        obs: np.ndarray,
        explore: bool,
        rng: np.random.Generator | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Action (float32[act_dim]): the mean, plus Gaussian noise when ``explore``."""
        mean = self.mean(obs)
        if explore:
            if rng is None:
                raise ValueError("explore=True needs an rng")
            rng.standard_normal(dtype=np.float32, out=self._noise)
            np.multiply(self._noise, self.std, out=self._noise)
            np.add(mean, self._noise, out=mean)
        if out is None:
            return mean
        np.copyto(out, mean)
        return out
