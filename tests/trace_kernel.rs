//! The kernel is the judge of `meshinit trace`: random configurations are installed in a fresh
//! lab pod namespace with each real backend (legacy, nft, native nftables), random connections
//! are really made (the lab's listeners report which port took each one and its original
//! destination), and every real landing must be what `meshinit trace --json` predicted for
//! that connection.
//!
//! `TRACE_CONFIGS` sets the number of configurations per backend (default 4) and
//! `TRACE_CONNS` the connections per configuration (default 30); `TRACE_SEED` replays a run.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use support::apply::{in_pod, meshinit, path_env};
use support::netlab::{Client, ClientError, Creds, Lab, Landing, Listener, ListenerSpec};
use support::require_root;

/// The proxy's uid and gid in every configuration (`-u`).
const PROXY_UID: u32 = 1337;
/// Where istio-agent's DNS proxy listens.
const DNS_PROXY_PORT: u16 = 15053;
/// Ports that have a listener on every address of the pod and the peer, TCP and UDP.
const PORTS: &[u16] = &[15001, 15006, 15053, 15090, 53, 80, 8080, 8125, 9090];
/// Extra peer addresses (routed from the pod), inside and outside the CIDRs configs use.
const EXTRA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 1, 1)];
const EXTRA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 1),
];

/// splitmix64: a small deterministic generator, so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A random configuration over the lab's addresses, as istio-iptables arguments and env.
fn random_config(rng: &mut Rng, ipv6: bool) -> (Vec<String>, Vec<(String, String)>) {
    let v6 = |v4: &str, v6: &str| {
        if ipv6 && !v6.is_empty() {
            format!("{v4},{v6}")
        } else {
            v4.to_string()
        }
    };
    let mut args: Vec<String> = ["-p", "15001", "-z", "15006", "-u", "1337"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_string());
        args.push(value);
    };
    push("-m", rng.pick(&["REDIRECT", "TPROXY"]).to_string());
    let include = match rng.next() % 4 {
        0 => "".to_string(),
        1 => v6("198.18.0.0/24", "fd00:198:18::/64"),
        2 => v6("198.18.0.0/16", "fd00:198:18::/48"),
        _ => "*".to_string(),
    };
    push("-i", include);
    let exclude = match rng.next() % 3 {
        0 => "".to_string(),
        1 => v6("198.18.1.0/24", "fd00:198:18:1::/64"),
        _ => v6("198.18.0.0/16,10.0.0.0/8", "fd00::/8"),
    };
    push("-x", exclude);
    // Port ranges put the probed ports (80, 8080, 8125, 9090) at a range's bounds and just
    // outside one: `8081-9089` holds 8125 but neither 8080 nor 9090.
    push(
        "-b",
        rng.pick(&[
            "*",
            "*",
            "8080",
            "8080,9090",
            "",
            "8080:8125",
            "80-8080,9090",
        ])
        .to_string(),
    );
    push(
        "-d",
        rng.pick(&[
            "15090,15021,15020",
            "15090,9090",
            "9000:9090,15090",
            "8081-9089",
        ])
        .to_string(),
    );
    if rng.chance(30) {
        push(
            "-q",
            rng.pick(&["9090", "9090-9100", "8081:9090"]).to_string(),
        );
    }
    if rng.chance(30) {
        push(
            "-o",
            rng.pick(&["9090", "8125", "80", "8125:9090", "81-8080"])
                .to_string(),
        );
    }
    if rng.chance(10) {
        push("-c", "eth0".to_string());
    }
    let mut env = Vec::new();
    match rng.next() % 5 {
        0 => env.push((
            "ISTIO_OUTBOUND_OWNER_GROUPS".to_string(),
            "1000".to_string(),
        )),
        1 => env.push((
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE".to_string(),
            "2000".to_string(),
        )),
        _ => {}
    }
    if rng.chance(40) {
        args.push("--redirect-dns".to_string());
        if rng.chance(50) {
            args.push("--capture-all-dns".to_string());
        }
    }
    if rng.chance(20) {
        args.push("--drop-invalid".to_string());
    }
    // meshinit's own options.
    if rng.chance(30) {
        let sources = match rng.next() % 2 {
            0 => v6("198.18.0.0/24", "fd00:198:18::/64"),
            _ => v6("198.18.1.0/24,10.0.0.0/8", "fd00::/8"),
        };
        args.push(format!("--exclude-inbound-sources={sources}"));
    }
    if rng.chance(30) {
        let entries = rng.pick(&[
            "tcp:9090,80:1000",
            "tcp,udp:53,8080:1000,2000",
            "*:8125:2000;tcp:80:1337",
        ]);
        args.push(format!("--exclude-outbound-ports-for-uids={entries}"));
    }
    args.push(format!("--ipv6={ipv6}"));
    (args, env)
}

