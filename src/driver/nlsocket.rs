//! A netlink socket of the calling thread's network namespace — opened, sent to and read
//! from whole datagrams — shared by the rtnetlink and nf_tables code. A netlink socket acts
//! in the namespace it was opened in, whichever thread uses it later.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, getsockopt, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::render::netlink_wire::{parse_messages, Msg};

/// `<linux/netlink.h>` socket options of level `SOL_NETLINK` (not in nix's option list).
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

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

    /// Asks for short, explained error replies: `NETLINK_CAP_ACK` (an error carries the
    /// failing request's header, not its whole body, so a batch with thousands of failing
    /// messages still fits the receive buffer) and `NETLINK_EXT_ACK` (the kernel adds its own
    /// error text and the offset of the attribute it objects to). Kernels without them
    /// (before 4.3 and 4.12) answer as before, so a refusal is not an error.
    pub fn enable_ext_ack(&self) {
        for option in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            let _ = set_netlink_flag(&self.fd, option);
        }
    }

    /// Makes room for a datagram of `len` bytes (a large nf_tables batch is one datagram).
    /// `SO_SNDBUFFORCE` (what nft does) is not bounded by `net.core.wmem_max`, whose default
    /// (about 208 KiB) is far below a batch of thousands of rules; it needs `CAP_NET_ADMIN`,
    /// without which the bounded `SO_SNDBUF` is tried.
    pub fn reserve_send(&self, len: usize) -> Result<(), SocketError> {
        // A datagram may take the buffer's reported size (twice what was set) less 32 bytes.
        let current = getsockopt(&self.fd, sockopt::SndBuf).unwrap_or(0);
        if current >= len + 32 {
            return Ok(());
        }
        let size = len + 4096;
        if setsockopt(&self.fd, sockopt::SndBufForce, &size).is_ok() {
            return Ok(());
        }
        setsockopt(&self.fd, sockopt::SndBuf, &size)
            .map_err(|e| SocketError::Io("raising the netlink send buffer", e))
    }

    /// Makes room for `len` bytes of queued replies (one error per failing message of a
    /// batch arrives before anything is read): `SO_RCVBUFFORCE`, else the bounded
    /// `SO_RCVBUF`. Never shrinks the buffer.
    pub fn reserve_receive(&self, len: usize) -> Result<(), SocketError> {
        // The kernel reports twice what was set (its bookkeeping overhead).
        let current = getsockopt(&self.fd, sockopt::RcvBuf).unwrap_or(0) / 2;
        if current >= len {
            return Ok(());
        }
        if setsockopt(&self.fd, sockopt::RcvBufForce, &len).is_ok() {
            return Ok(());
        }
        setsockopt(&self.fd, sockopt::RcvBuf, &len)
            .map_err(|e| SocketError::Io("raising the netlink receive buffer", e))
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
        self.receive_with(MsgFlags::empty())
    }

    /// [`NlSocket::receive`] without waiting: `Ok(None)` when nothing is queued.
    pub fn receive_queued(&self) -> Result<Option<Vec<Msg>>, SocketError> {
        match self.receive_with(MsgFlags::MSG_DONTWAIT) {
            Err(SocketError::Io(_, Errno::EAGAIN)) => Ok(None),
            other => other.map(Some),
        }
    }

    fn receive_with(&self, flags: MsgFlags) -> Result<Vec<Msg>, SocketError> {
        let fd = self.fd.as_raw_fd();
        // Peek with MSG_TRUNC to learn the datagram's full size, so a large reply is never
        // cut short.
        let mut buf = vec![0u8; 0];
        let size = retry_eintr(|| {
            recv(
                fd,
                &mut buf,
                flags | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            )
        })
        .map_err(|e| SocketError::Io("receiving", e))?;
        buf.resize(size, 0);
        let n = retry_eintr(|| recv(fd, &mut buf, flags))
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

/// Turns on a boolean `SOL_NETLINK` option. nix has no wrapper for netlink's own options, so
/// this is the crate's one `setsockopt` by hand.
#[allow(unsafe_code)]
fn set_netlink_flag(fd: &OwnedFd, option: libc::c_int) -> nix::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket, borrowed (so kept open) for the call; the option value
    // is a live c_int whose exact size is passed, and the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}
