#!/usr/bin/env python3
"""The pod-level test of meshinit's images: the image run as Kubernetes runs istio-init.

Run by `scripts/image.sh test` (root, podman; the venv's Python, which has PyYAML). This file
owns the test: it simulates what the kubelet does for an injected pod, with real parts:

- a pod network namespace joined by a veth pair to a "peer" namespace (the node's side of the
  pod network), with 10.250.0.1/24 and fd00:250::1/64 in the pod, .2 and ::2 in the peer;
- the init container: the image run by podman in that namespace (`--network ns:`) with the
  arguments, environment and security context read from examples/pod.yaml's istio-init
  (uid 0, capabilities drop ALL add NET_ADMIN and NET_RAW, no privilege escalation, the
  runtime's default seccomp profile, root filesystem as written there), only the image
  replaced by the one under test;
- Istio CNI's validation container from examples/pod-cni-validation.yaml, run the same way;
- the app and the proxy: the proxy is examples/pod.yaml's own proxy script (from its
  ConfigMap), run as the proxy container's user; the app is played by this file's echo
  servers and clients, run as the app container's user;
- real TCP traffic, from the app out to the peer and from the peer in to the app;
- CNI mode: podman's CNI backend running the image's binary as a chained plugin
  (scripts/pod_test_cni.py owns those cases).

A connection's path is proven by addresses, not by timing: every echo server answers with
the address it saw the connection come from, the proxy logs each connection's original
destination (SO_ORIGINAL_DST) before it connects onwards, and the relay's upstream socket
has another port than the client (outbound) or the source 127.0.0.6 / ::6 (inbound).

Another architecture (arm64 on an amd64 machine) runs under qemu-user through binfmt_misc:
`--arch ARCH` names the images' architecture (checked against each image, and that the kernel
can run it), `--cases LIST` picks groups of cases (CASE_GROUPS below); without --cases, all;
`--reference-image` (the dry-run cases, run only with it) is a native nftables image of this
machine's architecture. qemu-user 7.2 has no NETLINK_NETFILTER sockets ("Protocol not supported") and
does not translate iptables' IPT_SO_* socket options, so under emulation neither backend can
install rules: there the static, tools (iptables-legacy only) and dry-run cases are what runs.
`--engine docker --docker-host unix://SOCK --pause-image IMAGE` runs the containers with Docker
instead (`--docker-cli PATH`: the client to use, default `docker` from PATH): each pod
namespace is then a pause container's (IMAGE with `sleep`), joined by the init container with
`--network container:`, as the kubelet's runtime does.

Each check is one case; a line per case, then "N passed, N failed" (also counting
scripts/validate-examples.sh's cases); exit 1 when any failed. Every wait is bounded.
Namespaces, processes and containers are removed at the end, also on failure or Ctrl-C.

Helper modes (stdlib only, run by the test as other users with /usr/bin/python3):
  pod_test.py echo-server NAME PORT...   answer each connection with one JSON line
  pod_test.py client HOST PORT [SOURCE]  connect (from SOURCE), print {"local": ..., "reply": ...}
"""
import json
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from ruleset_text import normalise_nft, normalise_save

POD4, PEER4 = "10.250.0.1", "10.250.0.2"
PEER4_EXCLUDED = "10.250.0.3"  # the peer's second address, for --exclude-inbound-sources
POD6, PEER6 = "fd00:250::1", "fd00:250::2"
PEER_PORT = 9000            # where the app connects to on the peer
PEER_MORE = [9100, 9101, 9102, 9103]  # the peer's ports for meshinit's own options
OTHER_UID = 4242            # a pod user that is neither the app nor the proxy
APP_PORT = 8080             # the app's port (captured inbound)
EXCLUDED = [15090, 15021, 15020]  # istio-init's -d
CONNECT_TIMEOUT = 5         # seconds, every socket operation of a client or server
WAIT = 10                   # seconds to wait for a helper's "ready" or a proxy log line
RUN_TIMEOUT = 120           # seconds for one container run
NS_PREFIX = "mipt"


# --- helper modes (no third-party imports) ---------------------------------------------------

