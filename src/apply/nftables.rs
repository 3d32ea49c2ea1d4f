//! Installs the nftables ruleset natively: one nf_tables batch over a `NETLINK_NETFILTER`
//! socket, no `nft` binary and no libnftnl. The kernel applies a batch as one transaction —
//! every message or none — so a rejected rule leaves the ruleset exactly as it was.
//!
//! The batch replaces our tables (`istio-proxy-nat`, `-mangle`, `-raw`) as a whole; tables of
//! other owners are never named. A failing message's sequence number is mapped back to the
//! rule (or chain, or table) it came from, so the error reads e.g. "rule 7 of
//! istio-proxy-nat/istio-output (…) `…`: Operation not supported".
//!
//! `--check` reads the same tables back with dumps (tables, chains, rules, sets, set elements)
//! and compares them with the batch an apply would send; it never sends a batch.

use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use super::nlsocket::{NlSocket, SocketError};
use crate::netlink_wire::{error_code, Msg};

use crate::backend::nft_netlink::{
    self, cleanup_batch, getgen_request, gettable_dump_request, replace_batch, Batch, DumpKind,
    EncodeError, FoundTable,
};
use crate::backend::nftables::{ruleset, Ruleset, MANAGED_TABLES};
use crate::plan::Plan;

pub use super::groups::{Groups, GROUP_FILE};
/// `NFT_MSG_NEWTABLE`, the type of each table in a `GETTABLE` dump.
const NFT_MSG_NEWTABLE: u16 = 0;

/// Why applying or reading the nftables ruleset failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The kernel rejected a message of the batch, so none of it was applied. `origin` names
    /// the first failing message; later messages may fail as a consequence.
    #[error("{origin}: {}{}", errno.desc(), more(*others))]
    Rejected {
        /// The rule, chain or table the first failing message came from.
        origin: String,
        /// The kernel's errno for it.
        errno: Errno,
        /// How many further messages of the batch failed.
        others: usize,
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
    #[error("reading {path}: {detail}")]
    Groups {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
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
        Ok(NfTables { sock, seq: 1 })
    }

    /// The sequence number the next batch should start at (see [`NfTables::send_batch`]).
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Makes our tables exactly what the plan says, in one transaction: tables the plan uses
    /// are replaced, ours it does not use are deleted, nothing else is touched. Group names
    /// are resolved from `/etc/group`.
    pub fn apply(&mut self, plan: &Plan) -> Result<Applied> {
        let groups = Groups::load(Path::new(GROUP_FILE)).map_err(|detail| NftError::Groups {
            path: GROUP_FILE.to_string(),
            detail,
        })?;
        self.apply_ruleset(&ruleset(plan), &groups)
    }

    /// [`NfTables::apply`] for a ruleset already built, with a given group database.
    pub fn apply_ruleset(&mut self, ruleset: &Ruleset, groups: &Groups) -> Result<Applied> {
        let existing = self.managed_tables_present()?;
        let batch = replace_batch(ruleset, &|name| groups.gid(name), self.seq, &existing)?;
        self.send_batch(&batch)?;
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
        const OP: &str = "sending the nf_tables batch";
        let bytes = batch.bytes();
        // The whole batch must fit in one datagram; the default send buffer (~200 KiB)
        // already holds Istio's largest ruleset, so only raise it when needed.
        if bytes.len() > 128 * 1024 {
            self.sock
                .reserve_send(bytes.len())
                .map_err(|e| socket_error(OP, e))?;
        }
        self.send(OP, &bytes)?;
        // The kernel processes the batch inside sendmsg and queues its errors before
        // anything sent later is answered: the reply to this request closes the batch.
        let sentinel = batch.next_seq();
        self.seq = sentinel.wrapping_add(1);
        self.send(OP, &getgen_request(sentinel))?;
        let mut failures: Vec<(u32, Errno)> = Vec::new();
        'recv: loop {
            for msg in self.receive(OP)? {
                if msg.seq == sentinel {
                    break 'recv;
                }
                if msg.kind == libc::NLMSG_ERROR as u16 {
                    match error_code(&msg.payload) {
                        Some(0) => {}
                        Some(code) if batch.origin(msg.seq).is_some() => {
                            failures.push((msg.seq, Errno::from_raw(-code)))
                        }
                        // Left over from an earlier exchange on this socket.
                        Some(_) => {}
                        None => return Err(malformed(OP, "truncated NLMSG_ERROR".into())),
                    }
                }
            }
        }
        failures.sort_by_key(|(seq, _)| *seq);
        match failures.first() {
            None => Ok(()),
            Some(&(seq, errno)) => Err(NftError::Rejected {
                origin: batch
                    .origin(seq)
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| format!("message {seq}")),
                errno,
                others: failures.len() - 1,
            }),
        }
    }

    /// The names of the inet tables in this namespace (read-only).
    pub fn inet_tables(&mut self) -> Result<Vec<String>> {
        const OP: &str = "listing the nftables tables";
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(OP, &gettable_dump_request(seq))?;
        let mut names = Vec::new();
        loop {
            for msg in self.receive(OP)? {
                if msg.seq != seq {
                    continue;
                }
                match i32::from(msg.kind) {
                    libc::NLMSG_DONE => return Ok(names),
                    libc::NLMSG_ERROR => match error_code(&msg.payload) {
                        Some(0) => {}
                        Some(code) => {
                            return Err(NftError::Io {
                                op: OP.into(),
                                errno: Errno::from_raw(-code),
                            })
                        }
                        None => return Err(malformed(OP, "truncated NLMSG_ERROR".into())),
                    },
                    _ if msg.kind == nft_netlink::nft_type(NFT_MSG_NEWTABLE) => {
                        let name = nft_netlink::table_name_of(&msg.payload)
                            .ok_or_else(|| malformed(OP, "table without a name".into()))?;
                        names.push(name);
                    }
                    _ => {}
                }
            }
        }
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
        let mut attempts = 0;
        let found = loop {
            attempts += 1;
            let before = self.generation()?;
            let found = self.dump_managed_tables()?;
            if self.generation()? == before || attempts == 3 {
                break found;
            }
        };
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

    /// The ruleset's generation id, which every committed transaction changes.
    fn generation(&mut self) -> Result<u32> {
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
    /// `NLMSG_DONE`, however many datagrams that takes.
    fn dump(
        &mut self,
        op: &str,
        kind: DumpKind,
        request: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Vec<Vec<u8>>> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(op, &request(seq))?;
        let reply = nft_netlink::dump_reply_type(kind);
        let mut out = Vec::new();
        loop {
            for msg in self.receive(op)? {
                if msg.seq != seq {
                    continue;
                }
                match i32::from(msg.kind) {
                    libc::NLMSG_DONE => return Ok(out),
                    libc::NLMSG_ERROR => match error_code(&msg.payload) {
                        Some(0) => {}
                        // A set that went away between the set and element dumps.
                        Some(code) if kind == DumpKind::SetElems && -code == libc::ENOENT => {
                            return Ok(out)
                        }
                        _ => return Err(dump_error(op, &msg.payload)),
                    },
                    _ if msg.kind == reply => out.push(msg.payload),
                    _ => {}
                }
            }
        }
    }

    fn send(&self, op: &str, buf: &[u8]) -> Result<()> {
        self.sock.send(buf).map_err(|e| socket_error(op, e))
    }

    /// Reads one datagram and returns its messages.
    fn receive(&self, op: &str) -> Result<Vec<Msg>> {
        self.sock.receive().map_err(|e| socket_error(op, e))
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
    use crate::netlink_wire::parse_messages;

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
