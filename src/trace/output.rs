//! Text and JSON forms of a trace, and the words that describe a connection and a verdict.

use super::{Conn, Direction, Trace, Verdict};
use crate::log::json_string;
use crate::plan::Protocol;

/// `out tcp uid=1000 gid=1000 10.96.0.10:80 via eth0`: the connection as the model saw it.
pub fn describe_conn(conn: &Conn) -> String {
    let proto = match conn.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let dst = match conn.dst {
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", conn.dport),
        a => format!("{a}:{}", conn.dport),
    };
    let mut out = match conn.direction {
        Direction::Out => format!("out {proto} uid={} gid={} dst={dst}", conn.uid, conn.gid),
        Direction::In => format!("in {proto} dst={dst}"),
    };
    if let Some(src) = conn.src {
        out.push_str(&format!(" src={src}"));
    }
    if let Some(iif) = &conn.iif {
        out.push_str(&format!(" iface={iif}"));
    }
    if let Some(oif) = &conn.oif {
        out.push_str(&format!(" oif={oif}"));
    }
    out
}

/// A verdict in words: `redirected to port 15001`, `not captured`, ….
pub fn describe_verdict(trace: &Trace) -> String {
    let mut out = match &trace.verdict {
        Verdict::Redirect { port } => format!("redirected to port {port}"),
        Verdict::Tproxy { port, mark } => format!("TPROXY to port {port}, mark {mark:#x}"),
        Verdict::Accept => "not captured: goes to its destination".to_string(),
        Verdict::Drop => "dropped".to_string(),
    };
    if let Some(zone) = trace.zone {
        out.push_str(&format!(" (conntrack zone {zone})"));
    }
    out
}

/// The rule that decided, in words.
pub fn decided_by(trace: &Trace) -> String {
    if let Some(step) = trace.decider.and_then(|i| trace.path.get(i)) {
        return format!(
            "{}/{}: {}",
            step.table.name(),
            step.chain.name(),
            step.purpose
        );
    }
    match trace.fell_through {
        Some((table, chain)) => format!(
            "no rule captured it: no rule of {}/{} matched",
            table.name(),
            chain.name()
        ),
        None => "no rule of ours matched".to_string(),
    }
}

/// The human-readable trace: verdict, then the path, rule by rule.
pub fn text(conn: &Conn, trace: &Trace) -> String {
    let mut out = format!(
        "connection: {}\nverdict: {}\ndecided by: {}\npath:\n",
        describe_conn(conn),
        describe_verdict(trace),
        decided_by(trace)
    );
    if trace.path.is_empty() {
        out.push_str("  (no rule of ours matched; every chain's policy is ACCEPT)\n");
    }
    for step in &trace.path {
        out.push_str(&format!(
            "  {} {}/{} rule {}: {}\n      {}\n",
            step.hook.name(),
            step.table.name(),
            step.chain.name(),
            step.rule,
            step.purpose,
            step.text
        ));
    }
    for note in &trace.notes {
        out.push_str(&format!("note: {note}\n"));
    }

    out
}

/// One JSON object: `verdict`, `port`, `mark`, `zone`, `connection`, `path`, `notes`.
pub fn json(conn: &Conn, trace: &Trace) -> String {
    let number = |n: Option<u32>| n.map_or("null".to_string(), |n| n.to_string());
    let mark = match trace.verdict {
        Verdict::Tproxy { mark, .. } => Some(mark),
        _ => None,
    };
    let path: Vec<String> = trace
        .path
        .iter()
        .map(|s| {
            format!(
                "{{\"hook\":{},\"table\":{},\"chain\":{},\"rule\":{},\"purpose\":{},\"text\":{}}}",
                json_string(s.hook.name()),
                json_string(s.table.name()),
                json_string(s.chain.name()),
                s.rule,
                json_string(s.purpose),
                json_string(&s.text)
            )
        })
        .collect();
    let notes: Vec<String> = trace.notes.iter().map(|n| json_string(n)).collect();
    format!(
        "{{\"verdict\":{},\"port\":{},\"mark\":{},\"zone\":{},\"connection\":{},\"decided_by\":{},\"path\":[{}],\"notes\":[{}]}}\n",
        json_string(trace.verdict.name()),
        number(trace.verdict.port().map(u32::from)),
        number(mark),
        number(trace.zone.map(u32::from)),
        json_string(&describe_conn(conn)),
        json_string(&decided_by(trace)),
        path.join(","),
        notes.join(",")
    )
}
