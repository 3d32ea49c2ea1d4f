#!/usr/bin/env python3
"""Benchmark: meshinit against baselines measured in the same run, on a real kernel (root).

Sizes: 0, 10, 100, 1,000 and 5,000 excluded CIDRs (`-x`, three IPv4 /24s to one IPv6 /64,
none adjacent), and a long port list (1,000 inbound ports `-b` and 1,000 excluded outbound
ports `-o`); IPv6 on, Istio's default arguments otherwise. Rows, each sample in a fresh
network namespace:

- meshinit native nftables (sets for long lists, `--nft-sets=auto`), fresh install and re-run;
- meshinit iptables backend, nft and legacy variants, fresh install and no-op re-run;
- the bare tools on the same rules: `iptables-nft-restore --noflush` and
  `iptables-legacy-restore --noflush` (then the `ip6tables-*` one), `nft -f` of Istio's
  per-rule nftables script;
- the processes newest istio-iptables runs for the same configuration (reference §3.10), as
  plain commands: per family the legacy save's version and contents, the nft save's version,
  the nft probe rule added and deleted; the state-check saves of both families; the restores;
  the final saves.

Every process, meshinit included, starts inside the namespace: the harness enters it itself
(setns), so no row pays for `ip netns exec`.

Columns: median wall time of the install, ratios, peak RSS (GNU time, `apt-get install time`:
the largest process of the row). Then the connection rate per size: `examples/connrate.rs`
opens sequential new TCP connections as uid 1000 to 192.0.2.1:80, which the capture redirects
to its own listener on 15001 (bounded: --conns connections or 3 s per sample; the address is
routed to a veth pair inside the lab namespace only). Finally the issue's targets.

Usage: sudo scripts/bench.py [--samples N] [--conns N] [--sizes 0,10,...] [--binary PATH]
                             [--rows WORD,...] [--no-rate]

`--rows iptables` keeps only the rows whose name contains one of the words (here the
iptables backend's rows and the bare restores they are compared with); `--no-rate` skips the
connection rates. Targets whose rows were not measured are left out.
"""
import argparse
import collections
import ctypes
import os
import statistics
import subprocess
import sys
import time

# Work from the repository root whatever the current directory.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)

BASE = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
        "-d", "15090,15021,15020", "--ipv6=true", "--dns-servers="]
GNU_TIME = "/usr/bin/time"
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
HOME_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
# The baseline rows' names.
BARE_NFT = "bare iptables-nft-restore"
NFT_F = "bare nft -f (Istio's script)"
ISTIO = "Istio's process sequence (nft)"


def excluded(n):
    """n CIDRs: three IPv4 /24s (every other one in 172.16.0.0/12) to one IPv6 /64."""
    out = []
    for i in range(n):
        if i % 4 == 3:
            out.append(f"fd50:0:0:{2 * i:x}::/64")
        else:
            out.append(f"172.{16 + (2 * i) // 256 % 16}.{(2 * i) % 256}.0/24")
    return out


def config(size):
    """The arguments of one size: `N` excluded CIDRs or `ports`."""
    if size == "ports":
        ports = [str(p) for p in range(20000, 21000)]
        out_ports = [str(p) for p in range(30000, 31000)]
        return BASE + ["-x", "", "-b", ",".join(ports), "-o", ",".join(out_ports)]
    return BASE + ["-b", "*", "-x", ",".join(excluded(int(size)))]


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Netns:
    """A fresh namespace with lo up and a veth pair inside it (this kernel has no dummy
    interfaces) whose one end routes everything; nothing leaves the namespace."""

    def __init__(self, i):
        self.name = f"meshinit-bench-{os.getpid()}-{i}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        ip = ["ip", "-n", self.name]
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"],
                    ["link", "set", "dummy0", "up"],
                    ["link", "set", "dummy1", "up"],
                    ["addr", "add", "10.250.0.1/24", "dev", "dummy0"],
                    ["addr", "add", "fd00:250::1/64", "dev", "dummy0", "nodad"],
                    ["route", "add", "default", "dev", "dummy0"],
                    ["-6", "route", "add", "default", "dev", "dummy0"]):
            subprocess.run(ip + cmd, check=True, capture_output=True)

    def __enter__(self):
        self.fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        setns(self.fd)
        return self

    def __exit__(self, *exc):
        setns(HOME_NS)
        os.close(self.fd)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def run(cmd, stdin=None, rss=False):
    """Wall time (ms) of one process run in the current namespace, or its peak RSS (KiB)."""
    if rss:
        out = subprocess.run([GNU_TIME, "-f", "%M", *cmd], input=stdin or "",
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[:3]}... failed: {out.stderr[-500:]}")
        return int(out.stderr.strip().splitlines()[-1])
    start = time.perf_counter()
    out = subprocess.run(cmd, input=stdin or "", capture_output=True, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:200]} failed ({out.returncode}): {out.stderr[-800:]}")
    return elapsed


