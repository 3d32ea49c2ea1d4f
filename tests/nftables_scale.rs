//! The native backend at the sizes a real node can ask for: thousands of excluded CIDRs in
//! one batch, with the kernel's default socket-buffer limits; a batch whose thousands of
//! messages all fail still names the first one; `--check` over thousands of rules works in
//! memory that does not grow with the product of the two rule counts.

mod support;

use std::sync::Mutex;
use std::time::Instant;

use meshinit::config::NftSets;
use meshinit::render::nft_netlink::{
    compare_table, replace_batch, ChainInfo, CheckedRule, CheckedTable, Expr, Value,
};
use meshinit::render::nft_ruleset::{ruleset, ruleset_with, NftRule, Ruleset, Stmt};
use support::apply::{default_args, meshinit, plan_for};
use support::netlab::Lab;
use support::nft::{apply_ruleset, chain_with_handles, listing, rule_count};
use support::require_root;

/// The kernel's stock `net.core.wmem_max` and `rmem_max` (what most nodes run with).
const STOCK_BUFFER_MAX: u64 = 212_992;
const BUFFER_LIMITS: [&str; 2] = ["/proc/sys/net/core/wmem_max", "/proc/sys/net/core/rmem_max"];
/// One test at a time changes the host's limits.
static LIMITS: Mutex<()> = Mutex::new(());

/// The stock socket-buffer limits while it lives. They are global (a network namespace shows
/// the initial namespace's values, read-only), so the host's are lowered — to the kernel's
/// own default, which every other user must cope with anyway — only around the calls being
/// tested, and restored on drop, a panic included.
struct StockBufferLimits {
    saved: Vec<(&'static str, String)>,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl StockBufferLimits {
    fn set() -> StockBufferLimits {
        let one = LIMITS.lock().unwrap_or_else(|p| p.into_inner());
        let saved: Vec<(&str, String)> = BUFFER_LIMITS
            .iter()
            .map(|p| (*p, std::fs::read_to_string(p).unwrap().trim().to_string()))
            .collect();
        let limits = StockBufferLimits { saved, _one: one };
        for (path, value) in &limits.saved {
            if value.parse::<u64>().unwrap() > STOCK_BUFFER_MAX {
                std::fs::write(path, STOCK_BUFFER_MAX.to_string()).unwrap();
            }
        }
        limits
    }
}

impl Drop for StockBufferLimits {
    fn drop(&mut self) {
        for (path, value) in &self.saved {
            let _ = std::fs::write(path, value);
        }
    }
}

/// The end of a log whose configuration line lists thousands of CIDRs.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}

/// `n` distinct /24 networks in 10.0.0.0/8.
fn cidrs(n: usize) -> String {
    (0..n)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect::<Vec<_>>()
        .join(",")
}

/// A batch of about 1.6 MB (5,000 excluded CIDRs, one rule each: `--nft-sets=never`) applied by the binary in a
/// namespace with the stock buffer limits, read back by `--check` (in place), and a rule
/// deleted in the middle named by `--check` as the one missing rule.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn five_thousand_excluded_cidrs_apply_and_check_with_stock_buffer_limits() {
    if !require_root("five_thousand_excluded_cidrs_apply_and_check_with_stock_buffer_limits") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let mut args = default_args();
    args.push("--native-nftables".into());
    args.push(format!("--istio-service-exclude-cidr={}", cidrs(5000)));
    // A rule per CIDR, as Istio writes them: the largest batch (sets would make it one rule;
    // tests/nftables_sets.rs covers that).
    args.push("--nft-sets=never".into());
    let rs = ruleset_with(&plan_for(&args, &[]), NftSets::Never);
    let planned: usize = rs.tables.iter().map(|t| t.rules.len()).sum();
    assert!(planned > 5000, "{planned}");
    // More than a send buffer bounded by the stock wmem_max can take (the kernel doubles it).
    let batch = replace_batch(&rs, &|_| None, 0, &[]).unwrap().bytes().len();
    assert!(batch as u64 > 2 * STOCK_BUFFER_MAX, "{batch} bytes");

    let limits = StockBufferLimits::set();
    let started = Instant::now();
    let out = meshinit(&lab.pod, &args, &[]);
    let applied = started.elapsed();
    drop(limits);
    assert_eq!(out.code, Some(0), "apply: {}", last_lines(&out.stderr));
    assert_eq!(rule_count(&lab.pod), planned);

    let mut check = args.clone();
    check.push("--check".into());
    let started = Instant::now();
    let out = meshinit(&lab.pod, &check, &[]);
    let checked = started.elapsed();
    assert_eq!(out.code, Some(0), "--check: {}", last_lines(&out.stderr));
    eprintln!("{planned} rules, {batch} bytes: apply {applied:?}, --check {checked:?} (debug)");

