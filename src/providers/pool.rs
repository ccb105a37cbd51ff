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
//! instance's target without hashing anything; each exchange is [`h1`]'s, done by the
//! request's own task with no connection task behind it; and an answer's body puts its
//! connection back when it has been read to the end. A body dropped before its end (a
//! stream's relay stops at `data: [DONE]`) puts it back once the rest is read, if that
//! is already there or comes within [`LEFT_BODY_WAIT`]; otherwise the connection closes
//! (HTTP/1.1 cannot abandon an answer half read and go on). A waiting connection the
//! upstream closed is seen at the next checkout, and idle connections are closed after
//! [`IDLE_TIMEOUT`], as hyper-util's were.
//!
//! TLS and HTTP/2 upstreams keep hyper-util's pool: ALPN and multiplexing are its
//! business, and the TLS handshake, not the pool, is what such a connection costs.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::ServiceExt;

use super::SendError;
use super::h1::{self, Conn, Failed, Reading};
use crate::clock;
use crate::domain::UpstreamTimeouts;

/// How long a connection may wait unused before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection whose answer was left before its end may take to be ready for
/// another: the rest is read if it comes within this, and the connection closed if not.
const LEFT_BODY_WAIT: Duration = Duration::from_secs(1);

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

    /// Sends a request to `uri` (absolute, on this instance) with the header lines
    /// `fields` (see [`h1::field`]) and `body`, on an idle connection or a new one when
    /// none is left, and reads the answer's head. A request that a reused connection
    /// closed under before any of it was written goes on the next one: nothing of it
    /// reached the upstream.
    pub async fn send(
        &self,
        (connector, timeouts): (&HttpConnector, UpstreamTimeouts),
        (method, uri): (&Method, &Uri),
        fields: &[u8],
        body: Bytes,
    ) -> Result<Response<Body>, SendError> {
        // HTTP/1.1 to a server, not a proxy: the path alone, and the host beside it.
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = h1::request(method, target, self.host.as_bytes(), fields, body);
        let idle = self.idle();
        loop {
            let (conn, reused) = match idle.take() {
                Some(conn) => (conn, true),
                None => (self.connect(connector, timeouts).await?, false),
            };
            match conn.exchange(&request).await {
                Ok(response) => {
                    let idle = idle.clone();
                    return Ok(response.map(|reading| Body(Inner::Own { reading, idle })));
                }
                Err(Failed::Unsent(_)) if reused => continue,
                Err(Failed::Unsent(why)) => {
                    return Err(SendError::Broken(format!(
                        "the connection closed before the request was sent: {why}"
                    )));
                }
                Err(Failed::Broken(why)) => return Err(SendError::Broken(why)),
            }
        }
    }

    /// A new connection.
    async fn connect(
        &self,
        connector: &HttpConnector,
        timeouts: UpstreamTimeouts,
    ) -> Result<Conn, SendError> {
        let io = connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|e| super::client::connect_error(&e, timeouts))?;
        Ok(Conn::new(io.into_inner()))
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
    conn: Conn,
    since: Instant,
}

