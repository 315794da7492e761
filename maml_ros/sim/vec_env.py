"""Many :class:`~maml_ros.sim.arm_env.ArmEnv` in worker processes, with no pickle on the wire.

Like gymnasium's AsyncVectorEnv, but the pipes carry only raw bytes: each worker process owns a
contiguous group of envs; the main process sends actions as float32 bytes and tasks as JSON
text, and receives one float32 row per env (observation, reward, distance, end-effector
position, terminated/truncated/success flags). The policy is not the sim's business: the caller
batches inference over all envs and calls :meth:`VecArmEnv.step` with the actions.

Workers exit when their pipe closes, so they die with the parent even when it is killed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from maml_ros.runtime.robots import DEFAULT_ROBOT, get_robot
from maml_ros.sim.arm_env import ArmEnv, PhysicsWorld
from maml_ros.sim.task import TaskSpec

# Layout of one env's row in a worker reply (float32): fixed fields first, then the
# observation (its size is the robot's: 2 x joints), so the fields never move.
_REWARD = 0
_DISTANCE = 1
_EE = slice(2, 5)
_TERMINATED = 5
_TRUNCATED = 6
_SUCCESS = 7
_OBS = 8


def row_width(obs_dim: int) -> int:
    """Columns of one env's wire row for observations of ``obs_dim`` values."""
    return _OBS + obs_dim


def robot_dims(env_kwargs: dict[str, Any] | None) -> tuple[int, int]:
    """(obs_dim, act_dim) of the arm ``env_kwargs`` build (its ``robot``, default iiwa)."""
    n = get_robot((env_kwargs or {}).get("robot", DEFAULT_ROBOT)).num_joints
    return 2 * n, n


_STEP, _RESET, _CLOSE = b"S", b"R", b"C"
_OK, _ERROR = b"K", b"E"


class _WorkerLost(RuntimeError):
    """A worker died or stopped answering; the VecArmEnv cannot go on."""


def _row(obs: np.ndarray, reward: float, terminated: bool, truncated: bool, info: dict) -> list:
    return [
        reward,
        info["distance"],
        *info["ee_pos"],
        float(terminated),
        float(truncated),
        float(info["success"]),
        *obs,
    ]


class EnvGroup:
    """A worker's contiguous group of ArmEnvs (one physics world for all with ``shared_world``).

    What a worker process (or a Ray actor, :mod:`maml_ros.sim.ray_env`) owns: ``reset`` and
    ``step`` return one float32 row per env in the wire layout (:func:`row_width` columns).
    """

    def __init__(self, n_envs: int, env_kwargs: dict[str, Any], shared_world: bool) -> None:
        kwargs = dict(env_kwargs)
        self.world: PhysicsWorld | None = None
        self.envs: list[ArmEnv] = []
        try:
            if shared_world:
                self.world = PhysicsWorld(kwargs.pop("physics_hz", 240))
            self.envs = [ArmEnv(world=self.world, **kwargs) for _ in range(n_envs)]
        except BaseException:
            self.close()
            raise
        self.obs_dim, self.act_dim = robot_dims(kwargs)
        self._out = np.zeros((n_envs, row_width(self.obs_dim)), dtype=np.float32)

    def step(self, actions: np.ndarray) -> np.ndarray:
        """One control step of every env of the group: rows ``[n_envs, row_width]`` (reused)."""
        envs, out, world = self.envs, self._out, self.world
        actions = np.asarray(actions, dtype=np.float32).reshape(len(envs), self.act_dim)
        if world is None:
            for i, (env, action) in enumerate(zip(envs, actions, strict=True)):
                out[i] = _row(*env.step(action))
        else:  # one world for the whole group: command all, step once, read all
            clipped = [env._command_action(a) for env, a in zip(envs, actions, strict=True)]
            world.step(envs[0].substeps)
            for i, (env, action) in enumerate(zip(envs, clipped, strict=True)):
                out[i] = _row(*env._finish_step(action))
        return out

    def reset(self, tasks_json: Sequence[str | None], seeds: Sequence[int | None]) -> np.ndarray:
        """Reset env i to ``tasks_json[i]`` (None: keep its task) seeded with ``seeds[i]``."""
        out = self._out
        for i, (env, task, seed) in enumerate(zip(self.envs, tasks_json, seeds, strict=True)):
            options = {"task": TaskSpec.from_json(task)} if task is not None else None
            obs, info = env.reset(seed=seed, options=options)
            out[i] = _row(obs, 0.0, False, False, info)
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []
        if self.world is not None:
            self.world.close()
            self.world = None


