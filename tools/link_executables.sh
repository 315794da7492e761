#!/usr/bin/env bash
# pip puts console scripts in <prefix>/bin; `ros2 run` and launch_ros look in
# <prefix>/lib/<package>. Link every maml_ros executable there.
set -euo pipefail
prefix="$1"
mkdir -p "$prefix/lib/maml_ros"
python_bin="$prefix/bin/python"
"$python_bin" - "$prefix" <<'PY'
import importlib.metadata as md
import os
import sys

prefix = sys.argv[1]
dist = md.distribution("maml_ros")
for ep in dist.entry_points.select(group="console_scripts"):
    src = os.path.join(prefix, "bin", ep.name)
    dst = os.path.join(prefix, "lib", "maml_ros", ep.name)
    if not os.path.exists(src):
        sys.exit(f"link_executables: {src} is missing")
    if os.path.lexists(dst):
        os.remove(dst)
    os.symlink(os.path.relpath(src, os.path.dirname(dst)), dst)
PY
