//! A fault-injecting TCP proxy in front of each member's peer port.
//!
//! Members advertise the proxy's port; the proxy forwards to the member's real
//! listener. ringkv's peer connections start with a hello frame naming the
//! sending and receiving member (docs/architecture.md, peer transport), so the
//! proxy knows which link a connection is and can cut links one way or both:
//! a cut link's connections are closed, and new ones refused, until it heals.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Frame header (length, crc) plus the 24-byte hello (cluster, from, to).
const HELLO_FRAME_BYTES: usize = 8 + 24;

/// Links (from member id, to member id) that are cut, shared by every proxy.
#[derive(Clone)]
pub struct Links {
    cut: Arc<Mutex<HashSet<(u64, u64)>>>,
    /// Bumped on every change, so open connections re-check their link.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for Links {
    fn default() -> Links {
        Links {
            cut: Arc::default(),
            generation: Arc::new(watch::channel(0).0),
        }
    }
}

impl Links {
    pub fn cut(&self, from: u64, to: u64) {
        self.cut.lock().unwrap().insert((from, to));
        self.generation.send_modify(|generation| *generation += 1);
    }

    pub fn heal_all(&self) {
        self.cut.lock().unwrap().clear();
        self.generation.send_modify(|generation| *generation += 1);
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }
}

/// Listens on 127.0.0.1:`port` and forwards to 127.0.0.1:`target` until the
/// runtime ends.
pub async fn spawn_proxy(port: u16, target: u16, links: Links) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the proxy port is free");
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(forward(inbound, target, links.clone()));
        }
    });
}

async fn forward(mut inbound: TcpStream, target: u16, links: Links) {
    let mut hello = [0u8; HELLO_FRAME_BYTES];
    if inbound.read_exact(&mut hello).await.is_err() {
        return;
    }
    let from = u64::from_be_bytes(hello[16..24].try_into().unwrap());
    let to = u64::from_be_bytes(hello[24..32].try_into().unwrap());
    if links.is_cut(from, to) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    if outbound.write_all(&hello).await.is_err() {
        return;
    }
    let mut changes = links.generation.subscribe();
    let (mut in_read, mut in_write) = inbound.split();
    let (mut out_read, mut out_write) = outbound.split();
    let pump = async {
        tokio::select! {
            _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
            _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
        }
    };
    let watch_link = async {
        loop {
            if changes.changed().await.is_err() || links.is_cut(from, to) {
                return;
            }
        }
    };
    // Whichever ends first (a side closed, or the link was cut) closes both.
    tokio::select! {
        _ = pump => {}
        _ = watch_link => {}
    }
}
