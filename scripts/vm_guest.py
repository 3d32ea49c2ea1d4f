"""The arm64 pod cases, run inside scripts/arm64_vm.sh's emulated arm64 machine (as its /init's
child, root, on an arm64 kernel).

Each case is a pod: a network namespace joined to a peer namespace by a veth pair (IPv4 and
IPv6 addresses), where the init container of examples/pod.yaml runs from the image's own root
filesystem as a container runtime would start it: chroot into the image, a read-only root when
the security context asks, the container's uid and gid, only its capabilities (bounding set)
and no_new_privs. Then real TCP connections show where traffic lands: the app's outbound
connection on 15001 with its original destination (SO_ORIGINAL_DST), the proxy user's
connection straight at the peer, the peer's inbound connection on 15006, excluded inbound
ports not captured; istio-validation (uid 1337, no capability) passes with the rules and
fails with 126 without them; a second istio-init changes nothing; --cleanup-only restores the
namespace. Not reproduced: seccomp (RuntimeDefault) and the kubelet's cgroups.

Standard library only (ctypes for setns, unshare, mount and prctl). Each result is a line
"VMTEST PASS|FAIL <case>" on the console; the last, "VMTEST RESULT N passed, N failed".
"""
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

from ruleset_text import normalise_nft, normalise_save

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CAPS = {"NET_ADMIN": 12, "NET_RAW": 13}
# What a runtime grants when a container does not drop ALL (containerd's and Docker's default).
DEFAULT_CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5,
                "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
                "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}
LAST_CAP = 40
SO_ORIGINAL_DST = 80

POD4, PEER4, POD6, PEER6 = "10.77.0.2", "10.77.0.1", "fd00:77::2", "fd00:77::1"
PEER_PORT, APP_PORT, EXCLUDED_PORT = 80, 8080, 15021
APP_UID, PROXY_UID = 1000, 1337
RUN_TIMEOUT = 120

results = []


def say(text):
    print(f"VMTEST {text}", flush=True)


def check(errno_result, what):
    if errno_result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        check(LIBC.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def sh(*argv, ns=None, check_ok=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(full, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if check_ok and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


class Pod:
    counter = 0

    def __init__(self):
        Pod.counter += 1
        self.ns = f"pod{Pod.counter}"
        self.peer = f"peer{Pod.counter}"
        for ns in (self.ns, self.peer):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", "eth0", "netns", self.ns, "type", "veth", "peer", "name", "eth0",
           "netns", self.peer)
        for ns, a4, a6, gw4, gw6 in ((self.ns, POD4, POD6, PEER4, PEER6),
                                     (self.peer, PEER4, PEER6, POD4, POD6)):
            sh("ip", "addr", "add", f"{a4}/24", "dev", "eth0", ns=ns)
            sh("ip", "-6", "addr", "add", f"{a6}/64", "dev", "eth0", "nodad", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)

    def snapshot(self):
        """What the pod's namespace holds: nf_tables (native and iptables-nft), the legacy
        tables (read by the image's own iptables-legacy-save), the routing policy; normalised
        as scripts/pod_test.py does (no counters, no tables that hold nothing: an empty legacy
        table cannot be unloaded)."""
        parts = [normalise_nft(sh("nft", "list", "ruleset", ns=self.ns).stdout)]
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            code, out, err = run_container(self, "latest", SAVE_SPEC, argv=[f"/usr/sbin/{tool}"])
            if code != 0:
                raise RuntimeError(f"{tool}: exit {code}: {tail(err, 2)}")
            parts.append(normalise_save(out))
        parts.append(sh("ip", "rule", "list", ns=self.ns).stdout)
        parts.append(sh("ip", "-6", "rule", "list", ns=self.ns).stdout)
        return "\n".join(parts)

    def remove(self):
        for ns in (self.ns, self.peer):
            sh("ip", "netns", "del", ns, check_ok=False)


# The image's own iptables-legacy-save, run as a container would run it (it reads /proc).
SAVE_SPEC = {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}}}


