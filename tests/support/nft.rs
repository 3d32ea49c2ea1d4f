//! Helpers for the tests of the native nftables backend: running library calls inside a lab
//! namespace, the group database they resolve names with, and `nft list` output without the
//! counter values that traffic changes.

use std::fs::File;
use std::os::fd::AsFd;

use meshinit::driver::nf_tables::{Groups, NfTables, NftError, GROUP_FILE};
use meshinit::render::nft_ruleset::Ruleset;
use nix::sched::{setns, CloneFlags};

use super::netlab::Netns;

/// Gids for the group names Istio's cases use (`java`, `ftp`) when this machine lacks them;
/// the nft side of a comparison gets the same numbers.
pub const STAND_IN_GROUPS: &str = "java:x:4242:\nftp:x:4343:\n";

/// This machine's groups, plus stand-ins for names it does not have.
pub fn groups() -> Groups {
    let real = std::fs::read_to_string(GROUP_FILE).unwrap_or_default();
    // The first entry of a name wins, so a real group keeps its own gid.
    Groups::parse(&format!("{real}\n{STAND_IN_GROUPS}"))
}

/// Runs `f` on a thread that alone enters `ns` (a netlink socket opened there belongs to it).
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    let joined = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into the lab namespace");
        f()
    })
    .join();
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Applies `rs` natively (one nf_tables batch) inside `ns`, with [`groups`].
pub fn apply_ruleset(ns: &Netns, rs: &Ruleset) -> Result<(), NftError> {
    let rs = rs.clone();
    in_netns(ns, move || {
        NfTables::open()?.apply_ruleset(&rs, &groups()).map(drop)
    })
}

/// `nft list ruleset` with counter values dropped (traffic such as IPv6 neighbour discovery
/// may pass through output hooks at any time).
pub fn listing(ns: &Netns) -> String {
    without_counters(ns, &["nft", "list", "ruleset"])
}

/// `nft -a list chain inet TABLE CHAIN`: one chain of ours with each rule's handle.
pub fn chain_with_handles(ns: &Netns, table: &str, chain: &str) -> String {
    let out = ns.run(&["nft", "-a", "list", "chain", "inet", table, chain], None);
    String::from_utf8(out.stdout).expect("nft prints UTF-8")
}

/// What `argv` (an nft listing) prints, without counter values.
pub fn without_counters(ns: &Netns, argv: &[&str]) -> String {
    let out = ns.run(argv, None);
    let text = String::from_utf8(out.stdout).expect("nft output is UTF-8");
    text.lines()
        .map(|line| {
            let mut words: Vec<&str> = Vec::new();
            let mut it = line.split(' ').peekable();
            while let Some(w) = it.next() {
                words.push(w);
                if w.trim_start() == "counter" && it.peek() == Some(&"packets") {
                    // `packets N bytes M`
                    for _ in 0..4 {
                        it.next();
                    }
                }
            }
            words.join(" ") + "\n"
        })
        .collect()
}

/// How many rules the namespace's whole ruleset holds (`nft -a` lines with a handle that do
/// not open a table, chain or set).
pub fn rule_count(ns: &Netns) -> usize {
    let out = ns.run(&["nft", "-a", "list", "ruleset"], None);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" # handle ") && !l.contains("{ # handle"))
        .count()
}
