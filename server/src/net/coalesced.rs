//! The client port's writes as h2 makes them, gathered into fewer sends.
//!
//! h2 keeps a DATA frame of 1 KiB or more out of its write buffer and writes
//! the buffer (the frame's header and its first kilobyte) and then the rest of
//! the frame: two sends per frame, and a list page of 500 one-kilobyte objects
//! is over 30 frames of 16 KiB (the most gRPC clients accept). Behind a write
//! buffer the two parts leave in one send when h2 flushes after the frame.
//!
//! The buffer is tokio's `BufWriter`; this wrapper only keeps its claim to
//! take vectored writes from h2. With that claim h2 would keep frames of 256
//! bytes or more apart instead (and flush after each), so a batch of small
//! Range answers, written together today, would leave one send each.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// Bytes a send may gather: a 16 KiB frame with its header and the frames
/// before it in h2's buffer, several times over.
pub const COALESCED_WRITE_BYTES: usize = 64 * 1024;

pub struct Coalesced<T>(BufWriter<T>);

impl<T: AsyncRead + AsyncWrite> Coalesced<T> {
    pub fn new(inner: T) -> Coalesced<T> {
        Coalesced(BufWriter::with_capacity(COALESCED_WRITE_BYTES, inner))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Counts the writes it is given; reads nothing.
    #[derive(Default)]
    struct Counting {
        writes: Vec<usize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, _buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_frames_two_parts_leave_in_one_write_when_flushed() {
        let mut stream = Coalesced::new(Counting::default());
        futures_lite::future::block_on(async {
            stream.write_all(&[1; 1033]).await.unwrap();
            stream.write_all(&[2; 15_360]).await.unwrap();
            assert!(stream.0.get_ref().writes.is_empty(), "nothing leaves before the flush");
            stream.flush().await.unwrap();
        });
        assert_eq!(stream.0.get_ref().writes, vec![1033 + 15_360]);
    }

    #[test]
    fn h2_is_told_it_takes_no_vectored_writes() {
        // h2 picks how it frames by this: see the module's comment.
        assert!(!Coalesced::new(Counting::default()).is_write_vectored());
        assert!(
            BufWriter::new(Counting::default()).is_write_vectored(),
            "the reason for the wrapper"
        );
    }
}
