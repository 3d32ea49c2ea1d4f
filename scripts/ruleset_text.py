"""What a pod namespace's rules read back as, normalised for comparing snapshots: shared by
scripts/pod_test.py (podman pods) and scripts/vm_guest.py (the emulated arm64 machine)."""
import re


def normalise_save(text):
    """iptables-save output without comments, counters, and tables that hold nothing (only
    built-in chains, policy ACCEPT, no rule): an empty table has no effect, and loading one
    cannot be undone with legacy iptables."""
    builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
    out, table = [], None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("*"):
            table = [line]
            continue
        if line == "COMMIT":
            body = table[1:]
            chains = [l.split()[:2] for l in body if l.startswith(":")]
            has_content = any(l.startswith("-") for l in body) or any(
                name[1:] not in builtin or policy != "ACCEPT" for name, policy in chains)
            if has_content:
                out += table + ["COMMIT"]
            table = None
            continue
        if line.startswith(":"):
            line = re.sub(r" \[\d+:\d+\]$", "", line)
        table.append(line)
    return "\n".join(out)


def normalise_nft(text):
    """`nft list ruleset` without counter values and without tables that hold no rule."""
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    out, table, has_rule = [], [], False
    for line in text.splitlines():
        if line.startswith("table "):
            table, has_rule = [line], False
            continue
        table.append(line)
        s = line.strip()
        if s and not (s.startswith(("chain ", "type ", "policy ", "}", "flags ", "comment "))):
            has_rule = True
        if line == "}":
            if has_rule:
                out += table
            table = []
    return "\n".join(out)
