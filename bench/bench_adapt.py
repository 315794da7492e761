"""On-robot inner-update latency: ``maml_ros.rl.adapt.adapt_policy`` vs a straightforward version.

What is timed (one *inner update*): everything ``adapt_policy`` does on the K rollouts of
default horizon (50) the robot just collected: rollout validation, returns, the linear
baseline fit, GAE, advantage normalisation, log pi_old, the loss, its gradient and the
(Meta-SGD) step, repeated ``steps`` times. Rollouts are real:
K exploring episodes of the policy on the PyBullet arm (a held-out reach task).

The straightforward reference computes the same update the textbook way: an ``nn.Module``,
Python loops over time steps for returns and GAE, a ``lstsq`` baseline on features built
per episode (one concatenate per path, as rllab/garage's LinearFeatureBaseline),
``torch.autograd.grad`` and a ``copy.deepcopy`` of the module for the updated policy. Both
results are checked equal (max |delta| of the new parameters <= 5e-4 relative) before timing.

Wall time is what the robot waits; the thread CPU time is reported next to it because this
machine is shared (its load inflates wall time). Cases: K in {10, 20} x steps in {1, 3} x
policy in {shipped size, 4x wider}, on CPU, and on CUDA (same ``adapt_policy`` call with
``device="cuda"``: a CUDA-graph replay, its result checked against the CPU's) when available.
Each case: warm-up, then ``--reps`` (>= 50) timed repetitions; p50 / p99 in ms.

    python bench/bench_adapt.py [--reps 60] [--threads 1] [--checkpoint PATH]
        [--save-rollouts FILE | --rollouts FILE]

``--save-rollouts`` writes the arm rollouts to a safetensors file; ``--rollouts`` reads them
from one instead of running the arm (on a GPU machine without PyBullet).

Last line (JSON): ``cpu_inner_step_ms_p50`` / ``_p99`` and ``speedup_vs_naive`` for K=20,
shipped policy, 1 step on CPU; ``cuda_inner_step_ms_p50`` (null without CUDA); ``cases``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Any

import torch
from _common import arm_rollouts, emit_json, machine_info, shipped_bundle, summarize_ms
from safetensors.torch import load_file, save_file
from torch import nn

from maml_ros.rl.adapt import adapt_policy
from maml_ros.rl.checkpoint import PolicyBundle
from maml_ros.rl.pg import Rollouts
from maml_ros.rl.policy import LOG_STD_RANGE, OBS_CLIP

TARGET_P50_MS = 2.0
TARGET_SPEEDUP = 3.0
TARGET_CUDA_P50_MS = 1.0
MATCH_RTOL = 5e-4
"""Float32 results may differ by this (relative to each tensor's largest entry): three steps
with the shipped Meta-SGD rates move log_std by ~0.6, and rounding differences grow with it."""


# --------------------------------------------------------------------------- the naive version


class NaivePolicy(nn.Module):
    """The textbook Gaussian MLP policy module."""

    def __init__(self, bundle: PolicyBundle) -> None:
        super().__init__()
        sizes = bundle.spec.layer_sizes
        self.mlp = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in sizes)
        self.log_std = nn.Parameter(torch.zeros(bundle.spec.act_dim))
        self.load_state_dict({k: v.clone() for k, v in bundle.params.items()})
        self.obs_mean = bundle.obs_mean.clone()
        self.obs_std = bundle.obs_std.clone()

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = ((obs - self.obs_mean) / self.obs_std).clamp(-OBS_CLIP, OBS_CLIP)
        for layer in self.mlp[:-1]:
            x = torch.tanh(layer(x))
        mean = self.mlp[-1](x)
        log_std = self.log_std.clamp(*LOG_STD_RANGE)
        dist = torch.distributions.Normal(mean, log_std.exp())
        return dist.log_prob(actions).sum(-1)


def naive_advantages(bundle: PolicyBundle, rollouts: Rollouts) -> torch.Tensor:
    """Returns and GAE with Python loops over time, the baseline's features built per episode
    as rllab/garage do (full-length episodes)."""
    gamma, lam, reg = bundle.pg.gamma, bundle.pg.gae_lambda, bundle.pg.baseline_reg
    obs, rewards = rollouts.obs, rollouts.rewards
    power = bundle.pg.reward_power
    rewards = torch.sign(rewards) * torch.abs(rewards) ** power
    k, horizon = rewards.shape
    returns = torch.zeros(k, horizon)
    running = torch.zeros(k)
    for t in reversed(range(horizon)):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    # Features per episode, one concatenate per path (rllab/garage LinearFeatureBaseline).
    paths = []
    for episode in range(k):
        o = obs[episode].clamp(-10, 10)
        al = torch.arange(horizon, dtype=o.dtype).reshape(-1, 1) / 100.0
        paths.append(torch.cat([o, o**2, al, al**2, al**3, torch.ones(horizon, 1)], dim=1))
    x = torch.cat(paths).double()
    y = returns.reshape(-1, 1).double()
    n = x.shape[1]
    x_aug = torch.cat([x, math.sqrt(reg) * torch.eye(n, dtype=x.dtype)])
    y_aug = torch.cat([y, torch.zeros(n, 1, dtype=y.dtype)])
    weights = torch.linalg.lstsq(x_aug, y_aug, driver="gelsd").solution
    values = (x @ weights).reshape(k, horizon).float()
    advantages = torch.zeros(k, horizon)
    running = torch.zeros(k)
    for t in reversed(range(horizon)):
        next_value = values[:, t + 1] if t + 1 < horizon else torch.zeros(k)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    if bundle.pg.normalize_advantages:
        mean = advantages.mean()
        std = ((advantages - mean) ** 2).mean().sqrt()
        advantages = (advantages - mean) / (std + 1e-8)
    return advantages


def naive_adapt(
    bundle: PolicyBundle, rollouts: Rollouts, steps: int
) -> tuple[dict[str, torch.Tensor], float]:
    """The same inner update, written the straightforward way; new params and loss after."""
    module = NaivePolicy(bundle)
    advantages = naive_advantages(bundle, rollouts)
    with torch.no_grad():
        logp_old = module.log_prob(rollouts.obs, rollouts.actions)
    for _ in range(steps):
        logp = module.log_prob(rollouts.obs, rollouts.actions)
        loss = -(torch.exp(logp - logp_old) * advantages).mean()
        names = [name for name, _ in module.named_parameters()]
        grads = torch.autograd.grad(loss, list(module.parameters()))
        updated = copy.deepcopy(module)
        with torch.no_grad():
            for name, param, grad in zip(names, updated.parameters(), grads, strict=True):
                lr = bundle.lrs[name] if bundle.lrs is not None else bundle.inner.lr
                param -= lr * grad
        module = updated
    with torch.no_grad():
        logp = module.log_prob(rollouts.obs, rollouts.actions)
        loss_after = float(-(torch.exp(logp - logp_old) * advantages).mean())
    return {k: v.detach().clone() for k, v in module.named_parameters()}, loss_after


# --------------------------------------------------------------------------- timing


def time_it(
    fn: Any, reps: int, warmup: int, sync_cuda: bool = False
) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU seconds per call of ``fn()`` over ``reps`` calls after ``warmup``.

    The CPU time (``time.thread_time``, torch at 1 intra-op thread runs in this thread) leaves
    out the time this process waited for a core: on the shared machine it is the better guess
    of the latency on an idle core.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        if sync_cuda:
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        if sync_cuda:
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return wall, cpu


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|a - b| / (max|a| + 1e-6)."""
    return max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-6)) for k in a)


