//! meshinit applies the rules itself, in a lab pod namespace, on both iptables variants; real
//! TCP and UDP traffic then shows that every connection lands where Istio's semantics say.
//!
//! Each scenario is one function taking a fresh [`Lab`] and the [`Variant`] to force; the
//! `scenarios!` macro turns it into two tests, `legacy::<name>` and `nft::<name>`, so a failure
//! names the variant and both variants run in parallel. Every scenario installs with meshinit,
//! checks the traffic, runs meshinit again with the same arguments (which must change nothing)
//! and checks the traffic once more.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use support::apply::strings;
use support::netlab::{Client, ClientError, Creds, Lab, Landing, Listener, ListenerSpec, Netns};
use support::{require_root, ISTIO_INIT_ARGS};

const PROXY: u32 = 1337;
const APP: u32 = 1000;
const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PORT: u16 = 15006;
const TUNNEL_PORT: u16 = 15008;
const DNS_PROXY_PORT: u16 = 15053;

/// How meshinit installs the rules: one of the iptables variants (forced), or the native
/// nftables backend with no iptables or nft tool on PATH at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Legacy,
    Nft,
    Native,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
            Variant::Native => "native",
        }
    }

    /// The iptables variants that must hold nothing of ours after an install.
    fn others(self) -> Vec<Variant> {
        match self {
            Variant::Legacy => vec![Variant::Nft],
            Variant::Nft => vec![Variant::Legacy],
            Variant::Native => vec![Variant::Legacy, Variant::Nft],
        }
    }

    fn save_tool(self, v6: bool) -> String {
        let base = if v6 { "ip6tables" } else { "iptables" };
        format!("{base}-{}-save", self.name())
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Turns each scenario function into a `legacy::`, an `nft::` and a `native::` test. Attributes written
/// before a name (e.g. `#[ignore]`) go on both tests.
macro_rules! scenarios {
    (@variant $module:ident $variant:ident $($(#[$attr:meta])* $name:ident),+) => {
        mod $module {
            $(
                $(#[$attr])*
                #[test]
                #[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
                fn $name() {
                    super::run_scenario(stringify!($name), super::Variant::$variant, super::$name);
                }
            )+
        }
    };
    ($($(#[$attr:meta])* $name:ident),+ $(,)?) => {
        scenarios!(@variant legacy Legacy $($(#[$attr])* $name),+);
        scenarios!(@variant nft Nft $($(#[$attr])* $name),+);
        scenarios!(@variant native Native $($(#[$attr])* $name),+);
    };
}

scenarios!(
    default_sidecar,
    dual_stack,
    include_and_exclude_cidrs,
    outbound_port_include_and_inbound_port_list,
    outbound_port_exclude_and_inbound_port_exclusion,
    excluded_interface,
    virt_interface_traffic_is_outbound,
    owner_groups_exclude,
    owner_groups_include,
    dns_listed_servers,
    dns_capture_all,
    // Needs meshinit's `::6/128` on lo: without it binding the passthrough source fails.
    ipv6_passthrough_source,
    tproxy_inbound,
    // Needs meshinit's TPROXY policy routes: without them a destination that is not the pod's
    // own address is forwarded (and dropped) instead of delivered to the proxy.
    tproxy_foreign_destination,
    // meshinit's own options (not Istio's).
    inbound_source_exclusion,
    inbound_source_exclusion_ipv6_off,
    outbound_port_exclusion_per_uid,
    tproxy_inbound_source_exclusion,
);

fn run_scenario(name: &str, variant: Variant, body: fn(&Lab, Variant)) {
    if !require_root(&format!("{}::{name}", variant.name())) {
        return;
    }
    let lab = Lab::new().expect("creating the lab namespaces");
    body(&lab, variant);
}

// ---------------------------------------------------------------------------------------------
// Running meshinit

/// One meshinit invocation against the lab's pod namespace with a forced variant.
struct Meshinit<'a> {
    lab: &'a Lab,
    variant: Variant,
    ipv6: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The native backend runs with the test's PATH too (to see iptables rules it moves).
    full_path: bool,
}

/// The normalised output of every save tool in the pod namespace, keyed by tool.
type Snapshot = BTreeMap<String, String>;

impl<'a> Meshinit<'a> {
    /// `istio-iptables <args> --network-namespace=<pod> --force-iptables-binary=<variant>
    /// --ipv6=<ipv6>`.
    fn new(lab: &'a Lab, variant: Variant, ipv6: bool, args: &[&str]) -> Meshinit<'a> {
        let mut all = vec!["istio-iptables".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.push(format!("--network-namespace={}", lab.pod.path().display()));
        match variant {
            Variant::Native => all.push("--native-nftables".to_string()),
            _ => all.push(format!("--force-iptables-binary={variant}")),
        }
        all.push(format!("--ipv6={ipv6}"));
        Meshinit {
            lab,
            variant,
            ipv6,
            args: all,
            env: Vec::new(),
            full_path: false,
        }
    }

    fn env(mut self, name: &str, value: &str) -> Meshinit<'a> {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Runs meshinit with only PATH (to find the iptables tools; an empty directory for the
    /// native backend, which must need no tool) and the scenario's env, so nothing from the
    /// test runner's environment changes the configuration.
    fn run(&self) -> (Option<i32>, String) {
        let path = match self.variant {
            Variant::Native if !self.full_path => {
                let empty = std::env::temp_dir().join("meshinit-empty-path");
                std::fs::create_dir_all(&empty).expect("an empty PATH directory");
                empty.to_string_lossy().into_owned()
            }
            _ => std::env::var("PATH").unwrap_or_default(),
        };
        let out = support::Meshinit::new()
            .args(&self.args)
            .path(path)
            .envs(self.env.iter().cloned())
            .run();
        (out.code, out.text())
    }

    fn describe(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} meshinit {:?}", env.join(" "), self.args)
    }

    /// First run: must exit 0 and put our chains into the forced variant only (and into the
    /// IPv6 tables only when IPv6 is on).
    fn install(&self) -> Snapshot {
        let (code, log) = self.run();
        assert_eq!(
            code,
            Some(0),
            "{}: expected exit 0\n{log}\nrules now:\n{}",
            self.describe(),
            dump(&snapshot(&self.lab.pod))
        );
        let after = snapshot(&self.lab.pod);
        let ours = |tool: &str| after[tool].contains(":ISTIO_");
        if self.variant == Variant::Native {
            assert!(
                after["nft"].contains("table inet istio-proxy-nat"),
                "{}: no tables of ours in nft\n{log}",
                self.describe()
            );
        } else {
            let (v4, v6) = (self.variant.save_tool(false), self.variant.save_tool(true));
            assert!(
                ours(&v4),
                "{}: no chains of ours in {v4}\n{log}",
                self.describe()
            );
            assert_eq!(
                ours(&v6),
                self.ipv6,
                "{}: chains of ours in {v6} must exist exactly when IPv6 is on\n{log}",
                self.describe()
            );
        }
        for other in self.variant.others() {
            for v6 in [false, true] {
                let tool = other.save_tool(v6);
                assert!(
                    !ours(&tool),
                    "{}: chains of ours appeared in {tool}\n{log}",
                    self.describe()
                );
            }
        }
        after
    }

    /// A second run with the same arguments must exit 0, say there is nothing to do for each
    /// family, and leave every table exactly as it was.
    fn reapply_is_noop(&self, before: &Snapshot) {
        let (code, log) = self.run();
        assert_eq!(
            code,
            Some(0),
            "{}: second run, expected exit 0\n{log}",
            self.describe()
        );
        // The native backend replaces its tables atomically on every run (idempotent by
        // construction); the iptables backend finds the rules in place and writes nothing.
        if self.variant != Variant::Native {
            let families: &[&str] = if self.ipv6 {
                &["IPv4", "IPv6"]
            } else {
                &["IPv4"]
            };
            for family in families {
                assert!(
                    log.lines()
                        .any(|l| l.contains(family) && l.contains("nothing to do")),
                    "{}: second run must report nothing to do for {family}\n{log}",
                    self.describe()
                );
            }
            assert!(
                log.contains("nothing changed")
                    && !log.contains("installed rules")
                    && !log.contains("replaced rules"),
                "{}: second run must change nothing\n{log}",
                self.describe()
            );
        }
        let after = snapshot(&self.lab.pod);
        if &after != before {
            let diff = similar::TextDiff::from_lines(&dump(before), &dump(&after))
                .unified_diff()
                .header("after first run", "after second run")
                .to_string();
            panic!(
                "{}: second run changed the rules\n{diff}\n{log}",
                self.describe()
            );
        }
    }

    /// Installs, checks the traffic, re-runs (a no-op) and checks the traffic again.
    fn apply_and_check(&self, check: impl Fn()) {
        let installed = self.install();
        check();
        self.reapply_is_noop(&installed);
        check();
    }
}

/// Every save tool's output, without comments (timestamps) and chain counters (traffic), so
/// two snapshots differ only when rules or chains do.
fn snapshot(pod: &Netns) -> Snapshot {
    let mut out = Snapshot::new();
    let nft =
        String::from_utf8_lossy(&pod.run(&["nft", "list", "ruleset"], None).stdout).into_owned();
    let nft: Vec<String> = nft.lines().map(without_counter_values).collect();
    out.insert("nft".to_string(), nft.join("\n"));
    for variant in [Variant::Legacy, Variant::Nft] {
        for v6 in [false, true] {
            let tool = variant.save_tool(v6);
            let text = String::from_utf8_lossy(&pod.run(&[&tool], None).stdout).into_owned();
            let normal: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                    (true, Some(i)) => &l[..i],
                    _ => l,
                })
                .collect();
            out.insert(tool, normal.join("\n"));
        }
    }
    out
}

/// `counter packets 3 bytes 180` → `counter`: counters count traffic, not rules.
fn without_counter_values(line: &str) -> String {
    let mut words = line.split(' ').peekable();
    let mut out = Vec::new();
    while let Some(word) = words.next() {
        out.push(word);
        if word.trim_start() == "counter" && words.peek() == Some(&"packets") {
            // Skip "packets N bytes M".
            words.nth(3);
        }
    }
    out.join(" ")
}

fn dump(s: &Snapshot) -> String {
    s.iter()
        .map(|(tool, text)| format!("== {tool}\n{text}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Traffic helpers

fn any4(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
}

fn any6(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn app() -> Client {
    Client::user(APP, APP)
}

fn proxy() -> Client {
    Client::user(PROXY, PROXY)
}

/// The peer side connects as root; owner rules only look at the pod's own sockets.
fn peer() -> Client {
    Client::root()
}

/// Keeps listeners alive for the scenario.
#[derive(Default)]
struct Listeners(Vec<Listener>);

impl Listeners {
    fn tcp(&mut self, ns: &Netns, name: &str, at: SocketAddr) -> &mut Listeners {
        self.add(ns, ListenerSpec::tcp(name, at))
    }

    fn udp(&mut self, ns: &Netns, name: &str, at: SocketAddr) -> &mut Listeners {
        self.add(ns, ListenerSpec::udp(name, at))
    }

    fn add(&mut self, ns: &Netns, spec: ListenerSpec) -> &mut Listeners {
        let what = format!("{spec:?}");
        self.0.push(
            spec.start(ns)
                .unwrap_or_else(|e| panic!("starting listener {what}: {e}")),
        );
        self
    }
}

/// Asserts a TCP connection landed on `listener` with `original` as its original destination.
#[track_caller]
fn tcp_lands(
    what: &str,
    got: Result<Landing, ClientError>,
    listener: &str,
    original: SocketAddr,
) -> Landing {
    match got {
        Ok(l) if l.listener == listener && l.original_dst == Some(original) => l,
        Ok(l) => panic!("{what}: expected {listener} with original dst {original}, landed: {l}"),
        Err(e) => {
            panic!("{what}: expected {listener} with original dst {original}, got no landing: {e}")
        }
    }
}

/// Asserts a UDP datagram reached `listener` and its answer came back to the client's
/// connected socket (which only accepts it from the address it sent to, i.e. after un-NAT).
#[track_caller]
fn udp_lands(what: &str, got: Result<Landing, ClientError>, listener: &str) -> Landing {
    match got {
        Ok(l) if l.listener == listener => l,
        Ok(l) => panic!("{what}: expected {listener}, landed: {l}"),
        Err(e) => panic!("{what}: expected {listener} and its answer, got no answer: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Istio's default istio-init arguments: all outbound TCP to 15001, all inbound TCP except
/// 15090/15021/15020 and the tunnel port to 15006, the proxy never captured except when it
/// talks to its own pod IP, loopback and 127.0.0.6 passthrough left alone.
fn default_sidecar(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "app-8080", any4(8080));
    for port in [15020, 15021, 15090, TUNNEL_PORT] {
        ls.tcp(pod, &format!("app-{port}"), any4(port));
    }
    ls.tcp(peer_ns, "peer-80", any4(80))
        .udp(peer_ns, "peer-udp-80", any4(80));

    let m = Meshinit::new(lab, variant, false, ISTIO_INIT_ARGS);
    m.apply_and_check(|| {
        let out = lab.peer4(80);
        tcp_lands("app->peer:80", app().tcp(pod, out), "outbound", out);
        tcp_lands("proxy->peer:80", proxy().tcp(pod, out), "peer-80", out);
        tcp_lands(
            "uid 1000 gid 1337->peer:80",
            Client::user(APP, PROXY).tcp(pod, out),
            "peer-80",
            out,
        );
        tcp_lands(
            "uid 1337 gid 1000->peer:80",
            Client::user(PROXY, APP).tcp(pod, out),
            "peer-80",
            out,
        );
        // Outbound capture is TCP only.
        udp_lands("app->peer:80/udp", app().udp(pod, out), "peer-udp-80");

        let inb = lab.pod4(8080);
        tcp_lands("peer->pod:8080", peer().tcp(peer_ns, inb), "inbound", inb);
        for port in [15020, 15021, 15090, TUNNEL_PORT] {
            let dst = lab.pod4(port);
            tcp_lands(
                &format!("peer->pod:{port} (excluded)"),
                peer().tcp(peer_ns, dst),
                &format!("app-{port}"),
                dst,
            );
        }

        tcp_lands("app->own pod IP", app().tcp(pod, inb), "app-8080", inb);
        tcp_lands("proxy->own pod IP", proxy().tcp(pod, inb), "inbound", inb);
        let l = tcp_lands(
            "proxy passthrough from 127.0.0.6",
            proxy()
                .bind(addr(Ipv4Addr::new(127, 0, 0, 6), 0))
                .tcp(pod, inb),
            "app-8080",
            inb,
        );
        assert_eq!(
            l.remote.ip(),
            IpAddr::from([127, 0, 0, 6]),
            "passthrough source must be kept: {l}"
        );
        let lo = addr(Ipv4Addr::LOCALHOST, 8080);
        tcp_lands("app->127.0.0.1", app().tcp(pod, lo), "app-8080", lo);
        tcp_lands("proxy->127.0.0.1", proxy().tcp(pod, lo), "app-8080", lo);
    });
}

/// `--ipv6=true`: the default sidecar captures IPv6 exactly as IPv4, each family on its own
/// listeners with its own original destination.
fn dual_stack(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "outbound6", any6(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "inbound6", any6(INBOUND_PORT))
        .tcp(pod, "app-8080", any4(8080))
        .tcp(pod, "app6-8080", any6(8080))
        .tcp(pod, "app6-15021", any6(15021))
        .tcp(pod, "app6-15008", any6(TUNNEL_PORT))
        .tcp(peer_ns, "peer-80", any4(80))
        .tcp(peer_ns, "peer6-80", any6(80));

    let m = Meshinit::new(lab, variant, true, ISTIO_INIT_ARGS);
    m.apply_and_check(|| {
        let out6 = lab.peer6(80);
        tcp_lands("app->[peer]:80", app().tcp(pod, out6), "outbound6", out6);
        tcp_lands("proxy->[peer]:80", proxy().tcp(pod, out6), "peer6-80", out6);
        tcp_lands(
            "uid 1000 gid 1337->[peer]:80",
            Client::user(APP, PROXY).tcp(pod, out6),
            "peer6-80",
            out6,
        );
        let out4 = lab.peer4(80);
        tcp_lands("app->peer:80", app().tcp(pod, out4), "outbound", out4);

        let in6 = lab.pod6(8080);
        tcp_lands(
            "peer->[pod]:8080",
            peer().tcp(peer_ns, in6),
            "inbound6",
            in6,
        );
        for port in [15021, TUNNEL_PORT] {
            let dst = lab.pod6(port);
            tcp_lands(
                &format!("peer->[pod]:{port} (excluded)"),
                peer().tcp(peer_ns, dst),
                &format!("app6-{port}"),
                dst,
            );
        }
        let in4 = lab.pod4(8080);
        tcp_lands("peer->pod:8080", peer().tcp(peer_ns, in4), "inbound", in4);

        tcp_lands("app->own [pod]", app().tcp(pod, in6), "app6-8080", in6);
        tcp_lands("proxy->own [pod]", proxy().tcp(pod, in6), "inbound6", in6);
        let lo6 = addr(Ipv6Addr::LOCALHOST, 8080);
        tcp_lands("app->[::1]", app().tcp(pod, lo6), "app6-8080", lo6);
        tcp_lands("proxy->[::1]", proxy().tcp(pod, lo6), "app6-8080", lo6);
    });
}

/// Istio's inbound passthrough over IPv6 binds `::6`, which only exists once istio-init adds
/// `::6/128` to lo (reference §3.6); then it reaches the app uncaptured, like 127.0.0.6.
fn ipv6_passthrough_source(lab: &Lab, variant: Variant) {
    let pod = &lab.pod;
    let mut ls = Listeners::default();
    ls.tcp(pod, "inbound6", any6(INBOUND_PORT))
        .tcp(pod, "app6-8080", any6(8080));
    let m = Meshinit::new(lab, variant, true, ISTIO_INIT_ARGS);
    m.apply_and_check(|| {
        let in6 = lab.pod6(8080);
        let passthrough = addr(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6), 0);
        let l = tcp_lands(
            "proxy passthrough from [::6]",
            proxy().bind(passthrough).tcp(pod, in6),
            "app6-8080",
            in6,
        );
        assert_eq!(l.remote.ip(), passthrough.ip(), "source must be kept: {l}");
    });
}

/// `-i` captures only destinations inside the included CIDRs, minus the `-x` ones, per family.
fn include_and_exclude_cidrs(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    // The peer's own address is inside 10.0.0.0/8 and fd00::/8; give it one more address in
    // each family inside the excluded range and one outside the included range.
    let excluded4 = Ipv4Addr::new(10, 99, 0, 7);
    let outside4 = Ipv4Addr::new(192, 0, 2, 7);
    let excluded6: Ipv6Addr = "fd99::7".parse().unwrap();
    let outside6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    for a in [
        IpAddr::V4(excluded4),
        IpAddr::V4(outside4),
        IpAddr::V6(excluded6),
        IpAddr::V6(outside6),
    ] {
        lab.add_peer_addr(a).expect("extra peer address");
    }
    assert_eq!(lab.peer_v4.octets()[0], 10, "lab subnet must be in 10/8");
    assert_eq!(
        lab.peer_v6.segments()[0],
        0xfd00,
        "lab subnet must be in fd00::/8"
    );
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "outbound6", any6(OUTBOUND_PORT))
        .tcp(peer_ns, "peer-80", any4(80))
        .tcp(peer_ns, "peer6-80", any6(80));

    let m = Meshinit::new(
        lab,
        variant,
        true,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "10.0.0.0/8,fd00::/8",
            "-x",
            "10.99.0.0/16,fd99::/16",
            "-b",
            "",
        ],
    );
    m.apply_and_check(|| {
        for (what, dst, listener) in [
            ("included", lab.peer4(80), "outbound"),
            ("excluded", addr(excluded4, 80), "peer-80"),
            ("not included", addr(outside4, 80), "peer-80"),
            ("included v6", lab.peer6(80), "outbound6"),
            ("excluded v6", addr(excluded6, 80), "peer6-80"),
            ("not included v6", addr(outside6, 80), "peer6-80"),
        ] {
            tcp_lands(
                &format!("app->{dst} ({what})"),
                app().tcp(pod, dst),
                listener,
                dst,
            );
        }
        let dst = lab.peer4(80);
        tcp_lands("proxy->included", proxy().tcp(pod, dst), "peer-80", dst);
    });
}

/// `-q 9090` captures that port even with no service CIDR; `-b 8080,9090` captures exactly
/// the listed inbound ports.
fn outbound_port_include_and_inbound_port_list(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "app-8081", any4(8081))
        .tcp(peer_ns, "peer-80", any4(80))
        .tcp(peer_ns, "peer-9090", any4(9090));

    let m = Meshinit::new(
        lab,
        variant,
        false,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "",
            "-q",
            "9090",
            "-b",
            "8080,9090",
        ],
    );
    m.apply_and_check(|| {
        let port9090 = lab.peer4(9090);
        tcp_lands(
            "app->peer:9090 (-q)",
            app().tcp(pod, port9090),
            "outbound",
            port9090,
        );
        tcp_lands(
            "proxy->peer:9090",
            proxy().tcp(pod, port9090),
            "peer-9090",
            port9090,
        );
        let port80 = lab.peer4(80);
        tcp_lands(
            "app->peer:80 (no -i)",
            app().tcp(pod, port80),
            "peer-80",
            port80,
        );

        for port in [8080, 9090] {
            let dst = lab.pod4(port);
            tcp_lands(
                &format!("peer->pod:{port} (listed)"),
                peer().tcp(peer_ns, dst),
                "inbound",
                dst,
            );
        }
        let dst = lab.pod4(8081);
        tcp_lands(
            "peer->pod:8081 (not listed)",
            peer().tcp(peer_ns, dst),
            "app-8081",
            dst,
        );
    });
}

/// `-o 81,53` is never captured, TCP or UDP (UDP shown with DNS capture of every server, which
/// would otherwise take port 53); `-b '*' -d 8081` captures every inbound port but 8081.
fn outbound_port_exclude_and_inbound_port_exclusion(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "app-8081", any4(8081))
        .add(
            pod,
            ListenerSpec::udp("dns-proxy-udp", addr(Ipv4Addr::LOCALHOST, DNS_PROXY_PORT))
                .run_as(Creds::new(PROXY, PROXY)),
        )
        .add(
            pod,
            ListenerSpec::tcp("dns-proxy-tcp", addr(Ipv4Addr::LOCALHOST, DNS_PROXY_PORT))
                .run_as(Creds::new(PROXY, PROXY)),
        )
        .tcp(peer_ns, "peer-80", any4(80))
        .tcp(peer_ns, "peer-81", any4(81))
        .tcp(peer_ns, "peer-53", any4(53))
        .udp(peer_ns, "peer-udp-53", any4(53));

    let m = Meshinit::new(
        lab,
        variant,
        false,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-o",
            "81,53",
            "-b",
            "*",
            "-d",
            "8081",
            "--redirect-dns",
            "--capture-all-dns",
            "--dns-servers=",
        ],
    );
    m.apply_and_check(|| {
        let (p80, p81, p53) = (lab.peer4(80), lab.peer4(81), lab.peer4(53));
        tcp_lands("app->peer:80", app().tcp(pod, p80), "outbound", p80);
        tcp_lands("app->peer:81 (-o)", app().tcp(pod, p81), "peer-81", p81);
        tcp_lands("app->peer:53 (-o)", app().tcp(pod, p53), "peer-53", p53);
        udp_lands("app->peer:53/udp (-o)", app().udp(pod, p53), "peer-udp-53");

        let dst = lab.pod4(8081);
        tcp_lands(
            "peer->pod:8081 (-d)",
            peer().tcp(peer_ns, dst),
            "app-8081",
            dst,
        );
        let dst = lab.pod4(8080);
        tcp_lands("peer->pod:8080", peer().tcp(peer_ns, dst), "inbound", dst);
    });
}

/// `-c eth0`: nothing entering or leaving through the pod's veth is captured, while the rules
/// for traffic over lo (the proxy calling its own pod IP) still apply.
fn excluded_interface(lab: &Lab, variant: Variant) {
    assert_eq!(support::netlab::IFACE, "eth0", "the pod's veth name");
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "app-8080", any4(8080))
        .tcp(peer_ns, "peer-80", any4(80));
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.extend(["-c", "eth0"]);

    let m = Meshinit::new(lab, variant, false, &args);
    m.apply_and_check(|| {
        let out = lab.peer4(80);
        tcp_lands("app->peer:80 via eth0", app().tcp(pod, out), "peer-80", out);
        let inb = lab.pod4(8080);
        tcp_lands(
            "peer->pod:8080 via eth0",
            peer().tcp(peer_ns, inb),
            "app-8080",
            inb,
        );
        tcp_lands(
            "proxy->own pod IP via lo",
            proxy().tcp(pod, inb),
            "inbound",
            inb,
        );
        tcp_lands(
            "app->own pod IP via lo",
            app().tcp(pod, inb),
            "app-8080",
            inb,
        );
    });
}

/// `-k eth0` (a KubeVirt VM's interface) with `-i '*'`: what arrives on it is the VM's own
/// outbound traffic, so it goes to the outbound listener, original destination kept — not to
/// the inbound one.
fn virt_interface_traffic_is_outbound(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "app-8080", any4(8080))
        .tcp(peer_ns, "peer-80", any4(80));
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.extend(["-k", "eth0"]);

    let m = Meshinit::new(lab, variant, false, &args);
    m.apply_and_check(|| {
        let dst = lab.pod4(8080);
        tcp_lands(
            "VM (peer) -> pod:8080 via eth0",
            peer().tcp(peer_ns, dst),
            "outbound",
            dst,
        );
        let out = lab.peer4(80);
        tcp_lands("app->peer:80", app().tcp(pod, out), "outbound", out);
    });
}

/// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=2000`: sockets of primary group 2000 are not captured,
/// others are.
fn owner_groups_exclude(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(peer_ns, "peer-80", any4(80));

    let m = Meshinit::new(lab, variant, false, ISTIO_INIT_ARGS)
        .env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "2000");
    m.apply_and_check(|| {
        let dst = lab.peer4(80);
        tcp_lands(
            "uid 1000 gid 2000 (excluded group)",
            Client::user(APP, 2000).tcp(pod, dst),
            "peer-80",
            dst,
        );
        tcp_lands(
            "uid 1000 gid 1000",
            Client::user(APP, APP).tcp(pod, dst),
            "outbound",
            dst,
        );
    });
}

/// `ISTIO_OUTBOUND_OWNER_GROUPS=3000`: only sockets of group 3000 are captured, in both
/// families.
fn owner_groups_include(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "outbound6", any6(OUTBOUND_PORT))
        .tcp(peer_ns, "peer-80", any4(80))
        .tcp(peer_ns, "peer6-80", any6(80));

    let m = Meshinit::new(lab, variant, true, ISTIO_INIT_ARGS)
        .env("ISTIO_OUTBOUND_OWNER_GROUPS", "3000");
    m.apply_and_check(|| {
        for (dst, captured, direct) in [
            (lab.peer4(80), "outbound", "peer-80"),
            (lab.peer6(80), "outbound6", "peer6-80"),
        ] {
            tcp_lands(
                &format!("gid 3000->{dst} (included group)"),
                Client::user(APP, 3000).tcp(pod, dst),
                captured,
                dst,
            );
            for gid in [APP, 2000] {
                tcp_lands(
                    &format!("gid {gid}->{dst} (not included)"),
                    Client::user(APP, gid).tcp(pod, dst),
                    direct,
                    dst,
                );
            }
        }
    });
}

/// Listeners for DNS scenarios: the DNS proxy on 127.0.0.1:15053 (and [::1]:15053) running as
/// the proxy user, so its UDP answers get the conntrack zone that un-NATs them; a real resolver
/// on the peer's lab address ("resolver-*"), and one on `other`, an extra peer address
/// ("other-resolver-*"). The resolvers bind their exact address: a UDP socket bound to the
/// wildcard answers from the peer's primary address, which a connected client would drop.
fn dns_listeners(lab: &Lab, ipv6: bool, other: Ipv4Addr) -> Listeners {
    let as_proxy = Creds::new(PROXY, PROXY);
    let mut ls = Listeners::default();
    let mut proxies = vec![("", IpAddr::V4(Ipv4Addr::LOCALHOST))];
    let mut resolvers = vec![
        ("resolver", lab.peer4(53)),
        ("other-resolver", addr(other, 53)),
    ];
    if ipv6 {
        proxies.push(("6", IpAddr::V6(Ipv6Addr::LOCALHOST)));
        resolvers.push(("resolver6", lab.peer6(53)));
    }
    for (suffix, ip) in proxies {
        let at = addr(ip, DNS_PROXY_PORT);
        ls.add(
            &lab.pod,
            ListenerSpec::udp(&format!("dns-proxy{suffix}-udp"), at).run_as(as_proxy.clone()),
        )
        .add(
            &lab.pod,
            ListenerSpec::tcp(&format!("dns-proxy{suffix}-tcp"), at).run_as(as_proxy.clone()),
        );
    }
    for (name, at) in resolvers {
        ls.udp(&lab.peer, &format!("{name}-udp"), at)
            .tcp(&lab.peer, &format!("{name}-tcp"), at);
    }
    ls.tcp(&lab.pod, "outbound", any4(OUTBOUND_PORT));
    ls
}

/// `--redirect-dns --dns-servers=<peer>,<peer6>`: the app's queries to the cluster resolver,
/// UDP and TCP, go to the DNS proxy and the UDP answers come back; the proxy's own queries
/// reach the resolver; a server that is not listed is not DNS-captured.
fn dns_listed_servers(lab: &Lab, variant: Variant) {
    let pod = &lab.pod;
    let unlisted = Ipv4Addr::new(192, 0, 2, 53);
    lab.add_peer_addr(unlisted.into())
        .expect("extra peer address");
    let _ls = dns_listeners(lab, true, unlisted);
    let servers = format!("--dns-servers={},{}", lab.peer_v4, lab.peer_v6);
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.extend(["--redirect-dns", &servers]);

    let m = Meshinit::new(lab, variant, true, &args);
    m.apply_and_check(|| {
        for (resolver, suffix, proxy_ip) in [
            (lab.peer4(53), "", IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (lab.peer6(53), "6", IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            let l = udp_lands(
                &format!("app->{resolver}/udp"),
                app().udp(pod, resolver),
                &format!("dns-proxy{suffix}-udp"),
            );
            assert_eq!(l.local, addr(proxy_ip, DNS_PROXY_PORT), "{l}");
            tcp_lands(
                &format!("app->{resolver}/tcp"),
                app().tcp(pod, resolver),
                &format!("dns-proxy{suffix}-tcp"),
                resolver,
            );
            udp_lands(
                &format!("proxy->{resolver}/udp"),
                proxy().udp(pod, resolver),
                &format!("resolver{suffix}-udp"),
            );
            tcp_lands(
                &format!("proxy->{resolver}/tcp"),
                proxy().tcp(pod, resolver),
                &format!("resolver{suffix}-tcp"),
                resolver,
            );
        }
        // Not a listed server: UDP goes straight out; TCP is ordinary outbound traffic.
        let other = addr(unlisted, 53);
        udp_lands(
            "app->unlisted:53/udp",
            app().udp(pod, other),
            "other-resolver-udp",
        );
        tcp_lands(
            "app->unlisted:53/tcp",
            app().tcp(pod, other),
            "outbound",
            other,
        );
    });
}

/// `--redirect-dns --capture-all-dns`: queries to any server on port 53 are captured; the
/// proxy's own still reach the server.
fn dns_capture_all(lab: &Lab, variant: Variant) {
    let pod = &lab.pod;
    let other_server = Ipv4Addr::new(192, 0, 2, 53);
    lab.add_peer_addr(other_server.into())
        .expect("extra peer address");
    let _ls = dns_listeners(lab, false, other_server);
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.extend(["--redirect-dns", "--capture-all-dns", "--dns-servers="]);

    let m = Meshinit::new(lab, variant, false, &args);
    m.apply_and_check(|| {
        for (server, resolver) in [
            (lab.peer4(53), "resolver"),
            (addr(other_server, 53), "other-resolver"),
        ] {
            let l = udp_lands(
                &format!("app->{server}/udp"),
                app().udp(pod, server),
                "dns-proxy-udp",
            );
            assert_eq!(l.local, addr(Ipv4Addr::LOCALHOST, DNS_PROXY_PORT), "{l}");
            tcp_lands(
                &format!("app->{server}/tcp"),
                app().tcp(pod, server),
                "dns-proxy-tcp",
                server,
            );
            udp_lands(
                &format!("proxy->{server}/udp"),
                proxy().udp(pod, server),
                &format!("{resolver}-udp"),
            );
            tcp_lands(
                &format!("proxy->{server}/tcp"),
                proxy().tcp(pod, server),
                &format!("{resolver}-tcp"),
                server,
            );
        }
    });
}

/// `-m TPROXY -b '*' -i '*'` over both families: inbound connections reach the transparent
/// 15006 listener with the original destination as its local address and the peer's source
/// intact; outbound is still REDIRECTed to 15001.
fn tproxy_inbound(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let mut ls = Listeners::default();
    ls.add(
        pod,
        ListenerSpec::tcp("inbound", any4(INBOUND_PORT)).transparent(),
    )
    .add(
        pod,
        ListenerSpec::tcp("inbound6", any6(INBOUND_PORT)).transparent(),
    )
    .tcp(pod, "outbound", any4(OUTBOUND_PORT))
    .tcp(pod, "app-8080", any4(8080))
    .tcp(pod, "app6-8080", any6(8080))
    .tcp(peer_ns, "peer-80", any4(80));

    let m = Meshinit::new(
        lab,
        variant,
        true,
        &[
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*",
        ],
    );
    m.apply_and_check(|| {
        for (dst, src, listener, app_listener) in [
            (
                lab.pod4(8080),
                IpAddr::V4(lab.peer_v4),
                "inbound",
                "app-8080",
            ),
            (
                lab.pod6(8080),
                IpAddr::V6(lab.peer_v6),
                "inbound6",
                "app6-8080",
            ),
        ] {
            let l = tcp_lands(
                &format!("peer->{dst} (TPROXY)"),
                peer().tcp(peer_ns, dst),
                listener,
                dst,
            );
            assert_eq!(
                (l.local, l.remote.ip()),
                (dst, src),
                "TPROXY must keep destination and source: {l}"
            );
            tcp_lands(
                &format!("proxy->own {dst}"),
                proxy().tcp(pod, dst),
                listener,
                dst,
            );
            tcp_lands(
                &format!("app->own {dst}"),
                app().tcp(pod, dst),
                app_listener,
                dst,
            );
        }
        let out = lab.peer4(80);
        tcp_lands("app->peer:80", app().tcp(pod, out), "outbound", out);
    });
}

/// What the TPROXY policy routes (`ip rule fwmark 1337 lookup 133` and a local default route
/// in table 133, reference §3.4) are for: a TPROXY'd packet whose destination is not one of the
/// pod's addresses must still be delivered to the transparent listener, not forwarded. (To the
/// pod's own IP, as in `tproxy_inbound`, the local table delivers it even without them.) The
/// peer routes one foreign address per family through the pod; only the routes meshinit adds
/// can make those connections land.
fn tproxy_foreign_destination(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let foreign4 = Ipv4Addr::new(192, 0, 2, 99);
    let foreign6: Ipv6Addr = "2001:db8::99".parse().unwrap();
    for (host, via) in [
        (format!("{foreign4}/32"), lab.pod_v4.to_string()),
        (format!("{foreign6}/128"), lab.pod_v6.to_string()),
    ] {
        peer_ns.run(&["ip", "route", "add", &host, "via", &via], None);
    }
    let mut ls = Listeners::default();
    ls.add(
        pod,
        ListenerSpec::tcp("inbound", any4(INBOUND_PORT)).transparent(),
    )
    .add(
        pod,
        ListenerSpec::tcp("inbound6", any6(INBOUND_PORT)).transparent(),
    );

    let m = Meshinit::new(
        lab,
        variant,
        true,
        &[
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*",
        ],
    );
    m.apply_and_check(|| {
        for (dst, listener) in [
            (addr(foreign4, 8080), "inbound"),
            (addr(foreign6, 8080), "inbound6"),
        ] {
            let l = tcp_lands(
                &format!("peer->{dst} routed via the pod (TPROXY)"),
                peer().tcp(peer_ns, dst),
                listener,
                dst,
            );
            assert_eq!(l.local, dst, "TPROXY must keep the destination: {l}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// meshinit's own options (not Istio's): --exclude-inbound-sources and
// --exclude-outbound-ports-for-uids

/// The backend a scenario's rules are moved to by `--reconcile` (each variant to another one).
fn next_backend(variant: Variant) -> Variant {
    match variant {
        Variant::Legacy => Variant::Native,
        Variant::Native => Variant::Nft,
        Variant::Nft => Variant::Legacy,
    }
}

/// One rule of meshinit's own that the lifecycle deletes by hand: in iptables' words (table,
/// then the rule after `-D`) and as a fragment of its nft listing (chain, text).
struct OwnRule<'a> {
    table: &'a str,
    iptables: Vec<String>,
    v6: bool,
    nft_chain: &'a str,
    nft_text: String,
    /// What `--check`'s report must contain: for iptables, then for native nftables.
    named: [&'a str; 2],
}

/// Deletes `rule` from the live ruleset of `variant`, as an operator would.
fn delete_by_hand(lab: &Lab, variant: Variant, rule: &OwnRule<'_>) {
    let out = if variant == Variant::Native {
        let table = format!("istio-proxy-{}", rule.table);
        let listing = support::nft::chain_with_handles(&lab.pod, &table, rule.nft_chain);
        let line = listing
            .lines()
            .find(|l| l.contains(&rule.nft_text))
            .unwrap_or_else(|| panic!("no rule {:?} in\n{listing}", rule.nft_text));
        let handle = line.rsplit("# handle ").next().unwrap().trim().to_string();
        lab.pod.run(
            &[
                "nft",
                "delete",
                "rule",
                "inet",
                &table,
                rule.nft_chain,
                "handle",
                &handle,
            ],
            None,
        )
    } else {
        let tool = format!(
            "{}-{}",
            if rule.v6 { "ip6tables" } else { "iptables" },
            variant.name()
        );
        let mut argv = vec![tool.as_str(), "-t", rule.table, "-D"];
        argv.extend(rule.iptables.iter().map(String::as_str));
        lab.pod.run(&argv, None)
    };
    assert!(
        out.status.success(),
        "deleting {:?} by hand: {}",
        rule.iptables,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What every rule of ours goes through, for the new options' rules: `--check` passes right
/// after apply (the native backend's encode/decode/compare round trip included); a rule of
/// theirs deleted by hand is found by `--check` (exit 3, naming it) and put back by
/// `--reconcile`; `--reconcile` with another backend moves everything there (the traffic is
/// checked again there); `--cleanup-only` leaves nothing of ours.
fn own_rules_lifecycle(
    lab: &Lab,
    variant: Variant,
    ipv6: bool,
    args: &[&str],
    deleted: &OwnRule<'_>,
    traffic: impl Fn(),
) {
    // Once rules moved, a backend must see the other's leftovers (legacy keeps empty
    // tables), so runs after the first ones get the test's PATH even for native.
    let with = |v: Variant, extra: &[&str]| {
        let mut all = args.to_vec();
        all.extend(extra);
        let mut m = Meshinit::new(lab, v, ipv6, &all);
        m.full_path = v != variant;
        m
    };
    let (code, log) = with(variant, &["--check"]).run();
    assert_eq!(code, Some(0), "{variant}: --check right after apply\n{log}");

    delete_by_hand(lab, variant, deleted);
    let tampered = snapshot(&lab.pod);
    let (code, log) = with(variant, &["--check"]).run();
    assert_eq!(
        code,
        Some(3),
        "{variant}: --check after deleting {:?}\n{log}",
        deleted.iptables
    );
    let named = deleted.named[usize::from(variant == Variant::Native)];
    assert!(
        log.contains(named),
        "{variant}: --check must name the deleted rule ({named}):\n{log}"
    );
    assert_eq!(snapshot(&lab.pod), tampered, "--check changed something");
    let (code, log) = with(variant, &["--reconcile"]).run();
    assert_eq!(code, Some(0), "{variant}: --reconcile\n{log}");
    let (code, log) = with(variant, &["--check"]).run();
    assert_eq!(code, Some(0), "{variant}: --check after --reconcile\n{log}");

    let other = next_backend(variant);
    let (code, log) = with(other, &["--reconcile"]).run();
    assert_eq!(code, Some(0), "{variant} -> {other}: --reconcile\n{log}");
    let after = snapshot(&lab.pod);
    let holds_ours = |v: Variant| match v {
        Variant::Native => after["nft"].contains("table inet istio-proxy-"),
        _ => [false, true]
            .iter()
            .any(|v6| after[&v.save_tool(*v6)].contains(":ISTIO_")),
    };
    assert!(
        holds_ours(other) && !holds_ours(variant),
        "{variant} -> {other}: the rules must have moved\n{}",
        dump(&after)
    );
    let (code, log) = with(other, &["--check"]).run();
    assert_eq!(code, Some(0), "{other}: --check after the move\n{log}");
    traffic();

    let (code, log) = with(other, &["--cleanup-only"]).run();
    assert_eq!(code, Some(0), "{other}: --cleanup-only\n{log}");
    let clean = snapshot(&lab.pod);
    let left: Vec<&String> = clean
        .values()
        .filter(|t| t.contains("ISTIO_") || t.contains("istio-proxy-"))
        .collect();
    assert!(
        left.is_empty(),
        "{other}: cleanup left rules of ours\n{}",
        dump(&clean)
    );
}

/// A peer connecting to the app's port 8080 from `inside4`/`inside6` (in an excluded source
/// network) reaches the app directly, from its lab address (outside) it is captured: redirected
/// to the inbound listener, or under `tproxy` TPROXYed to it with the destination kept. The
/// source address is kept either way.
fn inside_and_outside_sources(lab: &Lab, inside4: Ipv4Addr, inside6: Ipv6Addr, tproxy: bool) {
    let peer_ns = &lab.peer;
    for (dst, inside, outside, captured, app_listener) in [
        (
            lab.pod4(8080),
            IpAddr::V4(inside4),
            IpAddr::V4(lab.peer_v4),
            "inbound",
            "app-8080",
        ),
        (
            lab.pod6(8080),
            IpAddr::V6(inside6),
            IpAddr::V6(lab.peer_v6),
            "inbound6",
            "app6-8080",
        ),
    ] {
        let l = tcp_lands(
            &format!("peer from {inside} (excluded) -> {dst}"),
            peer().bind(addr(inside, 0)).tcp(peer_ns, dst),
            app_listener,
            dst,
        );
        assert_eq!(l.remote.ip(), inside, "the excluded source: {l}");
        let how = if tproxy { " (TPROXY)" } else { "" };
        let l = tcp_lands(
            &format!("peer from {outside} -> {dst}{how}"),
            peer().bind(addr(outside, 0)).tcp(peer_ns, dst),
            captured,
            dst,
        );
        assert_eq!(l.remote.ip(), outside, "{l}");
        if tproxy {
            assert_eq!(l.local, dst, "TPROXY keeps the destination: {l}");
        }
    }
}

/// `--exclude-inbound-sources` with 20 networks per family (so the native backend looks them
/// up in one set per family, under `--nft-sets=auto`): a peer connecting from an address
/// inside one of them reaches the app directly, from its lab address (outside) it is
/// captured, in both families; outbound is untouched.
fn inbound_source_exclusion(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let inside4 = Ipv4Addr::new(198, 51, 7, 7);
    let inside6 = Ipv6Addr::new(0xfd00, 0x5151, 7, 0, 0, 0, 0, 7);
    for a in [IpAddr::V4(inside4), IpAddr::V6(inside6)] {
        lab.add_peer_addr(a).expect("extra peer address");
    }
    let mut nets: Vec<String> = (0..20).map(|i| format!("198.51.{i}.0/24")).collect();
    nets.extend((0..20).map(|i| format!("fd00:5151:{i:x}::/64")));
    let sources = format!("--exclude-inbound-sources={}", nets.join(","));
    let mut ls = Listeners::default();
    ls.tcp(pod, "outbound", any4(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "inbound6", any6(INBOUND_PORT))
        .tcp(pod, "app-8080", any4(8080))
        .tcp(pod, "app6-8080", any6(8080))
        .tcp(peer_ns, "peer-80", any4(80));
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.push(&sources);

    let traffic = || {
        inside_and_outside_sources(lab, inside4, inside6, false);
        let out = lab.peer4(80);
        tcp_lands("app->peer:80", app().tcp(pod, out), "outbound", out);
    };
    let m = Meshinit::new(lab, variant, true, &args);
    m.apply_and_check(traffic);
    if variant == Variant::Native {
        let listing = support::nft::listing(pod);
        for family in ["ip saddr {", "ip6 saddr {"] {
            assert!(
                listing.contains(family),
                "20 excluded sources must be one set lookup ({family}):\n{listing}"
            );
        }
    }
    let deleted = OwnRule {
        table: "nat",
        iptables: strings(&["ISTIO_INBOUND", "-s", "198.51.7.0/24", "-j", "RETURN"]),
        v6: false,
        nft_chain: "istio-inbound",
        // Under sets the one rule holds every network: deleting it removes them all.
        nft_text: "ip saddr {".to_string(),
        named: [
            "missing: -A ISTIO_INBOUND -s 198.51.7.0/24 -j RETURN",
            "missing rule 2 `ip saddr { 198.51.0.0-198.51.19.255 } counter return`",
        ],
    };
    own_rules_lifecycle(lab, variant, true, &args, &deleted, traffic);
}

/// `--exclude-outbound-ports-for-uids 'tcp:9085-9090:1500,1600;udp:53-60:1500;tcp:8080:1337'` with DNS
/// capture of the peer's resolver: uid 1500's connections to port 9090 reach the peer
/// directly, in both families, as do uid 1600's; the app's (uid 1000) to 9090 and uid 1500's
/// to port 80 are captured; uid 1500's UDP DNS queries bypass DNS capture and their answers
/// come back through a pod firewall that drops UDP from port 53 that is not part of a known
/// connection (so the query must be in the answer's conntrack zone), while the app's are
/// still captured, as are uid 1500's TCP DNS connections (only `udp:53` is listed); the proxy
/// (1337) to its own pod's 8080 goes to the app, not through inbound (the exclusion comes
/// before the `-o lo` owner rules), while to another port of its pod it still goes inbound.
fn outbound_port_exclusion_per_uid(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let unlisted = Ipv4Addr::new(192, 0, 2, 53);
    lab.add_peer_addr(unlisted.into())
        .expect("extra peer address");
    let mut ls = dns_listeners(lab, true, unlisted);
    ls.tcp(pod, "outbound6", any6(OUTBOUND_PORT))
        .tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "app-8080", any4(8080))
        .tcp(pod, "app-8081", any4(8081))
        .tcp(peer_ns, "peer-80", any4(80))
        .tcp(peer_ns, "peer-9090", any4(9090))
        .tcp(peer_ns, "peer6-9090", any6(9090));
    // A pod firewall of the user's: UDP answers from port 53 must belong to a connection.
    lab.pod.nft_apply(
        "table inet userfw { chain input { type filter hook input priority 0 ; \
         udp sport 53 ct state new counter drop ; }\n}\n",
    );
    let servers = format!("--dns-servers={},{}", lab.peer_v4, lab.peer_v6);
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.extend([
        "--redirect-dns",
        &servers,
        "--exclude-outbound-ports-for-uids",
        // Ranges (the port-list parser's `LO-HI`) at their upper and lower bounds.
        "tcp:9085-9090:1500,1600;udp:53-60:1500;tcp:8080:1337",
    ]);
    let listed = || Client::user(1500, 1500);

    let traffic = || {
        for (dst, direct, captured) in [
            (lab.peer4(9090), "peer-9090", "outbound"),
            (lab.peer6(9090), "peer6-9090", "outbound6"),
        ] {
            tcp_lands(
                &format!("uid 1500->{dst}"),
                listed().tcp(pod, dst),
                direct,
                dst,
            );
            tcp_lands(
                &format!("uid 1600->{dst}"),
                Client::user(1600, 1600).tcp(pod, dst),
                direct,
                dst,
            );
            tcp_lands(&format!("app->{dst}"), app().tcp(pod, dst), captured, dst);
        }
        let p80 = lab.peer4(80);
        tcp_lands("uid 1500->peer:80", listed().tcp(pod, p80), "outbound", p80);
        for (resolver, suffix) in [(lab.peer4(53), ""), (lab.peer6(53), "6")] {
            udp_lands(
                &format!("uid 1500->{resolver}/udp (excluded from DNS capture)"),
                listed().udp(pod, resolver),
                &format!("resolver{suffix}-udp"),
            );
            udp_lands(
                &format!("app->{resolver}/udp"),
                app().udp(pod, resolver),
                &format!("dns-proxy{suffix}-udp"),
            );
            tcp_lands(
                &format!("uid 1500->{resolver}/tcp (only udp:53 listed)"),
                listed().tcp(pod, resolver),
                &format!("dns-proxy{suffix}-tcp"),
                resolver,
            );
        }
        let own = lab.pod4(8080);
        tcp_lands(
            "proxy->own pod:8080 (listed)",
            proxy().tcp(pod, own),
            "app-8080",
            own,
        );
        let own = lab.pod4(8081);
        tcp_lands("proxy->own pod:8081", proxy().tcp(pod, own), "inbound", own);
    };
    let m = Meshinit::new(lab, variant, true, &args);
    m.apply_and_check(traffic);
    let deleted = OwnRule {
        table: "nat",
        iptables: strings(&[
            "ISTIO_OUTPUT", "-p", "tcp", "--dport", "9085:9090", "-m", "owner", "--uid-owner", "1500",
            "-j", "RETURN",
        ]),
        v6: false,
        nft_chain: "istio-output",
        nft_text: "tcp dport 9085-9090 meta skuid 1500".to_string(),
        named: [
            "missing: -A ISTIO_OUTPUT -p tcp -m tcp --dport 9085:9090 -m owner --uid-owner 1500 -j RETURN",
            "missing rule 1 `tcp dport 9085-9090 skuid 1500 counter return`",
        ],
    };
    own_rules_lifecycle(lab, variant, true, &args, &deleted, traffic);
}

/// `--exclude-inbound-sources` with an IPv6 network and IPv6 off. iptables then installs
/// nothing for IPv6, so IPv6 is not captured at all; the native backend's inet table captures
/// IPv6 all the same (its capture rules match no address), so the IPv6 exclusion must be
/// there too: a peer inside the listed network reaches the app, one outside is captured.
fn inbound_source_exclusion_ipv6_off(lab: &Lab, variant: Variant) {
    let (pod, peer_ns) = (&lab.pod, &lab.peer);
    let inside6 = Ipv6Addr::new(0xfd00, 0x5151, 7, 0, 0, 0, 0, 7);
    lab.add_peer_addr(IpAddr::V6(inside6))
        .expect("extra peer address");
    let mut ls = Listeners::default();
    ls.tcp(pod, "inbound", any4(INBOUND_PORT))
        .tcp(pod, "inbound6", any6(INBOUND_PORT))
        .tcp(pod, "app6-8080", any6(8080));
    let sources = "--exclude-inbound-sources=fd00:5151:7::/64,198.51.7.0/24";
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.push(sources);
    let dst = lab.pod6(8080);
    let outside_lands = if variant == Variant::Native {
        "inbound6"
    } else {
        "app6-8080"
    };
    let traffic = || {
        let l = tcp_lands(
            &format!("peer from {inside6} (excluded, IPv6 off) -> {dst}"),
            peer().bind(addr(IpAddr::V6(inside6), 0)).tcp(peer_ns, dst),
            "app6-8080",
            dst,
        );
        assert_eq!(l.remote.ip(), IpAddr::V6(inside6), "{l}");
        tcp_lands(
            &format!(
                "peer from {} (not excluded, IPv6 off) -> {dst}",
                lab.peer_v6
            ),
            peer()
                .bind(addr(IpAddr::V6(lab.peer_v6), 0))
                .tcp(peer_ns, dst),
            outside_lands,
            dst,
        );
    };
    Meshinit::new(lab, variant, false, &args).apply_and_check(traffic);
}

/// `--exclude-inbound-sources` under TPROXY (mangle's inbound dispatch): a peer connecting
/// from an excluded network reaches the app itself (not TPROXYed), in both families; from
/// outside it is TPROXYed to the transparent listener, source and destination kept.
fn tproxy_inbound_source_exclusion(lab: &Lab, variant: Variant) {
    let pod = &lab.pod;
    let inside4 = Ipv4Addr::new(198, 51, 100, 7);
    let inside6 = Ipv6Addr::new(0xfd00, 0x5151, 0, 0, 0, 0, 0, 7);
    for a in [IpAddr::V4(inside4), IpAddr::V6(inside6)] {
        lab.add_peer_addr(a).expect("extra peer address");
    }
    let mut ls = Listeners::default();
    ls.add(
        pod,
        ListenerSpec::tcp("inbound", any4(INBOUND_PORT)).transparent(),
    )
    .add(
        pod,
        ListenerSpec::tcp("inbound6", any6(INBOUND_PORT)).transparent(),
    )
    .tcp(pod, "outbound", any4(OUTBOUND_PORT))
    .tcp(pod, "app-8080", any4(8080))
    .tcp(pod, "app6-8080", any6(8080));

    let m = Meshinit::new(
        lab,
        variant,
        true,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "TPROXY",
            "-i",
            "*",
            "-b",
            "*",
            "--exclude-inbound-sources=198.51.100.0/24,fd00:5151::/64,203.0.113.0/24",
        ],
    );
    m.apply_and_check(|| {
        inside_and_outside_sources(lab, inside4, inside6, true);
    });
}
