//! Accepting client connections as Envoy and nginx do: a cap on open connections, over
//! all and per source address, that sheds new ones (a short 503) before descriptors run
//! out; a timeout for a request's headers that also closes keep-alive connections left
//! idle; TLS when the listener has a certificate; graceful shutdown that lets each
//! connection finish its response. What a request does once it is read is the router's
//! business, not this module's.

mod h1;
mod json_errors;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::clock::{self, Turns};
use crate::wake::WhenWoken;
use crate::workers::Workers;

/// What a listener serves: a router, or a router behind a layer of its own. Each
/// connection holds a clone and each request is given to a clone of that.
pub trait App:
    Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<A> App for A where
    A: Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Descriptors kept free of client connections: upstream connections, the database,
/// logs, and the admin API's own connections.
const FD_RESERVE: usize = 256;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open client connections at most; new ones beyond are shed.
    pub max_connections: usize,
    /// Open connections from one source address at most.
    pub max_per_address: usize,
    /// Time a client has to send a request's headers, and to start the next request on
    /// a kept-alive connection.
    pub header_read_timeout: Duration,
    /// The longest request body read whole by the connection served by hand
    /// (`server.max_body`); longer ones go to hyper, and the handler refuses them.
    pub max_body: usize,
    /// Time a client has to send the rest of a body (`server.body_timeout`).
    pub body_timeout: Duration,
}

impl ConnectionLimits {
    /// Brings `max_connections` within what the process's open-file limit allows
    /// (`connections_allowed`); says so when it had to.
    pub fn within_descriptors(mut self, listener: &str) -> ConnectionLimits {
        if let (Some(soft), Some(room)) = (open_file_limit(), connections_allowed())
            && self.max_connections > room
        {
            tracing::warn!(
                listener,
                configured = self.max_connections,
                allowed = room,
                open_file_limit = soft,
                "the open-file limit caps client connections below server.max_connections; raise `ulimit -n` to allow more"
            );
            self.max_connections = room.max(1);
        }
        self
    }
}

/// The client connections a listener of this process may hold under its open-file
/// limit, with a reserve for everything else (each client connection may need an
/// upstream one); `None` when the limit is not known.
pub fn connections_allowed() -> Option<usize> {
    Some(open_file_limit()?.saturating_sub(FD_RESERVE) / 2)
}

