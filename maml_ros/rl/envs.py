"""The environments meta-training runs on: a batched-env protocol, the arm, and a toy.

A :class:`BatchEnv` steps ``num_envs`` episodes in lock-step, each on its own task, with the
same ``reset(tasks, seeds)`` / ``step(actions)`` contract as :class:`maml_ros.sim.VecArmEnv`.
A :class:`TaskSource` samples train/test tasks. :func:`make_env` builds both from a config:
``"arm"`` (the PyBullet KUKA, imported lazily) or ``"point"`` (a tiny numpy point-navigation
problem with hidden goals, for tests and CI-sized runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class EpisodesLost(RuntimeError):
    """A :class:`BatchEnv` lost running episodes (a simulation worker died and was replaced).

    The env is usable again from the next ``reset``; the caller re-samples the episodes.
    """


class BatchEnv(Protocol):
    """``num_envs`` environments stepped together, one task each.

    ``reset`` and ``step`` may raise :class:`EpisodesLost`: the episodes since the last reset
    are gone, the env is whole again, and the caller starts them over.
    """

    num_envs: int
    obs_dim: int
    act_dim: int
    horizon: int

    def reset(self, tasks: Sequence[Any], seeds: Sequence[int]) -> np.ndarray:
        """Start one episode per env on its task: obs ``[num_envs, obs_dim]``."""
        ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(obs, rewards, terminated, truncated, success), each with a leading num_envs dim."""
        ...

    def close(self) -> None:
        """Release workers and simulators."""
        ...


class TaskSource(Protocol):
    """Seeded task sampler with disjoint train, held-out (validation and test) and, where a
    family has one, out-of-range splits (:data:`maml_ros.sim.task.SPLITS`)."""

    families: tuple[str, ...]

    def sample(self, n: int, split: str, seed: int, family: str | None = None) -> list[Any]:
        """``n`` tasks of ``family`` (None: the configured mixture) from ``split``."""
        ...

    def has_out_of_range(self, family: str) -> bool:
        """Whether ``family`` has an ``out_of_range`` split."""
        ...

    def family_of(self, task: Any) -> str:
        """The family name of ``task``."""
        ...

    def to_json(self, task: Any) -> str:
        """JSON text of ``task`` (for logs and metadata)."""
        ...


# ---------------------------------------------------------------------------------------------
# Toy: point navigation with a hidden goal (MAML's 2-D navigation, in numpy).


@dataclass(frozen=True)
class PointTask:
    """A hidden 2-D goal; optional action gain models a 'changed body'."""

    goal: tuple[float, float]
    gain: float = 1.0
    family: str = "reach"


class PointNavEnv:
    """Vectorised 2-D point robot: obs = (position, velocity), action = velocity command.

    Reward ``-|pos - goal| - 0.01 |a|^2``; success when within ``success_radius`` of the goal.
    Deterministic given seeds (the start is a small seeded jitter around the origin).
    """

    obs_dim = 4
    act_dim = 2

    def __init__(self, num_envs: int, horizon: int = 20, success_radius: float = 0.1) -> None:
        self.num_envs = num_envs
        self.horizon = horizon
        self.success_radius = success_radius
        self._pos = np.zeros((num_envs, 2))
        self._vel = np.zeros((num_envs, 2))
        self._goal = np.zeros((num_envs, 2))
        self._gain = np.ones((num_envs, 1))
        self._t = 0

    def reset(self, tasks: Sequence[PointTask], seeds: Sequence[int]) -> np.ndarray:
        if len(tasks) != self.num_envs or len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} tasks and seeds")
        self._goal = np.array([t.goal for t in tasks], dtype=np.float64)
        self._gain = np.array([[t.gain] for t in tasks], dtype=np.float64)
        self._pos = np.stack([np.random.default_rng(s).normal(0, 0.02, 2) for s in seeds])
        self._vel = np.zeros((self.num_envs, 2))
        self._t = 0
        return self._obs()

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._pos, self._vel], axis=1).astype(np.float32)

    def step(self, actions: np.ndarray):
        a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        self._vel = 0.1 * a * self._gain
        self._pos = self._pos + self._vel
        self._t += 1
        dist = np.linalg.norm(self._pos - self._goal, axis=1)
        rewards = (-dist - 0.01 * (a * a).sum(1)).astype(np.float32)
        success = dist < self.success_radius
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.full(self.num_envs, self._t >= self.horizon)
        return self._obs(), rewards, terminated, truncated, success

    def close(self) -> None:
        pass


