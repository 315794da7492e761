"""Meta-learning core (pure PyTorch, no ROS/PyBullet): MAML and Meta-SGD with torch.func."""

from maml_ros.meta.core import (
    InnerConfig,
    LossFn,
    NonFiniteError,
    Params,
    adapt,
    adapt_batched,
    adapt_batched_with_status,
    adapt_per_task,
    adapt_with_flags,
    init_meta_sgd_lrs,
    meta_loss,
    meta_loss_loop,
    settle_nonfinite,
)
from maml_ros.meta.mlp import (
    MLP,
    mlp_forward,
    mlp_mse_adapt_batched_with_status,
    mlp_mse_meta_loss,
)

__all__ = [
    "MLP",
    "InnerConfig",
    "LossFn",
    "NonFiniteError",
    "Params",
    "adapt",
    "adapt_batched",
    "adapt_batched_with_status",
    "adapt_per_task",
    "adapt_with_flags",
    "init_meta_sgd_lrs",
    "meta_loss",
    "meta_loss_loop",
    "mlp_forward",
    "mlp_mse_adapt_batched_with_status",
    "mlp_mse_meta_loss",
    "settle_nonfinite",
]
