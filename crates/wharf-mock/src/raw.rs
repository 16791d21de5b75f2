//! The raw-socket layer: what hyper cannot do to a connection on purpose.
//!
//! hyper writes every well-formed answer (see `server.rs`). The faults that
//! break HTTP (no answer at all, a body cut off without its end, a TCP RST,
//! a connection that goes silent) are done here, on the socket hyper hands
//! back: the service or the body picks an [`Ending`], waits until hyper has
//! written out everything it buffered ([`Conn::flushed_since`]), and fails,
//! which stops hyper without another byte; [`finish`] then ends the
//! connection the chosen way.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long to wait for the peer to close after we half-close.
const LINGER: Duration = Duration::from_millis(500);

/// How a connection ends once hyper has let go of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Half-close (FIN) and give the peer a moment to close its side.
    Close,
    /// Abort with a TCP RST.
    Reset,
    /// Send nothing more; keep the socket until the peer goes away.
    Silence,
}

/// The error that stops hyper when the raw layer takes over.
#[derive(Debug)]
pub(crate) struct Takeover;

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the raw fault layer takes the connection over")
    }
}

impl std::error::Error for Takeover {}

/// What the service, the response body and the socket of one connection
/// share.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// How many times hyper flushed with nothing left in its buffer.
    flushes: AtomicU64,
    /// The task waiting for the next flush, if any (`armed` says whether
    /// there is one, so that a flush nobody waits for takes no lock).
    waiter: Mutex<Option<Waker>>,
    armed: AtomicBool,
    ending: Mutex<Option<Ending>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// The current flush count, to pass to [`Conn::flushed_since`].
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Ready once hyper flushed after `count` was read: every byte it had
    /// buffered by then is in the socket.
    pub fn flushed_since(&self, count: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.flush_count() > count {
            return Poll::Ready(());
        }
        *lock(&self.waiter) = Some(cx.waker().clone());
        self.armed.store(true, Ordering::SeqCst);
        // A flush between the first check and the registration.
        if self.flush_count() > count {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Waits until hyper has written out what it buffered, then records how
    /// the connection is to end. The caller then fails with [`Takeover`].
    pub async fn take_over(&self, ending: Ending) -> Takeover {
        let count = self.flush_count();
        std::future::poll_fn(|cx| self.flushed_since(count, cx)).await;
        self.set_ending(ending);
        Takeover
    }

    pub fn set_ending(&self, ending: Ending) {
        *lock(&self.ending) = Some(ending);
    }

    pub fn ending(&self) -> Option<Ending> {
        *lock(&self.ending)
    }

    fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            if let Some(waker) = lock(&self.waiter).take() {
                waker.wake();
            }
        }
    }
}

/// The socket as hyper sees it: a `TcpStream` that tells [`Conn`] about
/// every flush.
pub(crate) struct Io {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl Io {
    pub fn new(stream: TcpStream, conn: Arc<Conn>) -> Io {
        Io { stream, conn }
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.conn.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Ends a connection hyper is done with: the way a fault asked for, else
/// with a graceful close.
pub(crate) async fn finish(mut stream: TcpStream, ending: Option<Ending>) {
    match ending {
        // SO_LINGER with a zero timeout makes close() send RST.
        Some(Ending::Reset) => {
            let _ = stream.set_zero_linger();
        }
        Some(Ending::Silence) => wait_for_close(&mut stream).await,
        Some(Ending::Close) | None => {
            // Half-close and give the peer a moment to close its side, so
            // that unread data on our side does not turn the close into a
            // reset.
            let _ = stream.shutdown().await;
            let _ = tokio::time::timeout(LINGER, wait_for_close(&mut stream)).await;
        }
    }
}

/// Reads and discards until the peer closes the connection.
async fn wait_for_close(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(1..) = stream.read(&mut buf).await {}
}