class PointTaskSource:
    """Goals on a ring of radius 0.5 (train: upper half plane, test: lower half)."""

    families = ("reach", "dynamics")

    def __init__(self, family_weights: Sequence[float] = (1.0, 0.0)) -> None:
        self.family_weights = np.asarray(family_weights, dtype=np.float64)

    def sample(self, n: int, split: str, seed: int, family: str | None = None) -> list[PointTask]:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
        rng = np.random.default_rng(seed if split != "validation" else [seed, 2])
        split = "train" if split == "train" else "test"  # validation: the test region
        tasks = []
        for _ in range(n):
            fam = (
                family
                or self.families[
                    rng.choice(
                        len(self.families), p=self.family_weights / self.family_weights.sum()
                    )
                ]
            )
            if fam == "reach":
                angle = rng.uniform(0, np.pi) + (np.pi if split == "test" else 0.0)
                tasks.append(PointTask((0.5 * np.cos(angle), 0.5 * np.sin(angle))))
            else:
                gain = rng.uniform(0.3, 0.6) if split == "train" else rng.uniform(0.6, 0.9)
                tasks.append(PointTask((0.35, 0.35), gain=gain, family="dynamics"))
        return tasks

    def family_of(self, task: PointTask) -> str:
        return task.family

    def has_out_of_range(self, family: str) -> bool:
        return False

    def to_json(self, task: PointTask) -> str:
        return f'{{"family": "{task.family}", "goal": {list(task.goal)}, "gain": {task.gain}}}'


# ---------------------------------------------------------------------------------------------
# The arm (maml_ros.sim), adapted to the protocols above.


class ArmTaskSource:
    """Mixture of the sim's task families, sampled with :func:`maml_ros.sim.sample_tasks`."""

    def __init__(
        self, families: Sequence[str], family_weights: Sequence[float], robot: str = "kuka_iiwa"
    ) -> None:
        self.robot = robot
        if len(families) != len(family_weights) or not families:
            raise ValueError("families and family_weights must be non-empty and of equal length")
        weights = np.asarray(family_weights, dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("family_weights must be >= 0 with a positive sum")
        self.families = tuple(families)
        self.weights = weights / weights.sum()

    def sample(self, n: int, split: str, seed: int, family: str | None = None) -> list[Any]:
        from maml_ros.sim import sample_tasks

        if family is not None:
            return list(sample_tasks(family, n, split=split, seed=seed, robot=self.robot))
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, self.weights)
        tasks: list[Any] = []
        for i, (fam, count) in enumerate(zip(self.families, counts, strict=True)):
            if count:
                tasks.extend(
                    sample_tasks(fam, int(count), split=split, seed=seed * 31 + i, robot=self.robot)
                )
        order = rng.permutation(len(tasks))
        return [tasks[i] for i in order]

    def family_of(self, task: Any) -> str:
        return task.family

    def has_out_of_range(self, family: str) -> bool:
        from maml_ros.sim.task import get_family

        return get_family(family).sample_out_of_range is not None

    def to_json(self, task: Any) -> str:
        return task.to_json()


class ArmBatchEnv:
    """``num_envs`` :class:`maml_ros.sim.ArmEnv` instances stepped in this process.

    The fallback when the sim's multi-process ``VecArmEnv`` is unavailable or ``workers == 1``.
    """

    def __init__(self, num_envs: int, **env_kwargs: Any) -> None:
        from maml_ros.sim import ArmEnv

        self.envs = [ArmEnv(**env_kwargs) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.obs_dim = int(first.observation_space.shape[0])
        self.act_dim = int(first.action_space.shape[0])
        self.horizon = int(first.horizon)

    def reset(self, tasks: Sequence[Any], seeds: Sequence[int]) -> np.ndarray:
        if len(tasks) != self.num_envs or len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} tasks and seeds")
        return np.stack(
            [
                env.reset(seed=int(seed), options={"task": task})[0]
                for env, task, seed in zip(self.envs, tasks, seeds, strict=True)
            ]
        )

    def step(self, actions: np.ndarray):
        results = [env.step(a) for env, a in zip(self.envs, actions, strict=True)]
        obs = np.stack([r[0] for r in results])
        rewards = np.array([r[1] for r in results], dtype=np.float32)
        terminated = np.array([r[2] for r in results], dtype=bool)
        truncated = np.array([r[3] for r in results], dtype=bool)
        success = np.array([r[4]["success"] for r in results], dtype=bool)
        return obs, rewards, terminated, truncated, success

    def close(self) -> None:
        for env in self.envs:
            env.close()


