//! Keep-alive connections to cleartext HTTP/1.1 upstreams, kept by hand.
//!
//! An in-cluster model server on plain HTTP/1.1 is the common upstream and the hot one.
//! hyper-util's pool, in front of it, keys connections by scheme and authority in a
//! SipHash map (hashed a byte at a time, at checkout and again at return), spawns a task
//! for each answer to wait for its connection to go idle, and works out the authority and
//! port again for every request: about 10,000 of the 111,000 instructions the gateway
//! spent on a whole answer (callgrind, as `MEASURE=instructions benches/peers.sh` counts).
//!
//! Here each instance has an idle list for each connection worker, found through the
//! instance's target without hashing anything, and an answer's body puts its connection
//! back when it has been read to the end. A body dropped before its end (a stream's
//! relay stops at `data: [DONE]`) puts it back once hyper has read the rest, if that was
//! already there; otherwise the connection closes (HTTP/1.1 cannot abandon an answer
//! half read and go on). Idle connections are closed after [`IDLE_TIMEOUT`], as
//! hyper-util's were.
//!
//! TLS and HTTP/2 upstreams keep hyper-util's pool: ALPN and multiplexing are its
//! business, and the TLS handshake, not the pool, is what such a connection costs.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::ServiceExt;

use super::SendError;
use crate::domain::UpstreamTimeouts;
use crate::telemetry::root_cause;

/// How long a connection may wait unused before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection whose answer was left before its end may take to be ready for
/// another: hyper reads the rest only when it is already there, so this is a bound, not
/// a wait.
const LEFT_BODY_WAIT: Duration = Duration::from_secs(1);

type Sender = SendRequest<Full<Bytes>>;

/// One cleartext HTTP/1.1 instance's connections.
pub struct Pool {
    /// `http://host:port`, what a connection is opened to.
    origin: Uri,
    /// `host:port`, sent as `Host`.
    host: HeaderValue,
    /// An idle list for each connection worker, then one for everything else.
    idle: Box<[Arc<Idle>]>,
}

impl Pool {
    /// A pool for the instance at `url`, if it is reached over cleartext HTTP/1.1
    /// (`http://`, without `http2`); `workers`: the connection workers.
    pub fn new(url: &str, http2: bool, workers: usize) -> Option<Pool> {
        if http2 {
            return None;
        }
        let url: Uri = url.parse().ok()?;
        if url.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = url.authority()?.clone();
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        let origin = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority)
            .path_and_query("/")
            .build()
            .ok()?;
        let idle = (0..=workers).map(|_| Arc::new(Idle::default())).collect();
        Some(Pool { origin, host, idle })
    }

    /// Whether `uri` is on this pool's instance (a URL made at request time might not
    /// be).
    pub fn serves(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&http::uri::Scheme::HTTP)
            && uri.authority().map(|a| a.as_str().as_bytes()) == Some(self.host.as_bytes())
    }

    /// The calling worker's idle list (the shared one off the workers).
    fn idle(&self) -> &Arc<Idle> {
        let last = self.idle.len() - 1;
        &self.idle[crate::workers::current().map_or(last, |w| w.min(last))]
    }

    /// Sends `request` (its URI absolute, on this instance) on an idle connection, or a
    /// new one when none is left. A request that a reused connection closed under
    /// before it was written goes on the next one: nothing of it reached the upstream.
    pub async fn send(
        &self,
        (connector, timeouts): (&HttpConnector, UpstreamTimeouts),
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Body>, SendError> {
        // HTTP/1.1 to a server, not a proxy: the path alone, and the host beside it.
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = None;
        parts.authority = None;
        if let Ok(origin_form) = Uri::from_parts(parts) {
            *request.uri_mut() = origin_form;
        }
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        let idle = self.idle();
        loop {
            let (mut sender, reused) = match idle.take() {
                Some(sender) => (sender, true),
                None => (self.connect(connector, timeouts).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Broken(
                    "the connection closed before the request was sent".into(),
                ));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let home = Some(Home {
                        sender,
                        idle: idle.clone(),
                    });
                    return Ok(response.map(|inner| Body { inner, home }));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Broken(root_cause(failed.error()))),
                },
            }
        }
    }

    /// A new connection, its task spawned on the calling worker.
    async fn connect(
        &self,
        connector: &HttpConnector,
        timeouts: UpstreamTimeouts,
    ) -> Result<Sender, SendError> {
        let io = connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|e| super::client::connect_error(&e, timeouts))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(root_cause(&e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %root_cause(&error), "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Connections waiting unused on every worker (for tests and the curious).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|idle| idle.lock().conns.len()).sum()
    }
}

/// One worker's idle connections to one instance, the most recently used last.
#[derive(Default)]
pub struct Idle(Mutex<IdleState>);

