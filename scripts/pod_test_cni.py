"""CNI mode under a real container runtime: podman's CNI backend drives meshinit as a chained
plugin (imported and run by scripts/pod_test.py, whose "N passed, N failed" counts these cases).

This file owns the CNI cases and everything they make, all removed at the end, also on
failure: a temporary directory with the plugin (the binary copied out of the image under test,
as the DaemonSet in examples/cni-daemonset.yaml installs it), two conflists (bridge with
host-local IPAM, `isGateway`, no masquerading, then meshinit; one good, one with a bad port)
and a containers.conf pointing podman there (`network_config_dir`, `cni_plugin_dirs`: the
host's /etc/cni/net.d is never touched); the bridges; `/var/lib/cni/networks/NAME` and the
cached results of the two networks; the containers.

Cases: ADD installs the rules in the container's namespace; an app process in the container
connecting out lands on a listener on 15001 there; Istio's istio-validation container (the image
as uid 1337, no capabilities) passes after ADD; after the container is removed, DEL has run and
nothing of ours is left in its namespace (held open by a bind mount to look); a bad
configuration makes `podman run` fail with meshinit's message and leaves no container, address
or veth behind.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

SUBNETS = {"good": "10.251.7", "bad": "10.251.8"}
APP_UID = 1000
OUT_DST = ("203.0.113.10", 80)   # TEST-NET-3: only the capture can answer
TIMEOUT = 60


class Rig:
    def __init__(self, t):
        self.t = t
        # mict<pid><g|b>: at most 15 bytes (a bridge's name), and a stale one is recognisable.
        self.nets = {kind: f"mict{os.getpid()}{kind[0]}" for kind in SUBNETS}
        self.tmp = tempfile.mkdtemp(prefix="meshinit-cnitest-")
        self.bin = os.path.join(self.tmp, "bin")
        self.confdir = os.path.join(self.tmp, "net.d")
        self.log = os.path.join(self.tmp, "meshinit-cni.log")
        self.containers = []
        self.mounts = []
        self.env = dict(os.environ)

    def podman(self, argv, timeout=TIMEOUT, check=False):
        r = subprocess.run(["podman"] + argv, capture_output=True, text=True, timeout=timeout,
                           env=self.env)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(argv)} exited {r.returncode}: "
                               f"{r.stderr.strip()[-500:]}")
        return r

    def setup(self):
        os.makedirs(self.bin)
        os.makedirs(self.confdir)
        # The plugin is the image's own binary, copied out as the DaemonSet does.
        ctr = self.podman(["create", "--pull=never", self.t.image], check=True).stdout.strip()
        try:
            self.podman(["cp", f"{ctr}:/usr/local/bin/meshinit",
                         os.path.join(self.bin, "meshinit")], check=True)
        finally:
            self.podman(["rm", "--force", ctr])
        base = os.environ.get("CONTAINERS_CONF")
        text = open(base).read() if base else ""
        if "[network]" in text:
            raise RuntimeError(f"{base} has a [network] section already")
        conf = os.path.join(self.tmp, "containers.conf")
        with open(conf, "w") as f:
            f.write(text + f'\n[network]\ncni_plugin_dirs = ["{self.bin}", "/usr/lib/cni"]\n'
                    f'network_config_dir = "{self.confdir}"\n')
        self.env["CONTAINERS_CONF"] = conf
        args = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
        for kind, net in self.nets.items():
            plugin_args = args if kind == "good" else [
                "70000" if a == "15001" else a for a in args]
            conflist = {
                "cniVersion": "1.0.0",
                "name": net,
                "plugins": [
                    {"type": "bridge", "bridge": net, "isGateway": True, "ipMasq": False,
                     "ipam": {"type": "host-local",
                              "ranges": [[{"subnet": f"{SUBNETS[kind]}.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "meshinit", "log_file": self.log, "log_level": "info",
                     "exclude_namespaces": ["kube-system"],
                     "istio_iptables_args": plugin_args},
                ],
            }
            with open(os.path.join(self.confdir, f"{net}.conflist"), "w") as f:
                json.dump(conflist, f, indent=2)

    def run_detached(self, name, net, argv):
        self.containers.append(name)
        return self.podman(["run", "--detach", "--name", name, "--pull=never", "--network", net,
                            self.t.probe_image] + argv)

    def netns(self, name):
        path = self.podman(["inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name],
                           check=True).stdout.strip()
        if not path.startswith("/run/netns/"):
            raise RuntimeError(f"container {name}'s namespace is {path!r}, not a CNI one")
        return path

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cleanup(self):
        for name in self.containers:
            self.podman(["rm", "--force", "--time", "0", name])
        for m in self.mounts:
            subprocess.run(["umount", m], capture_output=True)
        for net in self.nets.values():
            remove_network(net)
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_network(net):
    """A test network's bridge, IPAM state and cached results."""
    subprocess.run(["ip", "link", "del", net], capture_output=True)
    shutil.rmtree(f"/var/lib/cni/networks/{net}", ignore_errors=True)
    for cached in glob.glob(f"/var/lib/cni/results/{net}-*"):
        os.remove(cached)


