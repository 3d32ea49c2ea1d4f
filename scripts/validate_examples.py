#!/usr/bin/env python3
"""Offline checks of examples/ (run by scripts/validate-examples.sh, in its venv).

This file owns what "the examples are valid" means:
- every Kubernetes manifest (examples/*.yaml) validates strictly (no unknown fields) against
  the JSON schemas kubernetes-validate ships, for the oldest Kubernetes with native sidecars
  on by default (1.29) and the newest schema shipped;
- the IstioOperator and Helm values files (examples/istio/) parse, set the init image at
  global.proxy_init.image as a full registry/name:tag (istio/istio#59066), and use only keys
  this file knows to be Istio's (no CRD schema for IstioOperator ships with the package);
- consistency: istio-init is Istio's injected container verbatim but for the image, the same
  in the plain and the native-sidecar pod; istio-validation is Istio CNI's; the CNI DaemonSet
  installs into the node's CNI directories with istio-init's arguments in its plugin entry;
  every example names the same image; the demo proxy script compiles.

Prints one line per case, "ok - NAME" or "not ok - NAME: WHY", then "N passed, N failed";
exits 1 when any case failed.
"""
import pathlib
import re
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

# Istio's injected istio-init arguments (defaults of the injection template).
ISTIO_INIT_ARGS = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m",
                   "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
                   "--log_output_level=default:info"]