    // Delete the 2,500th excluded CIDR's rule: exactly that rule is reported missing.
    let text = chain_with_handles(&lab.pod, "istio-proxy-nat", "istio-output");
    let target = "ip daddr 10.9.195.0/24 ";
    let line = text
        .lines()
        .find(|l| l.contains(target))
        .unwrap_or_else(|| panic!("no rule for {target} in\n{text}"));
    let handle = line.rsplit_once(" # handle ").unwrap().1;
    lab.pod.run(
        &[
            "nft",
            "delete",
            "rule",
            "inet",
            "istio-proxy-nat",
            "istio-output",
            "handle",
            handle,
        ],
        None,
    );
    let out = meshinit(&lab.pod, &check, &[]);
    assert_eq!(
        out.code,
        Some(3),
        "--check after a deletion: {}",
        out.stderr
    );
    let differences: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("istio-proxy-nat/istio-output:"))
        .collect();
    assert_eq!(differences.len(), 1, "{}", last_lines(&out.stderr));
    assert!(
        differences[0].contains("missing rule") && differences[0].contains("10.9.195.0/24"),
        "{}",
        differences[0]
    );
}

/// The `empty` case's nat table with `n` more rules in istio-output, each jumping to a chain
/// that does not exist: the kernel refuses every one of them.
fn with_bad_jumps(n: usize) -> (Ruleset, usize) {
    let mut rs = ruleset(&plan_for(&default_args(), &[]));
    let nat = &mut rs.tables[0];
    let first = nat
        .rules
        .iter()
        .filter(|r| r.chain == "istio-output")
        .count()
        + 1;
    for _ in 0..n {
        nat.rules.push(NftRule {
            chain: "istio-output".into(),
            index: None,
            stmts: vec![Stmt::Counter, Stmt::Jump("no-such-chain".into())],
            purpose: "test: a jump to a missing chain",
        });
    }
    (rs, first)
}

/// 5,000 failing messages in one batch: the error still names the first failing rule and the
/// kernel's errno (not "No buffer space available"), counts the others, and nothing changed —
/// with this host's buffer limits and with the stock ones.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_batch_with_thousands_of_failing_messages_names_the_first() {
    if !require_root("a_batch_with_thousands_of_failing_messages_names_the_first") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let good = ruleset(&plan_for(&default_args(), &[]));
    apply_ruleset(&lab.pod, &good).expect("a valid ruleset");
    let before = listing(&lab.pod);
    let (bad, first) = with_bad_jumps(5000);
    for stock_limits in [false, true] {
        let limits = stock_limits.then(StockBufferLimits::set);
        let err = apply_ruleset(&lab.pod, &bad).unwrap_err();
        drop(limits);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "rule {first} of istio-proxy-nat/istio-output (test: a jump to a missing chain) \
                 `counter jump no-such-chain`: No such file or directory"
            )),
            "stock limits {stock_limits}: {text}"
        );
        // The extended ack points at the jump's expression.
        assert!(
            text.ends_with(
                " [kernel: at expression 2 (immediate)] (and 4999 later message(s) of the same \
                 batch failed)"
            ),
            "stock limits {stock_limits}: {text}"
        );
        assert_eq!(listing(&lab.pod), before);
    }
}

/// The peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A chain of `rules` as `--check` compares it: rule `i` matches address `i`.
fn chain_table(rules: impl Iterator<Item = u32>) -> CheckedTable {
    let rules = rules
        .enumerate()
        .map(|(pos, i)| CheckedRule {
            exprs: vec![
                Expr {
                    name: "payload".into(),
                    attrs: vec![(3, Value::Bytes(16u32.to_be_bytes().to_vec()))],
                },
                Expr {
                    name: "cmp".into(),
                    attrs: vec![(3, Value::Bytes(i.to_be_bytes().to_vec()))],
                },
            ],
            label: format!("handle {pos}"),
        })
        .collect();
    CheckedTable {
        name: "t".into(),
        flags: 0,
        chains: vec![ChainInfo {
            table: "t".into(),
            name: "c".into(),
            base: None,
        }],
        rules: vec![("c".into(), rules)],
    }
}

/// `--check`'s comparison of a 20,000-rule chain: a deletion, an insertion and a change are
/// each named once; a chain with nothing in common is all "differs". Its memory does not
/// grow with the product of the two lengths (an LCS matrix would need 3.2 GB here).
#[test]
fn comparing_twenty_thousand_rules_names_each_difference_in_linear_memory() {
    const N: u32 = 20_000;
    let expected = chain_table(0..N);
    let found = chain_table((0..N).filter(|&i| i != 5_000).flat_map(|i| match i {
        10_000 => vec![1_000_000, i],
        15_000 => vec![2_000_000],
        _ => vec![i],
    }));
    let peak = peak_rss_kib();
    let started = Instant::now();
    let lines = compare_table(&expected, &found);
    let elapsed = started.elapsed();
    let grown = peak_rss_kib().saturating_sub(peak);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("t/c: missing rule 5001 `handle 5000`"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("t/c: unexpected rule (handle 9999) at position 10000: "),
        "{}",
        lines[1]
    );
    assert!(
        lines[2]
            .starts_with("t/c: rule 15001 differs: expected `handle 15000`, found (handle 15000) "),
        "{}",
        lines[2]
    );

    let other = chain_table(N..2 * N);
    let all = compare_table(&expected, &other);
    let grown = grown.max(peak_rss_kib().saturating_sub(peak));
    assert_eq!(all.len(), N as usize);
    assert!(all.iter().all(|l| l.contains(" differs: ")));
    eprintln!(
        "{N} rules: {elapsed:?} for three differences, {:?} in all; peak memory grew {grown} KiB",
        started.elapsed()
    );
    assert!(grown < 256 * 1024, "peak memory grew {grown} KiB");
}
