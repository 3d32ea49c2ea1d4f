//! Real-kernel traffic lab: a pod and a peer network namespace joined by a veth pair, plus
//! listeners and credential-switching clients that report where a connection really landed.
//!
//! Anything that touches a namespace runs in a dedicated thread that `setns`es into it and,
//! where asked, switches its own credentials; the test process and its other threads are never
//! moved or demoted. A listener answers every connection (or datagram) with one line
//! `name=<listener> orig=<addr|-> local=<addr> remote=<addr>`, which the client parses into a
//! [`Landing`].

// glibc's setresuid/setresgid/setgroups apply the change to every thread of the process (POSIX
// setxid semantics), which would demote the whole test binary; the raw syscalls change only the
// calling thread. IPV6_TRANSPARENT also has no safe wrapper in nix 0.29.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    SockaddrStorage,
};
use nix::sys::time::TimeVal;

/// Every namespace this harness creates starts with this, followed by the owning pid, so a
/// later run can remove what a killed run left behind.
const NS_PREFIX: &str = "netlab-";
/// The veth end inside each namespace. Pod-side rules that name interfaces see this name.
pub const IFACE: &str = "eth0";
/// How long a misrouted connection may take to fail.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often listener threads look at their stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A named network namespace under `/run/netns`.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what `setns` and `--netns`-style options take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `argv` inside this namespace (`ip netns exec`), feeding `stdin` if given.
    pub fn exec(&self, argv: &[&str], stdin: Option<&[u8]>) -> io::Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        output_with_input(cmd, stdin.map(<[u8]>::to_vec))
    }

    /// Like [`Netns::exec`] but panics, showing stdout and stderr, unless it exits 0.
    pub fn run(&self, argv: &[&str], stdin: Option<&str>) -> Output {
        let out = self
            .exec(argv, stdin.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("spawning {argv:?} in {}: {e}", self.name));
        if !out.status.success() {
            panic!(
                "{argv:?} in {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Applies an `iptables-restore` input the way istio-init does (`--noflush`).
    pub fn iptables_restore(&self, rules: &str) {
        self.run(&["iptables-restore", "--noflush"], Some(rules));
    }

    /// Applies an `ip6tables-restore` input the way istio-init does (`--noflush`).
    pub fn ip6tables_restore(&self, rules: &str) {
        self.run(&["ip6tables-restore", "--noflush"], Some(rules));
    }

    /// Applies an nft script (`nft -f -`).
    pub fn nft_apply(&self, script: &str) {
        self.run(&["nft", "-f", "-"], Some(script));
    }
}

/// Runs `cmd` to its end with stdout and stderr captured, feeding it `input` (else nothing)
/// from another thread, so a child that writes a lot before reading everything cannot
/// deadlock against us.
pub fn output_with_input(mut cmd: Command, input: Option<Vec<u8>>) -> io::Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let feeder = match (input, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => Some(thread::spawn(move || pipe.write_all(&input))),
        _ => None,
    };
    let out = child.wait_with_output()?;
    if let Some(feeder) = feeder {
        // A child that exits without reading gives EPIPE; its status already says more.
        let _ = feeder.join();
    }
    Ok(out)
}

/// A pod namespace and a peer namespace joined by a veth pair (`eth0` on both sides).
///
/// Both namespaces are deleted on drop, including when the test panicked. Addresses live inside
/// the lab's own namespaces, so parallel labs never collide; the subnet still varies per lab so
/// that logs of parallel tests are easy to tell apart.
#[derive(Debug)]
pub struct Lab {
    pub pod: Netns,
    pub peer: Netns,
    pub pod_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub pod_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
}

impl Lab {
    /// Pod 10.X.Y.1/24 + fd00:X:Y::1/64, peer .2 / ::2.
    pub fn new() -> io::Result<Lab> {
        SWEEP.call_once(sweep_stale_namespaces);
        let seq = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (x, y) = (100 + (seq / 250 % 100) as u8, (seq % 250) as u8 + 1);
        let lab = Lab {
            pod: Netns {
                name: format!("{NS_PREFIX}{pid}-{seq}-pod"),
            },
            peer: Netns {
                name: format!("{NS_PREFIX}{pid}-{seq}-peer"),
            },
            pod_v4: Ipv4Addr::new(10, x, y, 1),
            peer_v4: Ipv4Addr::new(10, x, y, 2),
            pod_v6: Ipv6Addr::new(0xfd00, x.into(), y.into(), 0, 0, 0, 0, 1),
            peer_v6: Ipv6Addr::new(0xfd00, x.into(), y.into(), 0, 0, 0, 0, 2),
        };
        // From here on `lab` owns the names, so an error below still deletes what exists.
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> io::Result<()> {
        for ns in [&self.pod, &self.peer] {
            ip(&["netns", "add", &ns.name])?;
            // Set before the veth exists so its link-local address skips DAD too; otherwise
            // IPv6 neighbour discovery can stall for a second or two after the link comes up.
            // Unprivileged ports from 0 lets listeners that run as a non-root uid (like
            // Istio's DNS proxy) bind anything, e.g. a resolver on :53.
            let out = ns.exec(
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv4.ip_unprivileged_port_start=0",
                ],
                None,
            )?;
            check_output("sysctl", &out)?;
        }
        ip(&[
            "-n",
            &self.pod.name,
            "link",
            "add",
            IFACE,
            "type",
            "veth",
            "peer",
            "name",
            IFACE,
            "netns",
            &self.peer.name,
        ])?;
        for (ns, v4, v6) in [
            (&self.pod, self.pod_v4, self.pod_v6),
            (&self.peer, self.peer_v4, self.peer_v6),
        ] {
            let n = ns.name.as_str();
            ip(&["-n", n, "addr", "add", &format!("{v4}/24"), "dev", IFACE])?;
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                IFACE,
                "nodad",
            ])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "link", "set", IFACE, "up"])?;
        }
        for ns in [&self.pod, &self.peer] {
            wait_for_link_local(ns)?;
        }
        Ok(())
    }

    pub fn pod4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.pod_v4.into(), port)
    }

    pub fn peer4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.peer_v4.into(), port)
    }

    pub fn pod6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.pod_v6.into(), port)
    }

    pub fn peer6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.peer_v6.into(), port)
    }

    /// Gives the peer one more address (any subnet) and routes it from the pod, e.g. to have
    /// one destination inside and one outside a rule's CIDR.
    pub fn add_peer_addr(&self, addr: IpAddr) -> io::Result<()> {
        let host = match addr {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        let peer = self.peer.name.as_str();
        let pod = self.pod.name.as_str();
        match addr {
            IpAddr::V4(_) => ip(&["-n", peer, "addr", "add", &host, "dev", IFACE])?,
            IpAddr::V6(_) => ip(&["-n", peer, "addr", "add", &host, "dev", IFACE, "nodad"])?,
        }
        ip(&["-n", pod, "route", "add", &host, "dev", IFACE])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            if let Err(e) = ip(&["netns", "delete", &ns.name]) {
                eprintln!("netlab: deleting {}: {e}", ns.name);
            }
        }
    }
}