ISTIO_INIT_SECURITY = {
    "allowPrivilegeEscalation": False, "privileged": False,
    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
    "readOnlyRootFilesystem": False, "runAsGroup": 0, "runAsNonRoot": False, "runAsUser": 0,
    "seccompProfile": {"type": "RuntimeDefault"},
}
ISTIO_VALIDATION_SECURITY = {
    "allowPrivilegeEscalation": False, "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True, "runAsGroup": 1337, "runAsNonRoot": True,
    "runAsUser": 1337, "seccompProfile": {"type": "RuntimeDefault"},
}
# registry (a host: has a dot or a port, or is localhost) / path / name : tag
FULL_IMAGE = re.compile(
    r"^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+|[a-z0-9.-]+:[0-9]+)(/[a-z0-9]+([._-][a-z0-9]+)*)+"
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ISTIO_OPERATOR_SPEC_KEYS = {"profile", "hub", "tag", "namespace", "revision", "meshConfig",
                            "components", "values", "unvalidatedValues"}

results = []


def case(name, problems):
    """Records one case: problems is a list of strings (empty: passed)."""
    results.append((name, list(problems)))
    if problems:
        print(f"not ok - {name}: {'; '.join(problems)}", flush=True)
    else:
        print(f"ok - {name}", flush=True)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def rel(path):
    return str(path.relative_to(ROOT))


def check_manifest(path):
    problems = []
    try:
        docs = load_all(path)
    except yaml.YAMLError as e:
        return [f"YAML: {e}"]
    if not docs:
        return ["no document"]
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                problems.append(f"{what} against Kubernetes {version}: {where}: {e.message}")
            except Exception as e:  # schema not found, unsupported version
                problems.append(f"{what} against Kubernetes {version}: {e}")
    return problems


def image_problems(image, where):
    if not isinstance(image, str):
        return [f"{where} is {image!r}, not a string"]
    if not FULL_IMAGE.match(image):
        return [f"{where} = {image!r} is not a full registry/name:tag (a value without '/' "
                "is silently replaced by the proxy image, istio/istio#59066)"]
    return []


def dig(doc, *keys):
    for k in keys:
        if not isinstance(doc, dict) or k not in doc:
            return None
        doc = doc[k]
    return doc


def pods():
    """{file name: Pod document} of the example pods."""
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") == "Pod":
                out[path.name] = doc
    return out


def container(pod, name):
    for c in pod["spec"].get("initContainers", []) + pod["spec"].get("containers", []):
        if c["name"] == name:
            return c
    return None


def main():
    manifests = sorted(EXAMPLES.glob("*.yaml"))
    if not manifests:
        case("examples/*.yaml exist", ["no manifest found"])
    for path in manifests:
        case(f"{rel(path)} validates (Kubernetes {', '.join(K8S_VERSIONS)}, strict)",
             check_manifest(path))

    images = {}
    for path in sorted((EXAMPLES / "istio").glob("*.yaml")):
        problems = []
        try:
            docs = load_all(path)
        except yaml.YAMLError as e:
            case(f"{rel(path)} parses", [f"YAML: {e}"])
            continue
        if len(docs) != 1 or not isinstance(docs[0], dict):
            case(f"{rel(path)}", ["expected exactly one YAML mapping"])
            continue
        doc = docs[0]
        if doc.get("kind") == "IstioOperator":
            if doc.get("apiVersion") != "install.istio.io/v1alpha1":
                problems.append(f"apiVersion {doc.get('apiVersion')!r}")
            unknown = set(doc.get("spec", {})) - ISTIO_OPERATOR_SPEC_KEYS
            if unknown:
                problems.append(f"unknown spec keys {sorted(unknown)}")
            values = dig(doc, "spec", "values") or {}
            prefix = "spec.values."
        else:
            values, prefix = doc, ""
        image = dig(values, "global", "proxy_init", "image")
        problems += image_problems(image, f"{prefix}global.proxy_init.image")
        images[rel(path)] = image
        env = dig(values, "pilot", "env") or {}
        for k, v in env.items():
            if not isinstance(v, str):
                problems.append(f"{prefix}pilot.env.{k} = {v!r} must be a string (quote it)")
        if "native-sidecar" in path.name and env.get("ENABLE_NATIVE_SIDECARS") != "true":
            problems.append(f'{prefix}pilot.env.ENABLE_NATIVE_SIDECARS is not "true"')
        if "cni" in path.name and dig(doc, "spec", "components", "cni", "enabled") is not True:
            problems.append("spec.components.cni.enabled is not true")
        case(f"{rel(path)} sets a full init image", problems)

    found = pods()
    plain, native, cni = (found.get(n) for n in
                          ("pod.yaml", "pod-native-sidecar.yaml", "pod-cni-validation.yaml"))
    problems = []
    init = plain and container(plain, "istio-init")
    if not init:
        problems.append("examples/pod.yaml has no istio-init container")
    else:
        if init.get("args") != ISTIO_INIT_ARGS:
            problems.append(f"args {init.get('args')} differ from Istio's {ISTIO_INIT_ARGS}")
        if init.get("securityContext") != ISTIO_INIT_SECURITY:
            problems.append(f"securityContext {init.get('securityContext')} is not Istio's")
        if init.get("command"):
            problems.append("sets command: Istio sets only args (the image's entrypoint runs)")
    case("examples/pod.yaml: istio-init is Istio's injected container but for the image", problems)

    problems = []
    ninit = native and container(native, "istio-init")
    if not (init and ninit):
        problems.append("istio-init missing")
    elif ninit != init:
        problems.append("istio-init differs from examples/pod.yaml's")
    else:
        inits = [c["name"] for c in native["spec"]["initContainers"]]
        proxy = container(native, "proxy")
        if inits[:1] != ["istio-init"]:
            problems.append(f"init containers {inits}: istio-init must come first")
        if "proxy" not in inits or proxy.get("restartPolicy") != "Always":
            problems.append("the proxy is not an init container with restartPolicy Always")
    case("examples/pod-native-sidecar.yaml: same istio-init, then the proxy as a native sidecar",
         problems)

    problems = []
    val = cni and container(cni, "istio-validation")
    if not val:
        problems.append("no istio-validation container")
    else:
        if val.get("args") != ISTIO_INIT_ARGS + ["--run-validation", "--skip-rule-apply"]:
            problems.append(f"args {val.get('args')} are not istio-init's + "
                            "--run-validation --skip-rule-apply")
        if val.get("securityContext") != ISTIO_VALIDATION_SECURITY:
            problems.append(f"securityContext {val.get('securityContext')} is not Istio CNI's")
        if [c["name"] for c in cni["spec"]["initContainers"]] != ["istio-validation"]:
            problems.append("istio-validation must be the only init container")
    case("examples/pod-cni-validation.yaml: istio-validation is Istio CNI's", problems)

    problems = []
    docs = load_all(EXAMPLES / "cni-daemonset.yaml")
    ds = next((d for d in docs if d.get("kind") == "DaemonSet"), None)
    cm = next((d for d in docs if d.get("kind") == "ConfigMap"), None)
    installer = ds and next((c for c in dig(ds, "spec", "template", "spec", "containers") or []
                             if c.get("name") == "install-cni"), None)
    if not (installer and cm):
        problems.append("no DaemonSet with an install-cni container and a ConfigMap")
    else:
        images["examples/cni-daemonset.yaml install-cni"] = installer.get("image")
        args = installer.get("args", [])
        flags = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        if args[:1] != ["cni-install"] or "--wait" not in args:
            problems.append(f"args {args}: expected cni-install ... --wait")
        volumes = {v["name"]: v for v in dig(ds, "spec", "template", "spec", "volumes") or []}
        mounts = {m["mountPath"]: volumes.get(m["name"], {})
                  for m in installer.get("volumeMounts", [])}
        for flag, host in (("--bin-dir", "/opt/cni/bin"), ("--conf-dir", "/etc/cni/net.d")):
            if dig(mounts.get(flags.get(flag), {}), "hostPath", "path") != host:
                problems.append(f"{flag}={flags.get(flag)} is not the node's {host} (hostPath)")
        config_path = flags.get("--plugin-config", "").lstrip("@")
        directory, _, key = config_path.rpartition("/")
        if dig(mounts.get(directory, {}), "configMap", "name") != dig(cm, "metadata", "name"):
            problems.append(f"--plugin-config {config_path} is not in the ConfigMap's mount")
        try:
            import json
            plugin = json.loads(dig(cm, "data", key) or "")
            if plugin.get("type") != "meshinit":
                problems.append('plugin.json: "type" is not "meshinit"')
            if plugin.get("istio_iptables_args") != ISTIO_INIT_ARGS:
                problems.append("plugin.json: istio_iptables_args are not istio-init's "
                                f"{ISTIO_INIT_ARGS}")
        except ValueError as e:
            problems.append(f"ConfigMap {key} is not JSON: {e}")
    case("examples/cni-daemonset.yaml: cni-install into the node's CNI directories, with "
         "istio-init's arguments in the plugin entry", problems)

    for name, pod in found.items():
        for c in pod["spec"].get("initContainers", []):
            if c["name"] in ("istio-init", "istio-validation"):
                images[f"examples/{name} {c['name']}"] = c.get("image")
    distinct = sorted({str(i) for i in images.values()})
    case("every example names the same meshinit image",
         [] if len(distinct) == 1 else [f"{len(distinct)} images: {images}"])

    problems = []
    script = None
    for doc in load_all(EXAMPLES / "pod.yaml"):
        if doc.get("kind") == "ConfigMap":
            script = dig(doc, "data", "proxy.py")
    if script is None:
        problems.append("no ConfigMap with data.proxy.py in examples/pod.yaml")
    else:
        try:
            compile(script, "proxy.py", "exec")
        except SyntaxError as e:
            problems.append(f"proxy.py: {e}")
    case("examples/pod.yaml: the demo proxy script compiles", problems)

    failed = sum(1 for _, p in results if p)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
