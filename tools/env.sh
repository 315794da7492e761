# Source me: enters the maml_ros environment (the .venv is an ament prefix).
_maml_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_maml_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$_maml_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PATH="$_maml_root/.venv/lib/maml_ros:$PATH"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _maml_root
