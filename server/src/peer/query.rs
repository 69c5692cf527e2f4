//! Membership queries on the peer port: a connection whose hello is
//! [`Hello::QUERY`] gets one frame holding the member's applied membership, then
//! the member closes it. A member joining a running cluster
//! (`--initial-cluster-state existing`) asks before it starts: etcd's joiner
//! reads the cluster's members from a peer's `/members` the same way.

use std::io::Write;
use std::net::{TcpStream as StdTcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::block_on;
use futures_lite::io::AssertAsync;
use ringkv_proto::ringkvpb::Membership;
use rustls_pki_types::ServerName;

use super::frame::{self, Hello, PeerMessage};
use super::{connect, within, PeerStream, Target};

/// How long a member may take to answer another's membership query.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes the answer to a membership query; the caller closes the connection.
pub(super) async fn answer(stream: &mut PeerStream, answer: &PeerMessage) {
    let mut out = Vec::new();
    frame::push_message(&mut out, answer);
    if let Err(error) = frame::write_all(stream, &out).await {
        tracing::debug!(%error, "membership query: the asker left before the answer");
    }
}

/// Asks the member at `peer_url` for its applied membership, waiting at most
/// `timeout` for each step (the TLS handshake of an https URL is a step too,
/// with `dial`). Blocking (std I/O): it runs before the executors.
pub fn ask(peer_url: &str, dial: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> Result<Membership, String> {
    let target = Target::parse(peer_url).ok_or_else(|| format!("{peer_url} is not http(s)://host:port"))?;
    let addr = &target.addr;
    let resolved = addr
        .to_socket_addrs()
        .map_err(|error| format!("{addr}: {error}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let stream = StdTcpStream::connect_timeout(&resolved, timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    let mut hello = Vec::new();
    frame::push_hello(&mut hello, Hello::QUERY);
    if !target.tls {
        return exchange(stream, &hello);
    }
    let config = dial.ok_or("an https peer URL, but no peer TLS is configured")?;
    let name = ServerName::try_from(target.host.clone()).map_err(|error| error.to_string())?;
    let connection = rustls::ClientConnection::new(Arc::clone(config), name).map_err(|error| error.to_string())?;
    exchange(rustls::StreamOwned::new(connection, stream), &hello)
}

/// Writes the query's hello and reads the answer (blocking).
fn exchange<S: std::io::Read + Write>(mut stream: S, hello: &[u8]) -> Result<Membership, String> {
    stream.write_all(hello).map_err(|error| error.to_string())?;
    stream.flush().map_err(|error| error.to_string())?;
    let mut stream = AssertAsync::new(stream);
    membership(block_on(frame::read_answer(&mut stream, frame::ANSWER_PAYLOAD_MAX)))
}

/// Asks the member at `peer_url` for its applied membership, from a running
/// member: on its executor, waiting at most ANSWER_TIMEOUT for the answer.
pub(super) async fn ask_async(peer_url: &str, dial: Option<&Arc<rustls::ClientConfig>>) -> Result<Membership, String> {
    let target = Target::parse(peer_url).ok_or_else(|| format!("{peer_url} is not http(s)://host:port"))?;
    let mut stream = connect(&[target], dial, Hello::QUERY)
        .await
        .map_err(|error| error.to_string())?;
    let answer = within(
        ANSWER_TIMEOUT,
        frame::read_answer(&mut stream, frame::ANSWER_PAYLOAD_MAX),
    )
    .await;
    membership(answer.ok_or_else(|| format!("no answer within {ANSWER_TIMEOUT:?}"))?)
}

fn membership(answer: Result<PeerMessage, frame::FrameError>) -> Result<Membership, String> {
    match answer {
        Ok(PeerMessage::Membership(membership)) => Ok(membership),
        Ok(other) => Err(format!("answered with something else: {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}
