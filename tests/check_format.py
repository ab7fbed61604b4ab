"""Fails when a C file of agent/, daemon/ or proto/ is not formatted the way the root
.clang-format says.

    check_format.py CLANG_FORMAT SOURCE_ROOT

Runs `CLANG_FORMAT --dry-run --Werror` over every *.c and *.h of those directories, found
when the test runs (a new file is checked without reconfiguring), and prints
clang-format's complaints, which name file, line and column. To fix a file:
`clang-format -i FILE`. The configuration was chosen with Debian's clang-format 14,
which meson prefers; another major version may format some constructs differently.

CLANG_FORMAT empty (meson found none) fails the test: a missing checker never passes.
`./setup.sh test` installs it (Debian package clang-format)."""
import pathlib
import subprocess
import sys

DIRS = ("agent", "daemon", "proto")
MAX_SHOWN = 60   # lines of complaints shown; every file is listed after them


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    clang_format, root = argv[1], pathlib.Path(argv[2])
    if not clang_format:
        sys.exit("check_format: clang-format not found (Debian: apt-get install "
                 "clang-format; ./setup.sh test installs it)")
    files = sorted(str(p.relative_to(root)) for d in DIRS
                   for p in (root / d).glob("*.[ch]"))
    if not files:
        sys.exit(f"check_format: no C files under {', '.join(DIRS)} of {root}")
    version = subprocess.run([clang_format, "--version"], capture_output=True,
                             text=True).stdout.strip()
    r = subprocess.run([clang_format, "--dry-run", "--Werror", *files], cwd=root,
                       capture_output=True, text=True)
    bad = sorted({line.split(":", 1)[0] for line in r.stderr.splitlines()
                  if ": error: code should be clang-formatted" in line})
    print(f"{version}: {len(files)} files checked, {len(bad)} not formatted")
    if r.returncode != 0:
        lines = r.stderr.splitlines()
        print("\n".join(lines[:MAX_SHOWN]))
        if len(lines) > MAX_SHOWN:
            print(f"... ({len(lines) - MAX_SHOWN} more lines of clang-format's complaints)")
        for f in bad:
            print(f"not formatted: {f} (clang-format -i {f})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
