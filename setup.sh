#!/usr/bin/env bash
# setup.sh — set heapprof up on Debian 12 and run it. Idempotent; quick when already set up.
#
#   ./setup.sh demo     (default) set up, then profile examples/demo.py with a private
#                       heapprofd and print where its memory went
#   ./setup.sh test     set up, then run the whole test suite: every test of the normal
#                       build, then the C unit and daemon tests again under ASan/UBSan,
#                       then the agent's and daemon's concurrency tests under TSan
#   ./setup.sh setup    only set up: Debian packages, .venv, build, install into .venv
#
# Environment:
#   PYTHON   the interpreter to build the agent for and to base .venv on
#            (default: python3 on PATH). The script says which one it uses.
#   JOBS     parallel build/test jobs (default: number of cores)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
VENV=$ROOT/.venv
BUILD=$ROOT/build
BUILD_ASAN=$ROOT/build-asan
BUILD_TSAN=$ROOT/build-tsan
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
MODE=${1:-demo}

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

case "$MODE" in
  demo|test|setup) ;;
  -h|--help|help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown mode '$MODE' (expected demo, test or setup; see ./setup.sh --help)" ;;
esac

# ---------------------------------------------------------------- Debian packages
# Build and runtime needs; the test suite also wants clang + its runtime (the libFuzzer
# run), graphviz (flow graphs rendered for real), chromium (the HTML report test),
# golang-go (`go tool pprof` reads the exported pprof profiles, offline), and what a pip
# install into a user's venv on Debian's python3 needs (pip, meson-python) with packages a
# user has there (numpy, matplotlib).
PKGS=(meson ninja-build pkg-config gcc libuv1-dev libmsgpack-dev libsqlite3-dev check
      python3 python3-venv python3-dev sqlite3)
if [ "$MODE" = test ]; then
  PKGS+=(clang libclang-rt-14-dev graphviz chromium golang-go python3-pip python3-mesonpy
         python3-numpy python3-matplotlib)
fi
# Debian's own python3 (the default on a fresh Debian 12) gets .venv with its system
# packages, and matplotlib among them, so that `heapprof plot -o heap.png` draws.
PYTHON=${PYTHON:-python3}
debian_python() {
  local p
  p=$(command -v "$1" 2>/dev/null) || { [ "$1" = python3 ]; return; }
  case "$(readlink -f "$p")" in /usr/bin/python3*) return 0 ;; esac
  return 1
}
SYSTEM_SITE=
if debian_python "$PYTHON"; then
  SYSTEM_SITE=--system-site-packages
  PKGS+=(python3-matplotlib)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- interpreter and .venv
PYTHON_PATH=$(command -v "$PYTHON") || die "interpreter '$PYTHON' not found (set PYTHON=...)"
PYTHON_REAL=$("$PYTHON_PATH" -c 'import os, sys; print(os.path.realpath(sys.executable))')
PYTHON_VER=$("$PYTHON_PATH" -c 'import platform; print(platform.python_version())')
say "using Python $PYTHON_VER at $PYTHON_REAL"
"$PYTHON_PATH" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "heapprof needs Python 3.11 or newer; $PYTHON_REAL is $PYTHON_VER"
"$PYTHON_PATH" - <<'EOF' || die "Python headers missing for $PYTHON_REAL (Debian: apt-get install python3-dev)"
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
EOF

# .venv is rebuilt when it was made from another interpreter (or other site settings).
VENV_ID="$PYTHON_REAL${SYSTEM_SITE:+ $SYSTEM_SITE}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.heapprof-python" 2>/dev/null)" != "$VENV_ID" ]; then
  say "creating .venv from $PYTHON_REAL${SYSTEM_SITE:+ (with its system packages)}"
  rm -rf "$VENV" "$BUILD" "$BUILD_ASAN" "$BUILD_TSAN"
  "$PYTHON_PATH" -m venv $SYSTEM_SITE "$VENV"
  echo "$VENV_ID" > "$VENV/.heapprof-python"
fi

# ---------------------------------------------------------------- build and install
configure() {  # configure DIR [meson options...]
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    say "configuring $(basename "$dir")"
    meson setup "$dir" --prefix="$VENV" -Dpython="$VENV/bin/python" \
      -Dpython.install_env=venv "$@" >"$dir.setup.log" 2>&1 \
      || { cat "$dir.setup.log" >&2; die "meson setup failed (log above)"; }
    rm -f "$dir.setup.log"
  fi
}