def split_rows(
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """obs, rewards, terminated, truncated, success of wire rows ``[n_envs, row_width]``."""
    return (
        rows[:, _OBS:].copy(),
        rows[:, _REWARD].copy(),
        rows[:, _TERMINATED] > 0.5,
        rows[:, _TRUNCATED] > 0.5,
        rows[:, _SUCCESS] > 0.5,
    )


def row_info(rows: np.ndarray) -> dict[str, np.ndarray]:
    """``distance`` [n_envs] and ``ee_pos`` [n_envs, 3] of wire rows."""
    return {"distance": rows[:, _DISTANCE].copy(), "ee_pos": rows[:, _EE].copy()}


def _serve(conn: Connection, group: EnvGroup) -> None:
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        command, payload = message[:1], message[1:]
        if command == _CLOSE:
            return
        try:
            if command == _STEP:
                out = group.step(np.frombuffer(payload, dtype=np.float32))
            elif command == _RESET:
                request = json.loads(payload.decode("utf-8"))
                out = group.reset(request["tasks"], request["seeds"])
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send_bytes(_OK + out.tobytes())
        except Exception as exc:
            conn.send_bytes(_ERROR + f"{type(exc).__name__}: {exc}".encode())


def _worker(conn: Connection, n_envs: int, env_kwargs_json: str, shared_world: bool) -> None:
    """Worker process entry: build ``n_envs`` envs, then serve commands until told to stop."""
    group: EnvGroup | None = None
    try:
        group = EnvGroup(n_envs, json.loads(env_kwargs_json), shared_world)
        conn.send_bytes(_OK)
        _serve(conn, group)
    except Exception as exc:
        with contextlib.suppress(OSError, ValueError):
            conn.send_bytes(_ERROR + f"{type(exc).__name__}: {exc}".encode())
    finally:
        if group is not None:
            group.close()
        conn.close()


class VecArmEnv:
    """``n_envs`` ArmEnvs spread over ``n_workers`` processes (default: one per core).

    ``reset(tasks, seeds) -> obs [n_envs, 14]``;
    ``step(actions [n_envs, 7]) -> obs, rewards, terminated, truncated, success``.
    ``last_info`` holds ``distance`` [n_envs] and ``ee_pos`` [n_envs, 3] of the last call.
    ``shared_world=True`` puts each worker's arms in one physics world (one PyBullet server per
    worker instead of one per env: ~5 MB instead of ~35 MB an env, and one stepSimulation call
    for the group); joint states are the same either way, distances and rewards agree to ~1e-7.
    ``env_kwargs`` are ArmEnv keyword arguments (plain JSON data). Use it as a context manager
    (or call :meth:`close`).
    """

    def __init__(
        self,
        n_envs: int,
        n_workers: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        *,
        shared_world: bool = True,
        start_method: str = "spawn",
        timeout_s: float = 120.0,
    ) -> None:
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
        if n_workers is None:
            n_workers = min(n_envs, os.cpu_count() or 1)
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        n_workers = min(n_workers, n_envs)
        kwargs_json = json.dumps(env_kwargs or {})  # plain data only: fails early otherwise
        self.obs_dim, self.act_dim = robot_dims(env_kwargs)
        self.n_envs = n_envs
        self.n_workers = n_workers
        self.timeout_s = timeout_s
        sizes = [len(group) for group in np.array_split(np.arange(n_envs), n_workers)]
        self._bounds = np.cumsum([0, *sizes])
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._closed = False
        self.last_info: dict[str, np.ndarray] = {}
        ctx = mp.get_context(start_method)
        try:
            for size in sizes:
                parent_end, child_end = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=_worker, args=(child_end, size, kwargs_json, shared_world), daemon=True
                )
                proc.start()
                child_end.close()
                self._conns.append(parent_end)
                self._procs.append(proc)
            for index in range(n_workers):
                self._receive(index)
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
        for index, (lo, hi) in enumerate(self._groups()):
            request = json.dumps({"tasks": task_json[lo:hi], "seeds": seeds[lo:hi]})
            self._send(index, _RESET + request.encode())
        rows = self._gather()
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
        for index, (lo, hi) in enumerate(self._groups()):
            self._send(index, _STEP + actions[lo:hi].tobytes())
        return split_rows(self._gather())

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send_bytes(_CLOSE)
        for proc in self._procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
        for conn in self._conns:
            conn.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def __enter__(self) -> VecArmEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    # --- wire -----------------------------------------------------------------------------

    def _groups(self) -> list[tuple[int, int]]:
        return [
            (int(lo), int(hi)) for lo, hi in zip(self._bounds[:-1], self._bounds[1:], strict=False)
        ]

    def _send(self, index: int, message: bytes) -> None:
        if self._closed:
            raise RuntimeError("VecArmEnv is closed")
        try:
            self._conns[index].send_bytes(message)
        except (OSError, ValueError) as exc:
            self.close()  # replies of the other workers may be pending: stop them all
            raise _WorkerLost(f"sim worker {index} died: {exc!r}") from None

    def _receive(self, index: int) -> bytes:
        conn = self._conns[index]
        try:
            if not conn.poll(self.timeout_s):
                raise _WorkerLost(f"sim worker {index} did not answer in {self.timeout_s} s")
            message = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise _WorkerLost(f"sim worker {index} died: {exc!r}") from None
        if message[:1] == _ERROR:
            raise RuntimeError(f"sim worker {index}: {message[1:].decode(errors='replace')}")
        return message[1:]

    def _gather(self) -> np.ndarray:
        rows = np.empty((self.n_envs, row_width(self.obs_dim)), dtype=np.float32)
        errors, lost = [], False
        for index, (lo, hi) in enumerate(self._groups()):
            try:  # read every reply, even after an error, so the pipes stay in step
                rows[lo:hi] = np.frombuffer(self._receive(index), np.float32).reshape(
                    -1, row_width(self.obs_dim)
                )
            except _WorkerLost as exc:
                errors.append(str(exc))
                lost = True
            except RuntimeError as exc:
                errors.append(str(exc))
        if lost:  # a dead or silent worker leaves the pipes out of step: stop them all
            self.close()
        if errors:
            raise RuntimeError("; ".join(errors))
        self.last_info = row_info(rows)
        return rows