impl Waiting {
    fn is_usable(&self) -> bool {
        clock::since(self.since) < IDLE_TIMEOUT && self.conn.is_usable()
    }
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleState> {
        // The state is a list that no panic leaves half changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used connection still open and not waited out.
    fn take(&self) -> Option<Conn> {
        let mut state = self.lock();
        while let Some(waiting) = state.conns.pop() {
            if waiting.is_usable() {
                return Some(waiting.conn);
            }
        }
        None
    }

    /// Puts a connection whose answer was read to the end back on the list, and has
    /// waited-out connections closed while any wait.
    fn put(self: &Arc<Self>, conn: Conn) {
        let mut state = self.lock();
        state.conns.push(Waiting {
            conn,
            since: clock::now(),
        });
        if !state.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes connections that waited [`IDLE_TIMEOUT`] unused or that the upstream closed,
/// until none waits.
async fn reap(idle: Weak<Idle>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut state = idle.lock();
        state.conns.retain(Waiting::is_usable);
        if state.conns.is_empty() {
            state.reaping = false;
            return;
        }
    }
}

/// An upstream answer's body: read from its connection here, or handed over by
/// hyper-util's pool (TLS, HTTP/2). Read to the end, a body of this pool's puts its
/// connection back on the idle list it came from.
pub struct Body(Inner);

enum Inner {
    Hyper(Incoming),
    Own { reading: Reading, idle: Arc<Idle> },
}

impl Body {
    /// A body whose connection is hyper-util's to keep.
    pub fn unpooled(inner: Incoming) -> Body {
        Body(Inner::Hyper(inner))
    }
}

impl Drop for Body {
    /// A body left before its end (a stream's relay stops at `data: [DONE]`, before the
    /// chunked body's last, empty chunk) keeps its connection if all that is left is
    /// framing, there already or within [`LEFT_BODY_WAIT`]. A body left with more data
    /// to come (a client gone mid-answer) closes its connection at once, which tells the
    /// upstream to stop.
    fn drop(&mut self) {
        let Inner::Own { reading, idle } = &mut self.0 else {
            return;
        };
        let rest = if reading.is_end() {
            Poll::Ready(true)
        } else {
            reading.rest_now()
        };
        match rest {
            Poll::Ready(true) => {
                if let Some(conn) = reading.take_reusable() {
                    idle.put(conn);
                }
            }
            Poll::Ready(false) => {}
            Poll::Pending => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let (reading, idle) = (reading.take(), idle.clone());
                runtime.spawn(async move {
                    let finished = tokio::time::timeout(LEFT_BODY_WAIT, reading.finish()).await;
                    if let Ok(Some(conn)) = finished {
                        idle.put(conn);
                    }
                });
            }
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(io::Error::other))),
            Inner::Own { reading, idle } => {
                let data = ready!(reading.poll_data(cx));
                if let Some(conn) = reading.take_reusable() {
                    idle.put(conn);
                }
                Poll::Ready(data.map(|data| data.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Hyper(inner) => inner.is_end_stream(),
            Inner::Own { reading, .. } => reading.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Hyper(inner) => inner.size_hint(),
            Inner::Own { reading, .. } => match reading.left() {
                Some(left) => SizeHint::with_exact(left),
                None => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
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
        /// The same, then the connection closed.
        CutShort,
        /// A stream written a piece at a time, as a model server paces its tokens:
        /// the head, each event's chunk, and the body's last chunk, each in a write of
        /// its own and a little after the one before.
        Paced,
        /// A body with neither length nor chunks: it ends where the connection does.
        UntilClosed,
        /// `content-length: 0`.
        Empty,
        /// Nothing: the request read, the connection closed without a word.
        Nothing,
        /// The head and one event; then, a little later, a second event, `[DONE]` and
        /// the body's end in one write.
        TwoEvents,
    }

    /// The pieces `Answers::Paced` writes; their data is `PACED_EVENTS`.
    const PACED: [&str; 5] = [
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        "f\r\ndata: {\"a\":1}\n\n\r\n",
        "f\r\ndata: {\"a\":2}\n\n\r\n",
        "e\r\ndata: [DONE]\n\n\r\n",
        "0\r\n\r\n",
    ];
    const PACED_EVENTS: &[u8] = b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";

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
            if let Answers::Nothing = answers {
                return;
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
                Answers::Stalled | Answers::CutShort => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
                    String::from_utf8_lossy(OK)
                ),
                Answers::Paced => {
                    for piece in PACED {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = socket.write_all(piece.as_bytes()).await;
                    }
                    continue;
                }
                Answers::TwoEvents => {
                    let _ = socket.write_all(PACED[0].as_bytes()).await;
                    let _ = socket.write_all(PACED[1].as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let rest = PACED[2..].concat();
                    let _ = socket.write_all(rest.as_bytes()).await;
                    continue;
                }
                Answers::Nothing => unreachable!("answered above"),
                Answers::Empty => "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string(),
                Answers::UntilClosed => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}",
                    String::from_utf8_lossy(OK)
                ),
            };
            let _ = socket.write_all(answer.as_bytes()).await;
            if let Answers::WholeThenClose | Answers::CutShort | Answers::UntilClosed = answers {
                return;
            }
        }
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
            self.send_body(Bytes::from_static(b"{\"model\":\"m\"}"))
                .await
                .expect("an answer")
        }

