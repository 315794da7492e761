"""Sinusoid task family, meta-training and evaluation (maml_ros.meta.sine) and its benchmark."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from maml_ros.meta import InnerConfig
from maml_ros.meta.sine import (
    SineTasks,
    SineTrainConfig,
    evaluate,
    make_sine_model,
    meta_train,
)

torch.set_num_threads(1)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sine.py"


def test_tasks_and_points_follow_the_paper_ranges() -> None:
    generator = torch.Generator().manual_seed(0)
    tasks = SineTasks.sample(2000, generator)
    assert tasks.amplitude.min() >= 0.1 and tasks.amplitude.max() <= 5.0
    assert tasks.phase.min() >= 0.0 and tasks.phase.max() <= math.pi
    assert tasks.amplitude.std() > 1.0  # actually spread over the range
    x, y = tasks.points(7, generator)
    assert x.shape == y.shape == (2000, 7, 1)
    assert x.min() >= -5.0 and x.max() <= 5.0
    expected = tasks.amplitude.view(-1, 1, 1) * torch.sin(x + tasks.phase.view(-1, 1, 1))
    assert torch.allclose(y, expected)


def test_invalid_sizes_are_rejected() -> None:
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        SineTasks.sample(0, generator)
    with pytest.raises(ValueError):
        SineTasks.sample(3, generator).points(0, generator)
    with pytest.raises(ValueError):
        SineTrainConfig(shots=0)
    with pytest.raises(ValueError):
        SineTrainConfig(outer_lr=float("nan"))


def test_short_meta_training_improves_post_update_mse() -> None:
    model, params = make_sine_model(seed=0)
    untrained = evaluate(model, params, shots=10, steps=(1,), num_tasks=200)[1].mse
    result = meta_train(model, params, SineTrainConfig(shots=10, iterations=200, meta_batch=10))
    assert result.params is params and result.lrs is None
    assert all(math.isfinite(v) for v in result.losses)
    evals = evaluate(model, result.params, shots=10, steps=(0, 1), num_tasks=200)
    assert evals[1].diverged == 0
    assert evals[1].mse < evals[0].mse  # one inner step helps
    assert evals[1].mse < untrained  # meta-training helped


def test_meta_sgd_learns_its_learning_rates() -> None:
    model, params = make_sine_model(seed=1)
    cfg = SineTrainConfig(shots=5, iterations=30, meta_batch=5, meta_sgd=True, seed=1)
    result = meta_train(model, params, cfg)
    assert result.lrs is not None and set(result.lrs) == set(params)
    moved = max((lr - InnerConfig().lr).abs().max().item() for lr in result.lrs.values())
    assert moved > 1e-3


def test_quick_benchmark_prints_the_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_sine", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--iterations", "20"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last_line)
    for method in ("maml", "metasgd"):
        for shots in (5, 10, 20):
            key = f"{method}_mse_{shots}shot"
            for name in (key, key + "_ci95", key + "_10step", key + "_10step_ci95"):
                assert name in report
            assert report[key] > 0 and report[key + "_ci95"] > 0
    assert report["vmap_speedup_vs_loop"] > 1
    # The fast path against learn2learn's per-task model copy: same meta-gradient, faster.
    assert report["speedup_vs_per_task_loop"] > 1
    assert report["mlp_meta_it_per_s"] > report["per_task_loop_meta_it_per_s"] > 0
    assert report["meta_grad_max_abs_diff_vs_per_task_loop"] < 1e-5
    assert report["meta_iterations"] == 20
