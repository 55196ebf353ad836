//! Connection hygiene for every listener: a global cap on open connections, an idle
//! (and handshake / header-read) timeout, and a maximum connection age.
//!
//! [`GuardedListener`] accepts TCP connections and wraps each in a [`GuardedStream`]
//! that holds one of `max_connections` permits while it lives. Past the cap a new
//! connection is closed at once. A stream fails its next read — which closes the
//! connection — when the peer has sent nothing for `idle_timeout` (a bare TCP
//! connection, an HTTP/2 preface with nothing after it, half an HTTP/1.1 header), or
//! when it is older than `max_age`. gRPC clients with calls in flight answer the
//! server's HTTP/2 keepalive pings, which count as traffic, so long streams live on.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

/// The limits every connection of a listener is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// A connection whose peer sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A connection is asked to close (gRPC: GOAWAY) once this old, and closed
    /// [`AGE_GRACE`] later.
    pub max_age: Duration,
    /// gRPC: the server pings an HTTP/2 connection this often…
    pub keepalive_interval: Duration,
    /// …and closes it when a ping is not answered within this.
    pub keepalive_timeout: Duration,
}

/// How long a connection past its maximum age may finish its calls.
pub const AGE_GRACE: Duration = Duration::from_secs(30);

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            max_age: Duration::from_secs(30 * 60),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// A TCP listener that hands out [`GuardedStream`]s.
#[derive(Debug)]
pub struct GuardedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
}

impl GuardedListener {
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.permits.available_permits()
    }

    /// The next connection within the cap; those past it are closed as they come.
    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(GuardedStream, SocketAddr)>> {
        loop {
            let (stream, addr) = match self.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    // Small replies must not wait on Nagle and delayed ACKs.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Ok((
                        GuardedStream::new(stream, permit, self.limits),
                        addr,
                    )));
                }
                Err(_) => {
                    tracing::warn!(%addr, max = self.limits.max_connections, "connection cap reached; closing a new connection");
                    drop(stream);
                }
            }
        }
    }

    /// Waits for the next connection within the cap.
    pub async fn accept(&self) -> io::Result<(GuardedStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The listener as a stream of connections, for tonic's `serve_with_incoming`.
    pub fn into_incoming(self) -> Incoming {
        Incoming(self)
    }
}

/// [`GuardedListener`] as a `Stream`; dropping it closes the port.
#[derive(Debug)]
pub struct Incoming(GuardedListener);

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<GuardedStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}

/// A connection held to its listener's [`ConnectionLimits`].
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    expires: Pin<Box<Sleep>>,
}

impl GuardedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            _permit: permit,
            idle_timeout: limits.idle_timeout,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            expires: Box::pin(tokio::time::sleep_until(now + limits.max_age + AGE_GRACE)),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let deadline = Instant::now() + self.idle_timeout;
                    self.idle.as_mut().reset(deadline);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        if self.expires.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection reached its maximum age",
            )));
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle past its timeout",
            )));
        }
        Poll::Pending
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// The regression guard for the ~40 ms reply stall: every socket the server
    /// accepts has TCP_NODELAY set, whatever tonic does with its own builder flag.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_set() {
        let listener = GuardedListener::new(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            ConnectionLimits::default(),
        );
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.tcp().nodelay().unwrap(),
            "an accepted socket lacks TCP_NODELAY"
        );
    }

    #[tokio::test]
    async fn idle_connections_close_and_the_cap_holds() {
        let limits = ConnectionLimits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        };
        let listener =
            GuardedListener::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), limits);
        let addr = listener.local_addr().unwrap();
        let clients = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let (mut first, _) = listener.accept().await.unwrap();
        let (_second, _) = listener.accept().await.unwrap();
        assert_eq!(listener.open_connections(), 2);
        // A third is past the cap: closed at once, and the accept goes on waiting.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(waiting.is_err(), "no connection past the cap is handed out");
        let mut byte = [0u8; 1];
        assert_eq!(
            third.read(&mut byte).await.unwrap_or(0),
            0,
            "closed by the server"
        );
        // The idle one fails its read after the timeout.
        let error = first.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(first);
        assert_eq!(listener.open_connections(), 1);
        drop(clients);
    }
}