/// Removes namespaces left by test processes that were killed before their `Drop` ran.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// Waits until the kernel has given the veth its IPv6 link-local address. It arrives
/// asynchronously after the link comes up; a test that snapshots addresses and routes before
/// and after a run would otherwise see it appear in between.
fn wait_for_link_local(ns: &Netns) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ns.exec(
            &["ip", "-6", "addr", "show", "dev", IFACE, "scope", "link"],
            None,
        )?;
        check_output("ip -6 addr show", &out)?;
        if String::from_utf8_lossy(&out.stdout).contains("inet6 fe80::") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{}: no IPv6 link-local address on {IFACE} after 5 s",
                ns.name
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    check_output(&format!("ip {}", args.join(" ")), &out)
}

fn check_output(what: &str, out: &Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Credentials a client or listener thread takes before creating its socket. The socket file
/// keeps them, and that is what iptables `-m owner` and nft `skuid`/`skgid` match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; empty unless set, so `--gid-owner` tests see only `gid`.
    pub groups: Vec<u32>,
}

impl Creds {
    pub fn new(uid: u32, gid: u32) -> Creds {
        Creds {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    pub fn with_groups(mut self, groups: &[u32]) -> Creds {
        self.groups = groups.to_vec();
        self
    }
}

/// Moves the calling thread into `ns` and, if given, onto `creds`. Only for dedicated threads:
/// after dropping root there is no way back.
fn enter(ns: &Path, creds: Option<&Creds>) -> io::Result<()> {
    let file = File::open(ns)?;
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
    if let Some(c) = creds {
        // Groups and gid first: once the uid is no longer 0 the thread lacks CAP_SETGID.
        // SAFETY: plain per-thread syscalls; the group pointer and length come from a live Vec.
        syscall_ok(unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                c.groups.len() as libc::c_long,
                c.groups.as_ptr(),
            )
        })?;
        // SAFETY: as above, integer arguments only.
        syscall_ok(unsafe {
            libc::syscall(
                libc::SYS_setresgid,
                libc::c_long::from(c.gid),
                libc::c_long::from(c.gid),
                libc::c_long::from(c.gid),
            )
        })?;
        // SAFETY: as above, integer arguments only.
        syscall_ok(unsafe {
            libc::syscall(
                libc::SYS_setresuid,
                libc::c_long::from(c.uid),
                libc::c_long::from(c.uid),
                libc::c_long::from(c.uid),
            )
        })?;
    }
    Ok(())
}

