//! Plan → iptables: the text of each rule exactly as Istio writes it, and the
//! `iptables-restore --noflush` input per family (tables sorted, `-N` for each chain of ours).
//! Pure text; running `*-restore` belongs to `driver::xtables`.

use crate::plan::{
    Chain, CtState, Family, Match, Owner, Plan, Position, Protocol, Rule, Table, Target,
};

/// The words of a rule after `-t <table>`: `-A CHAIN <matches> -j TARGET ...`.
pub fn rule_args(rule: &Rule) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |words: &[&str]| out.extend(words.iter().map(|w| w.to_string()));
    match rule.position {
        Position::Append => push(&["-A", rule.chain.name()]),
        Position::Insert(n) => push(&["-I", rule.chain.name(), &n.to_string()]),
    }
    for m in &rule.matches {
        push_match(&mut push, m);
    }
    push_target(&mut push, rule);
    out
}

/// One rule as a restore line.
pub fn rule_line(rule: &Rule) -> String {
    rule_args(rule).join(" ")
}

fn bang(negate: bool) -> &'static [&'static str] {
    if negate {
        &["!"]
    } else {
        &[]
    }
}

fn push_match(push: &mut impl FnMut(&[&str]), m: &Match) {
    match m {
        Match::InInterface(name) => push(&["-i", name.as_str()]),
        Match::OutInterface(name) => push(&["-o", name.as_str()]),
        Match::Protocol(Protocol::Tcp) => push(&["-p", "tcp"]),
        Match::Protocol(Protocol::Udp) => push(&["-p", "udp"]),
        Match::Source(net) => push(&["-s", &net.to_string()]),
        Match::Destination { net, negate } => {
            push(bang(*negate));
            push(&["-d", &net.to_string()]);
        }
        Match::DestinationPort { port, negate } => {
            push(bang(*negate));
            push(&["--dport", &port.to_string()]);
        }
        Match::SourcePort(port) => push(&["--sport", &port.to_string()]),
        Match::DestinationPortNotIn(ports) => {
            let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            push(&["-m", "multiport", "!", "--dports", &list.join(",")]);
        }
        Match::Owner { owner, negate } => {
            push(&["-m", "owner"]);
            push(bang(*negate));
            match owner {
                Owner::Uid(uid) => push(&["--uid-owner", &uid.to_string()]),
                Owner::Gid(group) => push(&["--gid-owner", group.as_str()]),
            }
        }
        Match::ConntrackState(state) => {
            let state = match state {
                CtState::Invalid => "INVALID",
                CtState::RelatedEstablished => "RELATED,ESTABLISHED",
            };
            push(&["-m", "conntrack", "--ctstate", state]);
        }
        Match::Mark { mark, negate } => {
            push(&["-m", "mark"]);
            push(bang(*negate));
            push(&["--mark", &mark.to_string()]);
        }
        Match::ConnMark(mark) => push(&["-m", "connmark", "--mark", &mark.to_string()]),
    }
}

fn push_target(push: &mut impl FnMut(&[&str]), rule: &Rule) {
    match &rule.target {
        Target::Jump(chain) => push(&["-j", chain.name()]),
        Target::Return => push(&["-j", "RETURN"]),
        Target::Accept => push(&["-j", "ACCEPT"]),
        Target::Drop => push(&["-j", "DROP"]),
        Target::Redirect(port) => {
            // Istio spells the option `--to-port` in its UDP (DNS) redirects and `--to-ports`
            // elsewhere; iptables takes both. Kept for byte-identical output.
            let option = if rule.protocol() == Some(Protocol::Udp) {
                "--to-port"
            } else {
                "--to-ports"
            };
            push(&["-j", "REDIRECT", option, &port.to_string()]);
        }
        Target::Tproxy { mark, port } => push(&[
            "-j",
            "TPROXY",
            "--tproxy-mark",
            &format!("{mark}/0xffffffff"),
            "--on-port",
            &port.to_string(),
        ]),
        Target::SetMark(mark) => push(&["-j", "MARK", "--set-mark", &mark.to_string()]),
        Target::SaveMark => push(&["-j", "CONNMARK", "--save-mark"]),
        Target::RestoreMark => push(&["-j", "CONNMARK", "--restore-mark"]),
        Target::ConntrackZone(zone) => push(&["-j", "CT", "--zone", &zone.to_string()]),
    }
}

/// The chains of ours in a table, in the order Istio declares them: first every chain that
/// receives rules (first appearance), then chains that are only jumped to.
pub fn chains_of(rules: &[Rule], table: Table) -> Vec<Chain> {
    let in_table = || rules.iter().filter(move |r| r.table == table);
    let mut out: Vec<Chain> = Vec::new();
    let candidates = in_table()
        .map(|r| r.chain)
        .chain(in_table().filter_map(Rule::jump_target));
    for chain in candidates {
        if !chain.is_builtin() && !out.contains(&chain) {
            out.push(chain);
        }
    }
    out
}

/// The tables a ruleset touches, sorted.
pub fn tables_of(rules: &[Rule]) -> Vec<Table> {
    let mut tables: Vec<Table> = rules.iter().map(|r| r.table).collect();
    tables.sort();
    tables.dedup();
    tables
}

/// The `iptables-restore --noflush` input for one family: per table, `* <table>`, a `-N` line
/// for each chain of ours, the rules in plan order, `COMMIT`.
pub fn restore_text(rules: &[Rule]) -> String {
    let mut out = String::new();
    for table in tables_of(rules) {
        out.push_str(&format!("* {}\n", table.name()));
        for chain in chains_of(rules, table) {
            out.push_str(&format!("-N {}\n", chain.name()));
        }
        for rule in rules.iter().filter(|r| r.table == table) {
            out.push_str(&rule_line(rule));
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The dry-run output: the IPv4 restore input, then the IPv6 one when IPv6 is on, each under a
/// `#` header (restore ignores `#` lines, so the output can be fed to it as is).
pub fn dry_run_text(plan: &Plan) -> String {
    let mut out = String::new();
    for family in plan.families() {
        let (tool, name) = match family {
            Family::V4 => ("iptables-restore", "IPv4"),
            Family::V6 => ("ip6tables-restore", "IPv6"),
        };
        out.push_str(&format!(
            "# meshinit dry run: {name} rules, as input to `{tool} --noflush`\n"
        ));
        out.push_str(&restore_text(&plan.rules(family)));
    }
    out
}
