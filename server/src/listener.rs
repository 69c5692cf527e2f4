//! Listening sockets for every port ringkv serves (client, metrics, peer):
//! bound once, without SO_REUSEPORT, and accepted from without ever giving up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

/// A bound, listening socket on `addr`, not yet handed to an executor. Client
/// cores share the client ports by each accepting on a duplicate of one such
/// socket (`try_clone`), so no port is ever bound with SO_REUSEPORT: a second
/// process on the same address fails at start with "address already in use"
/// instead of quietly taking half the connections. SO_REUSEADDR is set, so the
/// TIME_WAIT connections a stopped member leaves on its ports do not keep
/// another server (an etcd taking over, say) from binding them for a minute.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};

    let bind = || -> std::io::Result<std::net::TcpListener> {
        let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    bind().map_err(|source| BindError { addr, source })
}

/// [`bind`] for a process starting, before any executor serves: an address in
/// use is tried again for up to `START_BIND_RETRY_FOR`. A member restarted on
/// its ports finds them held for a moment by the process it replaces even
/// after that one exited: the kernel ends an exited process's io_uring, and
/// the accept waiting there on the listening socket, in a worker of its own
/// afterwards. A port another server holds still fails the start, that much
/// later.
pub fn bind_at_start(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let deadline = Instant::now() + START_BIND_RETRY_FOR;
    loop {
        match bind(addr) {
            Err(error) if error.source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(START_BIND_RETRY_PAUSE);
            }
            bound => return bound,
        }
    }
}

const START_BIND_RETRY_FOR: Duration = Duration::from_secs(2);
const START_BIND_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// A listening socket from [`bind`] (or a duplicate of one), served by this executor.
pub fn adopt(listener: std::net::TcpListener) -> TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the fd is a listening TCP socket we own; ownership moves to glommio.
    unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// [`bind`] and [`adopt`] at once, for a port one executor serves alone.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, BindError> {
    bind(addr).map(adopt)
}

/// A port that cannot be listened on, said as etcd (Go's net package) says it:
/// "listen tcp 127.0.0.1:2379: bind: address already in use".
#[derive(Debug, thiserror::Error)]
#[error("listen tcp {addr}: {}", describe(.source))]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => "bind: address already in use".to_string(),
        std::io::ErrorKind::AddrNotAvailable => "bind: cannot assign requested address".to_string(),
        std::io::ErrorKind::PermissionDenied => "bind: permission denied".to_string(),
        _ => error.to_string(),
    }
}

/// The next connection, with Nagle off. A failed accept (out of file
/// descriptors and the like) is logged and retried after a pause, so the
/// connections already open keep being served.
pub async fn accept(listener: &TcpListener) -> glommio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