fn syscall_ok(rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// Where a connection or datagram ended up, as reported by the listener that got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Landing {
    /// The listener's name.
    pub listener: String,
    /// TCP: `SO_ORIGINAL_DST`, i.e. the destination before REDIRECT; for a TPROXY'd or
    /// untouched flow that equals `local`. UDP: `None`, the kernel does not expose it.
    pub original_dst: Option<SocketAddr>,
    /// The listener-side local address of the connection or datagram.
    pub local: SocketAddr,
    /// The client address as the listener saw it.
    pub remote: SocketAddr,
}

impl Landing {
    fn line(&self) -> String {
        let orig = self
            .original_dst
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        format!(
            "name={} orig={orig} local={} remote={}\n",
            self.listener, self.local, self.remote
        )
    }

    fn parse(line: &str) -> Result<Landing, ClientError> {
        let bad = || ClientError::BadReply(line.trim_end().to_string());
        let mut fields = line.split_whitespace();
        let mut next = |key: &str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(key))
                .and_then(|f| f.strip_prefix('='))
                .map(str::to_string)
        };
        let listener = next("name").ok_or_else(bad)?;
        let orig = next("orig").ok_or_else(bad)?;
        let local = next("local").ok_or_else(bad)?;
        let remote = next("remote").ok_or_else(bad)?;
        let original_dst = match orig.as_str() {
            "-" => None,
            a => Some(a.parse().map_err(|_| bad())?),
        };
        Ok(Landing {
            listener,
            original_dst,
            local: local.parse().map_err(|_| bad())?,
            remote: remote.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Landing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.line().trim_end())
    }
}

/// Why a client got no landing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("connection reset")]
    Reset,
    #[error("unreachable")]
    Unreachable,
    #[error("unexpected reply {0:?}")]
    BadReply(String),
    #[error("{0}")]
    Other(String),
}

