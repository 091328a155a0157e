#!/usr/bin/env bash
# One-time (idempotent) set-up for neuroloop on Debian with Rust and Python 3:
#   - system packages the build and the tests need (Mesa's Vulkan drivers for the wgpu backend),
#   - a Python virtual environment (.venv) with pylsl (liblsl 1.18) and numpy, used by the
#     interop tests and the Python baselines, and pyxdf and labrecorder, the XDF reader and
#     recorder the recording tests check neuroloop's XDF files against, and safetensors (the
#     fit tests load a model file written from numpy with PyTorch's module names),
#   - liblsl 1.18 copied from the pylsl wheel into .liblsl/, which .cargo/config.toml links,
#   - rustfmt and clippy, if the toolchain lacks them,
#   - Chromium (headless), for the dashboard's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

PYLSL_VERSION=1.18.6
PYXDF_VERSION=1.17.5
LABRECORDER_VERSION=1.0.0rc0
SAFETENSORS_VERSION=0.5.3

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# libFuzzer (the fuzz targets, scripts/fuzz.sh) is C++.
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The wgpu backend and its tests need a Vulkan driver; Mesa's lavapipe runs the kernels on
# the CPU when the machine has no GPU (CI).
# The dashboard's browser test (tests/dashboard.rs) drives Debian's Chromium, headless.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so.1 ] || ls /usr/lib/*/libvulkan.so.1 >/dev/null 2>&1 || need_apt+=(libvulkan1)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# rustfmt and clippy (the test command checks formatting and lints): part of rustup's default
# profile; added here where a minimal profile left them out.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        echo "setup: adding the rustfmt and clippy components"
        rustup component add rustfmt clippy
    else
        echo "setup: cargo fmt and cargo clippy are needed (install rustfmt and clippy for this toolchain)" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pylsl, numpy; assert pylsl.__version__ == '$PYLSL_VERSION'" >/dev/null 2>&1; then
    echo "setup: installing pylsl==$PYLSL_VERSION and numpy into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check "pylsl==$PYLSL_VERSION" numpy
fi
if ! .venv/bin/python -c "import pyxdf, labrecorder, importlib.metadata as m; assert m.version('pyxdf') == '$PYXDF_VERSION' and m.version('labrecorder') == '$LABRECORDER_VERSION'" >/dev/null 2>&1; then
    echo "setup: installing pyxdf==$PYXDF_VERSION and labrecorder==$LABRECORDER_VERSION into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check "pyxdf==$PYXDF_VERSION" "labrecorder==$LABRECORDER_VERSION"
fi

if ! .venv/bin/python -c "import safetensors.numpy, importlib.metadata as m; assert m.version('safetensors') == '$SAFETENSORS_VERSION'" >/dev/null 2>&1; then
    echo "setup: installing safetensors==$SAFETENSORS_VERSION into .venv (a model file written from numpy, as PyTorch code would)"
    .venv/bin/python -m pip install -q --disable-pip-version-check "safetensors==$SAFETENSORS_VERSION"
fi

pylsl_lib=$(.venv/bin/python -c 'import pylsl, os; print(os.path.join(os.path.dirname(pylsl.__file__), "lib"))')
if [ ! -e .liblsl/liblsl.so ] || ! cmp -s "$pylsl_lib/liblsl.so" .liblsl/liblsl.so; then
    echo "setup: copying liblsl from the pylsl wheel into .liblsl/"
    mkdir -p .liblsl
    cp -a "$pylsl_lib"/liblsl.so* .liblsl/
fi
echo "setup: ok (liblsl $(.venv/bin/python -c 'import pylsl; print(pylsl.library_version())'), pylsl $PYLSL_VERSION)"
