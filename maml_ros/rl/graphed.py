"""The on-robot inner update replayed from a CUDA graph.

For a policy this small, eager CUDA is bound by kernel launches: :func:`adapt_policy`'s update
(about a hundred small kernels) took 4.5 ms eager on an H200, slower than a CPU. Captured once
per shape as a CUDA graph, the same kernels replay with one launch.

The graph reads one flat input buffer and writes one flat output buffer, so an update is one
host-to-device copy from pinned memory (params, Meta-SGD lrs, normalisation, rollouts), one
replay, and one device-to-host copy (new params, the inner loss, per-step finite flags).
The baseline is fitted with the Cholesky solver of :func:`~maml_ros.rl.pg.fit_linear_baseline`:
``torch.linalg.lstsq`` checks its result on the host, which a graph cannot capture.

On a CPU the same object runs the update eagerly on its buffers: that is how the tests cover
the packing without a GPU.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from maml_ros.meta import InnerConfig
from maml_ros.rl.pg import PGConfig, Rollouts, inner_update
from maml_ros.rl.policy import Params, PolicySpec

if TYPE_CHECKING:
    from maml_ros.rl.checkpoint import PolicyBundle

WARM_UP_RUNS = 3
"""Eager runs on a side stream before capture (library handles, workspaces, cached matrices)."""


class PackedBuffer:
    """Named views into one flat float32 buffer on ``device`` and its host twin (pinned for
    CUDA; the same buffer on a CPU)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> None:
        sizes = [math.prod(shape) for shape in shapes.values()]
        self.host = torch.ones(sum(sizes), pin_memory=device.type == "cuda")
        self.device = self.host if device.type == "cpu" else self.host.to(device)
        self.host_views = _views(self.host, shapes, sizes)
        self.device_views = _views(self.device, shapes, sizes)

    def to_device(self) -> None:
        """Queue the host-to-device copy on the current stream."""
        if self.device is not self.host:
            self.device.copy_(self.host, non_blocking=True)

    def to_host(self) -> None:
        """Queue the device-to-host copy on the current stream."""
        if self.device is not self.host:
            self.host.copy_(self.device, non_blocking=True)


def _views(
    flat: torch.Tensor, shapes: dict[str, tuple[int, ...]], sizes: list[int]
) -> dict[str, torch.Tensor]:
    chunks = flat.split(sizes)
    pairs = zip(shapes.items(), chunks, strict=True)
    return {name: chunk.view(shape) for (name, shape), chunk in pairs}


class GraphedInnerUpdate:
    """:func:`~maml_ros.rl.pg.inner_update` for one policy spec, config and rollout shape
    ``[k, horizon]``, captured as a CUDA graph on ``device`` (run eagerly on a CPU).

    Thread-safe: calls are serialised, as they share the buffers.
    """

    def __init__(
        self,
        spec: PolicySpec,
        pg: PGConfig,
        inner: InnerConfig,
        lr_names: tuple[str, ...] | None,
        k: int,
        horizon: int,
        device: torch.device,
    ) -> None:
        self.pg, self.inner, self.device = pg, inner, device
        self.param_shapes = spec.param_shapes()
        self.lr_names = lr_names
        inputs = {f"param/{n}": shape for n, shape in self.param_shapes.items()}
        inputs |= {f"lr/{n}": self.param_shapes[n] for n in lr_names or ()}
        inputs |= {
            "obs_mean": (spec.obs_dim,),
            "obs_std": (spec.obs_dim,),
            "obs": (k, horizon, spec.obs_dim),
            "actions": (k, horizon, spec.act_dim),
            "rewards": (k, horizon),
            "mask": (k, horizon),
        }
        outputs = {f"param/{n}": shape for n, shape in self.param_shapes.items()}
        outputs |= {"inner_loss": (), "finite": (inner.steps,)}
        self._in = PackedBuffer(inputs, device)
        self._out = PackedBuffer(outputs, device)
        self._lock = threading.Lock()
        self._graph: torch.cuda.CUDAGraph | None = None
        if device.type == "cuda":
            self._capture()

    def __call__(
        self, bundle: PolicyBundle, data: Rollouts
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        """The update of ``bundle`` on validated ``data`` (of this object's shape): new params
        (CPU, own storage), the inner loss before the update and the finite flags."""
        with self._lock:
            host = self._in.host_views
            for name, value in bundle.params.items():
                host[f"param/{name}"].copy_(value)
            for name in self.lr_names or ():
                host[f"lr/{name}"].copy_(bundle.lrs[name])
            host["obs_mean"].copy_(bundle.obs_mean)
            host["obs_std"].copy_(bundle.obs_std)
            for name in ("obs", "actions", "rewards", "mask"):
                host[name].copy_(getattr(data, name))
            if self._graph is None:
                self._compute()
            else:
                self._in.to_device()
                self._graph.replay()
                self._out.to_host()
                torch.cuda.current_stream(self.device).synchronize()
            out = self._out.host_views
            params = {name: out[f"param/{name}"].clone() for name in self.param_shapes}
            return params, out["inner_loss"].clone(), out["finite"] > 0.5

    def _compute(self) -> None:
        """The update from the input buffer into the output buffer (what the graph holds)."""
        views = self._in.device_views
        params = {name: views[f"param/{name}"] for name in self.param_shapes}
        lrs = None if self.lr_names is None else {n: views[f"lr/{n}"] for n in self.lr_names}
        data = Rollouts(views["obs"], views["actions"], views["rewards"], views["mask"])
        adapted, loss, finite = inner_update(
            params,
            lrs,
            data,
            self.pg,
            self.inner,
            views["obs_mean"],
            views["obs_std"],
            solver="cholesky",
        )
        out = self._out.device_views
        for name in self.param_shapes:
            out[f"param/{name}"].copy_(adapted[name])
        out["inner_loss"].copy_(loss)
        out["finite"].copy_(finite)

    def _capture(self) -> None:
        """Warm up on a side stream, then capture :meth:`_compute` (the PyTorch recipe)."""
        self._in.to_device()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_RUNS):
                self._compute()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._compute()
        self._graph = graph


_update_for = lru_cache(maxsize=8)(GraphedInnerUpdate)
"""One captured update per (spec, pg, inner, lr names, k, horizon, device), at most 8 kept."""


def graphed_inner_update(
    bundle: PolicyBundle, data: Rollouts, inner: InnerConfig, device: torch.device
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """The update of ``bundle`` on validated ``data`` from the cached graph of its shape
    (captured on first use: :func:`~maml_ros.rl.adapt.warm_up` does it ahead of time)."""
    k, horizon = data.obs.shape[:2]
    lr_names = None if bundle.lrs is None else tuple(sorted(bundle.lrs))
    update = _update_for(bundle.spec, bundle.pg, inner, lr_names, k, horizon, device)
    return update(bundle, data)


__all__ = ["GraphedInnerUpdate", "PackedBuffer", "graphed_inner_update"]
