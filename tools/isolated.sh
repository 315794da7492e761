#!/usr/bin/env bash
# Runs a command with DDS isolated: localhost discovery only, a random domain,
# and ROS_HOME / TMPDIR in a temporary folder that is removed afterwards.
set -euo pipefail
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export ROS_HOME="$scratch/ros_home" TMPDIR="$scratch/tmp"
mkdir -p "$ROS_HOME" "$TMPDIR"
echo "[isolated] ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_HOME=$ROS_HOME" >&2
"$@"
