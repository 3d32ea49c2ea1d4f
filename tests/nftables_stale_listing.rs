//! The native backend when what it listed is no longer true by the time its batch arrives:
//! a listing that misses one of our tables (a concurrent writer, a lost dump) must never add a
//! second copy of the ruleset — the result is exactly one ruleset, or a clear failure with
//! nothing changed — and a table listing taken while other tables change is never a mix of two
//! rulesets. All on a real kernel.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use meshinit::driver::nf_tables::{NfTables, NftError};
use meshinit::render::nft_netlink::replace_batch;
use meshinit::render::nft_ruleset::{ruleset, Ruleset};
use nix::errno::Errno;
use support::apply::{default_args, plan_for};
use support::netlab::Lab;
use support::nft::{apply_ruleset, groups, in_netns, listing, rule_count};
use support::require_root;

/// Istio's default sidecar, natively.
fn default_ruleset() -> Ruleset {
    ruleset(&plan_for(&default_args(), &[]))
}

/// A listing that misses our tables, as a lost or raced dump gives: the batch built from it
/// either installs exactly one ruleset or is refused with nothing changed.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_stale_listing_never_duplicates_the_ruleset() {
    if !require_root("a_stale_listing_never_duplicates_the_ruleset") {
        return;
    }
    let rs = default_ruleset();
    let lab = Lab::new().expect("lab");
    apply_ruleset(&lab.pod, &rs).expect("first apply");
    let once = listing(&lab.pod);
    let rules = rule_count(&lab.pod);
    assert!(rules > 10, "{once}");

    // The batch a run would send had it listed no tables of ours (stale: they exist).
    let stale = rs.clone();
    let result = in_netns(&lab.pod, move || {
        let mut nft = NfTables::open().unwrap();
        let gids = groups();
        let batch = replace_batch(&stale, &|g| gids.gid(g), nft.next_seq(), &[]).unwrap();
        nft.send_batch(&batch)
    });
    assert_eq!(
        rule_count(&lab.pod),
        rules,
        "a stale listing changed the number of rules ({result:?})"
    );
    assert_eq!(listing(&lab.pod), once);
    match result {
        Ok(()) => {}
        Err(NftError::Rejected { errno, .. }) => assert_eq!(errno, Errno::EEXIST),
        Err(other) => panic!("unexpected error: {other}"),
    }

    // An apply handed the stale listing notices the refusal, lists again and replaces the
    // tables: one ruleset, the same as before.
    let stale = rs.clone();
    in_netns(&lab.pod, move || {
        NfTables::open()
            .unwrap()
            .apply_listed(&stale, &groups(), &[])
    })
    .expect("apply with a stale listing");
    assert_eq!(rule_count(&lab.pod), rules);
    assert_eq!(listing(&lab.pod), once);
}

/// Two applies racing in one namespace (as two runs do when the lock cannot be taken): both
/// list no tables, both send a batch. Each round ends with exactly one ruleset and both
/// succeed.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn concurrent_applies_leave_exactly_one_ruleset() {
    if !require_root("concurrent_applies_leave_exactly_one_ruleset") {
        return;
    }
    let rs = default_ruleset();
    let lab = Lab::new().expect("lab");
    apply_ruleset(&lab.pod, &rs).expect("reference apply");
    let once = listing(&lab.pod);
    let rules = rule_count(&lab.pod);
    for round in 0..30 {
        in_netns(&lab.pod, || NfTables::open()?.cleanup()).expect("cleanup");
        let start = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (rs, start, path) = (rs.clone(), start.clone(), lab.pod.path());
                std::thread::spawn(move || {
                    let file = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(
                        std::os::fd::AsFd::as_fd(&file),
                        nix::sched::CloneFlags::CLONE_NEWNET,
                    )
                    .unwrap();
                    let mut nft = NfTables::open().unwrap();
                    let gids = groups();
                    start.wait();
                    nft.apply_ruleset(&rs, &gids).map(drop)
                })
            })
            .collect();
        let results: Vec<Result<(), NftError>> =
            racers.into_iter().map(|r| r.join().unwrap()).collect();
        let count = rule_count(&lab.pod);
        assert_eq!(
            count, rules,
            "round {round}: {count} rules instead of {rules} ({results:?})"
        );
        assert_eq!(listing(&lab.pod), once, "round {round}");
        for r in results {
            r.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

/// Table listings taken while another process keeps replacing other tables (each replacement
/// one transaction, so every committed ruleset holds all of them) name every table exactly
/// once: a dump the kernel marks as interrupted is redone, never used.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn table_listing_is_consistent_while_other_tables_change() {
    if !require_root("table_listing_is_consistent_while_other_tables_change") {
        return;
    }
    const TABLES: usize = 400;
    let lab = Lab::new().expect("lab");
    let script: String = (0..TABLES)
        .map(|i| format!("add table inet t{i:03}\n"))
        .collect();
    lab.pod.nft_apply(&script);
    let expected: BTreeSet<String> = (0..TABLES).map(|i| format!("t{i:03}")).collect();

    // `nft -i` runs each line as its own transaction: delete a table and add it back, which
    // moves it to the end of the kernel's list (and shifts every table after it).
    let mut churn = Command::new("ip")
        .args(["netns", "exec", lab.pod.name(), "nft", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nft -i");
    let mut stdin = churn.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = format!("t{:03}", i % TABLES);
                let line = format!("delete table inet {t}; add table inet {t}\n");
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };

    let outcome = in_netns(&lab.pod, move || {
        let mut nft = NfTables::open().unwrap();
        let mut bad = Vec::new();
        for attempt in 0..2000 {
            match nft.inet_tables() {
                Ok(names) => {
                    let set: BTreeSet<String> = names.iter().cloned().collect();
                    if names.len() != TABLES || set != expected {
                        let missing: Vec<_> = expected.difference(&set).cloned().collect();
                        bad.push(format!(
                            "listing {attempt}: {} names, missing {missing:?}",
                            names.len()
                        ));
                    }
                }
                Err(e) => bad.push(format!("listing {attempt}: {e}")),
            }
        }
        bad
    });
    // nft lags behind the feeder (each commit that deletes a table waits for RCU): stop it
    // rather than let it work through the backlog; a feeder blocked on the pipe then fails.
    stop.store(true, Ordering::Relaxed);
    let _ = churn.kill();
    feeder.join().unwrap();
    let _ = churn.wait();
    assert!(
        outcome.is_empty(),
        "{} inconsistent listings, e.g. {:?}",
        outcome.len(),
        &outcome[..outcome.len().min(5)]
    );
}
