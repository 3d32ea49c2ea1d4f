#!/usr/bin/env python3
"""CNI mode's per-pod decision under containerd's CRI, driven as the kubelet drives it.

Usage: scripts/cri_test.py MESHINIT_BINARY   (as root; scripts/cri_test.sh sets everything up)

A containerd of the test's own (config, root, state, socket in a temporary directory) runs
its CRI plugin with a conflist of bridge + host-local + meshinit (the entry declares
io.kubernetes.cri.pod-annotations, so containerd passes each pod's annotations). A small CRI
client (grpcio, compiled from k8s.io/cri-api v0.25.0's api.proto, tests/data/cri-api) runs a
pod sandbox with annotations, then an app container that connects to a peer on the bridge's
gateway, then stops and removes the pod. Images come from a local tarball (static busybox)
imported with ctr; containerd's sandbox_image is that image.

Cases (one pod each):
  injected    sidecar.istio.io/status: rules installed; the app's connection lands on 15001 in
              the pod with its original destination (SO_ORIGINAL_DST)
  plain       no annotation: no rules; the app reaches the peer directly
  excluded    status + traffic.sidecar.istio.io/excludeOutboundPorts=PEER_PORT: rules installed,
              but the app reaches the peer on that port directly
and for each: removing the pod runs meshinit's DEL, and its network namespace is gone.
Everything is removed at the end, also on failure (containerd stopped, mounts, bridge, files).
"""
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

CAPABILITY = "io.kubernetes.cri.pod-annotations"
IMAGE = "docker.io/meshinit/cri-test:1"
SUBNET = "10.252.9"
GATEWAY = f"{SUBNET}.1"
PEER_PORT = 28087
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISTIO_INIT_ARGS = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                   "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
STATUS = json.dumps({"initContainers": ["istio-validation"], "containers": ["istio-proxy"],
                     "volumes": [], "imagePullSecrets": None, "revision": "default"})


def run(argv, check=True, **kw):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{argv}: exit {out.returncode}: {out.stderr.strip()}")
    return out


def image_tarball(path):
    """A docker-archive image: one layer with a static busybox and the applets the test uses."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ["bin", "tmp"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in ["sh", "sleep", "nc", "echo"]:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer = layer.getvalue()
    diff_id = hashlib.sha256(layer).hexdigest()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Cmd": ["/bin/sleep", "1000000"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [IMAGE],
                            "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in [(f"{diff_id}/layer.tar", layer), (config_name, config),
                           ("manifest.json", manifest)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def cri_stubs(gen):
    """Compiles the CRI api.proto (its gogoproto options dropped: grpcio needs none)."""
    src = os.path.join(REPO, "tests/data/cri-api/api.proto")
    os.makedirs(gen)
    with open(src) as f:
        text = "".join(line for line in f if "gogo" not in line)
    with open(os.path.join(gen, "api.proto"), "w") as f:
        f.write(text)
    from grpc_tools import protoc
    if protoc.main(["protoc", f"-I{gen}", f"--python_out={gen}", f"--grpc_python_out={gen}",
                    os.path.join(gen, "api.proto")]) != 0:
        raise RuntimeError("protoc failed on api.proto")
    sys.path.insert(0, gen)
    import api_pb2
    import api_pb2_grpc
    return api_pb2, api_pb2_grpc


class Peer:
    """A TCP listener in the node's namespace: records (source address, first line) per
    connection, answering each."""

    def __init__(self):
        self.seen = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", PEER_PORT))
        self.sock.listen(16)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(200).decode(errors="replace").strip()
                    conn.sendall(b"peer\n")
                except OSError:
                    data = ""
                self.seen.append((addr[0], data))


# Runs in the pod's namespace: accepts one connection on 15001, prints its original
# destination (SO_ORIGINAL_DST) and first line as JSON.
PROXY = r"""
import json, socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15001)); s.listen(4); s.settimeout(float(sys.argv[1]))
print("listening", flush=True)
try:
    c, _ = s.accept()
except socket.timeout:
    print(json.dumps({"timeout": True}), flush=True); sys.exit(0)
