#!/usr/bin/env python3
"""Benchmark: meshinit against baselines measured in the same run, on a real kernel (root).

Each sample runs in a fresh network namespace. Reported: median wall time and peak RSS of the
measured process, and ratios against the baseline `iptables-nft-restore --noflush` of the same
rules (the least any restore-based installer can do). Also measured: the same rules installed
with one `iptables` process per rule (how per-rule tools such as Istio 1.20's
`--restore-format=false` or the `iptables` crate work), and a meshinit re-run (no-op).

Usage: sudo scripts/bench.py [--samples N] [--binary PATH]
(from any directory; the default binary is this repository's target/release/meshinit)
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

# The repository this script belongs to, so that it runs from any directory.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
        "-b", "*", "-d", "15090,15021,15020", "--ipv6=false", "--redirect-dns",
        "--dns-servers=10.96.0.10", "--drop-invalid", "--force-iptables-binary=nft"]


def sh(*cmd, stdin=None):
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True)


GNU_TIME = "/usr/bin/time"


def measure(cmd, stdin=None, rss=False):
    """Wall time (ms) of one run; with rss=True, the peak RSS (KiB) of the largest process of
    its tree instead, from GNU time (apt install time). Python's own rusage of the child would
    count the fork before exec, which still holds Python's memory."""
    if rss:
        out = subprocess.run([GNU_TIME, "-f", "%M", *cmd], input=stdin or "",
                             capture_output=True, text=True, check=True)
        return int(out.stderr.strip().splitlines()[-1])
    start = time.perf_counter()
    subprocess.run(cmd, input=stdin or "", capture_output=True, text=True, check=True)
    return (time.perf_counter() - start) * 1000


def fresh_ns(i):
    name = f"meshinit-bench-{os.getpid()}-{i}"
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    return name


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=21)
    p.add_argument("--binary", default=os.path.join(REPO, "target", "release", "meshinit"),
                   help="meshinit to measure (default: %(default)s); relative to the current directory")
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root (network namespaces)")
    binary = os.path.abspath(a.binary)
    if not os.access(binary, os.X_OK):
        sys.exit(f"no meshinit binary at {binary}: build it with `cargo build --release` in {REPO}, "
                 "or pass --binary PATH")
    print(f"binary: {binary}")
    rules = sh(binary, *ARGS, "--dry-run").stdout
    lines = [l for l in rules.splitlines() if l and not l.startswith("#")]
    per_rule = []
    table = None
    for line in lines:
        if line.startswith("* "):
            table = line[2:]
        elif line != "COMMIT":
            per_rule.append(["iptables-nft", "-t", table] + line.split())

    native = [a for a in ARGS if not a.startswith("--force-iptables-binary")] + ["--native-nftables"]

    def baseline(ns, rss=False):
        return measure(["ip", "netns", "exec", ns, "iptables-nft-restore", "--noflush"], rules, rss)

    def fresh_install(ns, rss=False):
        return measure([binary, *ARGS, f"--network-namespace=/run/netns/{ns}"], rss=rss)

    def rerun(ns, rss=False):
        fresh_install(ns)
        return fresh_install(ns, rss)

    def native_install(ns, rss=False):
        return measure([binary, *native, f"--network-namespace=/run/netns/{ns}"], rss=rss)

    def per_rule_processes(ns, rss=False):
        start = time.perf_counter()
        peak = 0
        for cmd in per_rule:
            full = ["ip", "netns", "exec", ns] + cmd
            if rss:
                peak = max(peak, measure(full, rss=True))
            else:
                subprocess.run(full, capture_output=True, check=True)
        return peak if rss else (time.perf_counter() - start) * 1000

    rows = [("baseline: iptables-nft-restore", baseline),
            ("meshinit (fresh install)", fresh_install),
            ("meshinit (re-run, no-op)", lambda ns, rss=False: rerun(ns, rss)),
            ("meshinit native nftables", native_install),
            ("one iptables process per rule", per_rule_processes)]
    times = {name: [] for name, _ in rows}
    peaks = {name: 0 for name, _ in rows}
    with_rss = os.path.exists(GNU_TIME)
    for i in range(a.samples):
        for name, run in rows:
            ns = fresh_ns(i)
            try:
                if name == "meshinit (re-run, no-op)":
                    fresh_install(ns)
                    times[name].append(fresh_install(ns))
                else:
                    times[name].append(run(ns))
            finally:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if with_rss:
        for name, run in rows:
            ns = fresh_ns(a.samples)
            try:
                peaks[name] = run(ns, rss=True)
            finally:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    base = statistics.median(times["baseline: iptables-nft-restore"])
    base_rss = peaks["baseline: iptables-nft-restore"]
    print(f"{len(lines)} restore lines, {len(per_rule)} rules, {a.samples} samples each")
    print(f"{'what':34} {'median ms':>10} {'time ratio':>11} {'peak RSS KiB':>13} {'RSS ratio':>10}")
    for name, _ in rows:
        med = statistics.median(times[name])
        mem = f"{peaks[name]:13} {peaks[name] / base_rss:10.2f}" if with_rss else f"{'-':>13} {'-':>10}"
        print(f"{name:34} {med:10.2f} {med / base:11.2f} {mem}")
    print("peak RSS: the largest process of the measured tree, by GNU time (for meshinit with")
    print("iptables that is usually the iptables tool it runs; the native backend runs none).")


if __name__ == "__main__":
    main()