impl From<Errno> for ClientError {
    fn from(e: Errno) -> ClientError {
        match e {
            Errno::ECONNREFUSED => ClientError::Refused,
            Errno::ETIMEDOUT | Errno::EAGAIN | Errno::EINPROGRESS => ClientError::Timeout,
            Errno::ECONNRESET | Errno::EPIPE => ClientError::Reset,
            Errno::EHOSTUNREACH | Errno::ENETUNREACH => ClientError::Unreachable,
            e => ClientError::Other(e.desc().to_string()),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        match e.raw_os_error() {
            Some(n) => Errno::from_raw(n).into(),
            None => ClientError::Other(e.to_string()),
        }
    }
}

/// What to start: build with [`ListenerSpec::tcp`] / [`ListenerSpec::udp`], then
/// [`ListenerSpec::start`] it in a namespace.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    name: String,
    proto: Proto,
    addr: SocketAddr,
    transparent: bool,
    creds: Option<Creds>,
}

impl ListenerSpec {
    /// A TCP listener. `name` is what clients see, e.g. "inbound-15006"; no whitespace.
    pub fn tcp(name: &str, addr: SocketAddr) -> ListenerSpec {
        ListenerSpec::new(name, Proto::Tcp, addr)
    }

    /// A UDP listener that answers each datagram from the same socket.
    pub fn udp(name: &str, addr: SocketAddr) -> ListenerSpec {
        ListenerSpec::new(name, Proto::Udp, addr)
    }

    fn new(name: &str, proto: Proto, addr: SocketAddr) -> ListenerSpec {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "listener name {name:?} must be one word"
        );
        ListenerSpec {
            name: name.to_string(),
            proto,
            addr,
            transparent: false,
            creds: None,
        }
    }

    /// Sets IP_TRANSPARENT / IPV6_TRANSPARENT so TPROXY can hand it foreign-addressed
    /// connections. Needs root credentials (CAP_NET_ADMIN at setsockopt time).
    pub fn transparent(mut self) -> ListenerSpec {
        self.transparent = true;
        self
    }

    /// Creates the socket as this user, so the listener's own outgoing packets (replies) carry
    /// that owner, as a proxy running as uid 1337 would.
    pub fn run_as(mut self, creds: Creds) -> ListenerSpec {
        self.creds = Some(creds);
        self
    }

    /// Binds and listens inside `ns`; returns once the socket is ready.
    pub fn start(self, ns: &Netns) -> io::Result<Listener> {
        if self.transparent && self.creds.as_ref().is_some_and(|c| c.uid != 0) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a transparent listener needs root credentials",
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<SocketAddr>>();
        let path = ns.path();
        let spec = self.clone();
        let (thread_stop, thread_hits) = (stop.clone(), hits.clone());
        let thread = thread::Builder::new()
            .name(format!("netlab-{}", self.name))
            .spawn(move || {
                let ready = enter(&path, spec.creds.as_ref())
                    .and_then(|()| bound_socket(&spec))
                    .and_then(|fd| Ok((local_addr(&fd)?, fd)));
                let (local, fd) = match ready {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(local));
                let served = match spec.proto {
                    Proto::Tcp => serve_tcp(fd, &spec, &thread_hits, &thread_stop),
                    Proto::Udp => serve_udp(fd, &spec, local, &thread_hits, &thread_stop),
                };
                if let Err(e) = served {
                    eprintln!("netlab: listener {} stopped: {e}", spec.name);
                }
            })?;
        let local = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| io::Error::other(format!("listener {} never got ready: {e}", self.name)))
            .and_then(|r| r)
            .map_err(|e| io::Error::new(e.kind(), format!("listener {}: {e}", self.name)));
        let local = match local {
            Ok(a) => a,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(Listener {
            name: self.name,
            local,
            hits,
            stop,
            thread: Some(thread),
        })
    }
}