raw = c.getsockopt(socket.SOL_IP, 80, 16)
port, ip = struct.unpack("!2xH4s8x", raw)
c.settimeout(5); data = c.recv(200).decode(errors="replace").strip()
print(json.dumps({"dst": socket.inet_ntoa(ip) + ":" + str(port), "data": data}), flush=True)
"""


class Rig:
    def __init__(self, meshinit):
        self.meshinit = meshinit
        self.tmp = tempfile.mkdtemp(prefix="meshinit-cri-")
        self.bridge = f"mcri{os.getpid() % 100000}"
        self.sock = os.path.join(self.tmp, "containerd.sock")
        self.log = os.path.join(self.tmp, "meshinit.log")
        self.containerd = None
        self.netns_seen = []

    def setup(self):
        bin_dir = os.path.join(self.tmp, "cni-bin")
        conf_dir = os.path.join(self.tmp, "net.d")
        os.makedirs(bin_dir)
        os.makedirs(conf_dir)
        for plugin in ["bridge", "host-local", "loopback"]:
            os.symlink(f"/usr/lib/cni/{plugin}", os.path.join(bin_dir, plugin))
        shutil.copy(self.meshinit, os.path.join(bin_dir, "meshinit"))
        conflist = {"cniVersion": "1.0.0", "name": "meshinit-cri", "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{SUBNET}.0/24"}]],
                      "dataDir": os.path.join(self.tmp, "ipam")}},
            {"type": "meshinit", "capabilities": {CAPABILITY: True},
             "istio_iptables_args": ISTIO_INIT_ARGS, "log_file": self.log, "log_level": "info"}]}
        with open(os.path.join(conf_dir, "10-meshinit-cri.conflist"), "w") as f:
            json.dump(conflist, f)
        config = f"""version = 2
