#!/usr/bin/env python3
"""Benchmark: meshinit against baselines measured in the same run, on a real kernel (root).

Each sample runs in a fresh network namespace. Reported: median wall time and peak RSS of the
measured process, and ratios against the baseline `iptables-nft-restore --noflush` of the same
rules (the least any restore-based installer can do). Also measured: the same rules installed
with one `iptables` process per rule (how per-rule tools such as Istio 1.20's
`--restore-format=false` or the `iptables` crate work), and a meshinit re-run (no-op).

Usage: sudo scripts/bench.py [--samples N] [--binary target/release/meshinit]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
        "-b", "*", "-d", "15090,15021,15020", "--ipv6=false", "--redirect-dns",
        "--dns-servers=10.96.0.10", "--drop-invalid", "--force-iptables-binary=nft"]


def sh(*cmd, stdin=None):
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True)


def measure(cmd, stdin=None):
    """Wall time (ms) and peak RSS (KiB) of one child process (its own, from wait4)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, text=True)
    child.stdin.write(stdin or "")
    child.stdin.close()
    _, status, usage = os.wait4(child.pid, 0)
    ms = (time.perf_counter() - start) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {cmd}")
    return ms, usage.ru_maxrss


def fresh_ns(i):
    name = f"meshinit-bench-{os.getpid()}-{i}"
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    return name


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=21)
    p.add_argument("--binary", default="target/release/meshinit")
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root (network namespaces)")
    binary = os.path.abspath(a.binary)
    rules = sh(binary, *ARGS, "--dry-run").stdout
    lines = [l for l in rules.splitlines() if l and not l.startswith("#")]
    per_rule = []
    table = None
    for line in lines:
        if line.startswith("* "):
            table = line[2:]
        elif line != "COMMIT":
            per_rule.append(["iptables-nft", "-t", table] + line.split())

    results = {"baseline: iptables-nft-restore": [], "meshinit (fresh install)": [],
               "meshinit (re-run, no-op)": [], "one iptables process per rule": []}
    rss = {k: 0 for k in results}
    for i in range(a.samples):
        ns = fresh_ns(i)
        try:
            ms, r = measure(["ip", "netns", "exec", ns, "iptables-nft-restore", "--noflush"], rules)
            results["baseline: iptables-nft-restore"].append(ms)
            rss["baseline: iptables-nft-restore"] = max(rss["baseline: iptables-nft-restore"], r)
            sh("ip", "netns", "del", ns)
            ns = fresh_ns(i)
            ms, r = measure([binary, *ARGS, f"--network-namespace=/run/netns/{ns}"])
            results["meshinit (fresh install)"].append(ms)
            rss["meshinit (fresh install)"] = max(rss["meshinit (fresh install)"], r)
            ms, r = measure([binary, *ARGS, f"--network-namespace=/run/netns/{ns}"])
            results["meshinit (re-run, no-op)"].append(ms)
            rss["meshinit (re-run, no-op)"] = max(rss["meshinit (re-run, no-op)"], r)
            sh("ip", "netns", "del", ns)
            ns = fresh_ns(i)
            start = time.perf_counter()
            for cmd in per_rule:
                subprocess.run(["ip", "netns", "exec", ns] + cmd, capture_output=True, check=True)
            results["one iptables process per rule"].append((time.perf_counter() - start) * 1000)
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    base = statistics.median(results["baseline: iptables-nft-restore"])
    base_rss = rss["baseline: iptables-nft-restore"]
    print(f"{len(lines)} restore lines, {len(per_rule)} rules, {a.samples} samples each")
    print(f"{'what':34} {'median ms':>10} {'time ratio':>11} {'peak RSS KiB':>13} {'RSS ratio':>10}")
    for name, samples in results.items():
        med = statistics.median(samples)
        if rss[name]:
            mem = f"{rss[name]:13} {rss[name] / base_rss:10.2f}"
        else:
            mem = f"{'-':>13} {'-':>10}"
        print(f"{name:34} {med:10.2f} {med / base:11.2f} {mem}")
    print("peak RSS: the largest process of the measured tree (wait4 counts waited-for children,")
    print("so for meshinit it is usually the iptables tool it runs, not meshinit itself).")


if __name__ == "__main__":
    main()