/// A running listener; stops (and closes its socket) on drop.
#[derive(Debug)]
pub struct Listener {
    name: String,
    local: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Connections accepted (TCP) or datagrams received (UDP) so far. Counted before the
    /// reply is sent, so it is current once a client has its landing.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn family(addr: &SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let addr = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())?;
    if let Some(a) = addr.as_sockaddr_in() {
        return Ok(SocketAddrV4::from(*a).into());
    }
    addr.as_sockaddr_in6()
        .map(|a| SocketAddrV6::from(*a).into())
        .ok_or_else(|| io::Error::other("bound to a non-IP address"))
}

fn bound_socket(spec: &ListenerSpec) -> io::Result<OwnedFd> {
    let ty = match spec.proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let fd = socket::socket(family(&spec.addr), ty, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if spec.addr.is_ipv6() {
        // Lets a test run separate IPv4 and IPv6 listeners on the same port.
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if spec.transparent {
        match spec.addr {
            SocketAddr::V4(_) => socket::setsockopt(&fd, sockopt::IpTransparent, &true)?,
            SocketAddr::V6(_) => set_ipv6_transparent(fd.as_fd())?,
        }
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(spec.addr))?;
    if spec.proto == Proto::Tcp {
        socket::listen(&fd, Backlog::new(64)?)?;
    }
    Ok(fd)
}

fn set_ipv6_transparent(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn serve_tcp(
    fd: OwnedFd,
    spec: &ListenerSpec,
    hits: &AtomicUsize,
    stop: &AtomicBool,
) -> io::Result<()> {
    // accept(2) honours SO_RCVTIMEO, which lets the loop notice `stop` without poll(2).
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeval(STOP_CHECK))?;
    let listener = TcpListener::from(fd);
    while !stop.load(Ordering::Relaxed) {
        let (stream, remote) = match listener.accept() {
            Ok(v) => v,
            // Timeouts, and clients that gave up before we accepted; keep serving.
            Err(_) => continue,
        };
        hits.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = answer_tcp(stream, remote, spec) {
            eprintln!("netlab: listener {} answering {remote}: {e}", spec.name);
        }
    }
    Ok(())
}

fn answer_tcp(mut stream: TcpStream, remote: SocketAddr, spec: &ListenerSpec) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
    let local = stream.local_addr()?;
    let landing = Landing {
        listener: spec.name.clone(),
        original_dst: Some(original_dst(&stream, local)?),
        local,
        remote,
    };
    stream.write_all(landing.line().as_bytes())
}

/// SO_ORIGINAL_DST also covers TPROXY'd flows, which conntrack tracks without rewriting: the
/// answer is then the socket's own local address. Asking always (rather than assuming from
/// the listener kind) keeps a transparent listener honest when REDIRECT reached it instead.
fn original_dst(stream: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    let asked = match local {
        SocketAddr::V4(_) => socket::getsockopt(stream, sockopt::OriginalDst)
            .map(|a| SocketAddr::V4(SockaddrIn::from(a).into())),
        SocketAddr::V6(_) => socket::getsockopt(stream, sockopt::Ip6tOriginalDst)
            .map(|a| SocketAddr::V6(SockaddrIn6::from(a).into())),
    };
    match asked {
        Ok(a) => Ok(a),
        // No conntrack entry: netfilter never tracked the flow, so nothing rewrote it.
        Err(Errno::ENOENT) => Ok(local),
        Err(e) => Err(e.into()),
    }
}

fn serve_udp(
    fd: OwnedFd,
    spec: &ListenerSpec,
    local: SocketAddr,
    hits: &AtomicUsize,
    stop: &AtomicBool,
) -> io::Result<()> {
    let sock = UdpSocket::from(fd);
    sock.set_read_timeout(Some(STOP_CHECK))?;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let remote = match sock.recv_from(&mut buf) {
            Ok((_, remote)) => remote,
            Err(_) => continue,
        };
        hits.fetch_add(1, Ordering::SeqCst);
        let landing = Landing {
            listener: spec.name.clone(),
            original_dst: None,
            local,
            remote,
        };
        if let Err(e) = sock.send_to(landing.line().as_bytes(), remote) {
            eprintln!("netlab: listener {} answering {remote}: {e}", spec.name);
        }
    }
    Ok(())
}

