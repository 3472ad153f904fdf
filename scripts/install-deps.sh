#!/usr/bin/env bash
# System packages ringbench builds and runs against (Debian 12 / Ubuntu): Open MPI, HDF5 (and its
# h5dump), and libclang for the MPI bindings' build script. Uses sudo when not root.
set -euo pipefail
PKGS=(libopenmpi-dev openmpi-bin libclang-dev libhdf5-dev hdf5-tools pkg-config)
if dpkg -s "${PKGS[@]}" >/dev/null 2>&1; then
    exit 0 # all there: no apt, no network
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PKGS[@]}"
