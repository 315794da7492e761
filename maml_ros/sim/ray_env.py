"""Many :class:`~maml_ros.sim.arm_env.ArmEnv` in Ray actors: :class:`VecArmEnv` beyond one host.

The same contract and the same numbers as :class:`~maml_ros.sim.vec_env.VecArmEnv`: each actor
owns a contiguous group of envs (an :class:`~maml_ros.sim.vec_env.EnvGroup`, one physics world
per actor with ``shared_world``), the caller batches inference over all envs and sends actions;
actors only simulate. With the same envs, workers and seeds the rows are bit-equal to
VecArmEnv's.

``ray`` is imported only when a :class:`RayArmEnv` is built. ``address=None`` starts a local
Ray sized for this host (unless one is already initialised in this process); ``"auto"`` or
``"HOST:PORT"`` joins a running cluster (``ray start --head`` / ``ray start --address``).

Faults: when an actor dies (node lost, OOM-killed, ``ray.kill``), the call raises
:class:`ActorsLost` *after* a replacement actor has been started and its envs re-created; the
current episodes are then invalid and the caller re-samples them from ``reset``
(:func:`maml_ros.rl.sampling.sample_rollouts` does, with the same seeds and noise).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from maml_ros.sim.task import TaskSpec
from maml_ros.sim.vec_env import EnvGroup, robot_dims, row_info, row_width, split_rows

log = logging.getLogger("maml_ros.ray")

RAY_REQUIREMENT = "ray==2.60.0"
INSTALL_HINT = (
    "the ray backend needs the `ray` package: pip install -r requirements-ray.txt "
    f"({RAY_REQUIREMENT}; `make setup` installs it)"
)
OBJECT_STORE_BYTES = 200 * 1024**2
"""Object store of a local Ray: the wire carries kilobytes a step, all inlined in replies."""


class ActorsLost(RuntimeError):
    """Simulation actors died; they were replaced, but the running episodes are gone.

    The env is usable again: call ``reset`` and re-sample the episodes that were running.
    """


def import_ray() -> Any:
    """``ray``, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Initialise Ray in this process if it is not yet; True when this call started it.

    ``address=None``: a local instance with ``num_cpus`` (default: this host's cores), a
    200 MB object store, no dashboard and no worker logs on the driver's console. Otherwise
    join the cluster at ``address`` (``"auto"``: the one ``ray start`` runs on this host).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": logging.WARNING,
    }
    if address is None:
        ray.init(
            address="local",  # a new instance, never one that happens to run on this host
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            **common,
        )
    else:
        ray.init(address=address, **common)
    return True


class SimActor:
    """The body of one Ray actor: an EnvGroup and the calls the driver makes on it."""

    def __init__(self, n_envs: int, env_kwargs_json: str, shared_world: bool) -> None:
        self.group = EnvGroup(n_envs, json.loads(env_kwargs_json), shared_world)

    def reset(self, tasks_json: list[str | None], seeds: list[int | None]) -> np.ndarray:
        return self.group.reset(tasks_json, seeds)

    def step(self, actions: np.ndarray) -> np.ndarray:
        return self.group.step(actions)

    def info(self) -> dict[str, Any]:
        """pid, host, resident memory (bytes) and CPU seconds of this actor's process."""
        import socket

        rss = 0
        try:
            with open(f"/proc/{os.getpid()}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        times = os.times()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "rss_bytes": rss,
            "cpu_s": times.user + times.system,
            "n_envs": len(self.group.envs),
        }


