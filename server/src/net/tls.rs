//! An https port's handshakes: each within `tls::HANDSHAKE_TIMEOUT`, at most
//! TLS_HANDSHAKES_MAX at once per listener on a client core, and each failure
//! logged as etcd logs it ("rejected connection from ...") at a bounded rate.
//! Nothing a client sends in a handshake can do more than close its own
//! connection.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use crate::log_limit::LogLimit;
use crate::tls::{self, Accepted};

/// Handshakes in progress at once on one listener of one client core; a
/// connection past it is closed at once. A handshake costs a signature (and
/// a verification with client certificates), so unlike the plain port's wait
/// for first bytes it is bounded in number as well as in time. etcd has no
/// such bound.
pub const TLS_HANDSHAKES_MAX: usize = 1024;

/// One https listener's TLS on one client core.
pub struct TlsPort {
    acceptor: TlsAcceptor,
    in_progress: Rc<Cell<usize>>,
    rejections: Rc<LogLimit>,
}

impl TlsPort {
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsPort {
        TlsPort {
            acceptor: TlsAcceptor::from(config),
            in_progress: Rc::default(),
            rejections: Rc::default(),
        }
    }

    /// A slot for `stream`'s handshake; None (and the connection closed) when
    /// TLS_HANDSHAKES_MAX are in progress.
    pub(super) fn handshake(&self, stream: &TcpStream) -> Option<Handshake> {
        if self.in_progress.get() >= TLS_HANDSHAKES_MAX {
            self.reject(
                stream,
                format_args!("over {TLS_HANDSHAKES_MAX} TLS handshakes in progress"),
            );
            return None;
        }
        self.in_progress.set(self.in_progress.get() + 1);
        Some(Handshake {
            acceptor: self.acceptor.clone(),
            in_progress: Rc::clone(&self.in_progress),
            rejections: Rc::clone(&self.rejections),
        })
    }

    fn reject(&self, stream: &TcpStream, why: std::fmt::Arguments<'_>) {
        reject(&self.rejections, &remote(stream), why);
    }
}

/// One handshake's slot, given back when it ends.
pub(super) struct Handshake {
    acceptor: TlsAcceptor,
    in_progress: Rc<Cell<usize>>,
    rejections: Rc<LogLimit>,
}

impl Handshake {
    /// The handshake; None if it failed (logged).
    pub(super) async fn finish(self, stream: TcpStream) -> Option<Accepted<TcpStream>> {
        let from = remote(&stream);
        match tls::accept(&self.acceptor, stream).await {
            Ok(accepted) => Some(accepted),
            Err(error) => {
                reject(&self.rejections, &from, format_args!("{error}"));
                None
            }
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.in_progress.set(self.in_progress.get() - 1);
    }
}

fn remote(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |addr| addr.to_string())
}

fn reject(limit: &LogLimit, from: &str, why: std::fmt::Arguments<'_>) {
    if let Some(held_back) = limit.allow() {
        tracing::warn!(held_back, "rejected connection from {from:?} ({why})");
    }
}
