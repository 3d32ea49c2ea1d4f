//! `--check` on the native nftables backend prints an unexpected rule in nft syntax, exactly as
//! `nft list` shows it (counter values aside), not as raw netlink expressions.

mod support;

use std::collections::BTreeMap;

use support::apply::in_pod;
use support::netlab::Lab;
use support::nft::chain_with_handles;
use support::{istio_init_args, require_root};

/// Rules another owner adds to our output chain: every kind of match and statement the
/// decoder knows, each as nft writes it back.
const FOREIGN: &[&str] = &[
    "ip daddr 10.1.2.3 tcp dport 8080 counter accept",
    "meta skuid 1000 oifname \"lo\" ip6 saddr ::1 return",
    "tcp dport { 1, 2 } redirect to :15001",
    "ip daddr 10.0.0.0/8 udp sport 53 drop",
    "ip daddr 10.16.0.0/12 return",
    "ct state invalid,established drop",
    "meta mark set 0x00000539 jump istio-redirect",
    "oifname \"eth*\" return",
    "ip saddr != 127.0.0.6 return",
    "tcp dport != { 80, 443 } counter return",
    "ip6 daddr fd00::/16 accept",
    "meta l4proto udp return",
    "ct zone set 5 return",
    "meta skgid != 1337 th dport 9 return",
    // Port ranges: nft's `cmp gte` + `cmp lte`, its `range neq`, interval sets (one to 65535).
    "tcp dport 8000-9000 return",
    "udp dport != 100-200 counter return",
    "tcp dport { 1-5, 9, 60000-65535 } return",
];

fn meshinit(lab: &Lab, extra: &[&str]) -> (Option<i32>, String) {
    let out = in_pod(&lab.pod)
        .args(istio_init_args(&["--ipv6=false", "--native-nftables"]))
        .args(extra)
        .run();
    (out.code, out.stderr)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn native_check_prints_unexpected_rules_in_nft_syntax() {
    if !require_root("native_check_prints_unexpected_rules_in_nft_syntax") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let (code, stderr) = meshinit(&lab, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let script: String = FOREIGN
        .iter()
        .map(|r| format!("add rule inet istio-proxy-nat istio-output {r}\n"))
        .collect();
    lab.pod.nft_apply(&script);

    // nft's own text of each rule, by handle.
    let listed = chain_with_handles(&lab.pod, "istio-proxy-nat", "istio-output");
    let nft: BTreeMap<String, String> = listed
        .lines()
        .filter_map(|l| {
            let (rule, handle) = l.trim().rsplit_once(" # handle ")?;
            Some((
                handle.to_string(),
                rule.replace("counter packets 0 bytes 0", "counter"),
            ))
        })
        .collect();

    let (code, stderr) = meshinit(&lab, &["--check"]);
    assert_eq!(code, Some(3), "{stderr}");
    let ours: BTreeMap<String, String> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("istio-output: unexpected rule (handle ")?.1;
            let (handle, rest) = rest.split_once(')')?;
            Some((handle.to_string(), rest.split_once(": ")?.1.to_string()))
        })
        .collect();
    assert_eq!(ours.len(), FOREIGN.len(), "{stderr}");
    for (handle, text) in &ours {
        assert_eq!(Some(text), nft.get(handle), "handle {handle}\n{listed}");
        assert!(!text.contains('['), "raw netlink: {text}");
    }
}
