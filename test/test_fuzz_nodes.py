"""Fuzz test (issue 20 #1): seeded valid and invalid inputs on every topic and service of the
three running executables, then a valid adaptation.

It runs ``bench/bench_fuzz.py``'s scenario with a CI-sized count (``MAML_FUZZ_COUNT``, default
300 messages per input topic and 300 calls per service) and the seed ``MAML_FUZZ_SEED``
(default 20): a failure names its seed, and ``make bench-fuzz BENCH_ARGS="--count N --seed S"``
replays it. ``make bench-fuzz`` runs the full 10,000 per topic.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_fuzz import NODES, SERVICES, TOPICS, run_fuzz

torch.set_num_threads(1)

COUNT = int(os.environ.get("MAML_FUZZ_COUNT", "300"))
SEED = int(os.environ.get("MAML_FUZZ_SEED", "20"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = run_fuzz(count=COUNT, seed=SEED, work_dir=tmp_path_factory.mktemp("fuzz"))
    print({k: v for k, v in result.items() if k != "last_drop_reason"})
    return result


def test_no_node_crashes(fuzz: dict) -> None:
    assert fuzz["node_crashes"] == 0, (SEED, fuzz["exit_codes"], fuzz["logs"])


def test_every_topic_and_service_got_its_count(fuzz: dict) -> None:
    assert fuzz["messages_per_topic"] == dict.fromkeys(TOPICS, COUNT)
    assert {s: fuzz["calls_per_service"][s]["sent"] for s in SERVICES} == dict.fromkeys(
        SERVICES, COUNT
    )


def test_every_service_call_is_answered(fuzz: dict) -> None:
    for service in SERVICES:
        calls = fuzz["calls_per_service"][service]
        assert calls["unanswered"] == 0 and calls["answered"] == COUNT, (SEED, service, calls)
        assert calls["success"] + calls["busy"] == COUNT, (SEED, service, calls)


def test_bad_inputs_are_counted_with_a_reason_by_the_node_that_reads_them(fuzz: dict) -> None:
    """About half the messages are bad; each reading node counts some under the input's kind
    and says why (how many reach a node depends on the transport, so no exact count)."""
    dropped, reasons = fuzz["dropped"], fuzz["last_drop_reason"]
    expected = {
        "policy_controller": ("joint_state", "policy"),
        "adaptation": ("joint_states", "actions", "reward", "task", "controller_status"),
        "sim_arm": ("task",),
    }
    for node, kinds in expected.items():
        for kind in kinds:
            assert dropped[node].get(kind, 0) > 0, (SEED, node, kind, dropped[node])
            assert reasons[node][kind], (node, kind)
    assert set(dropped) == set(NODES)


def test_no_bad_policy_ran_and_commands_stayed_finite_within_limits(fuzz: dict) -> None:
    assert fuzz["bad_policies_accepted"] == 0, (SEED, fuzz["bad_policy_runs"])
    run_id, _ = fuzz["controller_policy_at_end"]
    assert run_id == fuzz["adaptation_run_id"]
    commands = fuzz["commands"]
    assert commands["received"] > 0
    assert commands["non_finite"] == 0 and commands["over_limit"] == 0, (SEED, commands)


def test_a_valid_adaptation_completes_after_the_fuzz(fuzz: dict) -> None:
    assert fuzz["adaptation_after_fuzz"] == "done", (
        SEED,
        fuzz["adaptation_after_fuzz"],
        fuzz["adaptation_after_fuzz_reason"],
    )