/// Sends real traffic from a namespace and reports where it landed. Each call runs in a fresh
/// thread that enters the namespace and takes the credentials before creating the socket.
#[derive(Clone, Debug)]
pub struct Client {
    creds: Option<Creds>,
    bind: Option<SocketAddr>,
    timeout: Duration,
}

impl Client {
    /// A client with the test process's own credentials (root).
    pub fn root() -> Client {
        Client {
            creds: None,
            bind: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client running as `uid`/`gid` with no supplementary groups.
    pub fn user(uid: u32, gid: u32) -> Client {
        Client::with_creds(Creds::new(uid, gid))
    }

    pub fn with_creds(creds: Creds) -> Client {
        Client {
            creds: Some(creds),
            ..Client::root()
        }
    }

    /// Binds the source address (port 0 for any), e.g. 127.0.0.6 as Envoy's inbound
    /// passthrough does.
    pub fn bind(mut self, src: SocketAddr) -> Client {
        self.bind = Some(src);
        self
    }

    /// Bounds the whole exchange: connect plus reply.
    pub fn timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Connects over TCP from `ns` to `dst` and reads the listener's landing line.
    pub fn tcp(&self, ns: &Netns, dst: SocketAddr) -> Result<Landing, ClientError> {
        self.in_thread(ns, move |c| c.tcp_here(dst))
    }

    /// Sends one UDP datagram from `ns` to `dst` over a connected socket and waits for the
    /// answer, so the reply must come back from `dst` as the client sees it (through NAT).
    pub fn udp(&self, ns: &Netns, dst: SocketAddr) -> Result<Landing, ClientError> {
        self.in_thread(ns, move |c| c.udp_here(dst))
    }

    fn in_thread<F>(&self, ns: &Netns, probe: F) -> Result<Landing, ClientError>
    where
        F: FnOnce(&Client) -> Result<Landing, ClientError> + Send + 'static,
    {
        let path = ns.path();
        let client = self.clone();
        let handle = thread::Builder::new()
            .name("netlab-client".into())
            .spawn(move || {
                enter(&path, client.creds.as_ref())
                    .map_err(|e| ClientError::Other(format!("entering namespace: {e}")))?;
                probe(&client)
            })
            .map_err(|e| ClientError::Other(format!("spawning client thread: {e}")))?;
        handle
            .join()
            .unwrap_or_else(|_| Err(ClientError::Other("client thread panicked".into())))
    }

    fn tcp_here(&self, dst: SocketAddr) -> Result<Landing, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let fd = socket::socket(family(&dst), SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        if let Some(src) = self.bind {
            socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(src))?;
        }
        // A blocking connect(2) gives up after SO_SNDTIMEO with EINPROGRESS (socket(7)), which
        // the Errno conversion reports as a timeout.
        socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(self.timeout))?;
        socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
        let stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(remaining(deadline)))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        if line.is_empty() {
            return Err(ClientError::BadReply(
                "connection closed without a reply".into(),
            ));
        }
        Landing::parse(&line)
    }

    fn udp_here(&self, dst: SocketAddr) -> Result<Landing, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let src = self.bind.unwrap_or(match dst {
            SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        });
        let sock = UdpSocket::bind(src)?;
        sock.connect(dst)?;
        sock.set_read_timeout(Some(remaining(deadline)))?;
        sock.send(b"netlab?\n")?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf)?;
        Landing::parse(&String::from_utf8_lossy(&buf[..n]))
    }
}

fn timeval(d: Duration) -> TimeVal {
    TimeVal::new(
        d.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        d.subsec_micros().into(),
    )
}

/// Time left until `deadline`, never zero (a zero socket timeout means "block forever").
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}
