# Source me:  source scripts/env.sh     (bash or zsh; after `source /opt/ros/<distro>/setup.bash`
# when you build against a system ROS 2). Sets up the environment scripts/setup.sh built:
# the venv on PATH, ROS's prefix on AMENT_PREFIX_PATH, DDS discovery kept on this machine
# unless you chose otherwise. Do not source .venv/setup.bash (colcon's): it leaks the venv's
# site-packages into PYTHONPATH and an empty entry into LD_LIBRARY_PATH.
if [ -n "${BASH_SOURCE:-}" ]; then
  _ditta_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
else
  _ditta_root=$(cd "$(dirname "${(%):-%x}")/.." && pwd)   # zsh
fi

if [ ! -x "$_ditta_root/.venv/bin/python" ]; then
  echo "ditta_ros: $_ditta_root/.venv does not exist; run: bash scripts/setup.sh" >&2
else
  # Localhost-only discovery by default (ROS 2 Jazzy and later). For a robot talking to other
  # machines, export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET before sourcing this file.
  export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
  # Humble (and Iron) predate that variable: their switch is ROS_LOCALHOST_ONLY.
  case "${ROS_DISTRO:-}" in
    humble|iron) export ROS_LOCALHOST_ONLY="${ROS_LOCALHOST_ONLY:-1}" ;;
  esac
  if [ -f "$_ditta_root/install/local_setup.sh" ]; then
    # Built against a system ROS 2 (scripts/setup.sh with $ROS_DISTRO set).
    if [ -z "${ROS_DISTRO:-}" ]; then
      echo "ditta_ros: source /opt/ros/<distro>/setup.bash before scripts/env.sh" >&2
    fi
    if [ -n "${ZSH_VERSION:-}" ]; then
      . "$_ditta_root/install/local_setup.zsh"
    else
      # shellcheck disable=SC1091
      . "$_ditta_root/install/local_setup.bash"
    fi
  else
    # ROS 2 from the wheels: the venv is the ROS prefix.
    case ":${AMENT_PREFIX_PATH:-}:" in
      *":$_ditta_root/.venv:"*) ;;
      *) export AMENT_PREFIX_PATH="$_ditta_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
    esac
    export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
  fi
  case ":$PATH:" in
    *":$_ditta_root/.venv/bin:"*) ;;
    *) export PATH="$_ditta_root/.venv/bin:$PATH" ;;
  esac
  export VIRTUAL_ENV="$_ditta_root/.venv"
fi
unset _ditta_root
