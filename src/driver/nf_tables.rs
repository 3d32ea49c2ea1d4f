//! Installs the nftables ruleset natively: one nf_tables batch over a `NETLINK_NETFILTER`
//! socket, no `nft` binary and no libnftnl. The kernel applies a batch as one transaction —
//! every message or none — so a rejected rule leaves the ruleset exactly as it was.
//!
//! The batch replaces our tables (`istio-proxy-nat`, `-mangle`, `-raw`) as a whole; tables of
//! other owners are never named. It is built from a listing of our tables; a table the
//! listing missed makes the kernel refuse the batch (tables are created exclusively), and the
//! apply lists again and retries once, so a stale listing never doubles the rules. A failing
//! message's sequence number is mapped back to the rule (or chain, or table) it came from, so
//! the error reads e.g. "rule 7 of istio-proxy-nat/istio-output (…) `…`: Operation not
//! supported [kernel: at expression 2 (immediate)]", with what the kernel's extended ack says.
//!
//! `--check` reads the same tables back with dumps (tables, chains, rules, sets, set elements)
//! and compares them with the batch an apply would send; it never sends a batch. Every dump
//! checks the errno in `NLMSG_DONE` and is redone when the kernel marks it interrupted.

use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use super::nlsocket::{NlSocket, SocketError};
use crate::render::netlink_wire::{
    dump_step, error_code, ext_ack, DumpStep, ExtAck, Msg, NLMSG_ERROR, NLM_F_DUMP_INTR,
};

use crate::config::NftSets;
use crate::plan::Plan;
use crate::render::nft_netlink::{
    self, cleanup_batch, getgen_request, gettable_dump_request, replace_batch, Batch, DumpKind,
    EncodeError, FamilyTable, FoundTable, Origin, TableOp, XtFamily,
};
use crate::render::nft_ruleset::{ruleset_with, Ruleset, MANAGED_TABLES};

pub use crate::sys::groups::{Groups, GroupsError, GROUP_FILE};
use crate::sys::transient::Transient;
/// How often a dump that the kernel marks as interrupted (`NLM_F_DUMP_INTR`: the list
/// changed under it) is redone before giving up.
const DUMP_ATTEMPTS: usize = 10;
/// How often `--check` reads the whole ruleset again when a transaction committed meanwhile.
const CHECK_ATTEMPTS: usize = 5;
/// Receive-buffer room per message of a batch: each failing message is answered by one error
/// (capped, with the kernel's text), queued before anything is read; the kernel accounts a
/// queued reply at its buffer's true size, a few hundred bytes.
const REPLY_ROOM: usize = 1024;

/// Why applying or reading the nftables ruleset failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NftError {
    /// The kernel rejected a message of the batch, so none of it was applied. `origin` names
    /// the first failing message; later messages may fail as a consequence.
    #[error("{origin}: {}{}{}", errno.desc(), kernel_text(kernel), more(*others))]
    Rejected {
        /// The rule, chain or table the first failing message came from.
        origin: String,
        /// The kernel's errno for it.
        errno: Errno,
        /// What the kernel says about it (extended ack: its text, and the expression it
        /// points at), when it says anything.
        kernel: Option<String>,
        /// How many further messages of the batch failed.
        others: usize,
    },
    /// One of our tables appeared after it was listed as absent, on the retry too (another
    /// writer keeps creating it); the kernel refused both batches, so nothing was changed.
    #[error(
        "creating table inet {table}: it was created by another writer after meshinit listed \
         our tables, on both attempts; the batch was refused as a whole each time"
    )]
    Raced {
        /// The table.
        table: String,
    },
    /// The ruleset changed during every one of several reads, so none of them shows one
    /// ruleset; nothing is concluded from a mixed one.
    #[error("{op}: the ruleset changed while it was being read, {attempts} times in a row")]
    Unstable {
        /// What was being read.
        op: String,
        /// How many reads were tried.
        attempts: usize,
    },
    /// The socket itself failed (open, bind, send, receive).
    #[error("{op}: {}", errno.desc())]
    Io {
        /// What was being done.
        op: String,
        /// The errno of the failing system call.
        errno: Errno,
    },
    /// The kernel's reply could not be understood.
    #[error("{op}: malformed netlink reply: {detail}")]
    Malformed {
        /// What was being done.
        op: String,
        /// What was wrong.
        detail: String,
    },
    /// The ruleset cannot be expressed (e.g. a group name that does not exist).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The group database could not be read.
    #[error(transparent)]
    Groups(#[from] GroupsError),
}

