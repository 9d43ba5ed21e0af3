//! The few Linux calls captured mode needs, in one place: creating sockets
//! inside a workload's network namespace, and reading the original
//! destination of a connection nftables redirected.
//!
//! A socket belongs to the namespace of the thread that created it, and
//! keeps it wherever it is used later. So each captured namespace gets one
//! dedicated thread that enters it (`setns`) once and then only creates
//! sockets on request; the sockets are handed back to the async runtime,
//! whose threads never change namespace.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::sched::CloneFlags;
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, sockopt};
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
    fn a_path_that_is_not_a_namespace_is_refused_clearly() {
        let err = Netns::open(Path::new("/nonexistent/netns")).expect_err("no such path");
        assert!(
            err.to_string()
                .contains("cannot open network namespace /nonexistent/netns"),
            "{err}"
        );
    }
}