def fmt(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def echo_server(name, ports):
    """Listens on every port on 0.0.0.0 and [::] (IPv6 only); answers each connection with
    {"server", "local", "peer"} and closes it."""
    socks = []
    for port in ports:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(64)
            socks.append(s)

    def serve(s):
        while True:
            conn, peer = s.accept()
            with conn:
                conn.settimeout(CONNECT_TIMEOUT)
                line = json.dumps({"server": name, "local": fmt(conn.getsockname()),
                                   "peer": fmt(peer)})
                try:
                    conn.sendall(line.encode() + b"\n")
                except OSError:
                    pass

    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def client(host, port, source=None):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out = {}
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(CONNECT_TIMEOUT)
            if source:
                s.bind((source, 0))
            s.connect((host, int(port)))
            out["local"] = fmt(s.getsockname())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            out["reply"] = json.loads(data.decode()) if data.strip() else None
    except (OSError, ValueError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)


# --- plumbing --------------------------------------------------------------------------------

def sh(argv, timeout=30, check=False, input=None):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
    return r


class Proc:
    """A background helper whose stdout lines are collected by a thread."""

    def __init__(self, argv, what):
        self.what = what
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern, timeout=WAIT):
        """The first line (seen before or arriving within timeout) matching pattern."""
        rx = re.compile(pattern)
        for line in self.seen:
            if rx.search(line):
                return line
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    line = self.lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    raise RuntimeError(f"{self.what} exited (code {self.p.poll()}); "
                                       f"output: {self.seen[-5:]}")
                self.seen.append(line)
                if rx.search(line):
                    return line
        finally:
            timer.cancel()
        raise RuntimeError(f"{self.what}: no line matching {pattern!r} within {timeout} s; "
                           f"last lines: {self.seen[-5:]}")

    def recent(self, n=3):
        """The last n lines printed so far (for failure messages)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return self.seen[-n:]

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Test:
    def __init__(self, args):
        import yaml  # only the orchestrating process needs PyYAML
        self.yaml = yaml
        self.arch = args["arch"]
        # The container engine's command: podman, or a docker client of a given daemon.
        self.engine = ["podman"] if args["engine"] == "podman" \
            else [args["docker_cli"], "-H", args["docker_host"]]
        self.docker = args["docker_host"] if args["engine"] == "docker" else None
        self.pause_image = args["pause_image"]
        self.reference_image = args["reference_image"]
        self.image = args["image"]
        self.nft_image = args["nftables_image"]
        self.probe_image = args["probe_image"]
        self.last_stdout = ""
        self.root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.passed = 0
        self.failed = 0
        self.namespaces = []
        self.procs = []
        self.containers = []
        self.serial = 0
        self.tmp = tempfile.mkdtemp(prefix="meshinit-podtest-")
        os.chmod(self.tmp, 0o755)  # the helpers run as other users
        # This file runs as the workloads' helpers.py too, with the module it imports beside it.
        self.helpers = os.path.join(self.tmp, "helpers.py")
        here = os.path.dirname(os.path.abspath(__file__))
        for source, name in [(os.path.abspath(__file__), "helpers.py"),
                             (os.path.join(here, "ruleset_text.py"), "ruleset_text.py")]:
            copy = os.path.join(self.tmp, name)
            shutil.copy(source, copy)
            os.chmod(copy, 0o644)
        self.python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) \
            else shutil.which("python3")
        self.load_examples()
        hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nofile = 1048576 if hard_nofile == resource.RLIM_INFINITY else hard_nofile
        nproc = 32768 if hard_nproc == resource.RLIM_INFINITY else min(hard_nproc, 32768)
        # podman here: runc (crun cannot start containers) and limits it may set.
        self.podman = self.engine + ["run", "--pull=never",
                                     "--ulimit", f"nofile={nofile}:{nofile}",
                                     "--ulimit", f"nproc={nproc}:{nproc}"]
        if args["engine"] == "podman":
            self.podman += ["--runtime", "runc"]

    # -- the examples ------------------------------------------------------------------------

    def load_examples(self):
        def docs(name):
            with open(os.path.join(self.root, "examples", name)) as f:
                return [d for d in self.yaml.safe_load_all(f) if d]

        def container(pod, name):
            spec = pod["spec"]
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                if c["name"] == name:
                    return c
            raise RuntimeError(f"no container {name} in {pod['metadata']['name']}")

        pod_docs = docs("pod.yaml")
        pod = next(d for d in pod_docs if d["kind"] == "Pod")
        config = next(d for d in pod_docs if d["kind"] == "ConfigMap")
        self.init = container(pod, "istio-init")
        self.app = container(pod, "app")
        self.proxy = container(pod, "proxy")
        cni = next(d for d in docs("pod-cni-validation.yaml") if d["kind"] == "Pod")
        self.validation = container(cni, "istio-validation")
        self.proxy_script = os.path.join(self.tmp, "proxy.py")
        with open(self.proxy_script, "w") as f:
            f.write(config["data"]["proxy.py"])
        os.chmod(self.proxy_script, 0o644)

    @staticmethod
    def ids(spec):
        """(uid, gid) of a container from its securityContext."""
        sc = spec.get("securityContext", {})
        uid = sc.get("runAsUser", 0)
        return uid, sc.get("runAsGroup", uid)

    def security_flags(self, sc):
        """podman's (or Docker's) flags for a Kubernetes container securityContext; refuses
        what it cannot express, so the test never silently runs something else than the
        manifest says."""
        known = {"runAsUser", "runAsGroup", "runAsNonRoot", "capabilities", "privileged",
                 "allowPrivilegeEscalation", "readOnlyRootFilesystem", "seccompProfile"}
        unknown = set(sc) - known
        if unknown:
            raise RuntimeError(f"securityContext keys the test cannot map: {sorted(unknown)}")
        flags = []
        uid = sc.get("runAsUser", 0)
        if sc.get("runAsNonRoot") and uid == 0:
            raise RuntimeError("runAsNonRoot with runAsUser 0: the kubelet would refuse it")
        user = str(uid) if "runAsGroup" not in sc else f"{uid}:{sc['runAsGroup']}"
        flags += ["--user", user]
        caps = sc.get("capabilities", {})
        for c in caps.get("drop", []):
            flags += ["--cap-drop", c]
        for c in caps.get("add", []):
            flags += ["--cap-add", c]  # one each: Docker 20.10 takes no list
        if sc.get("privileged"):
            flags.append("--privileged")
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        if sc.get("readOnlyRootFilesystem"):
            # Kubernetes mounts nothing writable over a read-only root: no tmpfs on /run
            # (podman's default mounts some; Docker's mounts none and has no such flag).
            flags += ["--read-only"]
            if self.docker is None:
                flags.append("--read-only-tmpfs=false")
        seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            flags += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise RuntimeError(f"seccompProfile {seccomp} is not supported by the test")
        return flags

    def run_container(self, pod, spec, image, extra_args=(), extra_env=None, sc_override=None,
                      extra_podman=()):
        """Runs one container of the example in the pod's namespace; returns (code, stderr)."""
        if spec.get("command"):
            raise RuntimeError(f"{spec['name']}: the test runs the image's entrypoint; "
                               "a command in the manifest would replace it")
        sc = dict(spec.get("securityContext", {}))
        sc.update(sc_override or {})
        env = {e["name"]: e["value"] for e in spec.get("env", [])}
        env.update(extra_env or {})
        self.serial += 1
        name = f"{NS_PREFIX}-{os.getpid()}-{self.serial}-{spec['name']}"
        self.containers.append(name)
        network = f"container:{pod.pause}" if pod.pause else f"ns:/run/netns/{pod.ns}"
        argv = self.podman + ["--rm", "--name", name, "--network", network]
        argv += self.security_flags(sc) + list(extra_podman)
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        argv += [image] + [str(a) for a in spec.get("args", [])] + list(extra_args)
        try:
            r = sh(argv, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            sh(self.engine + ["rm", "--force", name])
            return None, f"timed out after {RUN_TIMEOUT} s"
        self.containers.remove(name)
        self.last_stdout = r.stdout
        return r.returncode, r.stderr

    # -- namespaces --------------------------------------------------------------------------

    def make_pod(self, label, dual_stack):
        pod = Pod(self, label, dual_stack)
        self.namespaces += [pod.ns, pod.peer]
        pod.build()
        return pod

    def start(self, argv, what):
        p = Proc(argv, what)
        self.procs.append(p)
        return p

    def as_user(self, ns, uid, gid, argv):
        return ["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}", f"--regid={gid}",
                "--clear-groups", "--no-new-privs"] + argv

    # -- results -----------------------------------------------------------------------------

    def case(self, name, fn):
        """Runs one check; fn returns None (pass) or raises/returns a reason (fail)."""
        try:
            why = fn()
        except Exception as e:  # a case's failure, whatever the cause, is reported
            why = f"{type(e).__name__}: {e}"
        if why:
            self.failed += 1
            print(f"FAIL {name}: {why}", flush=True)
        else:
            self.passed += 1
            print(f"PASS {name}", flush=True)

    def cleanup(self):
        for p in self.procs:
            p.stop()
        for ns in self.namespaces:
            sh(["ip", "netns", "del", ns])
        for name in list(self.containers):
            sh(self.engine + ["rm", "--force", name])
        shutil.rmtree(self.tmp, ignore_errors=True)


class Pod:
    """A pod namespace and its peer, as the node's CNI would make them."""

    def __init__(self, test, label, dual_stack):
        self.t = test
        self.label = label
        self.dual = dual_stack
        test.serial += 1
        base = f"{NS_PREFIX}-{os.getpid()}-{test.serial}"
        self.ns, self.peer = f"{base}-pod", f"{base}-peer"
        self.procs = []
        self.pause = None  # the pause container whose namespace is the pod's (Docker)

    def build(self):
        if self.t.pause_image:
            # Docker joins containers to another container's namespace only: a pause
            # container's, named in /run/netns like the others (ip netns attach).
            self.pause = f"{self.ns}-pause"
            self.t.containers.append(self.pause)
            sh(self.t.engine + ["run", "--detach", "--pull=never", "--name", self.pause,
                                "--network", "none", self.t.pause_image, "sleep", "infinity"],
               check=True)
            pid = sh(self.t.engine + ["inspect", "--format", "{{.State.Pid}}", self.pause],
                     check=True).stdout.strip()
            sh(["ip", "netns", "attach", self.ns, pid], check=True)
        else:
            sh(["ip", "netns", "add", self.ns], check=True)
        sh(["ip", "netns", "add", self.peer], check=True)
        sh(["ip", "link", "add", "eth0", "netns", self.ns, "type", "veth", "peer", "name",
            "eth0", "netns", self.peer], check=True)
        for ns, a4, a6 in ((self.ns, POD4, POD6), (self.peer, PEER4, PEER6)):
            # No duplicate address detection: the link-local address would otherwise turn
            # from tentative to usable (and appear in the local routing table) at some time
            # after the baseline snapshot.
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"],
               check=True)
            sh(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
            sh(["ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", "eth0"], check=True)
            if self.dual:
                sh(["ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", "eth0", "nodad"],
                   check=True)
        sh(["ip", "-n", self.peer, "addr", "add", f"{PEER4_EXCLUDED}/24", "dev", "eth0"],
           check=True)

    def snapshot(self):
        """Everything an init container may change, normalised: both variants' rules of both
        families without counters or empty tables, the nftables ruleset likewise, policy
        routing, routes, lo's addresses."""
        out = []
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save",
                     "ip6tables-nft-save"):
            r = sh(["ip", "netns", "exec", self.ns, tool], check=True)
            out.append(f"== {tool}\n{normalise_save(r.stdout)}")
        r = sh(["ip", "netns", "exec", self.ns, "nft", "list", "ruleset"], check=True)
        out.append(f"== nft list ruleset\n{normalise_nft(r.stdout)}")
        for argv in (["rule"], ["-6", "rule"], ["route", "show", "table", "all"],
                     ["-6", "route", "show", "table", "all"], ["addr", "show", "dev", "lo"]):
            r = sh(["ip", "-n", self.ns] + argv, check=True)
            text = "\n".join(l for l in r.stdout.splitlines() if "valid_lft" not in l)
            out.append(f"== ip {' '.join(argv)}\n{text}")
        return "\n".join(out) + "\n"

    def start_workloads(self):
        """The proxy (the example's script, as its user), the app's echo servers (as the app's
        user) and the peer's echo server; waits until each says it is ready."""
        t = self.t
        puid, pgid = t.ids(t.proxy)
        auid, agid = t.ids(t.app)
        self.proxy = t.start(t.as_user(self.ns, puid, pgid, [t.python, "-u", t.proxy_script]),
                             f"proxy in {self.ns}")
        app = t.start(t.as_user(self.ns, auid, agid, [t.python, "-u", t.helpers, "echo-server",
                                                      "app", str(APP_PORT)]
                                + [str(p) for p in EXCLUDED]), f"app in {self.ns}")
        peer = t.start(["ip", "netns", "exec", self.peer, t.python, "-u", t.helpers,
                        "echo-server", "peer", str(PEER_PORT)] + [str(p) for p in PEER_MORE],
                       f"peer server in {self.peer}")
        self.procs = [self.proxy, app, peer]
        for p in self.procs:
            p.wait_for(r"^ready$")

    def stop_workloads(self):
        for p in self.procs:
            p.stop()

    def connect(self, where, uid, gid, host, port, source=None):
        t = self.t
        argv = [t.python, "-u", t.helpers, "client", host, str(port)] + ([source] if source else [])
        if where == "pod":
            argv = t.as_user(self.ns, uid, gid, argv)
        else:
            argv = ["ip", "netns", "exec", self.peer] + argv
        r = sh(argv, timeout=CONNECT_TIMEOUT * 4)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"client printed {r.stdout!r}, stderr {r.stderr!r}")
        if "error" in res:
            raise RuntimeError(f"connecting to {fmt((host, port))}: {res['error']}")
        if not res.get("reply"):
            raise RuntimeError(f"connected to {fmt((host, port))} from {res['local']} "
                               f"but got no answer; the proxy's last lines: {self.proxy.recent()}")
        return res["local"], res["reply"]

    # -- the checks --------------------------------------------------------------------------

    def outbound_captured(self, v6=False, port=PEER_PORT, ids=None):
        uid, gid = ids or self.t.ids(self.t.app)
        dst = fmt((PEER6 if v6 else PEER4, port))
        local, reply = self.connect("pod", uid, gid, PEER6 if v6 else PEER4, port)
        if reply["server"] != "peer":
            return f"answered by {reply['server']}, not the peer"
        if reply["peer"] == local:
            return (f"the peer saw the app's own socket {local}: not captured "
                    "(expected the proxy's relay)")
        line = self.proxy.wait_for(rf"^outbound from={re.escape(local)} ")
        if f"original_dst={dst}" not in line:
            return f"proxy line {line!r}: original destination is not {dst}"
        return None

    def outbound_direct(self, v6=False, port=PEER_PORT, ids=None):
        uid, gid = ids or self.t.ids(self.t.proxy)
        local, reply = self.connect("pod", uid, gid, PEER6 if v6 else PEER4, port)
        if reply["server"] != "peer" or reply["peer"] != local:
            return (f"uid {uid}'s connection from {local} reached {reply['server']} as "
                    f"{reply['peer']}: not direct")
        return None

    def inbound_captured(self, v6=False):
        host = POD6 if v6 else POD4
        local, reply = self.connect("peer", 0, 0, host, APP_PORT)
        source = "[::6]" if v6 else "127.0.0.6"
        if reply["server"] != "app":
            return f"answered by {reply['server']}, not the app"
        if not reply["peer"].startswith(source + ":"):
            return (f"the app saw {reply['peer']}: not relayed by the proxy (expected "
                    f"{source}, the proxy's inbound source)")
        line = self.proxy.wait_for(rf"^inbound from={re.escape(local)} ")
        if f"original_dst={fmt((host, APP_PORT))}" not in line:
            return f"proxy line {line!r}: original destination is not {fmt((host, APP_PORT))}"
        return None

    def inbound_excluded(self, ports, v6=False, source=None):
        host = POD6 if v6 else POD4
        for port in ports:
            local, reply = self.connect("peer", 0, 0, host, port, source)
            if reply["server"] != "app" or reply["peer"] != local:
                return (f"port {port}: the app saw {reply['peer']} for the peer's {local}: "
                        "captured, should not be")
        return None


