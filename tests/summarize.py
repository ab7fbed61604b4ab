"""Print the closing summary of a test run from meson's testlog.json files.

Used by setup.sh after `meson test`: one line per suite, Check's own counts (summed
from the "NN%: Checks: N, Failures: N, Errors: N" line each Check runner prints), and a
final "N passed, N failed" line. Exits non-zero when a test failed or none ran."""
import collections
import json
import re
import sys

UNITTEST_LINE = re.compile(r"^Ran (\d+) tests? in ", re.M)
CHECK_LINE = re.compile(r"(\d+)%: Checks: (\d+), Failures: (\d+), Errors: (\d+)")
PASSED = {"OK", "EXPECTEDFAIL"}
SKIPPED = {"SKIP"}


def main(paths):
    per_suite = collections.defaultdict(collections.Counter)
    checks = collections.Counter()
    failed_names = []
    for path in paths:
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
            key = f"{build}:{suite}"
            result = rec["result"]
            if result in PASSED:
                per_suite[key]["passed"] += 1
            elif result in SKIPPED:
                per_suite[key]["skipped"] += 1
            else:
                per_suite[key]["failed"] += 1
                failed_names.append(f"{build}: {rec['name']} ({result})")
            output = (rec.get("stdout") or "") + (rec.get("stderr") or "")
            for m in UNITTEST_LINE.finditer(output):
                checks["unittest"] += int(m.group(1))
            for m in CHECK_LINE.finditer(output):
                checks["checks"] += int(m.group(2))
                checks["failures"] += int(m.group(3))
                checks["errors"] += int(m.group(4))
    total = collections.Counter()
    print("\nheapprof test summary")
    for key in sorted(per_suite):
        c = per_suite[key]
        total.update(c)
        print(f"  {key:<24} {c['passed']:4d} passed {c['failed']:4d} failed {c['skipped']:4d} skipped")
    print(f"  Check unit tests: {checks['checks']} checks, {checks['failures']} failures, "
          f"{checks['errors']} errors")
    print(f"  Python unittest cases: {checks['unittest']}")
    for name in failed_names:
        print(f"  FAILED: {name}")
    line = f"{total['passed']} passed, {total['failed']} failed"
    if total["skipped"]:
        line += f", {total['skipped']} skipped"
    print(line)
    if total["passed"] == 0:
        print("summarize: no test ran", file=sys.stderr)
        return 1
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