def sequence(steps, rss):
    """Runs (cmd, stdin) steps one after the other: total ms, or the largest peak RSS."""
    if rss:
        return max(run(c, s, rss=True) for c, s in steps)
    return sum(run(c, s) for c, s in steps)


def restore_texts(binary, args):
    """The v4 and v6 restore inputs meshinit's dry run prints (under `#` headers)."""
    text = subprocess.run([binary, *args, "--dry-run"], capture_output=True, text=True,
                          check=True).stdout
    parts, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("#"):
            current = []
            parts.append(current)
        elif current is not None:
            current.append(line)
    return ["".join(p) for p in parts]


def istio_steps(v4, v6, variant="nft"):
    """The processes newest istio-iptables runs for a fresh install (reference §3.10)."""
    steps = []
    for fam in ("iptables", "ip6tables"):
        steps += [([f"{fam}-legacy-save", "--version"], None),
                  ([f"{fam}-legacy-save"], None),
                  ([f"{fam}-{variant}-save", "--version"], None),
                  ([f"{fam}-{variant}", "-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN"], None),
                  ([f"{fam}-{variant}", "-t", "nat", "-D", "INPUT", "-p", "255", "-j", "RETURN"], None)]
    steps += [([f"iptables-{variant}-save"], None), ([f"ip6tables-{variant}-save"], None)]
    steps += [([f"iptables-{variant}-restore", "--noflush"], v4),
              ([f"ip6tables-{variant}-restore", "--noflush"], v6)]
    steps += [([f"iptables-{variant}-save"], None), ([f"ip6tables-{variant}-save"], None)]
    return steps


def rows_for(binary, args):
    """(name, setup, measured) per row; setup runs first in the same namespace, unmeasured."""
    native = args + ["--native-nftables"]
    nft = args + ["--force-iptables-binary=nft"]
    legacy = args + ["--force-iptables-binary=legacy"]
    v4, v6 = restore_texts(binary, nft)
    script = subprocess.run([binary, *native, "--dry-run", "--nft-sets=never"],
                            capture_output=True, text=True, check=True).stdout

    def me(a):
        return lambda rss=False: sequence([([binary, *a], None)], rss)

    def none(rss=False):
        return 0

    return [
        ("meshinit native nftables", none, me(native)),
        ("meshinit native, re-run", me(native), me(native)),
        ("meshinit iptables nft", none, me(nft)),
        ("meshinit iptables nft, re-run", me(nft), me(nft)),
        ("meshinit iptables legacy", none, me(legacy)),
        ("meshinit iptables legacy, re-run", me(legacy), me(legacy)),
        ("bare iptables-nft-restore", none, lambda rss=False: sequence(
            [(["iptables-nft-restore", "--noflush"], v4),
             (["ip6tables-nft-restore", "--noflush"], v6)], rss)),
        ("bare iptables-legacy-restore", none, lambda rss=False: sequence(
            [(["iptables-legacy-restore", "--noflush"], v4),
             (["ip6tables-legacy-restore", "--noflush"], v6)], rss)),
        ("bare nft -f (Istio's script)", none,
         lambda rss=False: sequence([(["nft", "-f", "-"], script)], rss)),
        ("Istio's process sequence (nft)", none,
         lambda rss=False: sequence(istio_steps(v4, v6), rss)),
    ]


