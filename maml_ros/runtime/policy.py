"""Policy spec and torch-free inference: tanh MLP -> action mean, plus Gaussian exploration.

Parameters are named like the torch module's (``maml_ros.rl.policy.GaussianMLPPolicy``):
``mlp.<i>.weight`` ``[out, in]``, ``mlp.<i>.bias``, ``log_std``. Observations are normalised
with ``obs_mean`` / ``obs_std`` and clipped to ``±OBS_CLIP`` before the first layer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SUPPORTED_ACTIVATIONS = ("tanh",)
OBS_CLIP = 10.0
"""Normalised observations are clipped to [-OBS_CLIP, OBS_CLIP]."""
LOG_STD_RANGE = (-5.0, 2.0)
"""log_std is clamped to this range when the distribution is built."""
FLOAT32_SAFE = float(np.finfo(np.float32).max) / 2
"""Largest magnitude a layer may reach for any observation (half of float32's range)."""
PROBE_POINTS = 8
"""Seeded random normalised observations probed besides the centre and the corners."""


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


def _f32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


class NumpyPolicy:
    """Inference of a Gaussian MLP policy with preallocated buffers.

    ``act`` for one observation allocates nothing: it writes into internal buffers and returns
    the action buffer (valid until the next call; pass ``out`` to write elsewhere). One
    instance serves one thread.
    """

    def __init__(
        self,
        spec: PolicySpec,
        params: Mapping[str, Any],
        obs_mean: Any,
        obs_std: Any,
        version: int = 0,
    ) -> None:
        self.spec = spec
        self.version = version
        layers = len(spec.hidden) + 1
        self._weights = [_f32(params[f"mlp.{i}.weight"]) for i in range(layers)]
        self._biases = [_f32(params[f"mlp.{i}.bias"]) for i in range(layers)]
        log_std = np.clip(_f32(params["log_std"]), *LOG_STD_RANGE)
        self.std = np.exp(log_std).astype(np.float32)
        self._obs_mean = _f32(obs_mean)
        with np.errstate(divide="ignore", over="ignore"):
            self._inv_obs_std = (1.0 / _f32(obs_std)).astype(np.float32)
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
        return self._forward(x)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The MLP on a normalised observation ``x``."""
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

    def output_bound(self) -> float:
        """An upper bound (float64) of every layer's magnitude over all observations.

        Normalised observations lie in ``[-OBS_CLIP, OBS_CLIP]``; each layer's pre-activation
        is bounded by ``|W| r + |b|`` for inputs bounded by ``r``, and tanh keeps hidden values
        in [-1, 1]. When the bound is finite and below float32's range, no float32 sum in
        :meth:`mean` can overflow, whatever the observation.
        """
        radius = np.full(self.spec.obs_dim, OBS_CLIP)
        largest = 0.0
        for i, (w, b) in enumerate(zip(self._weights, self._biases, strict=True)):
            with np.errstate(over="ignore", invalid="ignore"):
                pre = np.abs(w.astype(np.float64)) @ radius + np.abs(b.astype(np.float64))
            largest = max(largest, float(pre.max()) if np.isfinite(pre).all() else math.inf)
            if i < len(self._hidden):
                radius = np.minimum(np.tanh(pre), 1.0)
        return largest


def probe_problem(policy: NumpyPolicy) -> str | None:
    """Why ``policy`` may produce a non-finite action, or None.

    It runs the policy on probe observations (the normalisation's centre, its clipped
    corners and seeded random points) and checks the layer bound of
    :meth:`NumpyPolicy.output_bound`, so a policy whose tensors are all finite but whose sums
    overflow (inf - inf = NaN) is refused before it drives anything.
    """
    if not np.isfinite(policy._inv_obs_std).all():
        return "obs_std is so small that 1 / obs_std overflows float32"
    if not np.isfinite(policy.std).all():
        return "log_std gives a non-finite standard deviation"
    n = policy.spec.obs_dim
    corners = [np.zeros(n), np.full(n, OBS_CLIP), np.full(n, -OBS_CLIP)]
    corners.append(np.where(np.arange(n) % 2 == 0, OBS_CLIP, -OBS_CLIP))
    rng = np.random.default_rng(0)
    randoms = list(rng.uniform(-OBS_CLIP, OBS_CLIP, size=(PROBE_POINTS, n)))
    with np.errstate(over="ignore", invalid="ignore"):
        for i, point in enumerate([*corners, *randoms]):
            action = policy._forward(point.astype(np.float32))
            if not np.isfinite(action).all():
                return f"non-finite action on probe observation {i} (a layer's sum overflows)"
        for i, point in enumerate([policy._obs_mean, policy._obs_mean + 1.0]):
            if not np.isfinite(policy.mean(point.astype(np.float32))).all():
                return f"non-finite action on probe observation obs_mean + {i}"
    bound = policy.output_bound()
    if not bound <= FLOAT32_SAFE:
        return (
            f"a layer can reach {bound:.3g} for some observation, beyond float32's range: "
            "its actions may be non-finite"
        )
    return None
