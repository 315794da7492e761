"""Meta-learning core (pure PyTorch, no ROS/PyBullet): MAML and Meta-SGD with torch.func."""

from maml_ros.meta.core import (
    InnerConfig,
    LossFn,
    NonFiniteError,
    Params,
    adapt,
    adapt_batched,
    adapt_batched_with_status,
    adapt_with_flags,
    init_meta_sgd_lrs,
    meta_loss,
    meta_loss_loop,
    settle_nonfinite,
)

__all__ = [
    "InnerConfig",
    "LossFn",
    "NonFiniteError",
    "Params",
    "adapt",
    "adapt_batched",
    "adapt_batched_with_status",
    "adapt_with_flags",
    "init_meta_sgd_lrs",
    "meta_loss",
    "meta_loss_loop",
    "settle_nonfinite",
]