class VecArmBatchEnv:
    """The sim's multi-process ``VecArmEnv`` (or, with ``backend="ray"``, its Ray-actor twin
    :class:`maml_ros.sim.ray_env.RayArmEnv`) seen through the :class:`BatchEnv` protocol."""

    def __init__(
        self,
        num_envs: int,
        workers: int,
        env_kwargs: dict[str, Any] | None = None,
        backend: str = "local",
        ray_address: str | None = None,
        ray_actor_cpus: float = 1.0,
    ) -> None:
        from maml_ros.sim import ArmEnv

        probe = ArmEnv(**(env_kwargs or {}))
        self.obs_dim = int(probe.observation_space.shape[0])
        self.act_dim = int(probe.action_space.shape[0])
        self.horizon = int(probe.horizon)
        probe.close()
        self._lost: tuple[type[Exception], ...] = ()
        if backend == "ray":
            from maml_ros.sim.ray_env import ActorsLost, RayArmEnv

            self._lost = (ActorsLost,)

            # One world per actor as VecArmEnv's workers have; one world per env with a single
            # worker, as the in-process ArmBatchEnv has: the same numbers as the local backend.
            self.vec = RayArmEnv(
                num_envs,
                workers,
                env_kwargs,
                shared_world=workers > 1,
                address=ray_address,
                actor_cpus=ray_actor_cpus,
            )
        else:
            from maml_ros.sim import VecArmEnv

            self.vec = VecArmEnv(num_envs, workers, env_kwargs)
        self.num_envs = num_envs

    def reset(self, tasks: Sequence[Any], seeds: Sequence[int]) -> np.ndarray:
        try:
            return np.asarray(self.vec.reset(list(tasks), list(seeds)), dtype=np.float32)
        except self._lost as exc:
            raise EpisodesLost(str(exc)) from exc

    def step(self, actions: np.ndarray):
        try:
            return self.vec.step(np.ascontiguousarray(actions, dtype=np.float32))
        except self._lost as exc:
            raise EpisodesLost(str(exc)) from exc

    def close(self) -> None:
        self.vec.close()


BACKENDS = ("local", "ray")
"""Where the arm's envs run: ``local`` (VecArmEnv worker processes, or in-process for one
worker), ``ray`` (Ray actors on this host or a cluster)."""


def make_env(
    name: str,
    num_envs: int,
    workers: int,
    horizon: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    robot: str = "kuka_iiwa",
    ray_actor_cpus: float = 1.0,
) -> BatchEnv:
    """``"arm"``: the sim's VecArmEnv (workers > 1) or in-process ArmEnvs; ``"point"``: toy.

    ``backend="ray"`` puts the arm's envs in ``workers`` Ray actors instead (a local Ray, or
    the cluster at ``ray_address``; ``"auto"``: the one ``ray start`` runs); ``horizon``
    (None: the arm's default of 50 steps) sets the arm's episode length; ``robot`` names the
    arm's description (``maml_ros.runtime.robots``); ``ray_actor_cpus`` the CPUs each Ray actor
    reserves (less than 1: envs that take turns share them).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend != "ray" and ray_address is not None:
        raise ValueError("ray_address needs backend='ray'")
    if name == "point":
        if backend == "ray":
            raise ValueError("the ray backend simulates the arm; the point toy runs in-process")
        return PointNavEnv(num_envs, horizon=horizon or 20)
    if name == "arm":
        kwargs: dict[str, Any] = {} if horizon is None else {"horizon": int(horizon)}
        if robot != "kuka_iiwa":  # the default robot's kwargs stay as they were
            kwargs["robot"] = robot
        if backend == "ray":
            return VecArmBatchEnv(num_envs, workers, kwargs, "ray", ray_address, ray_actor_cpus)
        env: BatchEnv
        try:
            from maml_ros.sim import VecArmEnv  # noqa: F401
        except ImportError:
            workers = 1
        if workers > 1:
            env = VecArmBatchEnv(num_envs, workers, kwargs)
        else:
            env = ArmBatchEnv(num_envs, **kwargs)
        return env
    raise ValueError(f"unknown env {name!r}; expected 'arm' or 'point'")


def make_task_source(
    name: str, families: Sequence[str], family_weights: Sequence[float], robot: str = "kuka_iiwa"
) -> TaskSource:
    """Task sampler matching :func:`make_env`."""
    if name == "point":
        weights = [
            family_weights[list(families).index(f)] if f in families else 0.0
            for f in PointTaskSource.families
        ]
        return PointTaskSource(weights)
    if name == "arm":
        return ArmTaskSource(families, family_weights, robot)
    raise ValueError(f"unknown env {name!r}; expected 'arm' or 'point'")
