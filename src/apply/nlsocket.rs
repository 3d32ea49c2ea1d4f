//! A netlink socket of the calling thread's network namespace — opened, sent to and read
//! from whole datagrams — shared by the rtnetlink and nf_tables code. A netlink socket acts
//! in the namespace it was opened in, whichever thread uses it later.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::netlink_wire::{parse_messages, Msg};

/// The kernel answers synchronously; this only guards against waiting forever on a bug.
const RECV_TIMEOUT_SECS: i64 = 10;

/// What went wrong on the socket; callers add what they were doing.
#[derive(Debug)]
pub enum SocketError {
    /// A socket call failed: what it was doing, and the errno.
    Io(&'static str, Errno),
    /// The kernel's reply could not be parsed.
    Malformed(String),
}

/// One netlink socket.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
}

impl NlSocket {
    /// Opens and binds a socket of `protocol` in the calling thread's namespace.
    pub fn open(protocol: SockProtocol) -> Result<NlSocket, SocketError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(|e| SocketError::Io("opening a netlink socket", e))?;
        // Port id 0: the kernel picks a free one; no multicast groups, only our replies.
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| SocketError::Io("binding the netlink socket", e))?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::seconds(RECV_TIMEOUT_SECS),
        )
        .map_err(|e| SocketError::Io("setting the netlink receive timeout", e))?;
        Ok(NlSocket { fd })
    }

    /// Makes room for a datagram of `len` bytes (a large nf_tables batch is one datagram).
    pub fn reserve_send(&self, len: usize) -> Result<(), SocketError> {
        setsockopt(&self.fd, sockopt::SndBuf, &(len + 4096))
            .map_err(|e| SocketError::Io("raising the netlink send buffer", e))
    }

    /// Sends one datagram.
    pub fn send(&self, buf: &[u8]) -> Result<(), SocketError> {
        let kernel = NetlinkAddr::new(0, 0);
        loop {
            match sendto(self.fd.as_raw_fd(), buf, &kernel, MsgFlags::empty()) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(n) => {
                    return Err(SocketError::Malformed(format!(
                        "sent {n} of {} bytes",
                        buf.len()
                    )))
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(SocketError::Io("sending", e)),
            }
        }
    }

    /// Reads one datagram, whole, and splits it into messages.
    pub fn receive(&self) -> Result<Vec<Msg>, SocketError> {
        let fd = self.fd.as_raw_fd();
        // Peek with MSG_TRUNC to learn the datagram's full size, so a large reply is never
        // cut short.
        let mut buf = vec![0u8; 0];
        let size = retry_eintr(|| recv(fd, &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC))
            .map_err(|e| SocketError::Io("receiving", e))?;
        buf.resize(size, 0);
        let n = retry_eintr(|| recv(fd, &mut buf, MsgFlags::empty()))
            .map_err(|e| SocketError::Io("receiving", e))?;
        buf.truncate(n);
        parse_messages(&buf).map_err(SocketError::Malformed)
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
