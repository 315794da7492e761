"""Who may deploy a policy to a controller, and which policy replaces which (standard library
only).

Deploy keys: the shared secret that pairs a controller with the adaptation node allowed to
deploy policies to it.
The adaptation node signs the bytes of every policy message with HMAC-SHA256 under the key
(:func:`policy_signature`); the controller refuses a policy whose signature is missing or
wrong (:func:`check_signature`). The key is the content of a file readable by its owner only
(like ssh's private keys): a key given as a parameter value would be readable by anyone through
the parameter services. What this protects against, and what it does not, is written in
:mod:`maml_ros.ros.interfaces`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

SIGNATURE_LABEL = "hmac-sha256="
"""Prefix of the policy message's ``layout.dim[0].label`` holding the signature (hex)."""
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096


class DeployKeyError(ValueError):
    """A deploy key file cannot be used; the message says why."""


def read_deploy_key(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path`` (its bytes, surrounding whitespace stripped); DeployKeyError unless
    it is a regular file of at most :data:`MAX_KEY_BYTES` that only its owner can read or
    write, holding at least :data:`MIN_KEY_BYTES` bytes."""
    try:
        path = Path(path)
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise DeployKeyError(f"deploy key {path}: not a regular file")
        if info.st_mode & 0o077:
            raise DeployKeyError(
                f"deploy key {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read or "
                "write it; chmod 600 it"
            )
        if info.st_size > MAX_KEY_BYTES:
            raise DeployKeyError(f"deploy key {path}: over {MAX_KEY_BYTES} bytes")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as handle:
            key = handle.read(MAX_KEY_BYTES + 1).strip()
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        if isinstance(exc, DeployKeyError):
            raise
        why = getattr(exc, "strerror", None) or exc
        raise DeployKeyError(f"deploy key {str(path)!r:.120}: cannot read it: {why}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise DeployKeyError(
            f"deploy key {path}: {len(key)} bytes, at least {MIN_KEY_BYTES} needed "
            "(e.g. openssl rand -hex 32 > FILE)"
        )
    return key


def create_deploy_key(folder: str | os.PathLike[str]) -> Path:
    """A fresh key (32 random bytes, hex) in ``folder``/deploy.key, created with mode 0600 (it
    must not exist); give the folder mode 0700 (``tempfile.mkdtemp`` does)."""
    path = Path(folder) / "deploy.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path


def deploy_key_problem(path: str) -> str | None:
    """Parameter validator: why ``path`` cannot be the deploy key ('' = no key), or None."""
    if not path:
        return None
    try:
        read_deploy_key(path)
    except DeployKeyError as exc:
        return str(exc)
    return None


def policy_signature(key: bytes, data: bytes | bytearray | memoryview) -> str:
    """HMAC-SHA256 (hex) of the policy bytes ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def check_signature(key: bytes, data: bytes | bytearray | memoryview, label: str | None) -> None:
    """Raises ValueError unless ``label`` is ``hmac-sha256=<the signature of data>``."""
    if not label or not label.startswith(SIGNATURE_LABEL):
        raise ValueError("unsigned policy: this controller takes only policies signed with its key")
    expected = policy_signature(key, data)
    given = label[len(SIGNATURE_LABEL) :].encode("utf-8", "replace")
    if not hmac.compare_digest(given, expected.encode("ascii")):
        raise ValueError("policy signature does not match the deploy key: refused")


ADAPTED_KEY = "adapted"
"""Policy metadata (``extra``): true for weights adapted on the robot, false or absent for a
meta-trained checkpoint."""
OVERRIDE_KEY = "override"
"""Policy metadata (``extra``): true when the operator chose to start from the checkpoint, which
may then replace an adapted policy of another run."""


@dataclass(frozen=True)
class Deployment:
    """What the acceptance rule reads of a policy: its run, version and kind."""

    run_id: str
    version: int
    adapted: bool = False
    override: bool = False

    @classmethod
    def of(cls, run_id: str, version: int, metadata: dict) -> Deployment:
        """The deployment of a policy with this run id, version and ``extra`` metadata."""
        return cls(
            run_id,
            version,
            adapted=metadata.get(ADAPTED_KEY) is True,
            override=metadata.get(OVERRIDE_KEY) is True,
        )


def replacement_refusal(current: Deployment | None, new: Deployment) -> str | None:
    """Why ``new`` must not replace ``current`` (the acceptance rule of
    :mod:`maml_ros.ros.interfaces`), or None: a policy of the current run replaces it when its
    version is higher; one of another run does, unless the current policy is adapted and the new
    one is neither adapted nor an operator's override."""
    if current is None:
        return None
    if new.run_id == current.run_id:
        if new.version > current.version:
            return None
        return (
            f"old version: {new.version} is not newer than the active {current.version} "
            f"of run {new.run_id!r}"
        )
    if current.adapted and not new.adapted and not new.override:
        return (
            f"downgrade refused: unadapted version {new.version} of run {new.run_id!r} would "
            f"replace the adapted version {current.version} of run {current.run_id!r} "
            "(an operator's start from the checkpoint carries override)"
        )
    return None
