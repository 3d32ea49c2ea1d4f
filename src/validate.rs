//! The redirection self-test (`--run-validation`), with Istio's semantics: listen where the
//! proxy would (outbound and inbound capture ports on localhost), connect as this process to
//! the passthrough address on the probe port, and pass when a connection lands on a listener
//! with the probe port as its original destination. Needs no capabilities.
//!
//! A capture port that cannot be listened on (another socket holds it without
//! `SO_REUSEPORT`, or as another user) is an immediate failure naming the port and, when
//! `/proc` shows it, its holder: waiting out the timeout would only report a misleading
//! "not redirected".

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrStorage,
};
use nix::sys::time::TimeVal;

use crate::config::types::Port;

/// One family's probe: where the listeners bind and where the probe connects.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Localhost of the family: listeners bind here and the client binds here.
    pub listen: IpAddr,
    /// The passthrough address (127.0.0.6 or ::6): loopback traffic the rules must capture.
    pub target: IpAddr,
}

impl Probe {
    /// The IPv4 probe: listen on 127.0.0.1, connect to 127.0.0.6.
    pub fn v4() -> Probe {
        Probe {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            target: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        }
    }
    /// The IPv6 probe: listen on ::1, connect to ::6.
    pub fn v6() -> Probe {
        Probe {
            listen: IpAddr::V6(Ipv6Addr::LOCALHOST),
            target: IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
        }
    }
}

/// Why validation failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// A capture port could not be listened on; validation did not run.
    #[error("cannot listen on capture port {addr}: {error}{}; validation needs every capture port free, or shared with SO_REUSEPORT by the same user", holder.as_ref().map(|h| format!(" (held by {h})")).unwrap_or_default())]
    PortUnavailable {
        /// The address and capture port.
        addr: SocketAddr,
        /// The bind or listen error.
        error: nix::Error,
        /// Who holds it, when `/proc` shows that.
        holder: Option<String>,
    },
    /// No probe connection was redirected to a listener in time.
    #[error("no connection to {target}:{port} was redirected to a capture port within {} (last error: {last})", crate::go_duration::go_duration(*timeout))]
    Timeout {
        /// The passthrough address the probe connected to.
        target: IpAddr,
        /// The probe port (`--iptables-probe-port`).
        port: Port,
        /// How long it tried (`--probe-timeout`).
        timeout: Duration,
        /// The last attempt's outcome.
        last: Attempt,
    },
}

/// How the last probe attempt went, when validation timed out.
#[derive(Debug, thiserror::Error)]
pub enum Attempt {
    /// None was made.
    #[error("no attempt")]
    None,
    /// It connected, but not to a capture port (the rules did not redirect it).
    #[error("connected, but not to a capture port")]
    NotRedirected,
    /// The probe's socket could not be made, given its timeout or bound.
    #[error("{0}")]
    Socket(Errno),
    /// Connecting failed.
    #[error("connecting to {target}:{port}: {errno}")]
    Connect {
        /// The passthrough address.
        target: IpAddr,
        /// The probe port.
        port: Port,
        /// The kernel's answer.
        errno: Errno,
    },
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A TCP listener with SO_REUSEADDR and SO_REUSEPORT, as Istio's validator opens it, so a
/// proxy already listening does not make validation fail.
fn listen_on(addr: SocketAddr) -> nix::Result<TcpListener> {
    let fd: OwnedFd = socket(
        family_of(addr.ip()),
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(TcpListener::from(fd))
}

/// The original destination port of a redirected connection.
fn original_port(stream: &TcpStream, ipv6: bool) -> nix::Result<u16> {
    if ipv6 {
        getsockopt(stream, sockopt::Ip6tOriginalDst).map(|a| u16::from_be(a.sin6_port))
    } else {
        getsockopt(stream, sockopt::OriginalDst).map(|a| u16::from_be(a.sin_port))
    }
}

/// One connection attempt: bind the family's localhost, connect to the target, close.
fn probe_once(probe: Probe, port: Port, timeout: Duration) -> Result<(), Attempt> {
    let fd: OwnedFd = socket(
        family_of(probe.listen),
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(Attempt::Socket)?;
    let tv = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(Attempt::Socket)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    bind(
        raw,
        &SockaddrStorage::from(SocketAddr::new(probe.listen, 0)),
    )
    .map_err(Attempt::Socket)?;
    connect(
        raw,
        &SockaddrStorage::from(SocketAddr::new(probe.target, port.get())),
    )
    .map_err(|errno| Attempt::Connect {
        target: probe.target,
        port,
        errno,
    })
}

/// Runs one family's probe: listeners on `ports`, a connection attempt every second, success
/// when one lands with `probe_port` as its original destination.
pub fn validate(
    probe: Probe,
    ports: &[Port],
    probe_port: Port,
    timeout: Duration,
) -> Result<(), ValidationError> {
    let (landed, wait) = mpsc::channel::<()>();
    for &port in ports {
        let addr = SocketAddr::new(probe.listen, port.get());
        match listen_on(addr) {
            Ok(listener) => {
                let landed = landed.clone();
                let ipv6 = probe.listen.is_ipv6();
                std::thread::spawn(move || {
                    for mut stream in listener.incoming().flatten() {
                        let Ok(original) = original_port(&stream, ipv6) else {
                            continue;
                        };
                        let _ = writeln!(stream, "{original}");
                        if original == probe_port.get() {
                            let _ = landed.send(());
                        }
                    }
                });
            }
            Err(error) => {
                return Err(ValidationError::PortUnavailable {
                    addr,
                    error,
                    holder: crate::sys::procfs::tcp_port_holder(addr),
                })
            }
        }
    }
    let deadline = Instant::now() + timeout;
    let mut last = Attempt::None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ValidationError::Timeout {
                target: probe.target,
                port: probe_port,
                timeout,
                last,
            });
        }
        let attempt = left.min(Duration::from_secs(1));
        let started = Instant::now();
        match probe_once(probe, probe_port, attempt) {
            Ok(()) => last = Attempt::NotRedirected,
            Err(e) => last = e,
        }
        let pause = Duration::from_secs(1)
            .saturating_sub(started.elapsed())
            .min(left);
        if wait
            .recv_timeout(pause.max(Duration::from_millis(50)))
            .is_ok()
        {
            return Ok(());
        }
    }
}

/// What to do about a failed validation, for the operator reading the pod's logs.
pub const FAILURE_ADVICE: &str = "traffic is not redirected to the proxy, so this workload is not ready for the mesh. \
With Istio CNI this happens when the pod was scheduled before the node's CNI plugin was ready: \
delete the pod so it is scheduled again (istio-cni's repair controller does this when cni.repair.deletePods=true).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_written_as_the_flag_takes_it() {
        let e = ValidationError::Timeout {
            target: Probe::v4().target,
            port: Port::new_const(15002),
            timeout: Duration::from_secs(90),
            last: Attempt::Connect {
                target: Probe::v4().target,
                port: Port::new_const(15002),
                errno: Errno::ECONNREFUSED,
            },
        };
        assert_eq!(
            e.to_string(),
            "no connection to 127.0.0.6:15002 was redirected to a capture port within 1m30s (last error: connecting to 127.0.0.6:15002: ECONNREFUSED: Connection refused)"
        );
    }
}