root = "{self.tmp}/root"
state = "{self.tmp}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.tmp}/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.tmp}/opt"
# The test may itself run in a container: no AppArmor profile to load, and a sandbox's
# oom_score_adj (-998) clamped to what this process may set.
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
"""
        with open(os.path.join(self.tmp, "config.toml"), "w") as f:
            f.write(config)
        self.containerd_log = open(os.path.join(self.tmp, "containerd.log"), "w")
        self.containerd = subprocess.Popen(
            ["containerd", "--config", os.path.join(self.tmp, "config.toml")],
            stdout=self.containerd_log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if os.path.exists(self.sock):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("containerd did not open its socket: " + self.containerd_tail())
        tarball = os.path.join(self.tmp, "image.tar")
        image_tarball(tarball)
        run(["ctr", "--address", self.sock, "-n", "k8s.io", "images", "import", tarball])
        import grpc
        pb, pb_grpc = cri_stubs(os.path.join(self.tmp, "gen"))
        self.pb = pb
        channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.cri = pb_grpc.RuntimeServiceStub(channel)
        self.cri.Version(pb.VersionRequest(), timeout=30)

    def containerd_tail(self):
        with open(os.path.join(self.tmp, "containerd.log")) as f:
            return "".join(f.readlines()[-15:])

    def sandbox_config(self, name, annotations):
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
            annotations=annotations, log_directory=os.path.join(self.tmp, "logs", name),
            linux=pb.LinuxPodSandboxConfig())

    def run_pod(self, name, annotations):
        """RunPodSandbox (CNI ADD runs here); returns (pod id, sandbox config, netns path)."""
        pb = self.pb
        config = self.sandbox_config(name, annotations)
        pod = self.cri.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
        status = self.cri.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=30)
        info = json.loads(status.info["info"])
        netns = next(n["path"] for n in info["runtimeSpec"]["linux"]["namespaces"] if n["type"] == "network")
        self.netns_seen.append(netns)
        return pod, config, netns, status.status.network.ip

    def start_app(self, pod, config, name, command):
        pb = self.pb
        cconf = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app"),
                                   image=pb.ImageSpec(image=IMAGE), command=["/bin/sh", "-c", command],
                                   log_path="app.log", linux=pb.LinuxContainerConfig())
        cid = self.cri.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=cconf, sandbox_config=config), timeout=60).container_id
        self.cri.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    def remove_pod(self, pod):
        pb = self.pb
        self.cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        self.cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)

    def cleanup(self):
        if self.containerd:
            try:
                pb = self.pb
                for s in self.cri.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                    self.remove_pod(s.id)
            except Exception as e:  # noqa: BLE001 - best effort before the stop
                print(f"cleanup: removing pods: {e}", file=sys.stderr)
            self.containerd.send_signal(signal.SIGTERM)
            try:
                self.containerd.wait(30)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait()
            # The shims outlive containerd; theirs are under our state directory.
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().decode(errors="replace")
                except OSError:
                    continue
                if "containerd-shim" in cmd and self.sock in cmd:
                    os.kill(int(pid), signal.SIGKILL)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(self.tmp)]
        for mount in sorted(mounts, key=len, reverse=True):
            run(["umount", "-l", mount], check=False)
        run(["ip", "link", "del", self.bridge], check=False)
        if os.environ.get("MESHINIT_CRI_KEEP"):
            print(f"kept {self.tmp} (MESHINIT_CRI_KEEP)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def ns_run(netns, argv, **kw):
    return run(["nsenter", f"--net={netns}"] + argv, **kw)


def main():
    meshinit = os.path.abspath(sys.argv[1])
    rig = Rig(meshinit)
    peer = Peer()
    results = []

    def case(name, fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - reported per case
            results.append((name, e))
            print(f"FAIL {name}: {e}")

    try:
        rig.setup()

        def pod_case(name, annotations, captured, rules):
            pod, config, netns, ip = rig.run_pod(name, annotations)
            saved = ns_run(netns, ["iptables-save", "-t", "nat"]).stdout
            has_rules = "ISTIO_OUTPUT" in saved
            assert has_rules == rules, f"rules installed: {has_rules}, expected {rules}:\n{saved}"
            proxy = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", PROXY, "15"],
                                     stdout=subprocess.PIPE, text=True)
            assert proxy.stdout.readline().strip() == "listening"
            rig.start_app(pod, config, name,
                          f"echo hello-{name} | nc -w 3 {GATEWAY} {PEER_PORT}; sleep 1000000")
            if captured:
                landed = json.loads(proxy.stdout.readline())
                assert landed.get("dst") == f"{GATEWAY}:{PEER_PORT}" and landed.get("data") == f"hello-{name}", \
                    f"on 15001: {landed}"
                assert (ip, f"hello-{name}") not in peer.seen, "the peer got it too"
            else:
                deadline = time.time() + 15
                while (ip, f"hello-{name}") not in peer.seen and time.time() < deadline:
                    time.sleep(0.2)
                assert (ip, f"hello-{name}") in peer.seen, f"peer saw {peer.seen}, not {ip}"
            proxy.kill()
            proxy.wait()
            rig.remove_pod(pod)
            assert not os.path.exists(netns), f"{netns} is left after RemovePodSandbox"
            with open(rig.log) as f:
                log = f.read()
            assert "CNI DEL" in log and f"default/{name}" in log, "no DEL logged for the pod"
            print(f"     {name}: " + "\n     ".join(
                line.split("\t")[-1] for line in log.splitlines() if f"pod default/{name}:" in line))

        case("injected: rules, the app lands on 15001 with its original destination",
             lambda: pod_case("injected", {"sidecar.istio.io/status": STATUS}, True, True))
        case("plain: no annotation, no rules, the app reaches its peer",
             lambda: pod_case("plain", {"app": "plain"}, False, False))
        case("excluded: excludeOutboundPorts keeps that port out of the capture",
             lambda: pod_case("excluded", {"sidecar.istio.io/status": STATUS,
                                            "traffic.sidecar.istio.io/excludeOutboundPorts": str(PEER_PORT)},
                              False, True))
    except Exception as e:  # noqa: BLE001
        results.append(("setup", e))
        print(f"FAIL setup: {e}")
        if rig.containerd:
            print(rig.containerd_tail())
    finally:
        peer.sock.close()
        rig.cleanup()
    left = [n for n in rig.netns_seen if os.path.exists(n)]
    if left:
        results.append(("cleanup", f"netns left: {left}"))
    failed = [r for r in results if r[1] is not None]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