def sweep_stale():
    """Networks left by an earlier run of these cases that was killed."""
    r = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    for m in re.finditer(r"^\d+: (mict(\d+)[gb])[:@]", r.stdout, re.M):
        if not os.path.exists(f"/proc/{m.group(2)}"):
            remove_network(m.group(1))


def ours_in(ns_path):
    """What of meshinit's is in the namespace: rules of every variant and family, nftables
    tables, TPROXY policy rules, ::6 on lo."""
    found = []
    enter = ["nsenter", f"--net={ns_path}"]
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save",
                 "ip6tables-nft-save"):
        r = subprocess.run(enter + [tool], capture_output=True, text=True)
        found += [f"{tool}: {l}" for l in r.stdout.splitlines() if "ISTIO" in l]
    r = subprocess.run(enter + ["nft", "list", "tables"], capture_output=True, text=True)
    found += [f"nft: {l}" for l in r.stdout.splitlines() if "istio" in l]
    for argv in (["ip", "rule"], ["ip", "-6", "rule"], ["ip", "addr", "show", "dev", "lo"]):
        r = subprocess.run(enter + argv, capture_output=True, text=True)
        found += [f"{' '.join(argv)}: {l.strip()}" for l in r.stdout.splitlines()
                  if "proto 157" in l or "::6/128" in l or "lookup 133" in l]
    return found


