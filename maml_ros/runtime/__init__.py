"""runtime layer: what a robot needs to run a policy, with numpy and the standard library only.

- :mod:`maml_ros.runtime.observation`: the observation built from a joint state;
- :mod:`maml_ros.runtime.policy`: the policy spec and allocation-free numpy inference
  (tanh MLP mean plus Gaussian exploration), with the probe check every loader applies;
- :mod:`maml_ros.runtime.reader`: the safetensors policy reader (files and ``policy`` messages
  written by :mod:`maml_ros.rl.checkpoint`), validating exactly what rl's codec validates,
  the content checksum included;
- :mod:`maml_ros.runtime.deployment`: deploy keys, the HMAC that signs policy messages, and
  the rule of which policy replaces which.

It imports neither torch, pybullet nor gymnasium; ``sim`` and ``rl`` build on it.
"""

from maml_ros.runtime.deployment import (
    DeployKeyError,
    Deployment,
    check_signature,
    create_deploy_key,
    deploy_key_problem,
    policy_signature,
    read_deploy_key,
    replacement_refusal,
)
from maml_ros.runtime.observation import observation_from_joint_state
from maml_ros.runtime.policy import (
    LOG_STD_RANGE,
    OBS_CLIP,
    NumpyPolicy,
    PolicySpec,
    PolicySpecError,
    probe_problem,
)
from maml_ros.runtime.reader import (
    CHECKSUM_KEY,
    DEFAULT_MAX_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    PolicyData,
    checked_policy,
    content_sha256,
    policy_from_bytes,
    read_policy_file,
)

__all__ = [
    "CHECKSUM_KEY",
    "DEFAULT_MAX_BYTES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOG_STD_RANGE",
    "OBS_CLIP",
    "CheckpointError",
    "DeployKeyError",
    "Deployment",
    "NumpyPolicy",
    "PolicyData",
    "PolicySpec",
    "PolicySpecError",
    "check_signature",
    "checked_policy",
    "content_sha256",
    "create_deploy_key",
    "deploy_key_problem",
    "observation_from_joint_state",
    "policy_from_bytes",
    "policy_signature",
    "probe_problem",
    "read_deploy_key",
    "read_policy_file",
    "replacement_refusal",
]