/// One connection to make, and its spec for `meshinit trace --conn`.
struct Probe {
    spec: String,
    outbound: bool,
    udp: bool,
    creds: Creds,
    src: IpAddr,
    dst: SocketAddr,
}

/// Runs `meshinit trace` inside the pod's network namespace, as `kubectl exec` would, so that
/// a probe without `oif=` is routed by the pod's own addresses.
fn trace_in_pod(lab: &Lab, args: &[String], env: &[(String, String)]) -> support::Output {
    in_pod(&lab.pod)
        .args(args)
        .envs(env.iter().cloned())
        .real_path()
        .run()
}

fn socket(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn spec_addr(addr: SocketAddr) -> String {
    addr.to_string()
}

fn random_probe(rng: &mut Rng, lab: &Lab) -> Probe {
    let v6 = rng.chance(30);
    let udp = rng.chance(25);
    let port = *rng.pick(&[80, 8080, 9090, 8125, 53, 15090, 53, 80]);
    let (pod, peer, extra): (IpAddr, IpAddr, Vec<IpAddr>) = if v6 {
        (
            lab.pod_v6.into(),
            lab.peer_v6.into(),
            EXTRA_V6.iter().map(|a| (*a).into()).collect(),
        )
    } else {
        (
            lab.pod_v4.into(),
            lab.peer_v4.into(),
            EXTRA_V4.iter().map(|a| (*a).into()).collect(),
        )
    };
    let proto = if udp { "udp" } else { "tcp" };
    if rng.chance(70) {
        let loopback: IpAddr = if v6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        let choices = [peer, extra[0], extra[1], loopback, pod];
        let dst_ip = *rng.pick(&choices);
        let src = if dst_ip.is_loopback() { loopback } else { pod };
        let uid = *rng.pick(&[1000, 1000, 1337, 2000]);
        let gid = *rng.pick(&[uid, 1000, 2000]);
        let dst = socket(dst_ip, port);
        let oif = if dst_ip == pod || dst_ip.is_loopback() {
            "lo"
        } else {
            "eth0"
        };
        // The pod's own address without oif=: trace (run in the pod) must find that it is
        // local and routed over lo, as the kernel does.
        let oif = if dst_ip == pod && rng.chance(50) {
            String::new()
        } else {
            format!(" oif={oif}")
        };
        // An IPv4 destination as a dual-stack socket shows it (IPv4-mapped); the kernel sends
        // it as IPv4.
        let dst_text = match dst {
            SocketAddr::V4(a) if rng.chance(20) => format!("[::ffff:{}]:{}", a.ip(), a.port()),
            _ => spec_addr(dst),
        };
        Probe {
            spec: format!("out {proto} uid={uid} gid={gid} src={src} dst={dst_text}{oif}"),
            outbound: true,
            udp,
            creds: Creds::new(uid, gid),
            src,
            dst,
        }
    } else {
        let dst = socket(pod, port);
        // Also from the extra addresses, inside and outside `--exclude-inbound-sources`.
        let src = *rng.pick(&[peer, peer, extra[0], extra[1]]);
        Probe {
            spec: format!("in {proto} src={src} dst={} iface=eth0", spec_addr(dst)),
            outbound: false,
            udp,
            creds: Creds::new(0, 0),
            src,
            dst,
        }
    }
}

/// The listener name that takes a connection on `port` in a namespace, per family.
fn listener_name(side: &str, v6: bool, port: u16) -> String {
    format!("{side}{}:{port}", if v6 { 6 } else { 4 })
}

fn start_listeners(lab: &Lab) -> Vec<Listener> {
    let mut specs = Vec::new();
    let any4: IpAddr = Ipv4Addr::UNSPECIFIED.into();
    let any6: IpAddr = Ipv6Addr::UNSPECIFIED.into();
    // UDP listeners are bound per address: a wildcard UDP socket answers from the address
    // routing picks, which need not be the one the datagram was sent to (nor, after a
    // REDIRECT, the one conntrack expects), and the client's connected socket would drop it.
    // Istio's DNS proxy binds localhost the same way.
    let pod_addrs: Vec<(bool, IpAddr)> = vec![
        (false, Ipv4Addr::LOCALHOST.into()),
        (false, lab.pod_v4.into()),
        (true, Ipv6Addr::LOCALHOST.into()),
        (true, lab.pod_v6.into()),
    ];
    let peer_addrs: Vec<(bool, IpAddr)> = [
        (false, IpAddr::from(lab.peer_v4)),
        (true, lab.peer_v6.into()),
    ]
    .into_iter()
    .chain(EXTRA_V4.iter().map(|a| (false, IpAddr::from(*a))))
    .chain(EXTRA_V6.iter().map(|a| (true, IpAddr::from(*a))))
    .collect();
    for &port in PORTS {
        for (v6, any) in [(false, any4), (true, any6)] {
            // Transparent, so TPROXY'd connections for any destination are accepted.
            let pod = listener_name("pod", v6, port);
            specs.push((
                &lab.pod,
                ListenerSpec::tcp(&pod, socket(any, port)).transparent(),
            ));
            let peer = listener_name("peer", v6, port);
            specs.push((&lab.peer, ListenerSpec::tcp(&peer, socket(any, port))));
        }
        for &(v6, addr) in &peer_addrs {
            let peer = listener_name("peer", v6, port);
            specs.push((&lab.peer, ListenerSpec::udp(&peer, socket(addr, port))));
        }
        for &(v6, addr) in &pod_addrs {
            let pod = listener_name("pod", v6, port);
            let mut spec = ListenerSpec::udp(&pod, socket(addr, port));
            if port == DNS_PROXY_PORT {
                // Istio's DNS proxy runs as the proxy user: its answers are put back into the
                // conntrack zone of the query by a uid rule, and only then un-NATed.
                spec = spec.run_as(Creds::new(PROXY_UID, PROXY_UID));
            }
            specs.push((&lab.pod, spec));
        }
    }
    specs
        .into_iter()
        .map(|(ns, spec)| spec.start(ns).expect("starting a listener"))
        .collect()
}

/// Where the trace says the connection lands: a listener name, or `None` for a drop.
fn predicted(trace: &serde_json::Value, probe: &Probe, lab: &Lab) -> Option<String> {
    let v6 = probe.dst.is_ipv6();
    let port = trace["port"].as_u64().map(|p| p as u16);
    match trace["verdict"].as_str().unwrap() {
        "redirect" | "tproxy" => Some(listener_name("pod", v6, port.unwrap())),
        "accept" => {
            let dst = probe.dst.ip();
            let local = dst.is_loopback()
                || dst == IpAddr::from(lab.pod_v4)
                || dst == IpAddr::from(lab.pod_v6);
            let side = if !probe.outbound || local {
                "pod"
            } else {
                "peer"
            };
            Some(listener_name(side, v6, probe.dst.port()))
        }
        "drop" => None,
        other => panic!("unknown verdict {other}"),
    }
}

fn connect(probe: &Probe, lab: &Lab) -> Result<Landing, ClientError> {
    let timeout = Duration::from_millis(400);
    if probe.outbound {
        let client = Client::with_creds(probe.creds.clone()).timeout(timeout);
        // Bound to the source the spec names, as the kernel would choose it.
        let client = client.bind(SocketAddr::new(probe.src, 0));
        if probe.udp {
            client.udp(&lab.pod, probe.dst)
        } else {
            client.tcp(&lab.pod, probe.dst)
        }
    } else {
        let client = Client::root()
            .timeout(timeout)
            .bind(SocketAddr::new(probe.src, 0));
        if probe.udp {
            client.udp(&lab.peer, probe.dst)
        } else {
            client.tcp(&lab.peer, probe.dst)
        }
    }
}

#[derive(Default)]
struct Tally {
    connections: usize,
    disagreements: Vec<String>,
}

fn one_configuration(rng: &mut Rng, backend: &str, conns: u64, tally: &mut Tally) {
    let lab = Lab::new().expect("creating the lab");
    for a in EXTRA_V4 {
        lab.add_peer_addr(a.into()).expect("extra peer address");
    }
    for a in EXTRA_V6 {
        lab.add_peer_addr(a.into()).expect("extra peer address");
    }
    let ipv6 = rng.chance(50);
    let (mut args, env) = random_config(rng, ipv6);
    // The trace must hold before the pod exists: compute it from the same arguments alone.
    let trace_args = {
        let mut a = vec!["trace".to_string()];
        a.extend(args.iter().cloned());
        a.push("--dns-servers=".to_string() + &lab.peer_v4.to_string());
        a
    };
    args.insert(0, "istio-iptables".to_string());
    args.push(format!("--dns-servers={}", lab.peer_v4));
    let mut run_env = env.clone();
    let mut trace_args = trace_args;
    match backend {
        "native" => {
            args.push("--native-nftables".to_string());
            trace_args.push("--native-nftables".to_string());
            let empty = std::env::temp_dir().join("meshinit-empty-path");
            std::fs::create_dir_all(&empty).unwrap();
            run_env.push(("PATH".to_string(), empty.display().to_string()));
        }
        variant => {
            args.push(format!("--force-iptables-binary={variant}"));
            run_env.push(path_env());
        }
    }
    let out = meshinit(&lab.pod, &args, &run_env);
    assert_eq!(
        out.code,
        Some(0),
        "installing {args:?} {env:?}: {}",
        out.stderr
    );
    let _listeners = start_listeners(&lab);
    for _ in 0..conns {
        let probe = random_probe(rng, &lab);
        let mut targs = trace_args.clone();
        targs.push(format!("--conn={}", probe.spec));
        targs.push("--json".to_string());
        let traced = trace_in_pod(&lab, &targs, &env);
        assert_eq!(traced.code, Some(0), "trace {targs:?}: {}", traced.stderr);
        let json: serde_json::Value = serde_json::from_str(&traced.stdout).expect("trace JSON");
        let expected = predicted(&json, &probe, &lab);
        let landed = connect(&probe, &lab);
        tally.connections += 1;
        let agrees = match (&expected, &landed) {
            (None, Err(_)) => true,
            (Some(name), Ok(l)) => {
                l.listener == *name
                    && (probe.udp || l.original_dst.is_none() || l.original_dst == Some(probe.dst))
            }
            _ => false,
        };
        if !agrees {
            tally.disagreements.push(format!(
                "{backend}: args {args:?} env {env:?}\n  conn {}\n  trace said {} ({:?}), decided by {}\n  kernel: {}",
                probe.spec,
                json["verdict"],
                expected,
                json["decided_by"],
                match &landed {
                    Ok(l) => l.to_string(),
                    Err(e) => format!("no landing: {e}"),
                }
            ));
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn trace_agrees_with_the_kernel_on_random_configurations_and_connections() {
    if !require_root("trace_agrees_with_the_kernel_on_random_configurations_and_connections") {
        return;
    }
    let seed = env_number("TRACE_SEED", std::process::id() as u64 ^ 0x5eed);
    let configs = env_number("TRACE_CONFIGS", 4);
    let conns = env_number("TRACE_CONNS", 30);
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for backend in ["legacy", "nft", "native"] {
        for _ in 0..configs {
            one_configuration(&mut rng, backend, conns, &mut tally);
        }
    }
    eprintln!(
        "trace vs kernel: {} connections over {} configurations, {} disagreements (TRACE_SEED={seed})",
        tally.connections,
        configs * 3,
        tally.disagreements.len()
    );
    assert!(
        tally.disagreements.is_empty(),
        "{} of {} connections landed elsewhere than trace said (TRACE_SEED={seed}):\n{}",
        tally.disagreements.len(),
        tally.connections,
        tally.disagreements.join("\n")
    );
}