def cni_cases(t):
    sweep_stale()
    rig = Rig(t)
    state = {}

    def setup():
        if not t.probe_image:
            return "no --probe-image given (the app container needs a shell)"
        rig.setup()
        return None

    try:
        t.case("[cni] the plugin (the image's binary) and the test conflists in a temporary "
               "CNI directory", setup)
        if not os.path.exists(os.path.join(rig.bin, "meshinit")):
            return
        good, bad = rig.nets["good"], rig.nets["bad"]
        app = f"{good}-app"

        def add():
            r = rig.run_detached(app, good, ["sleep", "600"])
            if r.returncode != 0:
                return f"podman run exited {r.returncode}: {r.stderr.strip()[-400:]}"
            state["netns"] = rig.netns(app)
            log = rig.log_text()
            if f"CNI ADD (spec 1.0.0): network {good}" not in log:
                return f"the plugin's log has no ADD: {log[-400:]!r}"
            found = ours_in(state["netns"])
            if not any("-A ISTIO_OUTPUT" in l for l in found):
                return f"no ISTIO_OUTPUT rules in {state['netns']}: {found}"
            addr = rig.podman(["exec", app, "cat", "/proc/net/fib_trie"]).stdout
            if f"{SUBNETS['good']}.2" not in addr:
                return "the container lacks the bridge's address: the result did not pass through"
            return None

        t.case("[cni] podman run on bridge + meshinit: ADD installs the rules in the "
               "container's namespace, the bridge's result passes through", add)

        def outbound():
            if "netns" not in state:
                return "ADD failed"
            listener = t.start(["nsenter", f"--net={state['netns']}", t.python, "-u",
                                t.helpers, "echo-server", "proxy", "15001"],
                               "listener on 15001 in the container's namespace")
            try:
                listener.wait_for(r"^ready$")
                script = f"exec 3<>/dev/tcp/{OUT_DST[0]}/{OUT_DST[1]} && cat <&3"
                r = rig.podman(["exec", "--user", f"{APP_UID}:{APP_UID}", app, "bash", "-c",
                                script], timeout=30)
                if r.returncode != 0:
                    return f"the app's connection failed: {r.stderr.strip()[-300:]}"
                reply = json.loads(r.stdout.strip().splitlines()[-1])
                if reply.get("server") != "proxy" or not reply["local"].endswith(":15001"):
                    return f"answered {reply}, not by the listener on 15001"
                return None
            finally:
                listener.stop()

        t.case(f"[cni] an app process in the container (uid {APP_UID}) connecting out to "
               f"{OUT_DST[0]}:{OUT_DST[1]} lands on the listener on 15001 there", outbound)

        def validation():
            if "netns" not in state:
                return "ADD failed"

            class Ns:
                ns = os.path.basename(state["netns"])
                pause = None  # podman joins the namespace by its path (no pause container)

            code, err = t.run_container(Ns, t.validation, t.image)
            if code != 0:
                return f"exit {code}: {err.strip().splitlines()[-2:]}"
            return None

        t.case("[cni] istio-validation (the image as uid 1337, no capabilities) passes after "
               "the plugin's ADD", validation)

        def delete():
            if "netns" not in state:
                return "ADD failed"
            # Keep the namespace alive after the runtime lets go of it, to look inside.
            held = os.path.join(rig.tmp, "held-netns")
            open(held, "w").close()
            subprocess.run(["mount", "--bind", state["netns"], held], check=True)
            rig.mounts.append(held)
            r = rig.podman(["rm", "--force", "--time", "0", app])
            if r.returncode != 0:
                return f"podman rm exited {r.returncode}: {r.stderr.strip()[-300:]}"
            rig.containers.remove(app)
            log = rig.log_text()
            if f"CNI DEL (spec 1.0.0): network {good}" not in log:
                return f"DEL did not run: {log[-400:]!r}"
            after_del = log.split(f"CNI DEL (spec 1.0.0): network {good}")[-1]
            # Cleanup's summary counts what it removed per place: some chain and rule of ours.
            if not re.search(r"removed [1-9][0-9]* chain\(s\), [1-9][0-9]* rule\(s\)", after_del):
                return f"DEL removed nothing: {log[-400:]!r}"
            left = ours_in(held)
            if left:
                return f"left in the namespace: {left}"
            return None

        t.case("[cni] after the container is removed, DEL has run and nothing of ours is left "
               "in its namespace", delete)

        def bad_config():
            name = f"{bad}-app"
            rig.containers.append(name)
            r = rig.podman(["run", "--rm", "--name", name, "--pull=never", "--network", bad,
                            t.probe_image, "true"])
            problems = []
            if r.returncode == 0:
                problems.append("podman run succeeded")
            want = ['plugin type="meshinit" failed (add)', "--envoy-port", "70000"]
            missing = [w for w in want if w not in r.stderr]
            if missing:
                problems.append(f"stderr lacks {missing}: {r.stderr.strip()[-400:]}")
            if rig.podman(["container", "exists", name]).returncode == 0:
                problems.append("the container exists")
            allocated = [f for f in os.listdir(f"/var/lib/cni/networks/{bad}")
                         if re.match(r"^\d+\.\d+\.\d+\.\d+$", f)] \
                if os.path.isdir(f"/var/lib/cni/networks/{bad}") else []
            if allocated:
                problems.append(f"addresses still allocated: {allocated}")
            veths = subprocess.run(["ip", "-o", "link", "show", "master", bad],
                                   capture_output=True, text=True).stdout.strip()
            if veths:
                problems.append(f"veths left on the bridge: {veths}")
            return "; ".join(problems) or None

        t.case("[cni] a bad configuration (-p 70000) makes podman run fail with meshinit's "
               "message and leaves no container, address or veth", bad_config)
    finally:
        rig.cleanup()