# --- the scenarios ---------------------------------------------------------------------------

# meshinit's own options and a port range, as `proxyMetadata` would set them: environment of
# istio-init, with examples/pod.yaml's arguments unchanged (`-o` is not among them, so its
# environment variable applies).
OWN_ENV = {
    "MESHINIT_EXCLUDE_INBOUND_SOURCES": f"{PEER4_EXCLUDED}/32",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "9100-9101",
    "MESHINIT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS": f"tcp:9103:{OTHER_UID}",
    "MESHINIT_RETRIES": "2",
}


def own_options_cases(t, pod, label, traffic):
    """The checks of OWN_ENV: an excluded source reaches the app directly, the ends of the
    excluded range go out directly and the port past it is captured, the listed uid's port is
    direct for that uid only."""
    app = t.ids(t.app)

    def range_direct():
        return (pod.outbound_direct(port=9100, ids=app)
                or pod.outbound_direct(port=9101, ids=app))

    def uid_scoped():
        return (pod.outbound_direct(port=9103, ids=(OTHER_UID, OTHER_UID))
                or pod.outbound_captured(port=9103))

    t.case(f"[{label}] inbound from {PEER4_EXCLUDED} (--exclude-inbound-sources) reaches the "
           "app directly", traffic(pod.inbound_excluded, [APP_PORT], False, PEER4_EXCLUDED))
    t.case(f"[{label}] the app to 9100 and 9101 (-o 9100-9101) goes out directly",
           traffic(range_direct))
    t.case(f"[{label}] the app to 9102, past the range, is captured",
           traffic(pod.outbound_captured, False, 9102))
    t.case(f"[{label}] uid {OTHER_UID} to 9103 goes out directly "
           "(--exclude-outbound-ports-for-uids); the app to 9103 is captured",
           traffic(uid_scoped))


