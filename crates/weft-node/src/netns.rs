//! The few Linux calls captured mode needs, in one place: creating sockets
//! inside a workload's network namespace, reading the original
//! destination of a connection nftables redirected, and passing listening
//! sockets to another process (`SCM_RIGHTS`, for an upgrade's hand-over).
//!
//! A socket belongs to the namespace of the thread that created it, and
//! keeps it wherever it is used later. So each captured namespace gets one
//! dedicated thread that enters it (`setns`) once and then only creates
//! sockets on request; the sockets are handed back to the async runtime,
//! whose threads never change namespace.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::sched::CloneFlags;
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, sockopt};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace the node proxy can create sockets in.
pub struct Netns {
    path: PathBuf,
    inode: u64,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.path.display())
    }
}

fn other(what: &str, path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/run/netns/<name>`) and starts
    /// its thread. Fails if the path is not a namespace or the process may
    /// not enter it (needs `CAP_SYS_ADMIN`).
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path).map_err(|e| other("cannot open network namespace", path, e))?;
        let inode = file.metadata()?.ino();
        let (jobs, queue) = mpsc::channel::<Job>();
        let (entered_tx, entered_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("weft-netns".into())
            .spawn(move || {
                let entered = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if ok {
                    // Runs until the `Netns` (the sender) is dropped.
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                }
            })?;
        entered_rx
            .recv()
            .map_err(|e| other("namespace thread ended for", path, e))?
            .map_err(|e| other("cannot enter network namespace", path, e))?;
        Ok(Netns {
            path: path.to_owned(),
            inode,
            jobs,
        })
    }

    /// The namespace's inode number: its identity, stable for its life.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| other("namespace thread ended for", &self.path, "closed"))?;
        rx.await
            .map_err(|_| other("namespace thread ended for", &self.path, "no reply"))
    }

    /// A listener bound to `addr` inside the namespace.
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = self
            .run(move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok::<_, io::Error>(l)
            })
            .await??;
        TcpListener::from_std(listener)
    }

    /// A connection to `addr` made from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = self
            .run(move || {
                sock::socket(
                    family,
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await??;
        TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
            .connect(addr)
            .await
    }
}

/// The mark on the node agent's own connections from inside a pod's
/// namespace (ztunnel's value, 0x539): the pod's redirect rules let them
/// through instead of sending them back to the agent.
pub const MESH_MARK: u32 = 0x539;

impl Netns {
    /// A connection to `addr` made from inside the namespace, marked
    /// [`MESH_MARK`] (so it leaves the pod as it is: the agent's tunnels
    /// carry the pod's address as their source).
    pub async fn connect_marked(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = self
            .run(move || {
                let fd = sock::socket(
                    family,
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                sock::setsockopt(&fd, sockopt::Mark, &MESH_MARK)?;
                Ok::<_, io::Error>(fd)
            })
            .await??;
        TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
            .connect(addr)
            .await
    }
}

/// Opens an HBONE connection's TCP inside a pod's namespace.
pub(crate) struct FromPod(pub(crate) std::sync::Arc<Netns>);

impl weft_hbone::Dial for FromPod {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TcpStream>> + Send + '_>>
    {
        Box::pin(self.0.connect_marked(addr))
    }
}

/// Where a connection redirected by nftables (`redirect to :port`) was
/// going before the redirect (`SO_ORIGINAL_DST`).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    match stream.local_addr()? {
        SocketAddr::V4(_) => {
            let sa = sock::getsockopt(stream, sockopt::OriginalDst)?;
            Ok(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let sa = sock::getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            Ok(SocketAddr::from((
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
            )))
        }
    }
}

/// Where network namespaces are pinned (`ip netns`, containerd's and
/// CRI-O's pod sandboxes) and where processes show theirs.
const PINNED: [&str; 2] = ["/run/netns", "/var/run/netns"];
const PROC: &str = "/proc";

/// Finds the network namespace, other than this process's, with `ip` on
/// one of its interfaces: pinned namespaces first, then those of the
/// processes this one can see. Returns a path to it (a pinned one when
/// there is one) and the interface. Each candidate is entered on a thread
/// of its own making, which ends with the search.
pub(crate) async fn find_by_address(ip: IpAddr) -> io::Result<Option<(PathBuf, String)>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netns-scan".into())
        .spawn(move || {
            let _ = tx.send(scan(ip));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the namespace scan ended without an answer"))?
}

fn scan(ip: IpAddr) -> io::Result<Option<(PathBuf, String)>> {
    let own = std::fs::metadata("/proc/self/ns/net")?;
    let mut seen = std::collections::HashSet::from([(own.dev(), own.ino())]);
    let pinned = PINNED
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()));
    let processes = std::fs::read_dir(PROC)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    for path in pinned.chain(processes) {
        // A process that ended, or one this agent may not look into.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).is_err() {
            continue;
        }
        let found = nix::ifaddrs::getifaddrs()?.find_map(|a| {
            let address = a.address?;
            let here = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            (here == ip).then_some(a.interface_name)
        });
        if let Some(interface) = found {
            return Ok(Some((path, interface)));
        }
    }
    Ok(None)
}

/// Sends one listening socket, named by `key`, over `to` (a Unix stream
/// socket): a 2-byte length and the key, the socket attached
/// (`SCM_RIGHTS`). The receiver gets its own descriptor of the same
/// socket, so connections queued on it are never lost.
pub(crate) fn send_listener(
    to: &UnixStream,
    key: &str,
    listener: BorrowedFd<'_>,
) -> io::Result<()> {
    let len = u16::try_from(key.len()).map_err(|_| io::Error::other("listener key too long"))?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(key.as_bytes());
    let fds = [listener];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        to,
        &[IoSlice::new(&frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The socket travels with the first byte; the rest may follow.
    (&*to).write_all(&frame[sent..])
}

/// Receives one listening socket sent by [`send_listener`]: its key and
/// the socket, checked to be a listening TCP socket; `None` once the
/// sender is done.
pub(crate) fn receive_listener(
    from: &UnixStream,
) -> io::Result<Option<(String, std::net::TcpListener)>> {
    let mut len = [0u8; 2];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let read = rustix::net::recvmsg(
        from,
        &mut [IoSliceMut::new(&mut len)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?
    .bytes;
    // Owned at once: none leaks whatever is wrong next.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if read == 0 {
        return Ok(None);
    }
    if read == 1 {
        (&*from).read_exact(&mut len[1..])?;
    }
    let mut key = vec![0; usize::from(u16::from_be_bytes(len))];
    (&*from).read_exact(&mut key)?;
    let key = String::from_utf8(key).map_err(|_| io::Error::other("listener key is not UTF-8"))?;
    let Ok([fd]) = <[OwnedFd; 1]>::try_from(fds) else {
        return Err(io::Error::other(format!(
            "listener {key}: expected exactly one socket with it"
        )));
    };
    let listening = sock::getsockopt(&fd, sockopt::AcceptConn)?;
    let tcp = sock::getsockopt(&fd, sockopt::SockType)? == SockType::Stream
        && matches!(
            rustix::net::getsockname(&fd)?.address_family(),
            rustix::net::AddressFamily::INET | rustix::net::AddressFamily::INET6
        );
    if !listening || !tcp {
        return Err(io::Error::other(format!(
            "listener {key}: the socket passed is not a listening TCP socket"
        )));
    }
    Ok(Some((key, std::net::TcpListener::from(fd))))
}

/// The user id of the process at the other end of a Unix socket.
pub(crate) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(sock::getsockopt(stream, sockopt::PeerCredentials)?.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        // Without conntrack NAT the kernel has nothing to report; the
        // caller gets an error, never a made-up address.
        if let Ok(dst) = original_destination(&server) {
            // With conntrack loaded, the unredirected destination is itself.
            assert_eq!(dst, addr);
        }
        drop(client);
    }

    #[test]
    fn a_listening_socket_passes_to_another_holder_with_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A connection queued before the hand-over is accepted after it.
        let queued = std::net::TcpStream::connect(addr).expect("connect");
        let (a, b) = UnixStream::pair().expect("pair");
        send_listener(&a, "inbound 10.0.0.1", std::os::fd::AsFd::as_fd(&listener)).expect("send");
        drop(listener);
        drop(a);
        let (key, taken) = receive_listener(&b).expect("receive").expect("one");
        assert_eq!(key, "inbound 10.0.0.1");
        assert_eq!(taken.local_addr().expect("addr"), addr);
        let (_, peer) = taken.accept().expect("the queued connection");
        assert_eq!(peer, queued.local_addr().expect("local"));
        assert!(receive_listener(&b).expect("end").is_none());
        assert_eq!(peer_uid(&b).expect("uid"), nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn a_socket_that_is_not_a_tcp_listener_is_refused() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (other, _keep) = UnixStream::pair().expect("pair");
        send_listener(&a, "captured", std::os::fd::AsFd::as_fd(&other)).expect("send");
        let err = receive_listener(&b).expect_err("not a listener");
        assert!(
            err.to_string().contains("not a listening TCP socket"),
            "{err}"
        );
        let connected = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream = std::net::TcpStream::connect(connected.local_addr().expect("a")).expect("c");
        send_listener(&a, "captured", std::os::fd::AsFd::as_fd(&stream)).expect("send");
        let err = receive_listener(&b).expect_err("a connection, not a listener");
        assert!(
            err.to_string().contains("not a listening TCP socket"),
            "{err}"
        );
    }

    #[test]
    fn a_path_that_is_not_a_namespace_is_refused_clearly() {
        let err = Netns::open(Path::new("/nonexistent/netns")).expect_err("no such path");
        assert!(
            err.to_string()
                .contains("cannot open network namespace /nonexistent/netns"),
            "{err}"
        );
    }
}