def conn_rate(binary, client, args, conns, samples):
    """Median connections/s through the capture after installing with these arguments."""
    rates = []
    with Netns("conn") as _:
        run([binary, *args])
        for _ in range(samples):
            out = subprocess.run([client, "192.0.2.1:80", "15001", "1000", str(conns), "3"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"connrate: {out.stderr}")
            rates.append(float(out.stdout.split()[2]))
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=7)
    p.add_argument("--conns", type=int, default=3000)
    p.add_argument("--sizes", default="0,10,100,1000,5000,ports")
    p.add_argument("--binary", default="target/release/meshinit")
    p.add_argument("--client", default="target/release/examples/connrate")
    p.add_argument("--rows", default="", help="only rows whose name contains one of these words")
    p.add_argument("--no-rate", action="store_true", help="skip the connection rates")
    a = p.parse_args()
    words = [w for w in a.rows.split(",") if w]

    def wanted(name):
        return not words or any(w in name for w in words)
    if os.geteuid() != 0:
        sys.exit("bench needs root (network namespaces)")
    binary, client = os.path.abspath(a.binary), os.path.abspath(a.client)
    for what, path, how in (("meshinit binary", binary, "cargo build --release"),
                            ("connrate client", client, "cargo build --release --example connrate")):
        if what == "connrate client" and a.no_rate:
            continue
        if not os.path.exists(path):
            sys.exit(f"no {what} at {path}: build it with `{how}`")
    print(f"binary: {binary}", file=sys.stderr)
    with_rss = os.path.exists(GNU_TIME)
    sizes = a.sizes.split(",")
    results = collections.defaultdict(lambda: (float("nan"), 0))  # (size, row) -> (ms, KiB)
    rates = collections.defaultdict(lambda: float("nan"))
    for size in sizes:
        args = config(size)
        rows = [r for r in rows_for(binary, args) if wanted(r[0])]
        times = {name: [] for name, _, _ in rows}
        for i in range(a.samples):
            for name, setup, measured in rows:
                with Netns(i):
                    setup()
                    times[name].append(measured())
        for name, setup, measured in rows:
            peak = 0
            if with_rss:
                with Netns("rss"):
                    setup()
                    peak = measured(rss=True)
            results[(size, name)] = (statistics.median(times[name]), peak)
        for label, extra in (("native (sets)", ["--native-nftables"]),
                             ("native, --nft-sets=never", ["--native-nftables", "--nft-sets=never"]),
                             ("iptables nft", ["--force-iptables-binary=nft"]),
                             ("iptables legacy", ["--force-iptables-binary=legacy"])):
            if a.no_rate:
                break
            if wanted(label):
                rates[(size, label)] = conn_rate(binary, client, args + extra, a.conns, 3)
        print(f"size {size} done", file=sys.stderr)

    names = [name for name, _, _ in rows_for(binary, config(sizes[0])) if wanted(name)]

    def ratio(ms, size, row):
        base = results.get((size, row))
        return f"{ms / base[0]:.2f}" if base else "-"

    print(f"apply: median of {a.samples} samples, each in a fresh namespace; ratios against rows "
          f"of the same size")
    print(f"{'size':>6} {'what':34} {'ms':>9} {'/nft-restore':>12} {'/nft -f':>8} "
          f"{'/Istio seq':>10} {'peak KiB':>9}")
    for size in sizes:
        for name in names:
            ms, kib = results[(size, name)]
            print(f"{size:>6} {name:34} {ms:9.1f} {ratio(ms, size, BARE_NFT):>12} "
                  f"{ratio(ms, size, NFT_F):>8} {ratio(ms, size, ISTIO):>10} "
                  f"{kib if with_rss else '-':>9}")
    labels = ["native (sets)", "native, --nft-sets=never", "iptables nft", "iptables legacy"]
    if not a.no_rate:
        print_rates(a, sizes, labels, rates)
    print_targets(sizes, names, results, rates)
    print(f"\nmachine: {os.uname().sysname} {os.uname().release}, {os.cpu_count()} CPUs; "
          f"{subprocess.run(['iptables', '--version'], capture_output=True, text=True).stdout.strip()}; "
          f"{subprocess.run(['nft', '--version'], capture_output=True, text=True).stdout.strip()}")


def print_rates(a, sizes, labels, rates):
    print(f"\nnew connections/s (median of 3 × up to {a.conns} sequential connections, uid 1000, "
          f"redirected to a local listener); ratio to size 0")
    print(f"{'size':>6} " + " ".join(f"{l:>26}" for l in labels))
    for size in sizes:
        cells = []
        for l in labels:
            r = rates[(size, l)]
            zero = rates.get(("0", l), r)
            cells.append(f"{r:>17.0f} ({r / zero:5.2f})")
        print(f"{size:>6} " + " ".join(cells))



def print_targets(sizes, names, results, rates):
    """The issue's targets, those whose rows were measured."""
    print("\ntargets:")

    def target(what, value, limit, le=True):
        ok = value <= limit if le else value >= limit
        print(f"  {'ok  ' if ok else 'MISS'} {what}: {value:.2f} ({'<=' if le else '>='} {limit})")

    def ms(size, row):
        return results[(size, row)][0] if (size, row) in results else None

    if ("0", "native (sets)") in rates and ("5000", "native (sets)") in rates:
        target("native conn rate at 5,000 / at 0", rates[("5000", "native (sets)")]
               / rates[("0", "native (sets)")], 0.8, le=False)
    if ms("5000", "meshinit native nftables") and ms("5000", NFT_F):
        target("native apply at 5,000 / nft -f of Istio's script",
               ms("5000", "meshinit native nftables") / ms("5000", NFT_F), 0.15)
    if ms("0", "meshinit native nftables") and ms("0", BARE_NFT):
        target("native apply, default config / bare iptables-nft-restore",
               ms("0", "meshinit native nftables") / ms("0", BARE_NFT), 0.5)
    for size in sizes:
        for variant in ("nft", "legacy"):
            mine, bare = ms(size, f"meshinit iptables {variant}"), ms(size, f"bare iptables-{variant}-restore")
            if mine and bare:
                target(f"iptables {variant} fresh / bare restore, size {size}", mine / bare, 1.5)
    rows = [(ms(s, n) / ms(s, ISTIO), s, n) for s in sizes for n in names
            if n.startswith("meshinit") and ms(s, ISTIO)]
    if rows:
        worst = max(rows)
        target(f"worst meshinit row / Istio's sequence ({worst[2]}, size {worst[1]})", worst[0], 0.2)


if __name__ == "__main__":
    main()