SCENARIOS = [
    # label, image attribute, extra env of the init container, dual stack, summary text,
    # further cases
    ("iptables (nft variant), IPv4", "image", {}, False, "IPv4 iptables-nft", None),
    ("iptables (legacy variant), IPv4", "image", {"FORCE_IPTABLES_BINARY": "legacy"}, False,
     "IPv4 iptables-legacy", None),
    ("native nftables image, IPv4", "nft_image", {}, False, "nf_tables netlink", None),
    ("iptables (nft variant), dual stack", "image", {"ISTIO_DUAL_STACK": "true"}, True,
     "IPv6 ip6tables-nft", None),
    ("iptables (legacy variant), dual stack", "image",
     {"ISTIO_DUAL_STACK": "true", "FORCE_IPTABLES_BINARY": "legacy"}, True,
     "IPv6 ip6tables-legacy", None),
    ("native nftables image, dual stack", "nft_image", {"ISTIO_DUAL_STACK": "true"}, True,
     "nf_tables netlink", None),
    ("meshinit's own options, iptables (nft variant)", "image", OWN_ENV, False,
     "IPv4 iptables-nft", own_options_cases),
    ("meshinit's own options, native nftables image", "nft_image", OWN_ENV, False,
     "nf_tables netlink", own_options_cases),
]


