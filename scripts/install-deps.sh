#!/usr/bin/env bash
# System packages ringbench builds and runs against (Debian 12 / Ubuntu): Open MPI, HDF5 (and its
# h5dump), libclang for the MPI bindings' build script, DejaVu fonts for `report`'s charts, and g++
# for the test that runs the CUDA kernels' sources on the CPU (tests/simt).
set -euo pipefail
PKGS=(libopenmpi-dev openmpi-bin libclang-dev libhdf5-dev hdf5-tools pkg-config fonts-dejavu-core g++)
# --slurm: also a SLURM controller, node daemon and munge, for scripts/slurm-local.sh.
[ "${1:-}" = "--slurm" ] && PKGS+=(slurm-wlm munge)
# pip fetches NVRTC and ptxas for the kernel check (scripts/cuda-tools.sh); Debian's python3 lacks it.
python3 -m pip --version >/dev/null 2>&1 || PKGS+=(python3-pip)
if dpkg -s "${PKGS[@]}" >/dev/null 2>&1; then
    exit 0 # all there: no apt, no network
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PKGS[@]}"