        async fn send_body(&self, body: Bytes) -> Result<Response<Body>, SendError> {
            let timeouts = UpstreamTimeouts::all(Duration::from_secs(1));
            let uri: Uri = format!("{}/chat/completions", self.url)
                .parse()
                .expect("uri");
            let fields = b"content-type: application/json\r\n";
            self.pool
                .send((&self.tcp, timeouts), (&Method::POST, &uri), fields, body)
                .await
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

    /// Waits for the upstream to see its one connection closed, which the pool did not
    /// keep.
    async fn closed_not_kept(upstream: &Upstream, client: &Client) {
        until(|| upstream.closed.load(Ordering::SeqCst) > 0).await;
        assert_eq!(upstream.closed.load(Ordering::SeqCst), 1, "closed");
        assert_eq!(client.pool.idle_count(), 0, "not kept");
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
        closed_not_kept(&upstream, &client).await;
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_not_sent_on_again() {
        let upstream = upstream(Answers::WholeThenClose).await;
        let client = Client::of(&upstream);
        for _ in 0..3 {
            assert_eq!(client.ask().await, OK, "every request is answered");
            // Let the upstream's hang-up arrive (on a loaded machine it may not have
            // when the next request comes; then the gateway's own second try,
            // `send_once_more_if_broken`, covers it).
            until(|| {
                let idle = client.pool.idle[1].lock();
                idle.conns.iter().all(|waiting| !waiting.is_usable())
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

    #[tokio::test]
    async fn a_paced_stream_is_read_event_by_event_and_keeps_its_connection() {
        let upstream = upstream(Answers::Paced).await;
        let client = Client::of(&upstream);
        for _ in 0..2 {
            let response = client.send().await;
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut body = response.into_body();
            let mut seen = Vec::new();
            let mut frames = 0;
            while !seen.ends_with(b"data: [DONE]\n\n") {
                let frame = body.frame().await.expect("a frame").expect("data");
                seen.extend_from_slice(&frame.into_data().expect("data"));
                frames += 1;
            }
            assert_eq!(seen, PACED_EVENTS);
            assert_eq!(frames, 3, "each event as it came");
            // Left at `[DONE]`: the body's last chunk has not come yet, and is waited
            // for.
            drop(body);
            until(|| client.pool.idle_count() > 0).await;
            assert_eq!(client.pool.idle_count(), 1);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_an_error_and_its_connection_is_not_kept() {
        let upstream = upstream(Answers::CutShort).await;
        let client = Client::of(&upstream);
        for _ in 0..2 {
            let error = client
                .send()
                .await
                .into_body()
                .collect()
                .await
                .expect_err("an error");
            assert!(
                error.to_string().contains("before the answer's end"),
                "{error}"
            );
            assert_eq!(client.pool.idle_count(), 0);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_that_ends_with_its_connection_is_read_whole() {
        let upstream = upstream(Answers::UntilClosed).await;
        let client = Client::of(&upstream);
        for _ in 0..2 {
            assert_eq!(client.ask().await, OK);
            assert_eq!(client.pool.idle_count(), 0, "nothing left to keep");
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stream_left_with_more_to_come_closes_its_connection() {
        // As when a client leaves mid-answer: what the upstream sends next is data, not
        // the body's end, and the connection closes rather than read it.
        let upstream = upstream(Answers::TwoEvents).await;
        let client = Client::of(&upstream);
        let mut body = client.send().await.into_body();
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), &PACED_EVENTS[..15]);
        drop(body);
        closed_not_kept(&upstream, &client).await;
    }

    #[tokio::test]
    async fn an_empty_answer_dropped_unread_keeps_its_connection() {
        let upstream = upstream(Answers::Empty).await;
        let client = Client::of(&upstream);
        for _ in 0..3 {
            let response = client.send().await;
            assert!(response.body().is_end_stream());
            assert_eq!(response.body().size_hint().exact(), Some(0));
            drop(response);
            assert_eq!(client.pool.idle_count(), 1);
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_long_request_body_reaches_the_upstream_whole() {
        let upstream = upstream(Answers::Whole).await;
        let client = Client::of(&upstream);
        // Longer than what goes in one write with the head; the upstream answers only
        // once it has read as many bytes as `content-length` says.
        let body = Bytes::from(vec![b' '; 300 << 10]);
        let response = client.send_body(body).await.expect("an answer");
        let answer = response.into_body().collect().await.expect("body");
        assert_eq!(answer.to_bytes(), OK);
        let head = upstream.head.lock().expect("head").clone();
        assert!(head.contains("\r\ncontent-length: 307200"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_upstream_that_answers_nothing_is_a_broken_exchange() {
        let upstream = upstream(Answers::Nothing).await;
        let client = Client::of(&upstream);
        match client.send_body(Bytes::new()).await {
            Err(SendError::Broken(why)) => {
                assert!(
                    why.contains("closed the connection before it answered"),
                    "{why}"
                );
            }
            Err(other) => panic!("not a broken exchange: {other}"),
            Ok(response) => panic!("an answer: {}", response.status()),
        }
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
