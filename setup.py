"""ament_python build description for maml_ros."""

from glob import glob

from setuptools import find_packages, setup

package_name = "maml_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/models", glob("models/*.safetensors") + glob("models/*.json")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="maml_ros maintainers",
    maintainer_email="maintainers@maml-ros.invalid",
    description="On-robot fast adaptation of an arm policy with MAML, for ROS 2.",
    license="Apache-2.0",
    extras_require={"test": ["pytest", "hypothesis"], "ray": ["ray==2.60.0"]},
    entry_points={
        "console_scripts": [
            "sim_arm_node = maml_ros.ros.sim_arm_node:main",
            "policy_controller_node = maml_ros.ros.policy_controller_node:main",
            "adaptation_node = maml_ros.ros.adaptation_node:main",
            "maml-ros-task = maml_ros.ros.task_cli:main",
            "maml-ros-demo = maml_ros.ros.demo:main",
            "maml-ros-train = maml_ros.rl.train:main",
            "maml-ros-eval = maml_ros.rl.evaluate:main",
        ],
    },
)
