"""Runs the libFuzzer decoder target for a fixed time and fails on any crash.

usage: run_fuzz.py FUZZER SEED_WRITER SECONDS

The corpus and any crash artifacts live in a temporary directory that is removed
afterwards; a crashing input is printed in hex first so that it can be reproduced
(`printf ... | xxd -r -p > crash; FUZZER crash`).
"""
import os
import subprocess
import sys
import tempfile


def main():
    if len(sys.argv) != 4:
        print("usage: run_fuzz.py FUZZER SEED_WRITER SECONDS", file=sys.stderr)
        return 2
    fuzzer, seeds = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    seconds = int(sys.argv[3])
    with tempfile.TemporaryDirectory(prefix="hp-fuzz-") as tmp:
        corpus = os.path.join(tmp, "corpus")
        artifacts = os.path.join(tmp, "artifacts") + os.sep
        os.mkdir(corpus)
        os.mkdir(artifacts)
        subprocess.run([seeds, corpus], check=True, timeout=60)
        nseeds = len(os.listdir(corpus))
        if nseeds < 5:
            print(f"seed writer produced only {nseeds} seeds", file=sys.stderr)
            return 1
        cmd = [fuzzer, corpus,
               f"-max_total_time={seconds}",
               "-max_len=16384",
               "-timeout=10",
               "-rss_limit_mb=2048",
               "-print_final_stats=1",
               f"-artifact_prefix={artifacts}"]
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, cwd=tmp)
        try:
            rc = proc.wait(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"fuzzer did not stop after {seconds + 90} s", file=sys.stderr)
            return 1
        found = sorted(os.listdir(artifacts))
        for name in found:
            with open(os.path.join(artifacts, name), "rb") as f:
                print(f"artifact {name}: {f.read().hex()}", file=sys.stderr)
        if rc != 0 or found:
            print(f"fuzzer failed (exit status {rc}, {len(found)} artifacts)", file=sys.stderr)
            return 1
        print(f"fuzzer ran {seconds} s from {nseeds} seeds without a crash")
        return 0


if __name__ == "__main__":
    sys.exit(main())
