"""End to end over DDS without a driver reset: ``reset_mode: homing`` and the safety envelope.

The three installed executables, as in test_integration.py, with the simulated driver
offering no ``reset`` service (``offer_reset: false``, a real arm under a plain velocity
controller): the controller's ``home`` service starts every episode. A second cluster runs a
policy that drives joint 1 out of the controller's joint-space envelope: the controller holds
the arm and reports it, the adaptation node discards those rollouts with the reason, and no
node crashes. Needs ``make setup`` and ``source tools/env.sh``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ros_harness import read_jsonl
from std_srvs.srv import Trigger
from test_integration import HORIZON, REACH, Cluster, base_params, small_bundle

from maml_ros.meta import InnerConfig
from maml_ros.rl.checkpoint import PolicyBundle, save_bundle
from maml_ros.rl.policy import GaussianMLPPolicy, PolicySpec
from maml_ros.runtime.robots import get_robot

pytestmark = pytest.mark.slow
HOME = np.array(get_robot("kuka_iiwa").home_pose)


def homing_params(tmp: Path, checkpoint: Path) -> dict:
    params = base_params(tmp, checkpoint)
    params["sim_arm"].update(offer_reset=False)
    params["adaptation"].update(reset_mode="homing", rollback_margin=1e9)
    params["policy_controller"] = {"homing_tolerance": 0.02, "homing_timeout_s": 10.0}
    return params


def pushing_bundle(path: Path) -> Path:
    """A policy whose action is +1 on joint 1 whatever it observes (it leaves any box)."""
    torch.manual_seed(0)
    spec = PolicySpec(hidden=(32, 32), init_log_std=-3.0)
    params = GaussianMLPPolicy(spec).params()
    params["mlp.2.weight"] = torch.zeros_like(params["mlp.2.weight"])
    params["mlp.2.bias"] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])
    bundle = PolicyBundle(
        spec=spec,
        params=params,
        obs_mean=torch.zeros(14),
        obs_std=torch.ones(14),
        inner=InnerConfig(lr=0.05),
    )
    save_bundle(path, bundle)
    return path


def start(cluster: Cluster) -> Cluster:
    for name in ("sim_arm", "policy_controller", "adaptation"):
        cluster.start(name)
    cluster.wait_ready()
    return cluster


@pytest.fixture
def homing_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, homing_params(tmp_path, small_bundle(tmp_path / "s.safetensors")))
    yield start(cluster)
    assert set(cluster.close().values()) == {0}


@pytest.fixture
def envelope_cluster(tmp_path: Path) -> Iterator[Cluster]:
    params = homing_params(tmp_path, pushing_bundle(tmp_path / "push.safetensors"))
    params["policy_controller"].update(
        envelope_lower=(HOME - 0.3).tolist(), envelope_upper=(HOME + 0.3).tolist()
    )
    params["adaptation"].update(max_discarded_rollouts=3)
    cluster = Cluster(tmp_path, params)
    yield start(cluster)
    assert set(cluster.close().values()) == {0}


def test_homing_adapts_without_a_driver_reset_service(homing_cluster: Cluster) -> None:
    cluster = homing_cluster
    reset = cluster.node.create_client(Trigger, "reset")
    home = cluster.node.create_client(Trigger, "arm_controller/home")
    assert home.wait_for_service(timeout_sec=10.0)
    assert not reset.wait_for_service(timeout_sec=1.0)  # the driver offers none
    n = cluster.next_id()
    cluster.send_task(REACH[0])
    status = cluster.wait_adaptation(n, timeout_s=120.0)
    assert status["phase"] == "done", status["reason"]
    assert status["rollouts_collected"] == 4 and status["rollouts_discarded"] == 0
    assert cluster.get("sim_arm")["episode"] == 0  # no driver episodes: homing marked them
    controller = cluster.get("policy_controller")
    assert controller["homings"] >= 6 and controller.get("homing_failures", 0) == 0
    # Each rollout is HORIZON consecutive steps the arm executed, starting near home.
    dumped = read_jsonl(cluster.tmp / "buffer.jsonl")
    executed = {r["stamp_ns"]: r for r in read_jsonl(cluster.tmp / "transitions.jsonl")}
    assert len(dumped) == 4 * HORIZON
    stamps = [r["stamp_ns"] for r in executed.values()]
    for k in range(4):
        rollout = dumped[k * HORIZON : (k + 1) * HORIZON]
        first = stamps.index(rollout[0]["stamp_ns"])
        assert [r["stamp_ns"] for r in rollout] == stamps[first : first + HORIZON]
        np.testing.assert_allclose(rollout[0]["positions"], HOME, atol=0.03)
        for record in rollout:
            assert record["reward"] == executed[record["stamp_ns"]]["reward"]


def test_a_policy_leaving_the_envelope_is_stopped_and_its_rollouts_discarded(
    envelope_cluster: Cluster,
) -> None:
    cluster = envelope_cluster
    first_version = cluster.policies[-1][1]
    n = cluster.next_id()
    cluster.send_task(REACH[0])
    status = cluster.wait_adaptation(n, timeout_s=120.0)
    # Every episode of this policy leaves the box: each is discarded, then the adaptation
    # gives up with the policy it started from.
    assert status["phase"] == "failed", status
    assert "safety envelope left" in status["reason"] and "lbr_iiwa_joint_1" in status["reason"]
    assert status["envelope_discards"] == 3 and status["rollouts_discarded"] == 3
    assert "safety envelope" in status["last_drop_reason"]["rollout"]
    controller = cluster.get("policy_controller")
    assert controller["envelope_violations"] >= 3
    assert cluster.policies[-1][1] == first_version  # nothing adapted was deployed
    # The arm never went further than one control step past the box.
    executed = read_jsonl(cluster.tmp / "transitions.jsonl")
    reached = max(r["positions"][0] for r in executed)
    assert reached < HOME[0] + 0.3 + 1.5 / 40 + 0.02, reached
