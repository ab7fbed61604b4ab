#!/usr/bin/env bash
# setup.sh — set heapprof up on Debian 12 and run it. Idempotent; quick when already set up.
#
#   ./setup.sh demo     (default) set up, then profile examples/demo.py with a private
#                       heapprofd and print where its memory went
#   ./setup.sh test     set up, then run the whole test suite: every test of the normal
#                       build, then the C unit and daemon tests again under ASan/UBSan,
#                       then the agent's and daemon's concurrency tests under TSan,
#                       then the agent's end-to-end and the tools' tests on every other
#                       supported CPython the machine has (build-py3.X, .venv-py3.X)
#   ./setup.sh setup    only set up: Debian packages, .venv, build, install into .venv
#
# Environment:
#   PYTHON   the interpreter to build the agent for and to base .venv on
#            (default: python3 on PATH; CPython 3.11, 3.12 or 3.13 with the GIL).
#            The script says which one it uses.
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
  -h|--help|help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown mode '$MODE' (expected demo, test or setup; see ./setup.sh --help)" ;;
esac

# ---------------------------------------------------------------- Debian packages
# Build and runtime needs; the test suite also wants clang + its runtime (the libFuzzer
# run), clang-format (the 'format' suite checks the C files against .clang-format),
# graphviz (flow graphs rendered for real), chromium (the HTML report test),
# golang-go (`go tool pprof` reads the exported pprof profiles, offline), and what a pip
# install into a user's venv on Debian's python3 needs (pip, meson-python) with packages a
# user has there (numpy, matplotlib; pytest, which `pytest --heapprof` runs under).
PKGS=(meson ninja-build pkg-config gcc libuv1-dev libmsgpack-dev libsqlite3-dev check
      python3 python3-venv python3-dev sqlite3)
if [ "$MODE" = test ]; then
  PKGS+=(clang libclang-rt-14-dev clang-format graphviz chromium golang-go python3-pip
         python3-mesonpy python3-numpy python3-matplotlib python3-pytest)
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
# ---- CPython versions (issue 10): Debian 12's meson (1.0) asks the interpreter for
# distutils, which 3.12 dropped; Debian's setuptools carries a copy (see venv_setup).
PKGS+=(python3-setuptools)
# ---- end CPython versions

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
# ---- CPython versions (issue 10)
# The supported versions are those with a stack-walk file agent/hp_pyframe_3XX.c.
SUPPORTED_PYTHONS=$(for f in agent/hp_pyframe_3[0-9]*.c; do f=${f#agent/hp_pyframe_3}; echo "3.${f%.c}"; done | sort -V | tr '\n' ' ')
SUPPORTED_TEXT="CPython $(echo $SUPPORTED_PYTHONS | sed 's/ /, /g') (with the GIL)"

# python_check PATH: prints "VERSION MINOR" (e.g. "3.12.1 3.12") of a CPython the agent
# can be built for, or fails with the reason on stderr.
python_check() {
  local info
  info=$("$1" -c '
import os, platform, sys, sysconfig
ft = sysconfig.get_config_var("Py_GIL_DISABLED")
headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
print(platform.python_implementation(), platform.python_version(),
      "%d.%d" % sys.version_info[:2], "free-threaded" if ft else "-", int(headers))') || return 1
  set -- $info
  if [ "$1" != CPython ] || [ "$4" != - ] || [[ " $SUPPORTED_PYTHONS " != *" $3 "* ]]; then
    echo "$([ "$4" != - ] && echo "$4 ")$1 $2 is not supported; heapprof supports $SUPPORTED_TEXT" >&2
    return 1
  fi
  [ "$5" = 1 ] || { echo "Python headers missing for CPython $2 (Debian: apt-get install python3-dev)" >&2; return 1; }
  echo "$2 $3"
}

# venv_setup PYTHON VENV [BUILD...]: (re)creates VENV from PYTHON unless it already is;
# the build directories made for an older VENV go with it.
venv_setup() {
  local py=$1 venv=$2 real id site system_site=${VENV_SYSTEM_SITE:-}
  shift 2
  real=$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable))')
  # VENV_SYSTEM_SITE=--system-site-packages gives the venv the interpreter's packages;
  # a venv made with other settings is made again.
  id="$real${system_site:+ $system_site}"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.heapprof-python" 2>/dev/null)" != "$id" ]; then
    say "creating $(basename "$venv") from $real${system_site:+ (with its system packages)}"
    rm -rf "$venv" "$@"
    "$py" -m venv $system_site "$venv"
    echo "$id" > "$venv/.heapprof-python"
  fi
  # Meson before 1.2 introspects the interpreter with distutils, gone since 3.12: such a
  # venv gets Debian's copy (setuptools' _distutils), which only meson's probe imports.
  if ! "$venv/bin/python" -c 'import distutils' 2>/dev/null; then
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$venv/meson-distutils"
    ln -sfn /usr/lib/python3/dist-packages/setuptools/_distutils "$venv/meson-distutils/distutils"
    echo "$venv/meson-distutils" > "$site/heapprof-meson-distutils.pth"
    "$venv/bin/python" -c 'import distutils.command.install' \
      || die "no distutils for meson in $venv (Debian: apt-get install python3-setuptools)"
  fi
}