def scenario(t, label, image, env, dual, summary, extra):
    pod = t.make_pod(label, dual)
    baseline = pod.snapshot()
    state = {}

    def init():
        code, err = t.run_container(pod, t.init, image, extra_env=env)
        state["init"] = code == 0
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if code != 0:
            return f"exit {code}: {last}"
        if summary not in last:
            return f"summary line does not name {summary!r}: {last}"
        if pod.snapshot() == baseline:
            return "exit 0 but the namespace is unchanged"
        return None

    env_text = "".join(f", {k}={v}" for k, v in env.items())
    t.case(f"[{label}] istio-init (examples/pod.yaml{env_text}) exits 0 and installs rules",
           init)

    def needs_init(fn):
        def wrapped():
            if not state.get("init"):
                return "skipped: istio-init failed"
            return fn()
        return wrapped

    def validation():
        code, err = t.run_container(pod, t.validation, image, extra_env=env)
        if code != 0:
            return f"exit {code}: {err.strip().splitlines()[-3:]}"
        return None

    t.case(f"[{label}] istio-validation (uid 1337, no capabilities) exits 0 with the rules",
           needs_init(validation))

    def start():
        pod.start_workloads()
        state["workloads"] = True

    t.case(f"[{label}] the proxy and the app start", needs_init(start))

    def traffic(fn, *a, **kw):
        def wrapped():
            if not state.get("workloads"):
                return "skipped: the workloads did not start"
            return fn(*a, **kw)
        return wrapped

    uid = t.ids(t.app)[0]
    puid = t.ids(t.proxy)[0]
    families = [False, True] if dual else [False]
    for v6 in families:
        fam = "IPv6" if v6 else "IPv4"
        peer = PEER6 if v6 else PEER4
        pod_addr = POD6 if v6 else POD4
        t.case(f"[{label}] {fam} outbound from the app (uid {uid}) to {fmt((peer, PEER_PORT))} "
               "lands on 15001 with its original destination",
               traffic(pod.outbound_captured, v6))
        t.case(f"[{label}] {fam} outbound of the proxy user (uid {puid}) goes out directly",
               traffic(pod.outbound_direct, v6))
        t.case(f"[{label}] {fam} inbound from the peer to {fmt((pod_addr, APP_PORT))} lands on "
               "15006 and reaches the app through the proxy",
               traffic(pod.inbound_captured, v6))
        if dual:
            t.case(f"[{label}] {fam} inbound to the excluded ports "
                   f"{','.join(map(str, EXCLUDED))} is not captured",
                   traffic(pod.inbound_excluded, EXCLUDED, v6))
        else:
            for port in EXCLUDED:
                t.case(f"[{label}] {fam} inbound to excluded port {port} is not captured",
                       traffic(pod.inbound_excluded, [port], v6))
    if extra:
        extra(t, pod, label, traffic)

    def rerun():
        before = pod.snapshot()
        code, err = t.run_container(pod, t.init, image, extra_env=env)
        if code != 0:
            return f"exit {code}: {err.strip().splitlines()[-1:]}"
        after = pod.snapshot()
        if after != before:
            return "the namespace changed:\n" + diff(before, after)
        return None

    t.case(f"[{label}] a restarted istio-init exits 0 and changes nothing", needs_init(rerun))

    pod.stop_workloads()

    def cleanup():
        code, err = t.run_container(pod, t.init, image, extra_args=["--cleanup-only"],
                                    extra_env=env)
        if code != 0:
            return f"exit {code}: {err.strip().splitlines()[-1:]}"
        after = pod.snapshot()
        if after != baseline:
            return "the namespace differs from before istio-init:\n" + diff(baseline, after)
        return None

    t.case(f"[{label}] istio-init --cleanup-only leaves the namespace as before istio-init",
           needs_init(cleanup))


