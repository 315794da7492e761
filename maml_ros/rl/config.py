"""Training configuration: nested frozen dataclasses read from YAML, validated, unknown keys
rejected (``ConfigError`` says which key and why)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maml_ros.meta import InnerConfig
from maml_ros.rl.pg import PGConfig
from maml_ros.runtime.policy import PolicySpec, PolicySpecError


class ConfigError(ValueError):
    """The training configuration is invalid."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class EnvSection:
    """Which environment and task mixture to train on."""

    name: str = "arm"
    workers: int = 2
    num_envs: int = 20
    horizon: int | None = None
    families: tuple[str, ...] = ("reach", "dynamics", "reach+dynamics")
    family_weights: tuple[float, ...] = (0.5, 0.25, 0.25)
    robot: str = "kuka_iiwa"

    def validate(self) -> None:
        from maml_ros.runtime.robots import robot_problem

        problem = robot_problem(self.robot)
        _require(problem is None, f"env.robot: {problem}")
        _require(
            self.name in ("arm", "point"), f"env.name must be 'arm' or 'point', got {self.name!r}"
        )
        _require(
            _is_int(self.workers) and 1 <= self.workers <= 64, "env.workers must be in [1, 64]"
        )
        _require(
            _is_int(self.num_envs) and 1 <= self.num_envs <= 4096,
            "env.num_envs must be in [1, 4096]",
        )
        _require(
            self.horizon is None or (_is_int(self.horizon) and self.horizon >= 1),
            "env.horizon must be a positive integer or null",
        )
        _require(len(self.families) >= 1, "env.families must not be empty")
        from maml_ros.sim.task import family_names

        known = family_names()
        for name in self.families:
            _require(
                isinstance(name, str) and name in known,
                f"env.families: unknown task family {name!r}; known: {list(known)}",
            )
        _require(len(set(self.families)) == len(self.families), "env.families names a family twice")
        _require(
            len(self.families) == len(self.family_weights),
            "env.family_weights must match env.families",
        )
        _require(
            all(_is_number(w) and w >= 0 for w in self.family_weights),
            "env.family_weights must be >= 0",
        )
        _require(sum(self.family_weights) > 0, "env.family_weights must have a positive sum")


@dataclass(frozen=True)
class PolicySection:
    """Policy architecture."""

    hidden: tuple[int, ...] = (64, 64)
    init_log_std: float = -0.5


@dataclass(frozen=True)
class InnerSection:
    """The inner update (shared by sampling and the meta-objective, and shipped)."""

    lr: float = 0.1
    steps: int = 1
    first_order: bool = False
    grad_clip: float | None = None
    meta_sgd: bool = False

    def inner_config(self) -> InnerConfig:
        """The one InnerConfig used for post-update sampling and inside the meta-objective."""
        return InnerConfig(
            lr=self.lr, steps=self.steps, first_order=self.first_order, grad_clip=self.grad_clip
        )


@dataclass(frozen=True)
class OuterSection:
    """The outer (meta) optimisation: ProMP-style PPO-clip, or multi-task PPO without adaptation."""

    algo: str = "promp"
    meta_batch: int = 20
    rollouts_per_task: int = 10
    epochs: int = 5
    lr: float = 1e-3
    lrs_lr: float = 1e-3
    clip_eps: float = 0.3
    kl_coef: float = 0.0
    max_grad_norm: float = 1.0
    rounds: int = 1
    """Adaptation rounds per task (promp): each adapts the latest policy on
    ``rollouts_per_task`` fresh episodes of it, as ``maml-ros-eval``'s post2 / post3 do, and the
    meta-objective averages every round's post-update objective."""

    def validate(self) -> None:
        _require(
            self.algo in ("promp", "multitask"),
            f"outer.algo must be 'promp' or 'multitask', got {self.algo!r}",
        )
        for name in ("meta_batch", "rollouts_per_task", "epochs"):
            value = getattr(self, name)
            _require(
                _is_int(value) and 1 <= value <= 10_000,
                f"outer.{name} must be an integer in [1, 10000]",
            )
        for name in ("lr", "lrs_lr", "clip_eps", "max_grad_norm"):
            value = getattr(self, name)
            _require(_is_number(value) and value > 0, f"outer.{name} must be a positive number")
        _require(_is_number(self.kl_coef) and self.kl_coef >= 0, "outer.kl_coef must be >= 0")
        _require(
            _is_int(self.rounds) and 1 <= self.rounds <= 5,
            "outer.rounds must be an integer in [1, 5]",
        )
        _require(
            self.rounds == 1 or self.algo == "promp", "outer.rounds > 1 needs outer.algo 'promp'"
        )