impl NftError {
    /// Why this failure may pass when tried again: the kernel's `EBUSY`, `EAGAIN` or `EINTR`
    /// (see [`crate::sys::transient::transient_errno`]); `None` for every other failure.
    pub fn transient(&self) -> Option<Transient> {
        match self {
            NftError::Rejected { errno, .. } | NftError::Io { errno, .. } => {
                crate::sys::transient::transient_errno(*errno)
            }
            _ => None,
        }
    }
}

fn kernel_text(kernel: &Option<String>) -> String {
    match kernel {
        Some(text) => format!(" [kernel: {text}]"),
        None => String::new(),
    }
}

fn more(others: usize) -> String {
    match others {
        0 => String::new(),
        n => format!(" (and {n} later message(s) of the same batch failed)"),
    }
}

type Result<T> = std::result::Result<T, NftError>;

/// What an apply installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The tables now in place, in order.
    pub tables: Vec<String>,
    /// Number of rules installed.
    pub rules: usize,
    /// Number of messages in the batch (without begin/end).
    pub messages: usize,
}

/// One `NETLINK_NETFILTER` socket. It acts in the network namespace it was opened in, so open
/// it from a thread that is in the pod's namespace.
#[derive(Debug)]
pub struct NfTables {
    sock: NlSocket,
    seq: u32,
}

impl NfTables {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<NfTables> {
        let sock = NlSocket::open(SockProtocol::NetlinkNetFilter)
            .map_err(|e| socket_error("opening a NETLINK_NETFILTER socket", e))?;
        sock.enable_ext_ack();
        Ok(NfTables { sock, seq: 1 })
    }

    /// The sequence number the next batch should start at (see [`NfTables::send_batch`]).
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Makes our tables exactly what the plan says, in one transaction: tables the plan uses
    /// are replaced, ours it does not use are deleted, nothing else is touched. Group names
    /// are resolved from `/etc/group`.
    /// `sets` is the `--nft-sets` policy for long lists.
    pub fn apply(&mut self, plan: &Plan, sets: NftSets) -> Result<Applied> {
        let groups = Groups::load(Path::new(GROUP_FILE))?;
        self.apply_ruleset(&ruleset_with(plan, sets), &groups)
    }

    /// [`NfTables::apply`] for a ruleset already built, with a given group database.
    pub fn apply_ruleset(&mut self, ruleset: &Ruleset, groups: &Groups) -> Result<Applied> {
        let existing = self.managed_tables_present()?;
        self.apply_listed(ruleset, groups, &existing)
    }

    /// [`NfTables::apply_ruleset`] given the list of our tables that exist, taken earlier.
    /// The list may be stale: a table it lacks may have been created since (by a concurrent
    /// writer). The batch creates every table with `NLM_F_EXCL`, so the kernel then refuses
    /// the whole batch (`EEXIST`) rather than adding a second copy of the rules to the table
    /// that exists; the tables are listed again and the batch rebuilt and sent once more.
    pub fn apply_listed(
        &mut self,
        ruleset: &Ruleset,
        groups: &Groups,
        existing: &[String],
    ) -> Result<Applied> {
        let gid_of = |name: &str| groups.gid(name);
        let batch = replace_batch(ruleset, &gid_of, self.seq, existing)?;
        let batch = match self.submit(&batch)? {
            Ok(()) => batch,
            Err(rejection) => {
                if rejection.existing_table(&batch).is_none() {
                    return Err(rejection.into_error(&batch));
                }
                let existing = self.managed_tables_present()?;
                let batch = replace_batch(ruleset, &gid_of, self.seq, &existing)?;
                match self.submit(&batch)? {
                    Ok(()) => batch,
                    Err(again) => {
                        return Err(match again.existing_table(&batch) {
                            Some(table) => NftError::Raced { table },
                            None => again.into_error(&batch),
                        })
                    }
                }
            }
        };
        Ok(Applied {
            tables: ruleset.tables.iter().map(|t| t.name.clone()).collect(),
            rules: ruleset.tables.iter().map(|t| t.rules.len()).sum(),
            messages: batch.len(),
        })
    }