configure "$BUILD"
say "building and installing into .venv"
meson compile -C "$BUILD" -j "$JOBS" >/dev/null 2>"$BUILD/compile.err" \
  || { meson compile -C "$BUILD" -j 1 >&2 || true; die "build failed (output above)"; }
meson install -C "$BUILD" --quiet --no-rebuild >/dev/null
"$VENV/bin/python" -c 'import heapprof, heapprof._agent' \
  || die "the installed package does not import in .venv"
# Byte-compile the package, as pip does for what it installs and meson install does not:
# with PYTHONDONTWRITEBYTECODE set, every profiled program would otherwise compile
# heapprof's modules again at start-up (import heapprof: 4.4 ms instead of 0.3 ms).
PKG_DIR=$("$VENV/bin/python" -c 'import os, heapprof; print(os.path.dirname(heapprof.__file__))')
"$VENV/bin/python" -m compileall -q "$PKG_DIR" >&2 || die "byte-compiling $PKG_DIR failed"
say "ready: .venv/bin/python (import heapprof), .venv/bin/heapprofd, .venv/bin/heapprof"

# ---------------------------------------------------------------- the job
case "$MODE" in
setup) ;;

demo)
  db=$ROOT/heapprof-demo.sqlite
  html=$ROOT/heapprof-demo.html
  rm -f "$db" "$db-wal" "$db-shm"
  say "profiling examples/demo.py with a private heapprofd"
  "$VENV/bin/python" -m heapprof run -o "$db" --report="$html" examples/demo.py
  say "top allocation sites at the peak"
  "$VENV/bin/heapprof" top --db "$db" --at peak
  say "explore further: .venv/bin/heapprof --help (database: $(basename "$db"),"
  say "interactive report: $(basename "$html"), open it in a browser)"
  ;;

test)
  say "running the test suite (normal build)"
  rc=0
  meson test -C "$BUILD" --num-processes "$JOBS" --print-errorlogs || rc=$?

  say "running the C unit and daemon tests under AddressSanitizer + UBSan"
  # This build also turns warnings into errors: the C code is kept -Wall -Wextra clean,
  # and CI should say so, while the demo build stays lenient with newer compilers.
  configure "$BUILD_ASAN" -Db_sanitize=address,undefined -Db_lundef=false -Dfuzz_seconds=0 \
    -Dwerror=true
  meson compile -C "$BUILD_ASAN" -j "$JOBS" >/dev/null 2>"$BUILD_ASAN/compile.err" \
    || { cat "$BUILD_ASAN/compile.err" >&2; die "ASan build failed"; }
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C "$BUILD_ASAN" --suite unit --suite daemon --num-processes "$JOBS" \
    --print-errorlogs || rc=$?

  say "running the agent's and the daemon's concurrency tests under ThreadSanitizer"
  # Suite 'concurrency': the agent engine driven from several threads (check_agent and
  # the ring, table and sender tests) and heapprofd's loop and store thread (its unit
  # tests, and the daemon tests with real clients). Reports go to files, so that one
  # from a heapprofd a Python test started is not lost in that test's output.
  configure "$BUILD_TSAN" -Db_sanitize=thread -Db_lundef=false -Dfuzz_seconds=0 \
    -Dwerror=true
  meson compile -C "$BUILD_TSAN" -j "$JOBS" >/dev/null 2>"$BUILD_TSAN/compile.err" \
    || { cat "$BUILD_TSAN/compile.err" >&2; die "TSan build failed"; }
  reports=$BUILD_TSAN/tsan-reports
  rm -rf "$reports" && mkdir -p "$reports"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 log_path=$reports/report" \
    meson test -C "$BUILD_TSAN" --suite concurrency --num-processes "$JOBS" \
    --print-errorlogs || rc=$?
  if compgen -G "$reports/report.*" >/dev/null; then
    cat "$reports"/report.* >&2
    say "ThreadSanitizer reported the races above (also in $reports)"
    rc=1
  fi

  "$VENV/bin/python" tests/summarize.py "$BUILD/meson-logs/testlog.json" \
    "$BUILD_ASAN/meson-logs/testlog.json" "$BUILD_TSAN/meson-logs/testlog.json" || rc=$?
  exit $rc
  ;;
esac