pyenv_root() {
  pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}"
}

# find_python 3.X: the newest usable CPython 3.X, python3.X on PATH first, else pyenv's.
find_python() {
  local v=$1 c info
  for c in "$(command -v "python$v" 2>/dev/null)" \
           $(ls -d "$(pyenv_root)/versions/$v".*/bin/"python$v" 2>/dev/null | sort -rV); do
    [ -n "$c" ] && [ -x "$c" ] || continue
    info=$(python_check "$c" 2>/dev/null) || continue    # pyenv shims of other versions fail
    [ "${info#* }" = "$v" ] && { echo "$c"; return 0; }
  done
  return 1
}
# ---- end CPython versions

PYTHON=${PYTHON:-python3}
PYTHON_PATH=$(command -v "$PYTHON") || die "interpreter '$PYTHON' not found (set PYTHON=...)"
PYTHON_REAL=$("$PYTHON_PATH" -c 'import os, sys; print(os.path.realpath(sys.executable))')
PYTHON_INFO=$(python_check "$PYTHON_PATH" 2>&1) || die "$PYTHON_REAL: $PYTHON_INFO"
PYTHON_VER=${PYTHON_INFO% *}
PYTHON_MINOR=${PYTHON_INFO#* }
say "using Python $PYTHON_VER at $PYTHON_REAL"

VENV_SYSTEM_SITE=$SYSTEM_SITE venv_setup "$PYTHON_PATH" "$VENV" "$BUILD" "$BUILD_ASAN" "$BUILD_TSAN"

# ---------------------------------------------------------------- build and install
configure() {  # configure DIR [meson options...], for the venv $CONFIGURE_VENV (default .venv)
  local dir=$1 venv=${CONFIGURE_VENV:-$VENV}; shift
  if [ ! -f "$dir/build.ninja" ]; then
    say "configuring $(basename "$dir")"
    meson setup "$dir" --prefix="$venv" -Dpython="$venv/bin/python" \
      -Dpython.install_env=venv "$@" >"$dir.setup.log" 2>&1 \
      || { cat "$dir.setup.log" >&2; die "meson setup failed (log above)"; }
    rm -f "$dir.setup.log"
  fi
}

# build_install DIR VENV: builds DIR and installs it into VENV.
build_install() {
  local dir=$1 venv=$2 pkg
  meson compile -C "$dir" -j "$JOBS" >/dev/null 2>"$dir/compile.err" \
    || { meson compile -C "$dir" -j 1 >&2 || true; die "build failed (output above)"; }
  meson install -C "$dir" --quiet --no-rebuild >/dev/null
  "$venv/bin/python" -c 'import heapprof, heapprof._agent' \
    || die "the installed package does not import in $(basename "$venv")"
  # Byte-compile the package, as pip does for what it installs and meson install does
  # not: with PYTHONDONTWRITEBYTECODE set, every profiled program would otherwise compile
  # heapprof's modules again at start-up (import heapprof: 4.4 ms instead of 0.3 ms).
  pkg=$("$venv/bin/python" -c 'import os, heapprof; print(os.path.dirname(heapprof.__file__))')
  "$venv/bin/python" -m compileall -q "$pkg" >&2 || die "byte-compiling $pkg failed"
}

configure "$BUILD"
say "building and installing into .venv"
build_install "$BUILD" "$VENV"
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

  logs=("CPython $PYTHON_VER=$BUILD/meson-logs/testlog.json"
        "ASan/UBSan, C only=$BUILD_ASAN/meson-logs/testlog.json"
        "ThreadSanitizer, concurrency tests=$BUILD_TSAN/meson-logs/testlog.json")

  # ---- CPython versions (issue 10): the agent's end-to-end tests and the tools' tests
  # again on every other supported CPython this machine has, each in its own venv and
  # build directory; a version it lacks is named in the summary as absent.
  for v in $SUPPORTED_PYTHONS; do
    [ "$v" = "$PYTHON_MINOR" ] && continue
    if ! py=$(find_python "$v"); then
      logs+=(--absent "CPython $v (no python$v on PATH or in $(pyenv_root)/versions)")
      continue
    fi
    ver=$(python_check "$py")
    ver=${ver% *}
    say "CPython $ver ($py): end-to-end and tools tests in build-py$v"
    venv_setup "$py" "$ROOT/.venv-py$v" "$ROOT/build-py$v"
    CONFIGURE_VENV=$ROOT/.venv-py$v configure "$ROOT/build-py$v" -Dfuzz_seconds=0
    build_install "$ROOT/build-py$v" "$ROOT/.venv-py$v"
    meson test -C "$ROOT/build-py$v" --suite e2e --suite tools --num-processes "$JOBS" \
      --print-errorlogs || rc=$?
    logs+=("CPython $ver=$ROOT/build-py$v/meson-logs/testlog.json")
  done
  # ---- end CPython versions

  "$VENV/bin/python" tests/summarize.py "${logs[@]}" || rc=$?
  exit $rc
  ;;
esac