#[derive(Default)]
struct IdleState {
    conns: Vec<Waiting>,
    /// Whether a task is closing connections that waited too long.
    reaping: bool,
}

struct Waiting {
    sender: Sender,
    since: Instant,
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleState> {
        // The state is a list that no panic leaves half changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used connection still open and not waited out.
    fn take(&self) -> Option<Sender> {
        let mut state = self.lock();
        while let Some(conn) = state.conns.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < IDLE_TIMEOUT {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Puts a connection whose answer was read to the end back on the list, and has
    /// waited-out connections closed while any wait.
    fn put(self: &Arc<Self>, sender: Sender) {
        let mut state = self.lock();
        state.conns.push(Waiting {
            sender,
            since: Instant::now(),
        });
        if !state.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes connections that waited [`IDLE_TIMEOUT`] unused, until none waits.
async fn reap(idle: Weak<Idle>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut state = idle.lock();
        state
            .conns
            .retain(|conn| !conn.sender.is_closed() && conn.since.elapsed() < IDLE_TIMEOUT);
        if state.conns.is_empty() {
            state.reaping = false;
            return;
        }
    }
}

/// An upstream answer's body. Read to the end, it puts its connection back on the idle
/// list it came from; the answers of hyper-util's pool carry none.
pub struct Body {
    inner: Incoming,
    home: Option<Home>,
}

struct Home {
    sender: Sender,
    idle: Arc<Idle>,
}

impl Body {
    /// A body whose connection is someone else's to keep.
    pub fn unpooled(inner: Incoming) -> Body {
        Body { inner, home: None }
    }

    fn go_home(&mut self) {
        if let Some(Home { sender, idle }) = self.home.take() {
            idle.put(sender);
        }
    }
}

impl Drop for Body {
    /// A body left before its end (a stream's relay stops at `data: [DONE]`, before the
    /// chunked body's last, empty chunk) leaves hyper to read what remains if it is
    /// already there: the connection is kept if that reaches the end, as hyper-util's
    /// pool kept it, and closed otherwise.
    fn drop(&mut self) {
        let Some(Home { mut sender, idle }) = self.home.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let ready = tokio::time::timeout(LEFT_BODY_WAIT, sender.ready()).await;
            if let Ok(Ok(())) = ready {
                idle.put(sender);
            }
        });
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.go_home(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.go_home(),
            // A connection that failed mid-answer is not one to use again.
            Some(Err(_)) => this.home = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// How the test upstream answers.
    #[derive(Clone, Copy)]
    enum Answers {
        /// `{"ok":true}`, and the connection kept open.
        Whole,
        /// The same, then the connection closed without saying so, as by a server whose
        /// keep-alive timeout is shorter than ours.
        WholeThenClose,
        /// A chunked event stream: two events, the last `data: [DONE]`, and the empty
        /// chunk that ends the body, all in one write.
        Stream,
        /// A head promising 100 bytes, and 11 of them.
        Stalled,
    }

    const OK: &[u8] = br#"{"ok":true}"#;

    /// An HTTP/1.1 upstream that counts its connections, keeps the first request head it
    /// read, and answers every request as `answers` says. `closed` counts connections it
    /// saw the client close.
    struct Upstream {
        url: String,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        head: Arc<Mutex<String>>,
    }

    async fn upstream(answers: Answers) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let head = Arc::new(Mutex::new(String::new()));
        let (a, c, h) = (accepted.clone(), closed.clone(), head.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(socket, answers, c.clone(), h.clone()));
            }
        });
        Upstream {
            url,
            accepted,
            closed,
            head,
        }
    }

