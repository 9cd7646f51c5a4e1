#!/usr/bin/env bash
# Installs the system packages Offload needs when they are absent (Debian).
set -euo pipefail
need=()
[ -f /usr/include/x86_64-linux-gnu/cblas.h ] || [ -f /usr/include/cblas.h ] || need+=(libopenblas-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
# llama.cpp's quantizer (scripts/build-llama-cpp.sh) needs a C++ compiler, make and CMake. CMake comes
# from Debian, not pip, so that it is on PATH whichever Python (system, venv or none) runs the scripts.
command -v c++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v cmake >/dev/null || need+=(cmake)
# Data-parallel training runs on Open MPI (loaded at run time; the build never needs it); the tests
# start ranks with its mpirun.
command -v mpirun >/dev/null || need+=(openmpi-bin)
ls /usr/lib/*/libmpi.so.40 >/dev/null 2>&1 || need+=(libopenmpi3)
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
