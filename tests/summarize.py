"""Print the closing summary of a test run from meson's testlog.json files.

Used by setup.sh after `meson test`:

    summarize.py [LABEL=]TESTLOG.json ... [--absent TEXT ...]

One block per test log, headed by its label (setup.sh: the CPython version each build
was made for), one line per suite in it, Check's own counts (summed from the "NN%:
Checks: N, Failures: N, Errors: N" line each Check runner prints), then one line per
--absent TEXT (a supported CPython the machine does not have: reported, never counted
as passed) and a final "N passed, N failed" line. Exits non-zero when a test failed or
none ran; an absent version alone does not fail the run."""
import collections
import json
import re
import sys

UNITTEST_LINE = re.compile(r"^Ran (\d+) tests? in ", re.M)
CHECK_LINE = re.compile(r"(\d+)%: Checks: (\d+), Failures: (\d+), Errors: (\d+)")
PASSED = {"OK", "EXPECTEDFAIL"}
SKIPPED = {"SKIP"}


def parse_args(argv):
    """-> ([(label, path)], [absent text]); SystemExit on a bad command line."""
    logs, absent = [], []
    args = iter(argv)
    for a in args:
        if a == "--absent":
            text = next(args, None)
            if text is None:
                raise SystemExit("summarize: --absent needs a text")
            absent.append(text)
        elif a.startswith("-"):
            raise SystemExit("summarize: unknown option %r (see the module docstring)" % a)
        else:
            label, sep, path = a.partition("=")
            if not sep:
                path = a
                label = a.split("/meson-logs/")[0].rsplit("/", 1)[-1]
            logs.append((label, path))
    return logs, absent


def main(argv):
    logs, absent = parse_args(argv)
    total = collections.Counter()
    checks = collections.Counter()
    failed_names = []
    print("\nheapprof test summary")
    for label, path in logs:
        per_suite = collections.defaultdict(collections.Counter)
        try:
            lines = open(path).read().splitlines()
        except OSError as e:
            print(f"summarize: cannot read {path}: {e.strerror}", file=sys.stderr)
            return 1
        build = path.split("/meson-logs/")[0].rsplit("/", 1)[-1]
        for line in lines:
            if not line.strip():
                continue
            rec = json.loads(line)
            # Names look like "heapprof:unit+proto / codec-core": project:suites / test.
            suite = rec["name"].split(" / ")[0].split(":")[-1].split("+")[0]
            result = rec["result"]
            if result in PASSED:
                per_suite[suite]["passed"] += 1
            elif result in SKIPPED:
                per_suite[suite]["skipped"] += 1
            else:
                per_suite[suite]["failed"] += 1
                failed_names.append(f"{label} ({build}): {rec['name']} ({result})")
            output = (rec.get("stdout") or "") + (rec.get("stderr") or "")
            for m in UNITTEST_LINE.finditer(output):
                checks["unittest"] += int(m.group(1))
            for m in CHECK_LINE.finditer(output):
                checks["checks"] += int(m.group(2))
                checks["failures"] += int(m.group(3))
                checks["errors"] += int(m.group(4))
        print(f"  {label} ({build})")
        for suite in sorted(per_suite):
            c = per_suite[suite]
            total.update(c)
            print(f"    {suite:<20} {c['passed']:4d} passed {c['failed']:4d} failed "
                  f"{c['skipped']:4d} skipped")
    for text in absent:
        print(f"  {text}: absent, not tested")
    print(f"  Check unit tests: {checks['checks']} checks, {checks['failures']} failures, "
          f"{checks['errors']} errors")
    print(f"  Python unittest cases: {checks['unittest']}")
    for name in failed_names:
        print(f"  FAILED: {name}")
    line = f"{total['passed']} passed, {total['failed']} failed"
    if total["skipped"]:
        line += f", {total['skipped']} skipped"
    if absent:
        line += "; absent: " + ", ".join(t.split(" (")[0] for t in absent)
    print(line)
    if total["passed"] == 0:
        print("summarize: no test ran", file=sys.stderr)
        return 1
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
