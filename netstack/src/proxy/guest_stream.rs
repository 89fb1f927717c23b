//! A smoltcp TCP socket of the stack as a tokio `AsyncRead + AsyncWrite`, for the flows that
//! talk to the guest themselves (DNS over TCP, the HTTP engine) rather than splice.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, State};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::state::Shared;
use crate::stats::StatsCounters;

/// One guest TCP connection inside the stack.
pub(crate) struct GuestStream {
    pub shared: Rc<Shared>,
    pub handle: SocketHandle,
}

/// True while the handshake with the guest is still under way.
pub(crate) fn handshaking(state: State) -> bool {
    matches!(state, State::Listen | State::SynReceived | State::SynSent)
}

impl GuestStream {
    fn with_socket<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> R {
        let mut st = self.shared.stack.borrow_mut();
        f(st.sockets.get_mut::<tcp::Socket>(self.handle))
    }

    /// Closes our sending half, then waits (bounded) for the guest to finish, and aborts.
    pub(crate) async fn close_gracefully(&self) {
        self.with_socket(|s| s.close());
        self.shared.wake.notify_one();
        let done = std::future::poll_fn(|cx| {
            self.with_socket(|s| {
                if matches!(s.state(), State::Closed | State::TimeWait) {
                    return Poll::Ready(());
                }
                // Whatever the guest still sends is read and discarded so its FIN gets through.
                let _ = s.recv(|buf| (buf.len(), ()));
                s.register_recv_waker(cx.waker());
                s.register_send_waker(cx.waker());
                Poll::Pending
            })
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        self.abort();
    }

    /// Resets the connection towards the guest.
    pub(crate) fn abort(&self) {
        self.with_socket(|s| s.abort());
        self.shared.wake.notify_one();
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = self.with_socket(|s| {
            if handshaking(s.state()) {
                s.register_recv_waker(cx.waker());
                return Poll::Pending;
            }
            match s.recv_slice(buf.initialize_unfilled()) {
                Ok(0) => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                Ok(n) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Err(RecvError::Finished) => Poll::Ready(Ok(())),
                Err(RecvError::InvalidState) => {
                    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
                }
            }
        });
        if matches!(result, Poll::Ready(Ok(()))) {
            self.shared.wake.notify_one();
        }
        result
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.with_socket(|s| {
            if handshaking(s.state()) {
                s.register_send_waker(cx.waker());
                return Poll::Pending;
            }
            match s.send_slice(data) {
                Ok(0) if !data.is_empty() => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                Ok(n) => Poll::Ready(Ok(n)),
                Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        });
        if matches!(result, Poll::Ready(Ok(_))) {
            self.shared.wake.notify_one();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_socket(|s| s.close());
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

/// Bytes moved through a guest connection the stack serves itself, each way (TLS records on
/// an intercepted connection).
#[derive(Clone, Default)]
pub(crate) struct Counters {
    /// Read from the guest.
    pub up: Rc<Cell<u64>>,
    /// Written to the guest.
    pub down: Rc<Cell<u64>>,
}

/// The guest stream with the bytes already read from it (to decide how to serve it) served
/// again first, counting what passes each way.
pub(crate) struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    inner: GuestStream,
    counters: Counters,
}

impl Replay {
    /// `inner` with `prefix` read first.
    pub(crate) fn new(prefix: Vec<u8>, inner: GuestStream, counters: Counters) -> Replay {
        Replay {
            prefix,
            pos: 0,
            inner,
            counters,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
        } else {
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        let n = (buf.filled().len() - before) as u64;
        this.counters.up.set(this.counters.up.get() + n);
        StatsCounters::add(&this.inner.shared.stats.bytes_up, n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.counters.down.set(this.counters.down.get() + n as u64);
        StatsCounters::add(&this.inner.shared.stats.bytes_down, n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