def run_case(
    bundle: PolicyBundle, rollouts: Rollouts, label: str, steps: int, reps: int, cuda: bool
) -> dict[str, Any]:
    """Time ours (CPU, optionally CUDA) and the naive version on one case."""
    k = int(rollouts.obs.shape[0])
    ours_bundle, info = adapt_policy(bundle, rollouts, steps=steps, device="cpu", loss_after=True)
    naive_params, naive_loss_after = naive_adapt(bundle, rollouts, steps)
    diff = max_rel_diff(ours_bundle.params, naive_params)
    if diff > MATCH_RTOL or abs(info["inner_loss_after"] - naive_loss_after) > MATCH_RTOL:
        raise SystemExit(
            f"{label} K={k} steps={steps}: naive and ours disagree (param rel diff {diff:.2e}, "
            f"loss after {info['inner_loss_after']:.6f} vs {naive_loss_after:.6f})"
        )
    warmup = max(5, reps // 10)
    ours, ours_cpu = time_it(lambda: adapt_policy(bundle, rollouts, steps=steps), reps, warmup)
    # The naive version is slow: fewer repetitions are enough for its median.
    naive, naive_cpu = time_it(lambda: naive_adapt(bundle, rollouts, steps), max(10, reps // 3), 2)
    ours_ms, naive_ms = summarize_ms(ours), summarize_ms(naive)
    case: dict[str, Any] = {
        "policy": label,
        "hidden": list(bundle.spec.hidden),
        "k": k,
        "steps": steps,
        "cpu_ms": ours_ms,
        "cpu_thread_time_ms": summarize_ms(ours_cpu),
        "naive_cpu_ms": naive_ms,
        "naive_cpu_thread_time_ms": summarize_ms(naive_cpu),
        "speedup_vs_naive": round(naive_ms["p50"] / ours_ms["p50"], 2),
        "param_max_rel_diff_vs_naive": diff,
        "cuda_ms": None,
    }
    if cuda:
        gpu_bundle, _ = adapt_policy(bundle, rollouts, steps=steps, device="cuda")
        case["cuda_param_max_rel_diff_vs_cpu"] = gpu_diff = max_rel_diff(
            ours_bundle.params, gpu_bundle.params
        )
        if gpu_diff > MATCH_RTOL:
            raise SystemExit(f"{label} K={k} steps={steps}: CUDA and CPU disagree ({gpu_diff:.2e})")
        gpu, _ = time_it(
            lambda: adapt_policy(bundle, rollouts, steps=steps, device="cuda"),
            reps,
            warmup,
            sync_cuda=True,
        )
        case["cuda_ms"] = summarize_ms(gpu)
    cuda_text = f", cuda p50 {case['cuda_ms']['p50']:.2f} ms" if cuda else ""
    print(
        f"{label:>8} hidden={list(bundle.spec.hidden)} K={k:2d} steps={steps}: "
        f"ours p50 {ours_ms['p50']:.2f} ms p99 {ours_ms['p99']:.2f} ms "
        f"(CPU time p50 {case['cpu_thread_time_ms']['p50']:.2f}) | naive p50 "
        f"{naive_ms['p50']:.2f} ms | x{case['speedup_vs_naive']:.1f}{cuda_text}",
        flush=True,
    )
    return case


FIELDS = ("obs", "actions", "rewards", "mask")


def read_rollouts(path: str, labels: tuple[str, ...]) -> dict[str, Rollouts]:
    """Rollouts saved by ``--save-rollouts`` (validated later, by adapt_policy)."""
    tensors = load_file(path)
    try:
        return {label: Rollouts(*(tensors[f"{label}/{n}"] for n in FIELDS)) for label in labels}
    except KeyError as missing:
        raise SystemExit(f"{path} holds no rollouts {missing}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60, help="timed repetitions (>= 50)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--checkpoint", default=None, help="policy bundle (default: shipped)")
    parser.add_argument("--seed", type=int, default=0)
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--save-rollouts", metavar="FILE", help="write the rollouts (safetensors)")
    files.add_argument("--rollouts", metavar="FILE", help="read the rollouts instead of the arm")
    args = parser.parse_args()
    if args.reps < 50:
        parser.error("--reps must be >= 50")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()

    shipped, source = shipped_bundle(args.checkpoint, seed=args.seed)
    hidden = list(shipped.spec.hidden)
    wide, _ = shipped_bundle(hidden=[4 * h for h in hidden], seed=args.seed)
    wide = wide.replace(obs_mean=shipped.obs_mean, obs_std=shipped.obs_std)
    print(f"policy: {source}; wide: hidden={list(wide.spec.hidden)}; CUDA: {cuda}")
    if args.rollouts:
        rollouts = read_rollouts(args.rollouts, ("shipped", "wide"))
    else:
        rollouts = {
            "shipped": arm_rollouts(shipped, 20, seed=args.seed),
            "wide": arm_rollouts(wide, 20, seed=args.seed),
        }
    if args.save_rollouts:
        tensors = {f"{label}/{n}": getattr(r, n) for label, r in rollouts.items() for n in FIELDS}
        save_file(tensors, args.save_rollouts)
    cases = []
    for label, bundle in (("shipped", shipped), ("wide", wide)):
        for k in (10, 20):
            data = rollouts[label]
            batch = Rollouts(data.obs[:k], data.actions[:k], data.rewards[:k], data.mask[:k])
            for steps in (1, 3):
                cases.append(run_case(bundle, batch, label, steps, args.reps, cuda))
    headline = next(
        c for c in cases if c["policy"] == "shipped" and c["k"] == 20 and c["steps"] == 1
    )
    p50 = headline["cpu_ms"]["p50"]
    speedup = headline["speedup_vs_naive"]
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(
        f"headline (K=20, shipped, 1 step, CPU, {args.threads} thread(s), shared machine): "
        f"p50 {p50:.2f} ms (target <= {TARGET_P50_MS}: {verdict(p50 <= TARGET_P50_MS)}), "
        f"x{speedup} vs naive (target >= {TARGET_SPEEDUP}: {verdict(speedup >= TARGET_SPEEDUP)})"
    )
    if cuda:
        cuda_p50 = headline["cuda_ms"]["p50"]
        print(
            f"headline on CUDA ({torch.cuda.get_device_name(0)}): p50 {cuda_p50:.3f} ms "
            f"(target <= {TARGET_CUDA_P50_MS}: {verdict(cuda_p50 <= TARGET_CUDA_P50_MS)})"
        )
    emit_json(
        {
            "bench": "adapt",
            **machine_info(),
            "policy_source": source,
            "horizon": int(rollouts["shipped"].obs.shape[1]),
            "reps": args.reps,
            "cpu_inner_step_ms_p50": p50,
            "cpu_inner_step_ms_p99": headline["cpu_ms"]["p99"],
            "cpu_inner_step_thread_time_ms_p50": headline["cpu_thread_time_ms"]["p50"],
            "speedup_vs_naive": speedup,
            "cuda_inner_step_ms_p50": headline["cuda_ms"]["p50"] if cuda else None,
            "cuda_inner_step_ms_p99": headline["cuda_ms"]["p99"] if cuda else None,
            "target_p50_ms": TARGET_P50_MS,
            "target_met_p50": p50 <= TARGET_P50_MS,
            "target_met_speedup": speedup >= TARGET_SPEEDUP,
            "cases": cases,
        }
    )


if __name__ == "__main__":
    main()