/// The soft `RLIMIT_NOFILE`, read from /proc (Linux); `None` elsewhere or unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Open connections, over all and by source address.
#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; frees its place when dropped.
struct Place {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// Takes a place for a connection from `address`, or says which cap is reached.
fn admit(
    open: &Arc<Mutex<Open>>,
    address: IpAddr,
    limits: &ConnectionLimits,
) -> Result<Place, &'static str> {
    let mut state = open.lock().unwrap_or_else(|e| e.into_inner());
    if state.total >= limits.max_connections {
        return Err("the gateway is at its connection limit");
    }
    let from = state.by_address.entry(address).or_insert(0);
    if *from >= limits.max_per_address {
        return Err("too many connections from this address");
    }
    *from += 1;
    state.total += 1;
    Ok(Place {
        open: open.clone(),
        address,
    })
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stopped`; then stops
/// accepting and lets each open connection finish its response before the task ends.
/// Aborting the task closes them. With `workers`, each connection is served on the one
/// serving the fewest (`Workers::take`); without, on the runtime this is called on.
pub fn spawn(
    listener: TcpListener,
    app: impl App,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    workers: Option<Arc<Workers>>,
    mut stopped: watch::Receiver<bool>,
    name: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let open = Arc::new(Mutex::new(Open::default()));
        let (closing, closed) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shed = 0u64;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, most likely: wait for some to free up.
                        tracing::warn!(%error, listener = name, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stopped_signal(&mut stopped) => break,
            };
            while connections.try_join_next().is_some() {}
            match admit(&open, peer.ip(), &limits) {
                Ok(place) => {
                    let (app, tls, closed) = (app.clone(), tls.clone(), closed.clone());
                    let accepted = Accepted {
                        stream,
                        peer,
                        app,
                        limits,
                        closing: closed,
                        _place: place,
                    };
                    match &workers {
                        None => {
                            connections.spawn(accepted.serve(tls));
                        }
                        Some(workers) => match accepted.try_map(TcpStream::into_std) {
                            Ok(moving) => {
                                let (worker, assigned) = workers.take();
                                let served = async move {
                                    let _assigned = assigned;
                                    moving.serve_here(tls).await;
                                };
                                connections.spawn_on(served, worker);
                            }
                            Err(error) => {
                                tracing::warn!(%error, listener = name, %peer, "a connection could not be handed to a worker");
                            }
                        },
                    }
                }
                Err(why) => {
                    shed += 1;
                    if shed.is_power_of_two() {
                        tracing::warn!(listener = name, %peer, why, shed, "connection shed");
                    }
                    // A TLS client could not read a plain answer: it is only closed.
                    if tls.is_none() {
                        refuse(stream, why);
                    }
                }
            }
        }
        drop(listener);
        closing.send_replace(true);
        while connections.join_next().await.is_some() {}
    })
}

/// A connection that has its place, before a byte is read.
struct Accepted<A, S = TcpStream> {
    stream: S,
    peer: SocketAddr,
    app: A,
    limits: ConnectionLimits,
    closing: watch::Receiver<bool>,
    _place: Place,
}

impl<A, S> Accepted<A, S> {
    /// The same connection, its stream turned into another form.
    fn try_map<T>(
        self,
        f: impl FnOnce(S) -> std::io::Result<T>,
    ) -> std::io::Result<Accepted<A, T>> {
        let Accepted {
            stream,
            peer,
            app,
            limits,
            closing,
            _place,
        } = self;
        Ok(Accepted {
            stream: f(stream)?,
            peer,
            app,
            limits,
            closing,
            _place,
        })
    }
}

/// An accepted connection on its way to a worker: out of the accepting runtime's
/// reactor.
type Moving<A> = Accepted<A, std::net::TcpStream>;

impl<A: App> Moving<A> {
    /// Registers the connection with the reactor of the runtime this runs on (a
    /// worker's), whose thread then hears of its bytes, and serves it.
    async fn serve_here(self, tls: Option<TlsAcceptor>) {
        let peer = self.peer;
        match self.try_map(TcpStream::from_std) {
            Ok(accepted) => accepted.serve(tls).await,
            Err(error) => {
                tracing::warn!(%error, %peer, "a connection could not be registered on its worker")
            }
        }
    }
}

impl<A: App> Accepted<A> {
    async fn serve(self, tls: Option<TlsAcceptor>) {
        let Accepted {
            stream,
            peer,
            app,
            limits,
            closing,
            _place,
        } = self;
        let _ = stream.set_nodelay(true);
        // The wait for the first bytes and the TLS handshake run in futures of their
        // own, freed before the connection is served: a task is as large as the largest
        // state of its future, and it lives as long as the connection.
        let wait = limits.header_read_timeout;
        let Some(stream) = Box::pin(first_bytes(stream, wait, closing.clone())).await else {
            return;
        };
        match tls {
            None => Turns::new(h1::serve(stream, peer, app, limits, closing)).await,
            Some(tls) => match Box::pin(tokio::time::timeout(wait, tls.accept(stream))).await {
                Ok(Ok(stream)) => Turns::new(serve_http(stream, peer, app, limits, closing)).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            },
        }
    }
}

/// The connection once its client has sent a byte. A client that sends nothing at all is
/// closed here: telling HTTP/1 from HTTP/2 (or a TLS hello) needs its first bytes, and
/// hyper's header timer starts only after that. Nor does it hold up a shutdown: a pool's
/// spare connection that never carried a request is closed as soon as the listener
/// closes.
async fn first_bytes(
    stream: TcpStream,
    wait: Duration,
    mut closing: watch::Receiver<bool>,
) -> Option<TcpStream> {
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(wait, stream.peek(&mut first)) => peeked,
        _ = closing.wait_for(|c| *c) => return None,
    };
    matches!(peeked, Ok(Ok(1))).then_some(stream)
}

/// The most an HTTP/1.1 connection buffers of what it reads, and so the largest
/// request head it takes (larger heads get a 431). At hyper's first read size, a
/// connection's read buffer stays at 8 KiB instead of doubling when a read begins with
/// bytes left over; that is a fifth of what an open stream costs.
const READ_BUFFER: usize = 8 << 10;

async fn serve_http<Io>(
    io: Io,
    peer: SocketAddr,
    app: impl App,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Requests in progress on this connection, a response's body included: HTTP/2 has
    // no header timer between requests, so idleness is watched here for both.
    let activity = Arc::new(Activity::new());
    let active = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(crate::domain::Source(Some(peer.ip())));
        let busy = Busy::start(&active);
        let response = app.clone().oneshot(req.map(Body::new));
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| InProgress { body, _busy: busy }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(READ_BUFFER)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let io = json_errors::JsonErrors::new(io);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // Asked only when woken: the connection wakes this task for every read and write,
    // and asking the shutdown signal and the idle timer each time took a lock shared
    // with every other connection (about 1,500 instructions a request).
    let mut closing = WhenWoken::new(async move {
        let _ = closing.wait_for(|c| *c).await;
    });
    let mut idle = WhenWoken::new(idle_for(&activity, limits.header_read_timeout));
    enum Ended {
        Finished,
        Closing,
        Idle,
    }
    let ended = tokio::select! {
        biased;
        _ = connection.as_mut() => Ended::Finished,
        () = &mut closing => Ended::Closing,
        () = &mut idle => Ended::Idle,
    };
    match ended {
        Ended::Finished => {}
        // Finish the response in progress, then close (HTTP/2: GOAWAY); idle
        // connections close at once.
        Ended::Closing => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        // An HTTP/2 client that never acknowledges the GOAWAY's ping is not waited for.
        Ended::Idle => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
        }
    }
}

/// What a connection is doing: requests in progress (response bodies included) and
/// when the last one ended. Plain atomics: requests never wake the idle timer, which
/// looks when its deadline comes.
struct Activity {
    opened: tokio::time::Instant,
    active: AtomicUsize,
    /// Milliseconds after `opened` that the last request ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: clock::now(),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }
}

/// One request in progress on a connection; done when dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        activity.active.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = clock::since(activity.opened).as_millis() as u64;
        activity.last_ms.fetch_max(now, Ordering::Relaxed);
        activity.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response's body: its request stays in progress until the body is sent or dropped.
/// Its length, when known, is the body's (hyper writes it as `content-length`).
struct InProgress {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for InProgress {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves once a connection has had no request in progress for `timeout`.
async fn idle_for(activity: &Activity, timeout: Duration) {
    loop {
        let last = Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
        let deadline = activity.opened + last + timeout;
        tokio::time::sleep_until(deadline).await;
        if activity.active.load(Ordering::Relaxed) > 0 {
            // Busy now: look again a whole timeout after this moment at the earliest.
            activity.last_ms.fetch_max(
                clock::since(activity.opened).as_millis() as u64,
                Ordering::Relaxed,
            );
            continue;
        }
        if activity.last_ms.load(Ordering::Relaxed) <= last.as_millis() as u64 {
            return;
        }
    }
}

async fn stopped_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Tells a shed client why, in one non-blocking write, and closes.
fn refuse(stream: TcpStream, why: &str) {
    let body = serde_json::json!({
        "error": { "message": format!("{why}; try again shortly"), "type": "server_error", "param": null, "code": "too_many_connections" }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_over_all_and_per_address_and_freed_on_drop() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = ConnectionLimits {
            max_connections: 3,
            max_per_address: 2,
            header_read_timeout: Duration::from_secs(1),
            max_body: 1 << 20,
            body_timeout: Duration::from_secs(1),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let first = admit(&open, a, &limits);
        let second = admit(&open, a, &limits);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            admit(&open, a, &limits).err(),
            Some("too many connections from this address")
        );
        let third = admit(&open, b, &limits);
        assert!(third.is_ok());
        assert_eq!(
            admit(&open, b, &limits).err(),
            Some("the gateway is at its connection limit")
        );
        drop(first);
        assert!(admit(&open, a, &limits).is_ok());
        drop((second, third));
        assert_eq!(open.lock().map(|o| o.total).unwrap_or(99), 0);
        assert!(
            open.lock()
                .map(|o| o.by_address.is_empty())
                .unwrap_or(false)
        );
    }
}
