//! `meshinit explain` and `meshinit trace` through the binary, without privileges: the
//! summary for Istio's default sidecar, TPROXY, DNS capture and a CIDR include list against
//! hand-written expectations; the trace's JSON shape; and bad connection specs.

mod support;

use support::{istio_init_args, run_meshinit};

/// `meshinit <sub> <Istio's default args> <extra>` with detection pinned.
fn run(sub: &str, extra: &[&str], env: &[(&str, &str)]) -> support::Output {
    let mut args = vec![sub.to_string()];
    args.extend(istio_init_args(&["--ipv6=false", "--dns-servers="]));
    args.extend(extra.iter().map(|a| a.to_string()));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    run_meshinit(&args, &env)
}

/// The explain row whose connection column starts with `what`: (goes, decided by).
fn row<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no row {what:?} in:\n{text}"))
}

#[track_caller]
fn expect_row(text: &str, what: &str, goes: &str, decided: &str) {
    let line = row(text, what);
    assert!(
        line.contains(goes) && line.contains(decided),
        "row {what:?}: expected {goes:?} decided by {decided:?}, got:\n{line}"
    );
}

#[test]
fn explain_istio_default_sidecar() {
    let out = run("explain", &[], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let t = &out.stdout;
    assert!(t.contains("inbound mode REDIRECT; families IPv4"), "{t}");
    expect_row(
        t,
        "out app → 203.0.113.10:80 ",
        "redirected to port 15001",
        "nat/ISTIO_REDIRECT",
    );
    expect_row(
        t,
        "out app → 203.0.113.10:8125 udp",
        "not captured",
        "no rule of nat/ISTIO_REDIRECT matched",
    );
    expect_row(
        t,
        "out proxy (uid 1337)",
        "not captured",
        "proxy's own traffic is not captured",
    );
    expect_row(t, "out app → localhost", "not captured", "nat/ISTIO_OUTPUT");
    expect_row(
        t,
        "out proxy → this pod's own address",
        "redirected to port 15006",
        "nat/ISTIO_IN_REDIRECT",
    );
    expect_row(
        t,
        "in  peer → app port 8080 ",
        "redirected to port 15006",
        "nat/ISTIO_IN_REDIRECT",
    );
    for port in ["15090", "15021", "15020"] {
        expect_row(
            t,
            &format!("in  peer → app port {port} (-d)"),
            "not captured",
            "excluded inbound port",
        );
    }
    expect_row(
        t,
        "in  peer → app port 8080 udp",
        "not captured",
        "no rule of ours matched",
    );
}

#[test]
fn explain_tproxy() {
    let out = run("explain", &["-m", "TPROXY"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let t = &out.stdout;
    assert!(t.contains("TPROXY (mark 0x539, route table 133)"), "{t}");
    expect_row(
        t,
        "in  peer → app port 8080 ",
        "TPROXY to port 15006, mark 0x539",
        "mangle/ISTIO_TPROXY",
    );
    expect_row(
        t,
        "in  peer → app port 15090 (-d)",
        "not captured",
        "mangle/ISTIO_INBOUND",
    );
    expect_row(
        t,
        "out app → 203.0.113.10:80 ",
        "redirected to port 15001",
        "nat/ISTIO_REDIRECT",
    );
}

#[test]
fn explain_dns_capture() {
    let out = run(
        "explain",
        &["--redirect-dns", "--dns-servers=10.96.0.10"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let t = &out.stdout;
    expect_row(
        t,
        "out app → DNS 10.96.0.10:53 udp",
        "redirected to port 15053",
        "nat/ISTIO_OUTPUT_DNS",
    );
    expect_row(
        t,
        "out app → DNS 10.96.0.10:53 tcp",
        "redirected to port 15053",
        "nat/ISTIO_OUTPUT",
    );
    expect_row(
        t,
        "out proxy → DNS 10.96.0.10:53 udp",
        "not captured: goes to its destination (conntrack zone 1)",
        "proxy's own traffic is not captured",
    );
}

#[test]
fn explain_cidr_include() {
    let out = run(
        "explain",
        &["-i", "10.96.0.0/12", "-x", "10.96.1.0/24"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let t = &out.stdout;
    expect_row(
        t,
        "out app → 203.0.113.10:80 ",
        "not captured",
        "nat/ISTIO_OUTPUT",
    );
    expect_row(
        t,
        "out app → 10.96.0.0:80 (in -i)",
        "redirected to port 15001",
        "nat/ISTIO_REDIRECT",
    );
    expect_row(
        t,
        "out app → 10.96.1.0:80 (in -x 10.96.1.0/24)",
        "not captured",
        "excluded outbound CIDR",
    );
}

#[test]
fn trace_prints_one_json_object_with_verdict_port_and_path() {
    let out = run(
        "trace",
        &[
            "--conn",
            "out tcp uid=1000 gid=1000 dst=10.96.0.10:80",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    assert_eq!(v["verdict"], "redirect");
    assert_eq!(v["port"], 15001);
    let path = v["path"].as_array().unwrap();
    let chains: Vec<&str> = path.iter().map(|s| s["chain"].as_str().unwrap()).collect();
    assert_eq!(chains, ["OUTPUT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"]);
    for step in path {
        assert_eq!(step["table"], "nat");
        assert!(step["purpose"].as_str().is_some_and(|p| !p.is_empty()));
        assert!(step["text"].as_str().unwrap().starts_with("-t nat -A "));
    }
    let out = run(
        "trace",
        &[
            "--conn=in tcp src=10.0.0.7:4321 dst=10.244.1.5:15021",
            "--json",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    assert_eq!(
        (v["verdict"].as_str(), v["port"].is_null()),
        (Some("accept"), true)
    );
}

#[test]
fn trace_text_names_the_verdict_and_each_rule() {
    let out = run(
        "trace",
        &["--conn", "out udp uid=1000 dst=10.96.0.10:53"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("verdict: not captured"),
        "{}",
        out.stdout
    );
    let out = run(
        "trace",
        &[
            "--redirect-dns",
            "--dns-servers=10.96.0.10",
            "--conn",
            "out udp uid=1000 dst=10.96.0.10:53",
        ],
        &[],
    );
    assert!(
        out.stdout.contains("verdict: redirected to port 15053"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("-t nat -A ISTIO_OUTPUT_DNS"),
        "{}",
        out.stdout
    );
}

#[test]
fn native_nftables_traces_ipv6_as_captured_even_with_ipv6_off() {
    let spec = "out tcp uid=1000 dst=[2001:db8::1]:80";
    let v: serde_json::Value =
        serde_json::from_str(&run("trace", &["--conn", spec, "--json"], &[]).stdout).unwrap();
    assert_eq!(
        v["verdict"], "accept",
        "iptables: no IPv6 rules with IPv6 off"
    );
    let v: serde_json::Value = serde_json::from_str(
        &run(
            "trace",
            &["--native-nftables", "--conn", spec, "--json"],
            &[],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        v["verdict"], "redirect",
        "nftables' inet tables capture IPv6 too"
    );
}

#[test]
fn bad_connection_specs_exit_2_naming_the_field() {
    for (conn, field) in [
        ("sideways tcp dst=1.2.3.4:80", "direction"),
        ("out tcp dst=1.2.3.4", "dst"),
        ("out tcp uid=me dst=1.2.3.4:80", "uid"),
    ] {
        let out = run("trace", &["--conn", conn], &[]);
        assert_eq!(out.code, Some(2), "{conn}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("--conn {field}")),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    }
    let out = run("trace", &[], &[]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--conn"), "{}", out.stderr);
}

#[test]
fn explain_and_trace_account_for_meshinit_own_exclusions() {
    let own = [
        "--exclude-inbound-sources=192.0.2.0/24",
        "--exclude-outbound-ports-for-uids=tcp:9090:1500;udp:53:1600",
        "--redirect-dns",
        "--dns-servers=10.96.0.10",
    ];
    // run() pins --dns-servers= first; the later value wins.
    let out = run("explain", &own, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let t = &out.stdout;
    let by = "(meshinit's --exclude-outbound-ports-for-uids)";
    expect_row(t, "out uid 1500 → port 9090 tcp", "not captured", by);
    expect_row(
        t,
        "out uid 1500 → port 80 tcp (not listed for it)",
        "redirected to port 15001",
        "nat/ISTIO_REDIRECT",
    );
    expect_row(
        t,
        "out uid 1600 → DNS 10.96.0.10:53 udp",
        "not captured: goes to its destination (conntrack zone 1)",
        by,
    );
    expect_row(
        t,
        "out app → DNS 10.96.0.10:53 udp",
        "redirected to port 15053 (conntrack zone 2)",
        "nat/ISTIO_OUTPUT_DNS",
    );
    expect_row(
        t,
        "in  peer 192.0.2.0 → app port 8080 (--exclude-inbound-sources 192.0.2.0/24)",
        "not captured",
        "nat/ISTIO_INBOUND: excluded inbound source",
    );
    expect_row(
        t,
        "in  peer → app port 8080 ",
        "redirected to port 15006",
        "nat/ISTIO_IN_REDIRECT",
    );

    // trace: the app (uid 1000) to 9090 is still captured; from outside the excluded
    // network inbound is captured, from inside it is decided by the new rule, in the rule
    // position iptables lists (after the tunnel-port RETURN).
    for (conn, verdict, decided) in [
        (
            "out tcp uid=1000 dst=203.0.113.10:9090",
            "redirect",
            "ISTIO_REDIRECT",
        ),
        ("out tcp uid=1500 dst=203.0.113.10:9090", "accept", "uid"),
        (
            "in tcp src=192.0.2.9 dst=10.244.0.5:8080 iface=eth0",
            "accept",
            "source",
        ),
        (
            "in tcp src=198.51.100.9 dst=10.244.0.5:8080 iface=eth0",
            "redirect",
            "ISTIO_IN_REDIRECT",
        ),
    ] {
        let mut args = own.to_vec();
        let spec = format!("--conn={conn}");
        args.extend([spec.as_str(), "--json"]);
        let out = run("trace", &args, &[]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(json["verdict"], verdict, "{conn}: {json}");
        assert!(
            json["decided_by"].to_string().contains(decided),
            "{conn}: {json}"
        );
    }
    let out = run(
        "trace",
        &[
            own[0],
            "--conn=in tcp src=192.0.2.9 dst=10.244.0.5:8080 iface=eth0",
        ],
        &[],
    );
    assert!(
        out.stdout
            .contains("nat/ISTIO_INBOUND rule 2: excluded inbound source"),
        "{}",
        out.stdout
    );
}

/// Port ranges: `explain` probes each range at both bounds, and `trace` finds the range's rule
/// for a port at either bound and no rule for the ports just outside, on both backends.
#[test]
fn explain_and_trace_port_ranges_at_their_bounds() {
    let base = [
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
        "--ipv6=false",
        "--dns-servers=",
    ];
    let with = |sub: &str, extra: &[&str]| {
        let mut args = vec![sub];
        args.extend(base);
        args.extend(extra);
        run_meshinit(&args, &[])
    };
    let out = with("explain", &["-b", "8000:8010,80", "-o", "22-23"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let t = &out.stdout;
    for port in ["8000", "8010"] {
        expect_row(
            t,
            &format!("in  peer → app port {port} (-b 8000:8010)"),
            "redirected to port 15006",
            "nat/ISTIO_IN_REDIRECT",
        );
    }
    for port in ["22", "23"] {
        expect_row(
            t,
            &format!("out app → port {port} tcp (-o 22:23)"),
            "not captured",
            "excluded outbound port",
        );
    }
    expect_row(
        t,
        "in  peer → app port 8080 (not in -b)",
        "not captured",
        "no rule of nat/ISTIO_INBOUND matched",
    );
    // A range in a per-uid entry, probed at both ends and labelled as that flag takes it.
    let out = with(
        "explain",
        &["--exclude-outbound-ports-for-uids=tcp:9100-9102:1500"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for port in ["9100", "9102"] {
        expect_row(
            &out.stdout,
            &format!(
                "out uid 1500 → port {port} tcp (--exclude-outbound-ports-for-uids 9100-9102)"
            ),
            "not captured",
            "excluded outbound port for this uid",
        );
    }

    for backend in ["--backend=iptables", "--backend=nftables"] {
        for (port, excluded) in [(7999, false), (8000, true), (8010, true), (8011, false)] {
            let conn = format!("--conn=in tcp src=10.0.0.7:4321 dst=10.244.1.5:{port}");
            let out = with(
                "trace",
                &["-b", "*", "-d", "8000-8010", backend, &conn, "--json"],
            );
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
            let (verdict, text) = (v["verdict"].as_str().unwrap_or(""), out.stdout.as_str());
            if excluded {
                assert_eq!(verdict, "accept", "{backend} port {port}: {text}");
                assert!(
                    text.contains("8000:8010") || text.contains("8000-8010"),
                    "{backend} port {port}: the range's rule decides\n{text}"
                );
            } else {
                assert_eq!(verdict, "redirect", "{backend} port {port}: {text}");
                assert_eq!(v["port"], 15006, "{backend} port {port}: {text}");
            }
        }
    }
}
