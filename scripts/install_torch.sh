#!/bin/sh
# Install the PyTorch build that fits this machine into the virtual environment of PYTHON ($1).
#
#   TORCH=auto  the CPU build where no NVIDIA driver is present (no multi-GB CUDA download, no triton),
#               PyPI's default build where one is (the CUDA build on Linux)
#   TORCH=cpu   the CPU build: torch==$TORCH_VERSION+cpu from PyTorch's CPU index ($TORCH_CPU_INDEX)
#               or from any index / find-links pip is configured with
#   TORCH=cuda  PyPI's default build (pip install torch)
#   TORCH=skip  leave torch to pip's resolution of the package (or keep the one already installed)
#
# A torch that already imports in the venv is kept whatever TORCH says, except that TORCH=cpu
# replaces a CUDA build and TORCH=cuda a CPU build.
set -eu
PY=${1:?usage: install_torch.sh PYTHON}
TORCH=${TORCH:-auto}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [ "$TORCH" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]; then
        TORCH=cuda
    elif [ "$(uname -s)" = Linux ]; then
        TORCH=cpu
    else
        TORCH=cuda  # macOS and Windows: PyPI's default build is already the CPU one
    fi
fi

# what is installed now: "none", "cpu" or "cuda"
have=$("$PY" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo none)

case "$TORCH" in
    skip)
        echo "install_torch: TORCH=skip, torch left to pip (installed now: $have)";;
    cpu)
        if [ "$have" = cpu ]; then
            echo "install_torch: the CPU build of torch is already installed"
        else
            echo "install_torch: installing the CPU build torch==$TORCH_VERSION+cpu (TORCH=cuda for the default build)"
            "$PY" -m pip install --quiet "torch==$TORCH_VERSION+cpu" \
                --extra-index-url "$TORCH_CPU_INDEX" --retries 1 --timeout 30
        fi;;
    cuda)
        if [ "$have" = cuda ] || { [ "$have" = cpu ] && [ "$(uname -s)" != Linux ]; }; then
            echo "install_torch: torch is already installed ($have build)"
        else
            echo "install_torch: installing PyPI's default torch build (several GB on Linux)"
            [ "$have" = none ] || "$PY" -m pip uninstall --quiet --yes torch
            "$PY" -m pip install --quiet "torch>=2.2"
        fi;;
    *)
        echo "install_torch: TORCH must be auto, cpu, cuda or skip; got '$TORCH'" >&2
        exit 2;;
esac