def run_container(pod, image, spec, extra_env=None, extra_args=(), argv=None):
    """Runs a container's entrypoint + args (or argv) in the pod as a runtime would;
    (exit status, stdout, stderr)."""
    sc = spec.get("securityContext") or {}
    uid = sc.get("runAsUser", 0)
    gid = sc.get("runAsGroup", uid)
    caps = sc.get("capabilities") or {}
    keep = {} if "ALL" in (caps.get("drop") or []) else dict(DEFAULT_CAPS)
    # A runtime runs every container with no_new_privs, seccomp, cgroups of its own; the
    # first only is reproduced here (allowPrivilegeEscalation: false).
    for name in caps.get("drop") or []:
        keep.pop(name, None)
    for name in caps.get("add") or []:
        keep[name] = CAPS[name]
    read_only = bool(sc.get("readOnlyRootFilesystem"))
    no_new_privs = sc.get("allowPrivilegeEscalation") is False
    root = f"/images/{image}"
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update({e["name"]: e["value"] for e in spec.get("env") or []})
    env.update(extra_env or {})

    def enter():
        setns(f"/run/netns/{pod.ns}")
        check(LIBC.unshare(CLONE_NEWNS), "unshare mount namespace")
        check(LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        check(LIBC.mount(root.encode(), root.encode(), None, MS_BIND | MS_REC, None), "bind")
        # What a runtime mounts in every container: proc, sysfs (read-only; the pod's network
        # namespace's view, as it is mounted after setns) and /dev.
        for fstype, target, flags in ((b"proc", b"/proc", 0), (b"sysfs", b"/sys", MS_RDONLY)):
            os.makedirs(root + target.decode(), exist_ok=True)
            check(LIBC.mount(fstype, (root + target.decode()).encode(), fstype, flags, None),
                  f"mount {target.decode()}")
        os.makedirs(root + "/dev", exist_ok=True)
        check(LIBC.mount(b"/dev", (root + "/dev").encode(), None, MS_BIND, None), "bind /dev")
        if read_only:
            check(LIBC.mount(None, root.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
                  "read-only")
        os.chroot(root)
        os.chdir("/")
        for cap in range(LAST_CAP + 1):
            if cap not in keep.values():
                LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if no_new_privs:
            check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

    if argv is None:
        argv = ENTRYPOINTS[image] + list(spec.get("args") or []) + list(extra_args)
    r = subprocess.run(argv, env=env, preexec_fn=enter, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    return r.returncode, r.stdout, r.stderr


def listener(ns, family, port):
    setns(f"/run/netns/{ns}")
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        s.listen(8)
        s.setblocking(False)
        return s
    finally:
        setns("/proc/1/ns/net")


def original_dst(conn, family):
    if family == socket.AF_INET:
        raw = conn.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
        return socket.inet_ntop(family, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    return socket.inet_ntop(family, raw[8:24]), struct.unpack("!H", raw[2:4])[0]


def connect_lands(from_ns, uid, family, dst, listeners):
    """Connects from from_ns as uid to dst; returns (the port of the listener that accepted,
    the accepted connection's original destination or None)."""
    setns(f"/run/netns/{from_ns}")
    os.setegid(uid)
    os.seteuid(uid)
    try:
        c = socket.socket(family, socket.SOCK_STREAM)  # owned by uid (the owner match)
    finally:
        os.seteuid(0)
        os.setegid(0)
        setns("/proc/1/ns/net")
    try:
        c.settimeout(10)
        c.connect(dst)
        ready, _, _ = select.select(list(listeners), [], [], 10)
        if not ready:
            return None, None
        conn, _ = ready[0].accept()
        with conn:
            try:
                orig = original_dst(conn, family)
            except OSError:
                orig = None
            return listeners[ready[0]], orig
    except OSError as e:
        return f"error: {e}", None
    finally:
        c.close()


def tail(err, lines=6):
    """The last lines of a container's stderr, on one line."""
    return " | ".join(err.strip().splitlines()[-lines:])


def case(name, fn):
    try:
        problem = fn()
    except Exception as e:  # a case's own failure, reported with the others
        problem = f"{type(e).__name__}: {e}"
    results.append(problem is None)
    say(f"{'PASS' if problem is None else 'FAIL'} {name}" + ("" if problem is None else
                                                             f": {problem}"))


def traffic_cases(label, pod, families):
    for family in families:
        v6 = family == socket.AF_INET6
        fam = "IPv6" if v6 else "IPv4"
        peer, addr = (PEER6, POD6) if v6 else (PEER4, POD4)
        ls = {listener(pod.ns, family, p): p for p in (15001, 15006, EXCLUDED_PORT, APP_PORT)}
        ls[listener(pod.peer, family, PEER_PORT)] = "peer"
        try:
            def lands(from_ns, uid, dst, want, captured):
                """The connection from from_ns as uid to dst is accepted on want, and a
                captured one knows dst as its original destination."""
                def check():
                    port, orig = connect_lands(from_ns, uid, family, dst, ls)
                    if port != want or (captured and orig != dst):
                        return f"landed on {port} with original destination {orig}"
                    return None
                return check

            case(f"[{label}] {fam} outbound of the app (uid {APP_UID}) lands on 15001 with its "
                 "original destination", lands(pod.ns, APP_UID, (peer, PEER_PORT), 15001, True))
            case(f"[{label}] {fam} outbound of the proxy user (uid {PROXY_UID}) goes out "
                 "directly", lands(pod.ns, PROXY_UID, (peer, PEER_PORT), "peer", False))
            case(f"[{label}] {fam} inbound to {APP_PORT} lands on 15006 with its original "
                 "destination", lands(pod.peer, APP_UID, (addr, APP_PORT), 15006, True))
            case(f"[{label}] {fam} inbound to excluded port {EXCLUDED_PORT} is not captured",
                 lands(pod.peer, APP_UID, (addr, EXCLUDED_PORT), EXCLUDED_PORT, False))
        finally:
            for s in ls:
                s.close()


def scenario(label, image, env, dual, summary):
    pod = Pod()
    baseline = pod.snapshot()
    state = {}

    def init():
        code, _, err = run_container(pod, image, SPECS["init"], extra_env=env)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if code != 0:
            return f"exit {code}: {tail(err, 10)}"
        if summary not in last:
            return f"the summary line does not name {summary!r}: {last}"
        if pod.snapshot() == baseline:
            return f"exit 0 but the namespace is unchanged: {tail(err, 3)}"
        state["init"] = True
        return None

    env_text = "".join(f", {k}={v}" for k, v in env.items())
    case(f"[{label}] istio-init (examples/pod.yaml{env_text}) exits 0 and installs rules", init)
    if not state.get("init"):
        pod.remove()
        return

    def validation():
        code, _, err = run_container(pod, image, SPECS["validation"], extra_env=env)
        return None if code == 0 else f"exit {code}: {tail(err)}"

    case(f"[{label}] istio-validation (uid 1337, no capability) exits 0 with the rules",
         validation)
    traffic_cases(label, pod, [socket.AF_INET, socket.AF_INET6] if dual else [socket.AF_INET])

    def rerun():
        before = pod.snapshot()
        code, _, err = run_container(pod, image, SPECS["init"], extra_env=env)
        if code != 0:
            return f"exit {code}: {tail(err)}"
        return None if pod.snapshot() == before else "the namespace changed"

    case(f"[{label}] a restarted istio-init exits 0 and changes nothing", rerun)

    def cleanup():
        code, _, err = run_container(pod, image, SPECS["init"], extra_env=env,
                                  extra_args=["--cleanup-only"])
        if code != 0:
            return f"exit {code}: {tail(err)}"
        return None if pod.snapshot() == baseline else "the namespace differs from before"

    case(f"[{label}] istio-init --cleanup-only leaves the namespace as before", cleanup)
    pod.remove()


def validation_without_rules(image):
    def run():
        pod = Pod()
        try:
            code, _, err = run_container(pod, image, SPECS["validation"])
            return None if code == 126 else f"exit {code}, expected 126: {tail(err, 3)}"
        finally:
            pod.remove()

    case(f"[{image} image] istio-validation exits 126 in a namespace without the rules", run)


def static_binary():
    """The images' meshinit is an arm64 static executable (no interpreter)."""
    for image in ("latest", "nftables"):
        def run(image=image):
            with open(f"/images/{image}/usr/local/bin/meshinit", "rb") as f:
                head = f.read(4096)
            machine = struct.unpack("<H", head[18:20])[0]
            if head[:4] != b"\x7fELF" or machine != 183:  # EM_AARCH64
                return f"not an aarch64 ELF (e_machine {machine})"
            if b"/lib/ld-linux-aarch64" in head:
                return "has a program interpreter (not static)"
            r = subprocess.run([f"/images/{image}/usr/local/bin/meshinit", "--version"],
                               capture_output=True, text=True, timeout=RUN_TIMEOUT)
            return None if r.returncode == 0 else f"--version: exit {r.returncode}"

        case(f"[{image} image] meshinit is a static aarch64 executable and runs", run)


SCENARIOS = [
    ("iptables (nft variant), IPv4", "latest", {}, False, "IPv4 iptables-nft"),
    ("iptables (legacy variant), IPv4", "latest", {"FORCE_IPTABLES_BINARY": "legacy"}, False,
     "IPv4 iptables-legacy"),
    ("iptables (nft variant), dual stack", "latest", {"ISTIO_DUAL_STACK": "true"}, True,
     "IPv6 ip6tables-nft"),
    ("native nftables image, dual stack", "nftables", {"ISTIO_DUAL_STACK": "true"}, True,
     "nf_tables netlink"),
]


def main(path):
    global SPECS, ENTRYPOINTS
    with open(path) as f:
        data = json.load(f)
    SPECS, ENTRYPOINTS = data["containers"], data["entrypoints"]
    start = time.monotonic()
    static_binary()
    for label, image, env, dual, summary in SCENARIOS:
        scenario(label, image, env, dual, summary)
    for image in ("latest", "nftables"):
        validation_without_rules(image)
    passed = sum(results)
    say(f"ran in {time.monotonic() - start:.0f} s")
    say(f"RESULT {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
