"""maml_ros: fast on-robot adaptation of an arm policy with MAML.

Layers, each usable without the next (imports point down this list only):
``maml_ros.meta`` (pure PyTorch) -> ``maml_ros.sim`` (PyBullet arm, tasks)
-> ``maml_ros.rl`` (meta-RL) -> ``maml_ros.ros`` (ROS 2 nodes).
"""

__version__ = "0.1.0"