    /// Deletes our three tables where they exist, in one transaction; nothing else.
    pub fn cleanup(&mut self) -> Result<()> {
        let batch = cleanup_batch(self.seq);
        self.send_batch(&batch)
    }

    /// Sends a batch built with sequence numbers from [`NfTables::next_seq`] and waits for
    /// the kernel's verdict. On any error nothing of it is applied; the error names the
    /// first failing message's origin.
    pub fn send_batch(&mut self, batch: &Batch) -> Result<()> {
        self.submit(batch)?
            .map_err(|rejection| rejection.into_error(batch))
    }

    /// Sends a batch and collects the kernel's verdict: `Err` of the outer result for a
    /// socket failure, `Err` of the inner one when the kernel refused the batch.
    fn submit(&mut self, batch: &Batch) -> Result<std::result::Result<(), Rejection>> {
        const OP: &str = "sending the nf_tables batch";
        let bytes = batch.bytes();
        // The whole batch must fit in one datagram; the default send buffer (~200 KiB)
        // already holds Istio's largest ruleset, so it is raised only when needed.
        self.sock
            .reserve_send(bytes.len())
            .map_err(|e| socket_error(OP, e))?;
        // Every message may fail, and the kernel queues all the errors before the sentinel
        // below is answered: a reply that does not fit is dropped.
        self.sock
            .reserve_receive(batch.messages().len() * REPLY_ROOM)
            .map_err(|e| socket_error(OP, e))?;
        self.send(OP, &bytes)?;
        // The kernel processes the batch inside sendmsg and queues its errors before
        // anything sent later is answered: the reply to this request closes the batch.
        let mut sentinel = batch.next_seq();
        self.seq = sentinel.wrapping_add(1);
        self.send(OP, &getgen_request(sentinel))?;
        let mut failures: Vec<Failure> = Vec::new();
        // `draining`: replies were lost, read what is queued before asking again; `lost`:
        // some error reports never arrived.
        let mut draining = false;
        let mut lost = false;
        'recv: loop {
            let received = if draining {
                self.sock.receive_queued()
            } else {
                self.sock.receive().map(Some)
            };
            let msgs = match received {
                Ok(Some(msgs)) => msgs,
                // Replies were dropped for want of room. Only errors answer a batch (its
                // messages ask for no acknowledgement), so it was refused. The sentinel's
                // reply may be lost too: read what is queued, then ask again.
                Err(SocketError::Io(_, Errno::ENOBUFS)) => {
                    draining = true;
                    lost = true;
                    continue;
                }
                Ok(None) => {
                    draining = false;
                    sentinel = self.seq;
                    self.seq = sentinel.wrapping_add(1);
                    self.send(OP, &getgen_request(sentinel))?;
                    continue;
                }
                Err(e) => return Err(socket_error(OP, e)),
            };
            for msg in msgs {
                if msg.seq == sentinel {
                    break 'recv;
                }
                if msg.kind == NLMSG_ERROR {
                    match error_code(&msg.payload) {
                        Some(0) => {}
                        Some(code) if batch.origin(msg.seq).is_some() => failures.push(Failure {
                            seq: msg.seq,
                            errno: Errno::from_raw(-code),
                            ack: ext_ack(msg.flags, &msg.payload),
                        }),
                        // Left over from an earlier exchange on this socket.
                        Some(_) => {}
                        None => return Err(malformed(OP, "truncated NLMSG_ERROR".into())),
                    }
                }
            }
        }
        failures.sort_by_key(|f| f.seq);
        if failures.is_empty() && !lost {
            return Ok(Ok(()));
        }
        Ok(Err(Rejection { failures, lost }))
    }

    /// The names of the inet tables in this namespace (read-only).
    pub fn inet_tables(&mut self) -> Result<Vec<String>> {
        const OP: &str = "listing the nftables tables";
        let mut names = Vec::new();
        for payload in self.dump(OP, DumpKind::Tables, gettable_dump_request)? {
            let (name, _) = nft_netlink::parse_table(&payload).map_err(|d| malformed(OP, d))?;
            names.push(name);
        }
        Ok(names)
    }

    /// Which of our tables exist (read-only); empty after a cleanup.
    pub fn managed_tables_present(&mut self) -> Result<Vec<String>> {
        let present = self.inet_tables()?;
        Ok(MANAGED_TABLES
            .iter()
            .filter(|t| present.iter().any(|p| p == *t))
            .map(|t| t.to_string())
            .collect())
    }

    /// Compares our tables with what [`NfTables::apply_ruleset`] would install for `ruleset`,
    /// changing nothing: which of our tables exist, their flags, their chains (names, and a
    /// base chain's type, hook, priority and policy), and every chain's rules in order,
    /// expression by expression (sets by contents). The expected side is the batch an apply
    /// would send, parsed back. Returns readable lines, empty when everything is in place.
    /// The dumps are repeated if a transaction commits meanwhile, so they show one ruleset.
    pub fn differences(&mut self, ruleset: &Ruleset, groups: &Groups) -> Result<Vec<String>> {
        const OP: &str = "comparing the nftables ruleset";
        let batch = replace_batch(ruleset, &|name| groups.gid(name), 0, &[])?;
        let expected = nft_netlink::expected_tables(&batch).map_err(|d| malformed(OP, d))?;
        let mut consistent = None;
        for _ in 0..CHECK_ATTEMPTS {
            let before = self.generation()?;
            let found = self.dump_managed_tables()?;
            if self.generation()? == before {
                consistent = Some(found);
                break;
            }
        }
        let found = consistent.ok_or_else(|| NftError::Unstable {
            op: OP.into(),
            attempts: CHECK_ATTEMPTS,
        })?;
        let mut lines = Vec::new();
        for table in &expected {
            if !found.iter().any(|f| f.name == table.name) {
                lines.push(format!("missing: table inet {}", table.name));
            }
        }
        for table in &found {
            if !expected.iter().any(|e| e.name == table.name) {
                lines.push(format!("unexpected: table inet {}", table.name));
            }
        }
        for table in &expected {
            if let Some(f) = found.iter().find(|f| f.name == table.name) {
                lines.extend(nft_netlink::compare_table(table, &f.checked()));
            }
        }
        Ok(lines)
    }

    /// Dumps our tables that exist: flags, chains, rules and the sets their rules use.
    fn dump_managed_tables(&mut self) -> Result<Vec<FoundTable>> {
        const OP: &str = "reading the nftables ruleset";
        let mut tables = Vec::new();
        for msg in self.dump(OP, DumpKind::Tables, gettable_dump_request)? {
            let (name, flags) = nft_netlink::parse_table(&msg).map_err(|d| malformed(OP, d))?;
            if MANAGED_TABLES.contains(&name.as_str()) {
                tables.push(FoundTable {
                    name,
                    flags,
                    ..FoundTable::default()
                });
            }
        }
        if tables.is_empty() {
            return Ok(tables);
        }
        for msg in self.dump(OP, DumpKind::Chains, nft_netlink::getchain_dump_request)? {
            let chain = nft_netlink::parse_chain(&msg).map_err(|d| malformed(OP, d))?;
            if let Some(t) = tables.iter_mut().find(|t| t.name == chain.table) {
                t.chains.push(chain);
            }
        }
        for table in &mut tables {
            let name = table.name.clone();
            for msg in self.dump(OP, DumpKind::Rules, |seq| {
                nft_netlink::getrule_dump_request(seq, &name)
            })? {
                let rule = nft_netlink::parse_rule(&msg).map_err(|d| malformed(OP, d))?;
                // The kernel filters by table; checked again in case an old one does not.
                if rule.table == name {
                    table.rules.push(rule);
                }
            }
            let used = table.referenced_sets();
            if used.is_empty() {
                continue;
            }
            for msg in self.dump(OP, DumpKind::Sets, |seq| {
                nft_netlink::getset_dump_request(seq, &name)
            })? {
                let (set, _, contents) =
                    nft_netlink::parse_set(&msg).map_err(|d| malformed(OP, d))?;
                if used.contains(&set) {
                    table.sets.insert(set, contents);
                }
            }
            for set in used {
                let Some(mut contents) = table.sets.get(&set).cloned() else {
                    continue;
                };
                for msg in self.dump(OP, DumpKind::SetElems, |seq| {
                    nft_netlink::getsetelem_dump_request(seq, &name, &set)
                })? {
                    let elems = nft_netlink::parse_set_elems(&msg).map_err(|d| malformed(OP, d))?;
                    contents.keys.extend(elems.keys);
                }
                contents.keys.sort();
                contents.keys.dedup();
                table.sets.insert(set, contents);
            }
        }
        Ok(tables)
    }

    /// Every table of the `ip` or `ip6` family (iptables-nft's) with its chains and how many
    /// rules and sets it holds, read over netlink: needs no iptables tool.
    pub fn family_tables(&mut self, family: XtFamily) -> Result<Vec<FamilyTable>> {
        const OP: &str = "listing the iptables-nft tables";
        let request = |kind| move |seq| nft_netlink::family_dump_request(kind, seq, family);
        let mut tables = self.family_tables_and_chains(family, true)?;
        if tables.is_empty() {
            return Ok(tables);
        }
        for msg in self.dump(OP, DumpKind::Rules, request(DumpKind::Rules))? {
            let (table, _) = nft_netlink::rule_place(&msg).map_err(|d| malformed(OP, d))?;
            if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
                t.rules += 1;
            }
        }
        for msg in self.dump(OP, DumpKind::Sets, request(DumpKind::Sets))? {
            let table = nft_netlink::set_table(&msg).map_err(|d| malformed(OP, d))?;
            if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
                t.sets += 1;
            }
        }
        for kind in [DumpKind::Objects, DumpKind::Flowtables] {
            for msg in self.dump(OP, kind, request(kind))? {
                let table = nft_netlink::set_table(&msg).map_err(|d| malformed(OP, d))?;
                if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
                    t.others += 1;
                }
            }
        }
        Ok(tables)
    }

    /// The names of the `ip` or `ip6` family's tables, each with its chains' names when
    /// `chains` is set (read-only; no rules are read, so it stays cheap at any size).
    pub fn family_names(
        &mut self,
        family: XtFamily,
        chains: bool,
    ) -> Result<Vec<(String, Vec<String>)>> {
        Ok(self
            .family_tables_and_chains(family, chains)?
            .into_iter()
            .map(|t| (t.name, t.chains.into_iter().map(|c| c.name).collect()))
            .collect())
    }

    /// The family's tables, with their chains when `chains` is set, and nothing counted yet:
    /// the first two dumps of both [`Self::family_tables`] and [`Self::family_names`].
    fn family_tables_and_chains(
        &mut self,
        family: XtFamily,
        chains: bool,
    ) -> Result<Vec<FamilyTable>> {
        const OP: &str = "listing the iptables-nft tables";
        let request = |kind| move |seq| nft_netlink::family_dump_request(kind, seq, family);
        let mut tables = Vec::new();
        for msg in self.dump(OP, DumpKind::Tables, request(DumpKind::Tables))? {
            let (name, _) = nft_netlink::parse_table(&msg).map_err(|d| malformed(OP, d))?;
            tables.push(FamilyTable {
                family,
                name,
                chains: Vec::new(),
                rules: 0,
                sets: 0,
                others: 0,
            });
        }
        if tables.is_empty() || !chains {
            return Ok(tables);
        }
        for msg in self.dump(OP, DumpKind::Chains, request(DumpKind::Chains))? {
            let chain = nft_netlink::parse_chain(&msg).map_err(|d| malformed(OP, d))?;
            if let Some(t) = tables.iter_mut().find(|t| t.name == chain.table) {
                t.chains.push(chain);
            }
        }
        Ok(tables)
    }

    /// The table and chain of every rule of the `ip` or `ip6` family (read-only).
    pub fn family_rule_places(&mut self, family: XtFamily) -> Result<Vec<(String, String)>> {
        const OP: &str = "listing the iptables-nft rules";
        let request = move |seq| nft_netlink::family_dump_request(DumpKind::Rules, seq, family);
        self.dump(OP, DumpKind::Rules, request)?
            .iter()
            .map(|msg| nft_netlink::rule_place(msg).map_err(|d| malformed(OP, d)))
            .collect()
    }

    /// Deletes these tables of `family` in one transaction that the kernel carries out only if
    /// the ruleset is still at `generation` (nothing changed since they were read).
    pub fn delete_family_tables(
        &mut self,
        family: XtFamily,
        tables: &[String],
        generation: u32,
    ) -> Result<()> {
        let batch = nft_netlink::delete_tables_batch(self.seq, family, tables, generation);
        self.send_batch(&batch)
    }

    /// The ruleset's generation id, which every committed transaction changes.
    pub fn generation(&mut self) -> Result<u32> {
        const OP: &str = "reading the nftables generation";
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(OP, &getgen_request(seq))?;
        loop {
            for msg in self.receive(OP)? {
                if msg.seq != seq {
                    continue;
                }
                if msg.kind == libc::NLMSG_ERROR as u16 {
                    return Err(dump_error(OP, &msg.payload));
                }
                return nft_netlink::gen_id_of(&msg.payload)
                    .ok_or_else(|| malformed(OP, "generation reply without an id".into()));
            }
        }
    }

    /// Sends a dump request and collects the payloads of its `kind` replies until
    /// `NLMSG_DONE`, however many datagrams that takes. An errno in `NLMSG_DONE` fails the
    /// dump; a dump the kernel marks as interrupted (`NLM_F_DUMP_INTR`: the list changed
    /// under it, so entries may be skipped or repeated) is redone.
    fn dump(
        &mut self,
        op: &str,
        kind: DumpKind,
        request: impl Fn(u32) -> Vec<u8>,
    ) -> Result<Vec<Vec<u8>>> {
        let reply = nft_netlink::dump_reply_type(kind);
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            self.send(op, &request(seq))?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                for msg in self.receive(op)? {
                    if msg.seq != seq {
                        continue;
                    }
                    interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                    match dump_step(&msg).map_err(|d| malformed(op, d))? {
                        DumpStep::Done => break 'recv,
                        // A set that went away between the set and element dumps.
                        DumpStep::Failed(code)
                            if kind == DumpKind::SetElems && -code == libc::ENOENT =>
                        {
                            break 'recv
                        }
                        DumpStep::Failed(code) => {
                            return Err(NftError::Io {
                                op: op.to_string(),
                                errno: Errno::from_raw(-code),
                            })
                        }
                        DumpStep::Item if msg.kind == reply => out.push(msg.payload),
                        DumpStep::Item | DumpStep::Skip => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(NftError::Unstable {
            op: op.to_string(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    fn send(&self, op: &str, buf: &[u8]) -> Result<()> {
        self.sock.send(buf).map_err(|e| socket_error(op, e))
    }

    /// Reads one datagram and returns its messages.
    fn receive(&self, op: &str) -> Result<Vec<Msg>> {
        self.sock.receive().map_err(|e| socket_error(op, e))
    }
}

/// One message of a batch the kernel refused: its sequence number, errno and explanation.
#[derive(Debug)]
struct Failure {
    seq: u32,
    errno: Errno,
    ack: ExtAck,
}

/// Why the kernel refused a batch (nothing of it was applied).
#[derive(Debug)]
struct Rejection {
    /// The failing messages in batch order.
    failures: Vec<Failure>,
    /// Some error replies were dropped (receive buffer full); the first ones are kept.
    lost: bool,
}

impl Rejection {
    /// The table whose creation failed because it exists: the listing the batch was built
    /// from missed it.
    fn existing_table(&self, batch: &Batch) -> Option<String> {
        self.failures
            .iter()
            .find_map(|f| match batch.origin(f.seq) {
                Some(Origin::Table {
                    table,
                    op: TableOp::Create,
                }) if f.errno == Errno::EEXIST => Some(table.clone()),
                _ => None,
            })
    }

    /// The error naming the first failing message, with what the kernel says about it.
    fn into_error(self, batch: &Batch) -> NftError {
        let lost = self
            .lost
            .then(|| "some of its error reports were lost: receive buffer full".to_string());
        let Some(first) = self.failures.first() else {
            return NftError::Rejected {
                origin: Origin::Batch.to_string(),
                errno: Errno::ENOBUFS,
                kernel: lost,
                others: 0,
            };
        };
        let message = batch.message(first.seq);
        let located = first
            .ack
            .offset
            .zip(message)
            .and_then(|(offset, m)| nft_netlink::locate(&m.bytes, offset))
            .map(|at| format!("at {at}"));
        let kernel: Vec<String> = [
            first.ack.message.as_ref().map(|m| format!("{m:?}")),
            located,
            lost,
        ]
        .into_iter()
        .flatten()
        .collect();
        NftError::Rejected {
            origin: message
                .map(|m| m.origin.to_string())
                .unwrap_or_else(|| format!("message {}", first.seq)),
            errno: first.errno,
            kernel: (!kernel.is_empty()).then(|| kernel.join(", ")),
            others: self.failures.len() - 1,
        }
    }
}

/// Adds what was being done to a socket error.
fn socket_error(op: &str, e: SocketError) -> NftError {
    match e {
        SocketError::Io(_, errno) => NftError::Io {
            op: op.to_string(),
            errno,
        },
        SocketError::Malformed(detail) => malformed(op, detail),
    }
}

/// The error of a failed request: the kernel's errno, or a malformed reply.
fn dump_error(op: &str, payload: &[u8]) -> NftError {
    match error_code(payload) {
        Some(code) => NftError::Io {
            op: op.to_string(),
            errno: Errno::from_raw(-code),
        },
        None => malformed(op, "truncated NLMSG_ERROR".into()),
    }
}

fn malformed(op: &str, detail: String) -> NftError {
    NftError::Malformed {
        op: op.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::netlink_wire::parse_messages;

    /// A one-rule ruleset in our nat table.
    fn one_rule() -> Ruleset {
        use crate::render::nft_ruleset::{NftChain, NftRule, NftTable, Stmt};
        Ruleset {
            tables: vec![NftTable {
                name: "istio-proxy-nat".into(),
                chains: vec![NftChain {
                    name: "c".into(),
                    base: None,
                }],
                rules: vec![NftRule {
                    chain: "c".into(),
                    index: None,
                    stmts: vec![Stmt::Counter, Stmt::Return],
                    purpose: "test",
                }],
            }],
        }
    }

    #[test]
    fn a_refusal_of_the_exclusive_create_names_the_table_that_exists() {
        let batch = replace_batch(&one_rule(), &|_| None, 10, &[]).unwrap();
        let seq_of = |pick: &dyn Fn(&Origin) -> bool| {
            batch
                .messages()
                .iter()
                .find(|m| pick(&m.origin))
                .unwrap()
                .seq
        };
        let create = seq_of(&|o| {
            matches!(
                o,
                Origin::Table {
                    op: TableOp::Create,
                    ..
                }
            )
        });
        let rule = seq_of(&|o| matches!(o, Origin::Rule(_)));
        let refusal = |failures: Vec<(u32, Errno)>, lost| Rejection {
            failures: failures
                .into_iter()
                .map(|(seq, errno)| Failure {
                    seq,
                    errno,
                    ack: ExtAck::default(),
                })
                .collect(),
            lost,
        };
        let stale = refusal(vec![(create, Errno::EEXIST)], false);
        assert_eq!(
            stale.existing_table(&batch).as_deref(),
            Some("istio-proxy-nat")
        );
        // Another errno, or EEXIST elsewhere, is not a stale listing.
        for other in [
            refusal(vec![(create, Errno::ENOMEM)], false),
            refusal(vec![(rule, Errno::EEXIST)], false),
        ] {
            assert_eq!(other.existing_table(&batch), None);
        }
        assert_eq!(
            stale.into_error(&batch).to_string(),
            "creating table inet istio-proxy-nat: File exists"
        );
    }

    #[test]
    fn a_refusal_carries_the_kernels_text_and_says_when_reports_were_lost() {
        let batch = replace_batch(&one_rule(), &|_| None, 10, &[]).unwrap();
        let rule = batch
            .messages()
            .iter()
            .find(|m| matches!(m.origin, Origin::Rule(_)))
            .unwrap()
            .seq;
        let explained = Rejection {
            failures: vec![Failure {
                seq: rule,
                errno: Errno::ENOENT,
                ack: ExtAck {
                    message: Some("Unknown expression".into()),
                    offset: None,
                },
            }],
            lost: true,
        };
        assert_eq!(
            explained.into_error(&batch).to_string(),
            "rule 1 of istio-proxy-nat/c (test) `counter return`: No such file or directory \
             [kernel: \"Unknown expression\", some of its error reports were lost: receive \
             buffer full]"
        );
        let lost = Rejection {
            failures: Vec::new(),
            lost: true,
        };
        assert_eq!(
            lost.into_error(&batch).to_string(),
            "the nf_tables transaction: No buffer space available [kernel: some of its error \
             reports were lost: receive buffer full]"
        );
    }

    #[test]
    fn replies_are_split_into_messages_and_truncation_is_an_error() {
        let mut buf = Vec::new();
        for seq in [7u32, 8] {
            buf.extend_from_slice(&20u32.to_ne_bytes());
            buf.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(-95i32).to_ne_bytes());
        }
        let msgs = parse_messages(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].seq, 8);
        assert_eq!(error_code(&msgs[0].payload), Some(-95));
        assert!(parse_messages(&buf[..30]).is_err());
    }
}
