//! The benchmark's connection-rate client (`scripts/bench.py`): in the current network
//! namespace, listens on the proxy's outbound capture port, then — as an app user — opens
//! sequential new TCP connections to a destination that the capture rules redirect to that
//! listener, and prints how many per second. Bounded in count and time, and meant to run only
//! inside a lab namespace (the destination is routed to a dummy interface there).
//!
//! `cargo run --release --example connrate -- DST:PORT LISTEN_PORT UID COUNT MAX_SECONDS`

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dst, listen, uid, count, max_secs] = &args[..] else {
        eprintln!("usage: connrate DST:PORT LISTEN_PORT UID COUNT MAX_SECONDS");
        return ExitCode::from(2);
    };
    let (Ok(dst), Ok(listen), Ok(uid), Ok(count), Ok(max_secs)) = (
        dst.parse::<SocketAddr>(),
        listen.parse::<u16>(),
        uid.parse::<u32>(),
        count.parse::<u64>(),
        max_secs.parse::<f64>(),
    ) else {
        eprintln!("connrate: bad arguments {args:?}");
        return ExitCode::from(2);
    };
    // Dual-stack listener: REDIRECT sends IPv4 connections to 127.0.0.1, IPv6 ones to ::1.
    let listener = match TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), listen)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("connrate: listening on port {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    // An app's uid (and gid): the capture rules leave the proxy's own uid alone.
    if let Err(e) = setgroups(&[])
        .and_then(|_| setgid(Gid::from_raw(uid)))
        .and_then(|_| setuid(Uid::from_raw(uid)))
    {
        eprintln!("connrate: becoming uid {uid}: {e}");
        return ExitCode::from(1);
    }
    let deadline = Duration::from_secs_f64(max_secs);
    let start = Instant::now();
    let mut done = 0u64;
    while done < count && start.elapsed() < deadline {
        match TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
            // Closed with a reset (linger 0): no TIME_WAIT on either side, so thousands of
            // connections in a row never meet an old one's port.
            // Accepted here, in the same thread: a listener thread starved of CPU would let
            // the accept queue overflow and the next SYN wait a second for its retry.
            Ok(s) => {
                match listener.accept() {
                    Ok((server, _)) => drop(server),
                    Err(e) => {
                        eprintln!("connrate: accepting connection {done}: {e}");
                        return ExitCode::from(1);
                    }
                }
                let _ = setsockopt(
                    &s,
                    sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                drop(s)
            }
            Err(e) => {
                eprintln!("connrate: connection {done} to {dst}: {e}");
                return ExitCode::from(1);
            }
        }
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{done} {secs:.6} {:.0}", done as f64 / secs);
    ExitCode::SUCCESS
}