@dataclass(frozen=True)
class PretrainSection:
    """The multi-task pretrained baseline (for the fine-tuning comparison); 0 iterations: none."""

    iterations: int = 0
    max_minutes: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``maml-ros-train`` reads from its YAML file."""

    seed: int = 0
    iterations: int = 200
    max_minutes: float | None = None
    checkpoint_every: int = 10
    keep_checkpoints: bool = False
    """Also keep every checkpoint as ``checkpoints/policy_it<N>.safetensors`` (+ ``.json``),
    for a choice of iteration made afterwards on the validation split."""
    obs_norm_episodes: int = 40
    obs_std_floor: float = 0.05
    env: EnvSection = field(default_factory=EnvSection)
    policy: PolicySection = field(default_factory=PolicySection)
    inner: InnerSection = field(default_factory=InnerSection)
    pg: PGConfig = field(default_factory=PGConfig)
    outer: OuterSection = field(default_factory=OuterSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)

    def validate(self) -> TrainConfig:
        """Raise ConfigError unless every value is acceptable; returns self."""
        _require(
            _is_int(self.seed) and 0 <= self.seed < 2**31, "seed must be an integer in [0, 2^31)"
        )
        _require(_is_int(self.iterations) and self.iterations >= 1, "iterations must be >= 1")
        _require(
            self.max_minutes is None or (_is_number(self.max_minutes) and self.max_minutes > 0),
            "max_minutes must be positive or null",
        )
        _require(
            _is_int(self.checkpoint_every) and self.checkpoint_every >= 1,
            "checkpoint_every must be >= 1",
        )
        _require(isinstance(self.keep_checkpoints, bool), "keep_checkpoints must be a boolean")
        _require(
            _is_int(self.obs_norm_episodes) and self.obs_norm_episodes >= 2,
            "obs_norm_episodes must be >= 2",
        )
        _require(
            _is_number(self.obs_std_floor) and self.obs_std_floor > 0, "obs_std_floor must be > 0"
        )
        self.env.validate()
        self.outer.validate()
        try:
            self.policy_spec(14, 7)
            self.inner.inner_config()
        except (PolicySpecError, TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        _require(isinstance(self.inner.meta_sgd, bool), "inner.meta_sgd must be a boolean")
        _require(
            _is_int(self.pretrain.iterations) and self.pretrain.iterations >= 0,
            "pretrain.iterations must be >= 0",
        )
        return self

    def policy_spec(self, obs_dim: int, act_dim: int) -> PolicySpec:
        """The policy spec for an env with these dims."""
        return PolicySpec(
            obs_dim=obs_dim,
            act_dim=act_dim,
            hidden=tuple(self.policy.hidden),
            init_log_std=float(self.policy.init_log_std),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able form."""
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'config'}: {unknown}")
    kwargs = {}
    nested = {
        "env": EnvSection,
        "policy": PolicySection,
        "inner": InnerSection,
        "outer": OuterSection,
        "pretrain": PretrainSection,
    }
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if cls is TrainConfig and key in nested:
            kwargs[key] = _build(nested[key], value, path)
        elif cls is TrainConfig and key == "pg":
            try:
                kwargs[key] = PGConfig.from_dict(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"pg: {exc}") from exc
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def config_from_dict(data: Any) -> TrainConfig:
    """Validated TrainConfig from a plain mapping."""
    cfg = _build(TrainConfig, data if data is not None else {}, "")
    try:
        return cfg.validate()
    except TypeError as exc:  # a value of the wrong type (e.g. null where a list is due)
        raise ConfigError(f"invalid config value: {exc}") from exc


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return config_from_dict(data)
