#!/usr/bin/env python3
"""Where the e2e suite's time goes: runs the built e2e test binary and reads /proc every half
second for the CPU time of each of its threads (libtest names a test's thread after the test,
and the libtorch threads a test's render starts inherit that name, cut to 15 characters by the
kernel) and of every process the tests start (by command line). Prints the wall time, the CPU
in all, the heaviest tests and processes, and libtest's own per-test times.

    source scripts/env.sh && cargo build --release --workspace --all-targets
    python3 scripts/profile_tests.py [FILTER...] [--top N] [--json FILE]

Arguments other than --top and --json go to the test binary (a test name filter, --exact ...).
Linux only. A process that starts and ends between two samples is missed (its CPU then shows in
no row, only in the total, which comes from the kernel's accounting of the whole tree).
"""

import argparse
import collections
import glob
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def e2e_binary():
    """The newest e2e test binary cargo built (its name carries a hash)."""
    found = [p for p in glob.glob(os.path.join(ROOT, "target/release/deps/e2e-*")) if not p.endswith(".d")]
    if not found:
        sys.exit("no e2e test binary: run `cargo build --release --workspace --all-targets` first")
    return max(found, key=os.path.getmtime)


def cpu_seconds(stat_path):
    """utime + stime of a /proc stat file, in seconds (fields 14 and 15, after the comm)."""
    with open(stat_path) as f:
        text = f.read()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out += [int(c) for c in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def sample(root, threads, procs):
    """One look at the tree under `root`: the latest CPU time of each thread of `root` and of
    each process below it (a finished one keeps its last reading)."""
    stack, seen = [root], []
    while stack:
        pid = stack.pop()
        seen.append(pid)
        stack += children(pid)
    for pid in seen:
        try:
            if pid == root:
                for task in os.listdir(f"/proc/{pid}/task"):
                    try:
                        with open(f"/proc/{pid}/task/{task}/comm") as f:
                            name = f.read().strip()
                        threads[task] = (name, cpu_seconds(f"/proc/{pid}/task/{task}/stat"))
                    except OSError:
                        pass
            else:
                with open(f"/proc/{pid}/cmdline") as f:
                    cmd = f.read().replace("\0", " ").strip()
                # A process that has exited but not been waited for shows no command line.
                cmd = cmd or procs.get(pid, ("?", 0))[0]
                procs[pid] = (cmd, cpu_seconds(f"/proc/{pid}/stat"))
        except OSError:
            pass


def command_kind(cmd):
    """A process's command line without its paths and ports, so that repeats group together:
    `gramzoom worker --coordinator http://127.0.0.1:41234 ...` -> `gramzoom worker`."""
    words = cmd.split()
    if not words:
        return "?"
    head = [os.path.basename(words[0])]
    for w in words[1:3]:
        if w.startswith("-") or "/" in w or ":" in w:
            break
        head.append(w)
    return " ".join(head)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    parser.add_argument("--json", help="also write every thread's and process's CPU time here")
    args, rest = parser.parse_known_args()
    binary = e2e_binary()
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    start = time.monotonic()
    # Run from cli/, as cargo does for the cli package's tests.
    test = subprocess.Popen(
        [binary, *rest, "-Z", "unstable-options", "--report-time"],
        cwd=os.path.join(ROOT, "cli"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threads, procs = {}, {}
    lines = []

    def echo():
        for line in test.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=echo)
    reader.start()
    while test.poll() is None:
        sample(test.pid, threads, procs)
        time.sleep(0.5)
    reader.join()
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime

    by_test = collections.Counter()
    for name, cpu in threads.values():
        by_test[name] += cpu
    by_kind = collections.Counter()
    count = collections.Counter()
    for cmd, cpu in procs.values():
        by_kind[command_kind(cmd)] += cpu
        count[command_kind(cmd)] += 1
    in_process, in_children = sum(by_test.values()), sum(by_kind.values())

    print(f"\nwall {wall:,.0f} s, CPU {total:,.0f} s ({total / wall:.2f} cores), exit {test.returncode}")
    print(f"test process {in_process:,.0f} CPU-s, processes it started {in_children:,.0f} CPU-s ({len(procs)})")
    print(f"\nCPU-s by test thread name (cut to 15 characters by the kernel), top {args.top}:")
    for name, cpu in by_test.most_common(args.top):
        print(f"{cpu:9.1f}  {name}")
    print(f"\nCPU-s by started command, top {args.top}:")
    for kind, cpu in by_kind.most_common(args.top):
        print(f"{cpu:9.1f}  {kind} (x{count[kind]})")
    print(f"\nheaviest single processes, top {args.top}:")
    for cmd, cpu in sorted(procs.values(), key=lambda v: -v[1])[: args.top]:
        print(f"{cpu:9.1f}  {cmd[:160]}")
    times = []
    for line in lines:
        m = re.match(r"test (\S+) \.\.\. \w+ <([\d.]+)s>", line)
        if m:
            times.append((float(m.group(2)), m.group(1)))
    print(f"\nwall seconds per test (libtest's, waits for a measured-render turn included), top {args.top}:")
    for secs, name in sorted(times, reverse=True)[: args.top]:
        print(f"{secs:9.1f}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall": wall, "cpu": total, "threads": threads, "procs": procs, "tests": times}, f)
    sys.exit(test.returncode)


if __name__ == "__main__":
    main()