def diff(a, b):
    import difflib
    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), "before", "after",
                                          lineterm="", n=1))


def validation_without_rules(t, image_attr, label):
    def check():
        pod = t.make_pod(f"no rules, {label}", False)
        code, err = t.run_container(pod, t.validation, getattr(t, image_attr))
        if code != 126:
            return f"exit {code}, expected 126: {err.strip().splitlines()[-2:]}"
        return None

    t.case(f"[{label}] istio-validation exits 126 in a namespace without the rules", check)


def read_only(t):
    ro = {"readOnlyRootFilesystem": True}

    def works(image_attr, env, expect):
        def check():
            pod = t.make_pod("read-only", False)
            code, err = t.run_container(pod, t.init, getattr(t, image_attr), extra_env=env,
                                        sc_override=ro)
            if code != 0:
                return f"exit {code}: {err.strip().splitlines()[-1:]}"
            if expect not in pod.snapshot():
                return f"exit 0 but no {expect!r} in the namespace"
            return None
        return check

    t.case("[read-only root filesystem] the default image with the nft variant works",
           works("image", {}, "ISTIO_OUTPUT"))
    t.case("[read-only root filesystem] the native nftables image works",
           works("nft_image", {}, "table inet istio-proxy-nat"))

    def legacy():
        pod = t.make_pod("read-only legacy", False)
        before = pod.snapshot()
        code, err = t.run_container(pod, t.init, t.image,
                                    extra_env={"FORCE_IPTABLES_BINARY": "legacy"},
                                    sc_override=ro)
        problems = []
        if code != 1:
            problems.append(f"exit {code}, expected 1")
        want = ["/run/xtables.lock", "Read-only file system", "needs a writable /run",
                "nothing changed"]
        missing = [w for w in want if w not in err]
        if missing:
            problems.append(f"stderr lacks {missing}: {err.strip().splitlines()[-2:]}")
        after = pod.snapshot()
        if after != before:
            problems.append("the namespace changed:\n" + diff(before, after))
        return "; ".join(problems) or None

    t.case("[read-only root filesystem] the legacy variant fails with exit 1, names the "
           "read-only lock file and what to do, and changes nothing", legacy)

    def legacy_with_run():
        pod = t.make_pod("read-only legacy, /run writable", False)
        # An emptyDir at /run, as the Troubleshooting section advises.
        code, err = t.run_container(pod, t.init, t.image,
                                    extra_env={"FORCE_IPTABLES_BINARY": "legacy"},
                                    sc_override=ro, extra_podman=["--tmpfs", "/run"])
        if code != 0:
            return f"exit {code}: {err.strip().splitlines()[-2:]}"
        if "ISTIO_OUTPUT" not in pod.snapshot():
            return "exit 0 but no ISTIO_OUTPUT chain in the namespace"
        return None

    t.case("[read-only root filesystem] the legacy variant works with a writable /run "
           "(an emptyDir there)", legacy_with_run)


def security_context(t):
    """What the runtime really gives the init and validation containers, read from
    /proc/self/status by a Debian image run with the same flags (meshinit's images have no
    shell): the manifest's security context, mapped to podman flags, is the one applied."""
    status = ["grep", "-E", "^(Uid|Gid|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):",
              "/proc/self/status"]
    expected = {
        "istio-init": {"Uid": "0", "Gid": "0", "CapEff": "0000000000003000",
                       "CapBnd": "0000000000003000", "NoNewPrivs": "1", "Seccomp": "2"},
        "istio-validation": {"Uid": "1337", "Gid": "1337", "CapEff": "0000000000000000",
                             "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"},
    }
    for spec, what in ((t.init, "NET_ADMIN and NET_RAW only"), (t.validation, "no capability")):
        def check(spec=spec):
            if not t.probe_image:
                return "no --probe-image given"
            pod = t.make_pod(f"security context {spec['name']}", False)
            probe = dict(spec, args=status)
            code, err = t.run_container(pod, probe, t.probe_image)
            if code != 0:
                return f"exit {code}: {err.strip()[-300:]}"
            got = {}
            for line in t.last_stdout.splitlines():
                key, _, value = line.partition(":")
                got[key] = value.split()[0] if value.split() else ""
            wrong = {k: (got.get(k), v) for k, v in expected[spec["name"]].items()
                     if got.get(k) != v}
            if wrong:
                return f"(got, expected): {wrong}"
            return None

        t.case(f"[security context] {spec['name']} as the manifest says runs as uid "
               f"{expected[spec['name']]['Uid']} with {what}, no-new-privileges and the "
               "runtime's seccomp filter", check)


def examples_cases(t, script):
    """scripts/validate-examples.sh's cases, counted here."""
    r = sh(["bash", script], timeout=600)
    seen = 0
    for line in r.stdout.splitlines():
        m = re.match(r"^(ok|not ok) - (.*)$", line)
        if not m:
            continue
        seen += 1
        ok, rest = m.group(1) == "ok", m.group(2)
        t.case(f"[examples] {rest}", (lambda: None) if ok else (lambda rest=rest: rest))
    if r.returncode != 0 and seen == 0:
        t.case("[examples] scripts/validate-examples.sh runs",
               lambda: f"exit {r.returncode}: {r.stderr.strip()[-500:]}")