class RayArmEnv:
    """``n_envs`` ArmEnvs spread over ``n_workers`` Ray actors (one CPU each).

    ``reset(tasks, seeds) -> obs [n_envs, 14]``;
    ``step(actions [n_envs, 7]) -> obs, rewards, terminated, truncated, success``;
    ``last_info`` as in VecArmEnv. Either call raises :class:`ActorsLost` when actors died
    (after replacing them; ``replacements`` counts them). ``shared_world``, ``env_kwargs``: as
    in VecArmEnv. ``timeout_s`` bounds every call (a silent actor counts as dead).
    ``actor_cpus``: the CPUs each actor reserves (below 1 for envs that take turns, so that
    their actors fit the cluster together). Ray is shut down on :meth:`close` if this env
    started it.
    """

    def __init__(
        self,
        n_envs: int,
        n_workers: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        *,
        shared_world: bool = True,
        address: str | None = None,
        timeout_s: float = 120.0,
        max_replacements: int = 16,
        actor_cpus: float = 1.0,
    ) -> None:
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
        if n_workers is None:
            n_workers = min(n_envs, os.cpu_count() or 1)
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        if not 0 < actor_cpus <= 64:
            raise ValueError(f"actor_cpus must be in (0, 64], got {actor_cpus!r}")
        n_workers = min(n_workers, n_envs)
        self._ray = ray = import_ray()
        self._lost_errors = (
            ray.exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
        )
        self._kwargs_json = json.dumps(env_kwargs or {})  # plain data only: fails early otherwise
        self.obs_dim, self.act_dim = robot_dims(env_kwargs)
        self.n_envs = n_envs
        self.n_workers = n_workers
        self.shared_world = shared_world
        self.timeout_s = timeout_s
        self.max_replacements = max_replacements
        self.replacements = 0
        sizes = [len(group) for group in np.array_split(np.arange(n_envs), n_workers)]
        self._bounds = np.cumsum([0, *sizes])
        self._closed = False
        self._owns_ray = False  # until init_ray says otherwise (close() may run if it raises)
        self.actors: list[Any] = []
        self.last_info: dict[str, np.ndarray] = {}
        # A local Ray gets at least one CPU per actor (like VecArmEnv, more workers than cores
        # oversubscribe rather than wait); a cluster must have them.
        self._owns_ray = init_ray(address, max(os.cpu_count() or 1, n_workers))
        try:
            available = self._ray.cluster_resources().get("CPU", 0)
            if available < n_workers * actor_cpus - 1e-9:
                raise RuntimeError(
                    f"{n_workers} sim actors need {n_workers * actor_cpus:g} CPUs; the Ray "
                    f"cluster has {available:g} (add nodes with `ray start --address ...` or "
                    "pass fewer --workers)"
                )
            self._remote = self._ray.remote(num_cpus=actor_cpus, max_restarts=0)(SimActor)
            self.actors = [self._start(index) for index in range(n_workers)]
            self._wait([actor.info.remote() for actor in self.actors], "start")
        except BaseException:
            self.close()
            raise

    # --- public API -----------------------------------------------------------------------

    def reset(
        self,
        tasks: Sequence[TaskSpec | None] | None = None,
        seeds: Sequence[int | None] | None = None,
    ) -> np.ndarray:
        """Reset every env (to ``tasks[i]`` if given, seeded with ``seeds[i]`` if given)."""
        tasks = list(tasks) if tasks is not None else [None] * self.n_envs
        seeds = list(seeds) if seeds is not None else [None] * self.n_envs
        if len(tasks) != self.n_envs or len(seeds) != self.n_envs:
            raise ValueError(
                f"need {self.n_envs} tasks and seeds, got {len(tasks)} and {len(seeds)}"
            )
        for task in tasks:
            if task is not None and not isinstance(task, TaskSpec):
                raise TypeError(f"tasks must be TaskSpec or None, got {type(task).__name__}")
        for i, seed in enumerate(seeds):
            if seed is None:
                continue
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise TypeError(f"seeds must be non-negative ints or None, got {seed!r}")
            seeds[i] = int(seed)
        task_json = [task.to_json() if task is not None else None for task in tasks]
        refs = [
            actor.reset.remote(task_json[lo:hi], seeds[lo:hi])
            for actor, (lo, hi) in zip(self.actors, self._groups(), strict=True)
        ]
        rows = self._gather(refs, "reset")
        return split_rows(rows)[0]

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One control step of every env; returns obs, rewards, terminated, truncated, success."""
        actions = np.ascontiguousarray(actions, dtype=np.float32)
        if actions.shape != (self.n_envs, self.act_dim):
            raise ValueError(
                f"actions must have shape ({self.n_envs}, {self.act_dim}), got {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise ValueError("actions hold a non-finite value")
        refs = [
            actor.step.remote(actions[lo:hi])
            for actor, (lo, hi) in zip(self.actors, self._groups(), strict=True)
        ]
        return split_rows(self._gather(refs, "step"))

    def actor_info(self) -> list[dict[str, Any]]:
        """pid, host, resident memory and CPU seconds of every actor."""
        return self._wait([actor.info.remote() for actor in self.actors], "info")

    def close(self) -> None:
        """Stop the actors (and the local Ray this env started); idempotent."""
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead, or Ray is gone
                ray.kill(actor)
        self.actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def __enter__(self) -> RayArmEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    # --- actors ---------------------------------------------------------------------------

    def _groups(self) -> list[tuple[int, int]]:
        return [
            (int(lo), int(hi)) for lo, hi in zip(self._bounds[:-1], self._bounds[1:], strict=False)
        ]

    def _start(self, index: int) -> Any:
        lo, hi = self._groups()[index]
        return self._remote.remote(hi - lo, self._kwargs_json, self.shared_world)

    def _wait(self, refs: list[Any], what: str) -> list[Any]:
        if self._closed:
            raise RuntimeError("RayArmEnv is closed")
        try:
            return self._ray.get(refs, timeout=self.timeout_s)
        except self._ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"sim actors did not {what} within {self.timeout_s} s") from None

    def _gather(self, refs: list[Any], what: str) -> np.ndarray:
        """Rows of every actor's reply; dead actors are replaced and ActorsLost raised."""
        if self._closed:
            raise RuntimeError("RayArmEnv is closed")
        ray = self._ray
        rows = np.empty((self.n_envs, row_width(self.obs_dim)), dtype=np.float32)
        deadline = time.monotonic() + self.timeout_s
        try:  # the common case in one call
            for part, (lo, hi) in zip(
                ray.get(refs, timeout=self.timeout_s), self._groups(), strict=True
            ):
                rows[lo:hi] = part
        except (*self._lost_errors, ray.exceptions.GetTimeoutError, ray.exceptions.RayTaskError):
            pass  # which actor: below, one reply at a time
        else:
            self.last_info = row_info(rows)
            return rows
        dead: list[tuple[int, str]] = []
        errors: list[str] = []
        for index, (ref, (lo, hi)) in enumerate(zip(refs, self._groups(), strict=True)):
            try:  # read every reply, even after an error
                rows[lo:hi] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except self._lost_errors as exc:
                if isinstance(exc, ray.exceptions.ActorUnavailableError):
                    ray.kill(self.actors[index])
                dead.append((index, type(exc).__name__))
            except ray.exceptions.GetTimeoutError:
                ray.kill(self.actors[index])  # a silent actor counts as dead
                dead.append((index, f"no {what} reply in {self.timeout_s} s"))
            except ray.exceptions.RayTaskError as exc:  # the envs raised: the caller's error
                errors.append(f"sim actor {index}: {str(exc).strip().splitlines()[-1]}")
        if dead:
            self._replace(dead, what)
        if errors:
            raise RuntimeError("; ".join(errors))
        self.last_info = row_info(rows)
        return rows

    def _replace(self, dead: list[tuple[int, str]], what: str) -> None:
        for index, reason in dead:
            if self.replacements >= self.max_replacements:
                self.close()
                raise RuntimeError(
                    f"sim actor {index} died ({reason}) after {self.replacements} replacements "
                    "already; giving up"
                )
            lo, hi = self._groups()[index]
            self.actors[index] = self._start(index)
            self._wait([self.actors[index].info.remote()], "start")
            self.replacements += 1
            log.warning(
                "ray backend: sim actor %d died during %s (%s); replaced it and re-created its "
                "%d envs (%d-%d); their running episodes will be re-sampled",
                index,
                what,
                reason,
                hi - lo,
                lo,
                hi - 1,
            )
        raise ActorsLost(
            f"{len(dead)} sim actor(s) died during {what} and were replaced; "
            "reset and re-sample the running episodes"
        )