    async fn answer(
        mut socket: TcpStream,
        answers: Answers,
        closed: Arc<AtomicUsize>,
        first_head: Arc<Mutex<String>>,
    ) {
        let mut buffer = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            buffer.extend_from_slice(&chunk[..n]);
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() < end + 4 + length {
                continue;
            }
            buffer.drain(..end + 4 + length);
            {
                let mut first = first_head.lock().expect("head");
                if first.is_empty() {
                    *first = head;
                }
            }
            let answer = match answers {
                Answers::Whole | Answers::WholeThenClose => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{}",
                    String::from_utf8_lossy(OK)
                ),
                Answers::Stream => "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n\
                    f\r\ndata: {\"a\":1}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
                    .to_string(),
                Answers::Stalled => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
                    String::from_utf8_lossy(OK)
                ),
            };
            let _ = socket.write_all(answer.as_bytes()).await;
            if let Answers::WholeThenClose = answers {
                return;
            }
        }
    }

    fn request(url: &str) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = format!("{url}/chat/completions").parse().expect("uri");
        request
    }

    /// A pool for `upstream`, and what it connects with.
    struct Client {
        pool: Pool,
        tcp: HttpConnector,
        url: String,
    }

    impl Client {
        fn of(upstream: &Upstream) -> Client {
            let mut tcp = HttpConnector::new();
            tcp.set_connect_timeout(Some(Duration::from_secs(1)));
            Client {
                pool: Pool::new(&upstream.url, false, 1).expect("a cleartext pool"),
                tcp,
                url: upstream.url.clone(),
            }
        }

        async fn send(&self) -> Response<Body> {
            let timeouts = UpstreamTimeouts::all(Duration::from_secs(1));
            self.pool
                .send((&self.tcp, timeouts), request(&self.url))
                .await
                .expect("an answer")
        }

        /// Sends a request and reads its answer to the end.
        async fn ask(&self) -> Bytes {
            let response = self.send().await;
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }
    }

    /// Waits (up to five seconds, on the wall clock) until `done`: what a connection's
    /// task does next happens on its own time.
    async fn until(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn answers_read_to_the_end_leave_one_connection_for_the_next() {
        let upstream = upstream(Answers::Whole).await;
        let client = Client::of(&upstream);
        for _ in 0..3 {
            assert_eq!(client.ask().await, OK);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(client.pool.idle_count(), 1);
        // HTTP/1.1 to a server: the path alone, the host beside it.
        let head = upstream.head.lock().expect("head").clone();
        let authority = upstream
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/v1");
        assert!(
            head.starts_with("post /v1/chat/completions http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nhost: {authority}")), "{head}");
    }

    #[tokio::test]
    async fn a_stream_left_at_done_keeps_its_connection() {
        let upstream = upstream(Answers::Stream).await;
        let client = Client::of(&upstream);
        for _ in 0..3 {
            // Read as the relay reads: up to `data: [DONE]`, then dropped.
            let mut body = client.send().await.into_body();
            let mut seen = Vec::new();
            while !seen.ends_with(b"data: [DONE]\n\n") {
                let frame = body.frame().await.expect("a frame").expect("data");
                seen.extend_from_slice(&frame.into_data().expect("data"));
            }
            drop(body);
            until(|| client.pool.idle_count() > 0).await;
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_with_more_to_come_takes_its_connection_with_it() {
        let upstream = upstream(Answers::Stalled).await;
        let client = Client::of(&upstream);
        let mut body = client.send().await.into_body();
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), OK);
        drop(body);
        until(|| upstream.closed.load(Ordering::SeqCst) > 0).await;
        assert_eq!(
            upstream.closed.load(Ordering::SeqCst),
            1,
            "closed, not kept"
        );
        assert_eq!(client.pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_not_sent_on_again() {
        let upstream = upstream(Answers::WholeThenClose).await;
        let client = Client::of(&upstream);
        for _ in 0..3 {
            assert_eq!(client.ask().await, OK, "every request is answered");
            // Let the connection's task see the upstream hang up (on a loaded machine
            // it may not have yet when the next request comes; then the gateway's own
            // second try, `send_once_more_if_broken`, covers it).
            until(|| {
                let idle = client.pool.idle[1].lock();
                idle.conns.iter().all(|c| c.sender.is_closed())
            })
            .await;
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let upstream = upstream(Answers::Whole).await;
        let client = Client::of(&upstream);
        assert_eq!(client.ask().await, OK);
        assert_eq!(client.pool.idle_count(), 1);
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        assert_eq!(client.pool.idle_count(), 1, "not yet waited out");
        tokio::time::advance(IDLE_TIMEOUT / 2 + Duration::from_secs(1)).await;
        // The reaper looks at the next half period.
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        assert_eq!(client.pool.idle_count(), 0);
        tokio::time::resume();
        until(|| upstream.closed.load(Ordering::SeqCst) > 0).await;
        assert_eq!(
            upstream.closed.load(Ordering::SeqCst),
            1,
            "the upstream saw it close"
        );
    }

    #[test]
    fn only_cleartext_http1_instances_have_a_pool_of_their_own() {
        assert!(Pool::new("http://10.0.0.1:8000/v1", false, 2).is_some());
        assert!(Pool::new("http://10.0.0.1:8000/v1", true, 2).is_none());
        assert!(Pool::new("https://api.openai.com/v1", false, 2).is_none());
        let pool = Pool::new("http://10.0.0.1:8000/v1", false, 2).expect("pool");
        assert!(pool.serves(&"http://10.0.0.1:8000/v1/chat".parse().expect("uri")));
        assert!(!pool.serves(&"http://10.0.0.2:8000/v1/chat".parse().expect("uri")));
        assert!(!pool.serves(&"https://10.0.0.1:8000/v1/chat".parse().expect("uri")));
    }
}