# ELF e_machine of each architecture the images are built for.
ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}
# binfmt_misc's name for the qemu-user entry that runs an architecture (Debian's names).
QEMU_BINFMT = {"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}


def host_arch():
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def elf_problems(data, arch):
    """Why the ELF file in data is not a static binary for arch (None when it is): its machine,
    and no program interpreter (PT_INTERP), so it runs in an image with no loader at all."""
    import struct
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return "not a 64-bit little-endian ELF file"
    machine = struct.unpack_from("<H", data, 0x12)[0]
    if machine != ELF_MACHINE[arch]:
        return f"ELF machine {machine:#x}, expected {ELF_MACHINE[arch]:#x} ({arch})"
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3:  # PT_INTERP
            return "it has a program interpreter (dynamically linked)"
    return None


def static_cases(t):
    """The images' architecture and the binary's: built for --arch, statically linked, and it
    runs in the FROM-scratch image, which has no dynamic loader."""
    def image_arch(image_attr):
        def check():
            r = sh(t.engine + ["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}",
                              getattr(t, image_attr)])
            got = r.stdout.strip()
            return None if got == f"linux/{t.arch}" else f"image is {got!r}: {r.stderr.strip()}"
        return check

    t.case(f"[static] the default image is linux/{t.arch}", image_arch("image"))
    t.case(f"[static] the native nftables image is linux/{t.arch}", image_arch("nft_image"))

    def binary():
        ctr = sh(t.engine + ["create", "--pull=never", t.nft_image], check=True).stdout.strip()
        try:
            out = os.path.join(t.tmp, "meshinit-static")
            sh(t.engine + ["cp", f"{ctr}:/usr/local/bin/meshinit", out], check=True)
        finally:
            sh(t.engine + ["rm", "--force", ctr])
        with open(out, "rb") as f:
            return elf_problems(f.read(), t.arch)

    t.case(f"[static] /usr/local/bin/meshinit is a static {t.arch} ELF binary", binary)

    def runs():
        r = sh(t.podman + ["--rm", "--network", "none", t.nft_image, "--version"],
               timeout=RUN_TIMEOUT)
        if r.returncode != 0 or not r.stdout.startswith("meshinit "):
            return f"exit {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"
        return None

    t.case("[static] meshinit --version runs in the native nftables image (no loader there)",
           runs)


# The xtables extensions meshinit's rules use (Istio's, TPROXY mode, DNS capture, its options).
XT_MATCHES = ["owner", "tcp", "udp", "multiport", "conntrack", "mark", "connmark"]
XT_TARGETS = ["REDIRECT", "TPROXY", "CONNMARK", "MARK", "CT"]


def tools_cases(t):
    """The default image's iptables tools run and load every extension meshinit's rules use
    (each a shared object with its libraries, of the image's architecture). Needs no kernel
    table. Under qemu-user only iptables-legacy: the nft variant opens a NETLINK_NETFILTER socket
    even for --help ("Failed to initialize nft: Protocol not supported"), and ip6tables-legacy's
    revision query (an IPv6 sockopt qemu does not translate) makes it give up on conntrack. The
    IPv4 legacy tool loads the same libxt_* extensions and libraries, so the files are proven."""
    tools = ["iptables-legacy", "ip6tables-legacy", "iptables-nft", "ip6tables-nft"]
    if t.arch != host_arch():
        print(f"note: [tools] under qemu-user only {tools[0]} (not {', '.join(tools[1:])}: "
              "see tools_cases)", flush=True)
        tools = tools[:1]
    for tool in tools:
        def check(tool=tool):
            missing = []
            for target in XT_TARGETS:
                # istio-init's capabilities: natively, legacy iptables asks the kernel which
                # revision of an extension it has (a getsockopt that needs them); qemu-user
                # answers that it has no such option, and the tools fall back.
                argv = t.podman + ["--rm", "--network", "none", "--cap-drop", "ALL",
                                   "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
                                   "--entrypoint",
                                   f"/usr/sbin/{tool}", t.image]
                for m in XT_MATCHES:
                    argv += ["-m", m]
                r = sh(argv + ["-j", target, "--help"], timeout=RUN_TIMEOUT)
                if r.returncode != 0:
                    return f"-j {target}: exit {r.returncode}: {r.stderr.strip()[-300:]}"
                missing += [f"{m} match" for m in XT_MATCHES
                            if f"{m} match options" not in r.stdout]
                if f"{target} target options" not in r.stdout:
                    missing.append(f"{target} target")
            return f"no help from {sorted(set(missing))}" if missing else None

        t.case(f"[tools] {tool} loads the extensions {','.join(XT_MATCHES)} and "
               f"{','.join(XT_TARGETS)}", check)


# Dry runs whose text must not depend on the architecture (rule planning, rendering, the
# nftables expressions).
DRY_RUNS = [
    ("Istio's REDIRECT arguments", ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337",
                                     "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                                     "-d", "15090,15021,15020", "--ipv6=false"]),
    ("TPROXY, dual stack, drop invalid", ["istio-iptables", "-p", "15001", "-z", "15006",
                                          "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
                                          "-b", "*", "-d", "15090,15021,15020", "--ipv6=true",
                                          "--drop-invalid"]),
]


def dry_run_cases(t):
    """The native nftables image's dry runs, iptables and nftables backends, print exactly
    what the reference image (this machine's architecture) prints."""
    for what, args in DRY_RUNS:
        for backend in ("iptables", "nftables"):
            def check(args=args, backend=backend):
                if not t.reference_image:
                    return "no --reference-image given"
                outs = []
                for image in (t.nft_image, t.reference_image):
                    r = sh(t.podman + ["--rm", "--network", "none", image] + args
                           + ["--backend", backend, "--dry-run"], timeout=RUN_TIMEOUT)
                    if r.returncode != 0 or not r.stdout:
                        return f"{image}: exit {r.returncode}: {r.stderr.strip()[-300:]}"
                    outs.append(r.stdout)
                if outs[0] != outs[1]:
                    return "the outputs differ:\n" + diff(outs[1], outs[0])
                return None

            t.case(f"[dry-run] {what}, --backend {backend}: the same text as "
                   f"{t.reference_image or 'the reference image'}", check)


def scenario_group(label):
    """SCENARIOS' labels by --cases group."""
    if label.startswith("meshinit's own options"):
        return "own-options"
    if label.endswith("dual stack"):
        return "dual-stack"
    if label.startswith("native nftables"):
        return "nftables"
    if "legacy" in label:
        return "legacy"
    return "iptables"


# --cases groups: SCENARIOS' (scenario_group) and the others, in the order they run.
CASE_GROUPS = ["examples", "static", "tools", "dry-run", "iptables", "legacy", "nftables", "dual-stack",
               "own-options", "security", "validation", "read-only", "cni"]


def sweep_stale():
    """Namespaces left by an earlier run of this test that was killed."""
    r = sh(["ip", "netns", "list"])
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{NS_PREFIX}-(\d+)-", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            sh(["ip", "netns", "del", name])


def main(argv):
    args = {"image": "localhost/meshinit:latest", "nftables_image": "localhost/meshinit:nftables",
            "validate_script": None, "probe_image": None, "arch": host_arch(),
            "engine": "podman", "docker_host": None, "pause_image": None,
            "docker_cli": "docker", "reference_image": None,
            "cases": None}
    it = iter(argv)
    for a in it:
        key = a.lstrip("-").replace("-", "_")
        if key not in args:
            print(f"pod_test.py: unknown argument {a}", file=sys.stderr)
            return 2
        args[key] = next(it)
    if os.geteuid() != 0:
        print("pod_test.py: run as root (network namespaces, podman)", file=sys.stderr)
        return 2
    if args["arch"] not in ELF_MACHINE:
        print(f"pod_test.py: --arch {args['arch']!r}: expected one of {sorted(ELF_MACHINE)}",
              file=sys.stderr)
        return 2
    if args["engine"] not in ("podman", "docker") or \
            (args["engine"] == "docker") != bool(args["docker_host"] and args["pause_image"]):
        print("pod_test.py: --engine podman, or --engine docker with --docker-host and "
              "--pause-image", file=sys.stderr)
        return 2
    if args["cases"] is None:
        # All, but the dry runs only with something to compare them with: they prove a
        # foreign architecture's binary prints what this machine's does (natively, the
        # conformance goldens of cargo test prove the text).
        args["cases"] = ",".join(g for g in CASE_GROUPS
                                 if g != "dry-run" or args["reference_image"])
    groups = [g for g in args["cases"].split(",") if g]
    if "dry-run" in groups and not args["reference_image"]:
        print("pod_test.py: --cases dry-run needs --reference-image", file=sys.stderr)
        return 2
    unknown = [g for g in groups if g not in CASE_GROUPS]
    if unknown or not groups:
        print(f"pod_test.py: --cases {args['cases']!r}: unknown {unknown}; the groups are "
              f"{','.join(CASE_GROUPS)}", file=sys.stderr)
        return 2
    binfmt = f"/proc/sys/fs/binfmt_misc/{QEMU_BINFMT[args['arch']]}"
    if args["arch"] != host_arch() and not os.path.exists(binfmt):
        print(f"pod_test.py: --arch {args['arch']} needs qemu-user registered with binfmt_misc "
              f"({binfmt} is missing; scripts/image.sh test --arch {args['arch']} registers it)",
              file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    sweep_stale()
    t = Test(args)
    try:
        if args["validate_script"] and "examples" in groups:
            examples_cases(t, args["validate_script"])
        if "static" in groups:
            static_cases(t)
        if "tools" in groups:
            tools_cases(t)
        if "dry-run" in groups:
            dry_run_cases(t)
        for label, image_attr, env, dual, summary, extra in SCENARIOS:
            if scenario_group(label) in groups:
                scenario(t, label, getattr(t, image_attr), env, dual, summary, extra)
        if "security" in groups:
            security_context(t)
        if "validation" in groups:
            validation_without_rules(t, "image", "default image")
            validation_without_rules(t, "nft_image", "native nftables image")
        if "read-only" in groups:
            read_only(t)
        if "cni" in groups:
            from pod_test_cni import cni_cases  # this directory; the CNI cases live there
            cni_cases(t)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e}); cleaning up", flush=True)
        t.failed += 1
    finally:
        t.cleanup()
    print(f"{t.passed} passed, {t.failed} failed", flush=True)
    return 1 if t.failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo-server":
        echo_server(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client(*sys.argv[2:5])
    else:
        sys.exit(main(sys.argv[1:]))
