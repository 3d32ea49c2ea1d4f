//! Who holds a socket, best effort, from `/proc`: the socket's inode from this network
//! namespace's `/proc/net/{unix,tcp,tcp6}`, then the process with a file descriptor on it from
//! `/proc/*/fd` (processes this user may not look into are skipped). Used to name the holder
//! of meshinit's namespace lock and of a capture port validation cannot bind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `TCP_LISTEN` in the `st` column of `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The inode of the listed unix socket bound to `path` (`@name` for abstract names), from
/// `/proc/net/unix` text: `Num RefCount Protocol Flags Type St Inode Path`.
pub fn unix_socket_inode(table: &str, path: &str) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, _, _, _, _, _, inode, p] if *p == path => inode.parse().ok(),
            _ => None,
        }
    })
}

/// A listening TCP socket as `/proc/net/tcp{,6}` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListener {
    /// The address it is bound to (unspecified for a wildcard bind).
    pub local: SocketAddr,
    /// The effective uid of its creator.
    pub uid: u32,
    /// The socket's inode.
    pub inode: u64,
}

/// The listening sockets in `/proc/net/tcp` or `tcp6` text that occupy `addr`: bound to it, or
/// to the wildcard address of either family (a dual-stack `[::]` listener also holds IPv4).
pub fn tcp_listeners_on(table: &str, addr: SocketAddr) -> Vec<TcpListener> {
    table
        .lines()
        .skip(1)
        .filter_map(parse_tcp_line)
        .filter(|l| {
            l.local.port() == addr.port()
                && (l.local.ip() == addr.ip() || l.local.ip().is_unspecified())
        })
        .collect()
}

/// One line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`, listeners only.
fn parse_tcp_line(line: &str) -> Option<TcpListener> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || fields[3] != TCP_LISTEN {
        return None;
    }
    let (ip, port) = fields[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host order.
    let words: Vec<[u8; 4]> = (0..ip.len() / 8)
        .map(|i| {
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()
                .map(u32::to_ne_bytes)
        })
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(*a)),
        [a, b, c, d] => {
            let mut octets = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(*w);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(TcpListener {
        local: SocketAddr::new(ip, port),
        uid: fields[7].parse().ok()?,
        inode: fields[9].parse().ok()?,
    })
}

/// The first process (pid, comm) with a file descriptor on socket `inode`, found by scanning
/// `/proc/*/fd`; processes we may not look into are skipped.
pub fn socket_owner(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, comm.trim().to_string()));
        }
    }
    None
}

/// Who listens on `addr` in this network namespace, for an error message: `pid N (comm)`
/// when the process is visible, else the socket's uid and inode; `None` when nothing is
/// listed (e.g. the port is held by a socket that is not listening).
pub fn tcp_port_holder(addr: SocketAddr) -> Option<String> {
    let mut found = Vec::new();
    for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            found.extend(tcp_listeners_on(&text, addr));
        }
    }
    let first = found.first()?;
    Some(match socket_owner(first.inode) {
        Some((pid, comm)) => format!("pid {pid} ({comm}), listening on {}", first.local),
        None => format!(
            "a socket of uid {} listening on {} (inode {}; its process is not visible to this user)",
            first.uid, first.local, first.inode
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_socket_is_found_in_proc_net_unix_text() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23119 /run/systemd/private\n\
            0000000000000000: 00000002 00000000 00000000 0001 01 99 \n\
            0000000000000000: 00000002 00000000 00000000 0001 01 4242 @meshinit/netns-lock\n";
        assert_eq!(unix_socket_inode(table, "@meshinit/netns-lock"), Some(4242));
        assert_eq!(unix_socket_inode(table, "@other"), None);
    }

    #[test]
    fn listeners_on_an_address_are_found_in_proc_net_tcp_text() {
        let word = |o: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(o));
        let v4 = |o: [u8; 4], port: u16, st: &str, inode: u32| {
            format!(
                "   0: {}:{port:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000  1337        0 {inode} 1 0 100 0 0 10 0\n",
                word(o)
            )
        };
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let table = [
            header.to_string(),
            v4([127, 0, 0, 1], 15001, "0A", 11),
            v4([127, 0, 0, 1], 15006, "01", 12),
            v4([0, 0, 0, 0], 15006, "0A", 13),
            v4([10, 0, 0, 1], 15001, "0A", 14),
        ]
        .concat();
        let at = |port| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let inodes = |port| -> Vec<u64> {
            tcp_listeners_on(&table, at(port))
                .iter()
                .map(|l| l.inode)
                .collect()
        };
        assert_eq!(inodes(15001), vec![11]);
        assert_eq!(inodes(15006), vec![13], "established sockets do not count");
        assert_eq!(tcp_listeners_on(&table, at(15001))[0].uid, 1337);
        assert!(inodes(80).is_empty());

        // ::1 as the kernel prints it: four host-order words.
        let v6 = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let ip: String = v6
            .chunks(4)
            .map(|c| word([c[0], c[1], c[2], c[3]]))
            .collect();
        let line = format!(
            "{header}   0: {ip}:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n"
        );
        let found = tcp_listeners_on(&line, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 15001));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].local.to_string(), "[::1]:15001");
        assert!(tcp_listeners_on("garbage\n1 2 3\n", at(1)).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_named_with_its_pid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = tcp_port_holder(addr).expect("listed");
        assert!(
            holder.starts_with(&format!("pid {} (", std::process::id())),
            "{holder}"
        );
    }

    #[test]
    fn a_unix_socket_of_this_process_is_found_with_its_pid() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::UnixListener;
        let name = format!("meshinit-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let table = std::fs::read_to_string("/proc/thread-self/net/unix").unwrap();
        let inode = unix_socket_inode(&table, &format!("@{name}")).expect("listed");
        let (pid, _) = socket_owner(inode).expect("found");
        assert_eq!(pid, std::process::id());
        drop(listener);
    }
}
