# Sourced by the scripts: points the build at the libtorch that scripts/setup.sh installed.
GRAMZOOM_DEPS="${GRAMZOOM_DEPS:-$HOME/.cache/gramzoom}"
export LIBTORCH="${LIBTORCH:-$GRAMZOOM_DEPS/torch-2.11.0/torch}"
export LIBTORCH_BYPASS_VERSION_CHECK=1
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
