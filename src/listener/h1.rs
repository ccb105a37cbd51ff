//! A client's cleartext HTTP/1.1 connection, served by hand for the requests nearly all
//! traffic is: a head, and a body of known length or none.
//!
//! hyper's server connection runs a dispatcher between the socket and the router: the
//! body is handed over through a channel of its own, the answer's head goes through a
//! header map into an encoder's queue, and each turn asks the socket, the body and the
//! service in a fixed round (about a fifth of what a whole answer costs the gateway).
//! Here the connection's task reads the head with `httparse` (hyper's own parser), the
//! body whole (it is at most `server.max_body`, which the handlers read whole anyway),
//! calls the router, and writes the answer's head and body in one write, a stream's
//! events as chunks as they come.
//!
//! What it does not take goes to hyper with the bytes already read, and the connection
//! stays with hyper from then on: HTTP/1.0, HTTP/2's preface, a chunked or otherwise
//! coded body, `expect` other than `100-continue`, an upgrade, `CONNECT`, a body over
//! `max_body`, a head that is malformed or past the read buffer (hyper's 400 and 431,
//! in OpenAI's shape, as before).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use hyper::body::Body as _;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{Activity, App, Busy, ConnectionLimits, READ_BUFFER, idle_for};
use crate::wake::WhenWoken;

/// The most header fields a request may carry (hyper's default too).
const MAX_HEADERS: usize = 100;

/// Answer bytes gathered before they are written; a larger piece of body is written
/// on its own rather than copied.
const GATHER: usize = 16 << 10;

/// The most room kept for an answer's bytes while it waits for its body: a stream's
/// pieces, one at a time.
const WAITING: usize = 512;

/// Serves `io` until the client closes it, it idles out, the listener closes, or a
/// request comes that hyper should take (then hyper serves the rest of it).
pub(super) async fn serve(
    io: TcpStream,
    peer: SocketAddr,
    app: impl App,
    limits: ConnectionLimits,
    closing: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        io,
        buffer: BytesMut::with_capacity(READ_BUFFER),
        out: Vec::new(),
    };
    // As hyper's connections are watched (`serve_http`): asked only when woken.
    let activity = Arc::new(Activity::new());
    let mut idle = WhenWoken::new(idle_for(&activity, limits.header_read_timeout));
    let mut shutdown = {
        let mut closing = closing.clone();
        WhenWoken::new(async move {
            let _ = closing.wait_for(|c| *c).await;
        })
    };
    loop {
        let next = tokio::select! {
            biased;
            next = conn.read_head(&limits) => next,
            () = &mut shutdown => return,
            () = &mut idle => return,
        };
        let head = match next {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(ForHyper) => break,
        };
        let busy = Busy::start(&activity);
        let Some(request) = conn.read_body(head, peer, &limits).await else {
            return;
        };
        let keep = request.keep;
        let answered = {
            let (mut reader, mut writer) = conn.io.split();
            let buffer = &mut conn.buffer;
            let response = tokio::select! {
                biased;
                response = app.clone().oneshot(request.request) => match response {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                () = client_gone(&mut reader, &mut *buffer) => return,
            };
            // A stream holds its connection for as long as it runs. With nothing read
            // ahead, the read buffer is given back for that time (a third of what an
            // open stream costs) and taken again when the next request comes.
            if buffer.is_empty() && response.body().size_hint().exact().is_none() {
                *buffer = BytesMut::new();
            }
            // Shutting down: this answer is the connection's last.
            let keep = keep && !is_done(&mut shutdown);
            let head_only = request.head_only;
            tokio::select! {
                biased;
                kept = write(&mut writer, &mut conn.out, response, keep, head_only) => kept,
                () = client_gone(&mut reader, &mut *buffer) => return,
            }
        };
        drop(busy);
        match answered {
            Ok(true) if !is_done(&mut shutdown) => {}
            Ok(_) => {
                let _ = conn.io.shutdown().await;
                return;
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "a client connection failed mid-answer");
                return;
            }
        }
        if conn.out.capacity() > 4 * GATHER {
            conn.out = Vec::new();
        }
    }
    let Conn { io, buffer, .. } = conn;
    let io = Prefixed {
        read: buffer.freeze(),
        io,
    };
    Box::pin(super::serve_http(io, peer, app, limits, closing)).await;
}

/// Whether a wait wrapped in `WhenWoken` has ended, without waiting.
fn is_done(wait: &mut WhenWoken<impl Future<Output = ()>>) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(wait).poll(&mut cx).is_ready()
}

struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used: the start of the next request, if any.
    buffer: BytesMut,
    /// An answer's bytes, gathered for one write.
    out: Vec<u8>,
}

/// A request this module does not serve (see the module's text): hyper takes the
/// connection.
struct ForHyper;

/// A request's head, read and taken.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    length: usize,
    keep: bool,
    expect_continue: bool,
}

/// A request ready for the router.
struct Ready {
    request: Request<Body>,
    keep: bool,
    /// A `HEAD` request: its answer's head is written, not its body.
    head_only: bool,
}

impl Conn {
    /// The next request's head; `None` when the client closed the connection (or it
    /// failed) between requests.
    async fn read_head(&mut self, limits: &ConnectionLimits) -> Result<Option<Head>, ForHyper> {
        loop {
            match take_head(&mut self.buffer, limits.max_body)? {
                Some(head) => return Ok(Some(head)),
                None if self.buffer.len() >= READ_BUFFER => return Err(ForHyper),
                None => {}
            }
            match fill(&mut self.io, &mut self.buffer, READ_BUFFER).await {
                Ok(0) | Err(_) if self.buffer.is_empty() => return Ok(None),
                // A head cut short: hyper says what it makes of it.
                Ok(0) | Err(_) => return Err(ForHyper),
                Ok(_) => {}
            }
        }
    }

    /// Reads the body whole, within `body_timeout` (a client that does not finish it
    /// gets a 408); `None` when the connection is done.
    async fn read_body(
        &mut self,
        head: Head,
        peer: SocketAddr,
        limits: &ConnectionLimits,
    ) -> Option<Ready> {
        let Head {
            method,
            uri,
            headers,
            length,
            keep,
            expect_continue,
        } = head;
        if self.buffer.len() < length {
            if expect_continue && self.buffer.is_empty() {
                self.io
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .ok()?;
            }
            // Room grows with what arrives: a length claimed is not memory taken.
            self.buffer
                .reserve((length - self.buffer.len()).min(64 << 10));
            let read = async {
                while self.buffer.len() < length {
                    if fill(&mut self.io, &mut self.buffer, length).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok::<_, io::Error>(())
            };
            // Boxed, as is the 408 below: a connection's task is as large as its largest
            // state for as long as it lives, a stream's included. These were the largest,
            // and a request whose body comes with its head never enters them.
            match Box::pin(tokio::time::timeout(limits.body_timeout, read)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => {
                    let refusal = body_timeout(limits.body_timeout);
                    let write = write(&mut self.io, &mut self.out, refusal, false, false);
                    let _ = Box::pin(write).await;
                    let _ = self.io.shutdown().await;
                    return None;
                }
            }
        }
        let body = if length == 0 {
            Body::empty()
        } else {
            Body::from(self.buffer.split_to(length).freeze())
        };
        if length > READ_BUFFER {
            // What follows moves to a buffer of the usual size: the large one is freed
            // with the body instead of being kept for the connection's life.
            let rest = std::mem::take(&mut self.buffer);
            self.buffer = BytesMut::with_capacity(READ_BUFFER.max(rest.len()));
            self.buffer.extend_from_slice(&rest);
        }
        let head_only = method == Method::HEAD;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
            .extensions_mut()
            .insert(crate::domain::Source(Some(peer.ip())));
        Some(Ready {
            request,
            keep,
            head_only,
        })
    }
}

/// The answer to a body that did not arrive in time, as the handlers give it
/// (`Refusal::body_timeout`; the listener sits below the gateway and cannot ask it).
fn body_timeout(timeout: std::time::Duration) -> Response {
    let body = serde_json::json!({
        "error": {
            "message": format!(
                "the request body did not arrive within {}",
                crate::domain::units::format_duration(timeout)
            ),
            "type": "invalid_request_error",
            "param": null,
            "code": "request_timeout",
        }
    });
    (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response()
}

/// Reads what the socket has into `buffer`, with room made towards `up_to` bytes in
/// all: how much it read, 0 at its end.
async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buffer: &mut BytesMut,
    up_to: usize,
) -> io::Result<usize> {
    let room = up_to.saturating_sub(buffer.len()).max(1);
    if buffer.capacity() - buffer.len() < room.min(READ_BUFFER / 2) {
        buffer.reserve(room.min(READ_BUFFER));
    }
    std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buffer)).await
}

/// Resolves when the client has closed the connection (or it failed) while a request is
/// in progress; what it sends meanwhile (a pipelined request) is kept, up to the read
/// buffer. Until it sends something, the buffer is not grown: the socket is peeked.
async fn client_gone(reader: &mut ReadHalf<'_>, buffer: &mut BytesMut) {
    while buffer.len() < READ_BUFFER {
        if buffer.is_empty() {
            match reader.peek(&mut [0u8]).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        match fill(reader, buffer, READ_BUFFER).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Takes a request's head from the front of `buffer` when it is all there (`None`
/// until it is) and this module serves it.
fn take_head(buffer: &mut BytesMut, max_body: usize) -> Result<Option<Head>, ForHyper> {
    if buffer.is_empty() {
        return Ok(None);
    }
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buffer, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ForHyper),
    };
    if parsed.version != Some(1) {
        return Err(ForHyper);
    }
    let Ok(method) = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()) else {
        return Err(ForHyper);
    };
    if method == Method::CONNECT {
        return Err(ForHyper);
    }
    // Where each piece lies in `buffer`, to be cut from it once the head is taken.
    // httparse's pieces are slices of `buffer`; anything else goes to hyper.
    let at = |piece: &[u8]| {
        let start = (piece.as_ptr() as usize).checked_sub(buffer.as_ptr() as usize)?;
        (start + piece.len() <= length).then_some(start..start + piece.len())
    };
    let Some(path) = parsed.path.and_then(|path| at(path.as_bytes())) else {
        return Err(ForHyper);
    };
    let head = SHAPE.with_borrow_mut(|shape| {
        let fields = &*parsed.headers;
        // The names as the last request on this worker gave them: theirs are reused.
        let same = shape.len() == fields.len()
            && (shape.keys().zip(fields))
                .all(|(name, field)| is_named(name, field.name.as_bytes()));
        let mut known = shape.keys().filter(|_| same);
        let mut names: SmallVec<[HeaderName; 16]> = SmallVec::new();
        let mut places: SmallVec<[std::ops::Range<usize>; 16]> = SmallVec::new();
        let (mut body, mut keep, mut expect_continue) = (None, true, false);
        for field in fields {
            let name = match known.next() {
                Some(name) => name,
                None => {
                    let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
                        return Err(ForHyper);
                    };
                    names.push(name);
                    &names[names.len() - 1]
                }
            };
            if name == header::CONTENT_LENGTH {
                let Some(length) = std::str::from_utf8(field.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<usize>().ok())
                else {
                    return Err(ForHyper);
                };
                if body.is_some_and(|known| known != length) || length > max_body {
                    return Err(ForHyper);
                }
                body = Some(length);
            } else if name == header::TRANSFER_ENCODING || name == header::UPGRADE {
                return Err(ForHyper);
            } else if name == header::EXPECT {
                if !field.value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(ForHyper);
                }
                expect_continue = true;
            } else if name == header::CONNECTION {
                for token in field.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep = false;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Err(ForHyper);
                    }
                }
            }
            let Some(place) = at(field.value) else {
                return Err(ForHyper);
            };
            places.push(place);
        }
        // The path and each value are copied out, each its own small allocation: cut
        // from the head as shared slices, every one took an atomic count when cut and
        // another when dropped, which cost more. httparse took only bytes a header
        // value may hold.
        let Ok(uri) = Uri::try_from(&buffer[path]) else {
            return Err(ForHyper);
        };
        let value = |place: std::ops::Range<usize>| HeaderValue::from_bytes(&buffer[place]);
        let headers = if same {
            let mut headers = shape.clone();
            for (slot, place) in headers.values_mut().zip(places) {
                *slot = value(place).map_err(|_| ForHyper)?;
            }
            headers
        } else {
            let mut headers = HeaderMap::with_capacity(places.len());
            for (name, place) in names.into_iter().zip(places) {
                headers.append(name, value(place).map_err(|_| ForHyper)?);
            }
            // A name given twice has its values apart from the order of the names:
            // such a head is not kept as the shape.
            if headers.keys_len() == headers.len() {
                *shape = HeaderMap::with_capacity(headers.len());
                for name in headers.keys() {
                    shape.insert(name.clone(), HeaderValue::from_static(""));
                }
            }
            headers
        };
        Ok(Head {
            method,
            uri,
            headers,
            length: body.unwrap_or(0),
            keep,
            expect_continue,
        })
    })?;
    buffer.advance(length);
    Ok(Some(head))
}

/// Whether a header name as a client wrote it (`given`, which httparse took: ASCII) is
/// `name`, whose letters are lower case: eight bytes at a time, each upper-case letter
/// of `given` lowered first. Clients that capitalize their names (Python's httpx, so
/// OpenAI's SDK) are compared as cheaply as those that do not; a byte at a time, this
/// cost what the shape saves.
fn is_named(name: &HeaderName, given: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let name = name.as_str().as_bytes();
    if name.len() != given.len() {
        return false;
    }
    let word = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    };
    // Each byte is below 0x80, so adding to it never carries into the next: the high
    // bit says `byte >= b'A'` in the first sum and `byte > b'Z'` in the second.
    let lowered = |given: u64| {
        let upper = given.wrapping_add(ONES * u64::from(0x80 - b'A'))
            & !given.wrapping_add(ONES * u64::from(0x80 - b'Z' - 1))
            & HIGH;
        given | (upper >> 2)
    };
    name.chunks(8).zip(given.chunks(8)).all(|(name, given)| {
        let given = word(given);
        given & HIGH == 0 && word(name) == lowered(given)
    })
}

thread_local! {
    /// The header names of the last request this worker read, in a map with empty
    /// values. Clients send the same names in the same order request after
    /// request (an SDK's, a load generator's), so a head whose names match is that map
    /// copied with its values put in place: each name parsed and hashed into a new map
    /// cost a fifth of reading the head. `answer_headers` does the same for answers.
    static SHAPE: std::cell::RefCell<HeaderMap> = std::cell::RefCell::new(HeaderMap::new());
}

/// How an answer's body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes `response`, head and body; whether the connection can carry another request.
async fn write<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    response: Response,
    keep: bool,
    head_only: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let keep = keep && !says_close(&parts.headers);
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else {
        match body.size_hint().exact() {
            Some(length) => Framing::Length(length),
            None => parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map_or(Framing::Chunked, Framing::Length),
        }
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    date::append(out);
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None || head_only {
        io.write_all(out).await?;
        return Ok(keep);
    }
    let mut left = match framing {
        Framing::Length(length) => length,
        _ => u64::MAX,
    };
    loop {
        // Every piece ready now goes in one write; a write waits for nothing else.
        let frame =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match frame {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                // A stream waits here between its pieces for as long as it runs: the room
                // its head took (about a kilobyte) is given back.
                out.shrink_to(WAITING);
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(error)) => return Err(io::Error::other(error)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not sent (nor asked for).
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if framing == Framing::Chunked {
            chunk_size(out, data.len());
        } else {
            left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                io::Error::other("the answer's body is longer than its content-length")
            })?;
        }
        if data.len() > GATHER {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ if left != 0 => {
            return Err(io::Error::other(
                "the answer's body is shorter than its content-length",
            ));
        }
        _ => {}
    }
    io.write_all(out).await?;
    out.clear();
    Ok(keep)
}

/// A chunk's size line: its length in hexadecimal.
fn chunk_size(out: &mut Vec<u8>, length: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut left = length;
    loop {
        at -= 1;
        digits[at] = DIGITS[left & 15];
        left >>= 4;
        if left == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Whether an answer's headers end its connection.
fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The `date` header, formatted once a second on each thread.
mod date {
    use std::cell::RefCell;
    use std::time::UNIX_EPOCH;

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn append(out: &mut Vec<u8>) {
        let now = crate::clock::wall();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != second {
                *at = second;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        });
    }
}

/// A connection handed to hyper with the bytes already read from it, which hyper reads
/// first.
struct Prefixed {
    read: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A listener on 127.0.0.1:0 serving `handle` for every request; stopped when the
    /// returned sender is dropped.
    async fn listen<F, Fut>(handle: F) -> (SocketAddr, watch::Sender<bool>)
    where
        F: Fn(Request<Body>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tower::service_fn(move |req| {
            let answer = handle(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let limits = ConnectionLimits {
            max_connections: 16,
            max_per_address: 16,
            header_read_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
            body_timeout: Duration::from_secs(10),
        };
        let (stop, stopped) = watch::channel(false);
        super::super::spawn(listener, app, limits, None, None, stopped, "test");
        (addr, stop)
    }

    /// Answers with what it was sent: the method, path, body and one header.
    async fn echo(req: Request<Body>) -> Response {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let said = parts
            .headers
            .get("x-say")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        format!(
            "{} {} [{}] {}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body),
            said
        )
        .into_response()
    }

    /// One answer read from `stream`: its head, and its body unframed.
    async fn answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> (String, String) {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            read_more(stream, buffer).await;
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
        buffer.drain(..head_end);
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|l| l.trim().parse::<usize>().unwrap());
        let body = match length {
            Some(length) => {
                while buffer.len() < length {
                    read_more(stream, buffer).await;
                }
                buffer.drain(..length).collect::<Vec<u8>>()
            }
            None if head.contains("transfer-encoding: chunked") => {
                let mut body = Vec::new();
                loop {
                    let line_end = loop {
                        if let Some(at) = buffer.windows(2).position(|w| w == b"\r\n") {
                            break at;
                        }
                        read_more(stream, buffer).await;
                    };
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&buffer[..line_end]).unwrap(),
                        16,
                    )
                    .unwrap();
                    while buffer.len() < line_end + 2 + size + 2 {
                        read_more(stream, buffer).await;
                    }
                    body.extend_from_slice(&buffer[line_end + 2..line_end + 2 + size]);
                    buffer.drain(..line_end + 2 + size + 2);
                    if size == 0 {
                        break body;
                    }
                }
            }
            None => Vec::new(),
        };
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    /// A connection to `addr` that has sent `wire`.
    async fn sent(addr: SocketAddr, wire: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(wire).await.unwrap();
        stream
    }

    /// Reads into `buffer` until it ends with `end`.
    async fn read_until(stream: &mut TcpStream, buffer: &mut Vec<u8>, end: &[u8]) {
        while !buffer.ends_with(end) {
            read_more(stream, buffer).await;
        }
    }

    async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
        let mut piece = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut piece))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(buffer)
        );
        buffer.extend_from_slice(&piece[..n]);
    }

    async fn closed(stream: &mut TcpStream) -> bool {
        let mut piece = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut piece)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_body_sent_in_pieces_reaches_the_handler_whole() {
        let (addr, _stop) = listen(echo).await;
        let mut stream = sent(addr, b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: a\r\nx-say: hi\r\ncontent-length: 11\r\n\r\nhel").await;
        for piece in [&b"lo "[..], b"world"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(piece).await.unwrap();
        }
        let mut buffer = Vec::new();
        let (head, body) = answer(&mut stream, &mut buffer).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert_eq!(body, "POST /v1/chat/completions?x=1 [hello world] hi");
        // The connection carries the next one.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let (_, body) = answer(&mut stream, &mut buffer).await;
        assert_eq!(body, "GET /healthz [] ");
    }

    #[tokio::test]
    async fn a_body_larger_than_the_read_buffer_arrives_whole_and_what_follows_is_kept() {
        let (addr, _stop) = listen(echo).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let large = "x".repeat(100_000);
        let mut requests = format!(
            "POST /large HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{large}",
            large.len()
        )
        .into_bytes();
        requests.extend_from_slice(b"POST /next HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n1");
        stream.write_all(&requests).await.unwrap();
        let mut buffer = Vec::new();
        assert_eq!(
            answer(&mut stream, &mut buffer).await.1,
            format!("POST /large [{large}] ")
        );
        assert_eq!(answer(&mut stream, &mut buffer).await.1, "POST /next [1] ");
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (addr, _stop) = listen(echo).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut requests = Vec::new();
        for n in 0..5 {
            requests.extend_from_slice(
                format!("POST /{n} HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n{n}").as_bytes(),
            );
        }
        stream.write_all(&requests).await.unwrap();
        let mut buffer = Vec::new();
        for n in 0..5 {
            let (_, body) = answer(&mut stream, &mut buffer).await;
            assert_eq!(body, format!("POST /{n} [{n}] "));
        }
    }

    #[tokio::test]
    async fn a_streamed_answer_is_written_as_each_piece_comes() {
        let (guard, _) = tokio::sync::oneshot::channel();
        let (_stop, pieces, mut stream, mut buffer) = a_stream_begun(guard).await;
        let head = String::from_utf8_lossy(&buffer).to_lowercase();
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\nb\r\ndata: one\n\n\r\n"), "{head}");
        buffer.clear();
        // The second piece goes out only now, so the first came on its own.
        pieces.send("data: two\n\n").unwrap();
        drop(pieces);
        read_until(&mut stream, &mut buffer, b"0\r\n\r\n").await;
        assert_eq!(buffer, b"b\r\ndata: two\n\n\r\n0\r\n\r\n");
    }

    /// A connection whose `/stream` answer has begun with its first piece: the
    /// listener, the sender of the stream's next pieces, the client's socket and what
    /// it read. The stream holds `guard` until it is dropped; other paths are echoed.
    async fn a_stream_begun(
        guard: tokio::sync::oneshot::Sender<()>,
    ) -> (
        watch::Sender<bool>,
        tokio::sync::mpsc::UnboundedSender<&'static str>,
        TcpStream,
        Vec<u8>,
    ) {
        let (pieces, taken) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let once = Arc::new(std::sync::Mutex::new(Some((taken, guard))));
        let (addr, stop) = listen(move |req: Request<Body>| {
            let once = once.clone();
            async move {
                if req.uri().path() != "/stream" {
                    return echo(req).await;
                }
                let state = once.lock().unwrap().take().unwrap();
                let events = futures_util::stream::unfold(state, |(mut taken, guard)| async move {
                    let piece = taken.recv().await?;
                    let piece = Bytes::from_static(piece.as_bytes());
                    Some((Ok::<_, Infallible>(piece), (taken, guard)))
                });
                Body::from_stream(events).into_response()
            }
        })
        .await;
        let mut stream = sent(
            addr,
            b"POST /stream HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await;
        let mut buffer = Vec::new();
        pieces.send("data: one\n\n").unwrap();
        read_until(&mut stream, &mut buffer, b"data: one\n\n\r\n").await;
        (stop, pieces, stream, buffer)
    }

    #[tokio::test]
    async fn a_request_sent_while_a_stream_runs_is_answered_after_it() {
        let (guard, _) = tokio::sync::oneshot::channel();
        let (_stop, pieces, mut stream, mut buffer) = a_stream_begun(guard).await;
        // The stream gave its read buffer back: what comes now is read into a new one,
        // given the time to come while the stream runs (`client_gone`'s own test holds
        // that path without a clock).
        stream
            .write_all(b"POST /next HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nnext")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        pieces.send("data: two\n\n").unwrap();
        drop(pieces);
        read_until(&mut stream, &mut buffer, b"POST /next [next] ").await;
        let wire = String::from_utf8_lossy(&buffer);
        let (stream_end, next) = wire.split_once("0\r\n\r\n").expect("the stream's end");
        assert!(stream_end.ends_with("b\r\ndata: two\n\n\r\n"), "{wire}");
        assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    }

    #[tokio::test]
    async fn a_connection_waiting_on_an_answer_keeps_what_the_client_sends_and_sees_it_go() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (mut reader, _writer) = server.split();
        // No buffer at all, as a stream leaves it: bytes that come are kept.
        let mut buffer = BytesMut::new();
        client.write_all(b"next").await.unwrap();
        let waited = std::time::Instant::now();
        while buffer.len() < 4 {
            let gone = tokio::time::timeout(
                Duration::from_millis(20),
                client_gone(&mut reader, &mut buffer),
            )
            .await;
            assert!(gone.is_err(), "the client is still there");
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the bytes never came"
            );
        }
        assert_eq!(&buffer[..], b"next");
        drop(client);
        let gone = tokio::time::timeout(
            Duration::from_secs(10),
            client_gone(&mut reader, &mut buffer),
        );
        assert!(gone.await.is_ok(), "the client's close was not seen");
        assert_eq!(&buffer[..], b"next");
    }

    #[tokio::test]
    async fn a_client_gone_mid_stream_ends_the_stream() {
        let (guard, ended) = tokio::sync::oneshot::channel();
        // The sender is held: the stream ends only by the client leaving.
        let (_stop, _pieces, stream, _) = a_stream_begun(guard).await;
        drop(stream);
        // The stream's body is dropped, and the guard it held with it.
        let ended = tokio::time::timeout(Duration::from_secs(10), ended).await;
        assert!(matches!(ended, Ok(Err(_))), "the stream was not ended");
    }

    #[tokio::test]
    async fn a_client_that_asks_to_close_gets_its_answer_then_the_end() {
        let (addr, _stop) = listen(echo).await;
        let mut stream = sent(
            addr,
            b"POST /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi",
        )
        .await;
        let mut buffer = Vec::new();
        let (head, body) = answer(&mut stream, &mut buffer).await;
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert_eq!(body, "POST /x [hi] ");
        assert!(closed(&mut stream).await);
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_before_the_body_is_sent() {
        let (addr, _stop) = listen(echo).await;
        let mut stream = sent(
            addr,
            b"POST /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
        )
        .await;
        let mut buffer = Vec::new();
        read_until(&mut stream, &mut buffer, b"\r\n\r\n").await;
        assert_eq!(buffer, b"HTTP/1.1 100 Continue\r\n\r\n");
        buffer.clear();
        stream.write_all(b"body").await.unwrap();
        let (_, body) = answer(&mut stream, &mut buffer).await;
        assert_eq!(body, "POST /x [body] ");
    }

    #[tokio::test]
    async fn a_client_gone_mid_request_cancels_its_handler() {
        let (dropped, was_dropped) = tokio::sync::oneshot::channel::<()>();
        let dropped = Arc::new(std::sync::Mutex::new(Some(dropped)));
        let (addr, _stop) = listen(move |_req| {
            let guard = dropped.lock().unwrap().take();
            async move {
                // Holds the sender until the handler is dropped.
                let _guard = guard;
                std::future::pending::<Response>().await
            }
        })
        .await;
        let stream = sent(
            addr,
            b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
        let ended = tokio::time::timeout(Duration::from_secs(10), was_dropped).await;
        assert!(matches!(ended, Ok(Err(_))), "the handler was not dropped");
    }

    #[tokio::test]
    async fn requests_for_hyper_are_served_by_hyper_on_the_same_connection() {
        let (addr, _stop) = listen(echo).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buffer = Vec::new();
        stream
            .write_all(b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n1")
            .await
            .unwrap();
        assert_eq!(answer(&mut stream, &mut buffer).await.1, "POST /a [1] ");
        // A chunked body: hyper's from here on, with what was read of it.
        stream
            .write_all(b"POST /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(answer(&mut stream, &mut buffer).await.1, "POST /b [abc] ");
        stream
            .write_all(b"POST /c HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n3")
            .await
            .unwrap();
        assert_eq!(answer(&mut stream, &mut buffer).await.1, "POST /c [3] ");

        // HTTP/1.0, and a malformed head (hyper's 400, in OpenAI's shape).
        let mut stream = sent(addr, b"POST /d HTTP/1.0\r\ncontent-length: 1\r\n\r\n4").await;
        let mut buffer = Vec::new();
        let (head, body) = answer(&mut stream, &mut buffer).await;
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert_eq!(body, "POST /d [4] ");
        let mut stream = sent(addr, b"POST /e HTTP/1.1\r\nbad header\r\n\r\n").await;
        let mut buffer = Vec::new();
        let (head, body) = answer(&mut stream, &mut buffer).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(
            body.contains("\"type\":\"invalid_request_error\""),
            "{body}"
        );
    }

    proptest::proptest! {
        /// Whatever a client sends, taking a head never panics, and a head taken leaves
        /// exactly the bytes after it.
        #[test]
        fn any_bytes_are_taken_whole_refused_or_waited_for(
            fields in proptest::collection::vec("[a-zA-Z-]{0,12}: [ -~]{0,20}", 0..6),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            cut in 0usize..400,
        ) {
            let mut wire = b"POST /v1/chat/completions HTTP/1.1\r\n".to_vec();
            for field in &fields {
                wire.extend_from_slice(field.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(&noise);
            wire.extend_from_slice(b"\r\n\r\nafter");
            wire.truncate(cut.min(wire.len()));
            let mut buffer = BytesMut::from(&wire[..]);
            match take_head(&mut buffer, 1 << 20) {
                Ok(Some(head)) => {
                    let taken = wire.len() - buffer.len();
                    // httparse takes a bare line feed for a line's end, as hyper did.
                    let head_end = &wire[..taken];
                    proptest::prop_assert!(head_end.ends_with(b"\n\n") || head_end.ends_with(b"\n\r\n"));
                    proptest::prop_assert_eq!(head.method, Method::POST);
                }
                Ok(None) | Err(ForHyper) => proptest::prop_assert_eq!(buffer.len(), wire.len()),
            }
        }

        /// Heads read one after another on one thread, with names often as the last
        /// head gave them (in any case), sometimes not, sometimes one twice: each gets
        /// its own names and values in its own order, as a map built name by name has
        /// them.
        #[test]
        fn every_head_has_its_own_headers_whatever_came_before(
            heads in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::sample::select(vec!["host", "Host", "x-key", "X-Key", "accept", "x-a"]), "[ -~]{0,8}"),
                    0..5,
                ),
                1..12,
            ),
        ) {
            for fields in heads {
                let mut wire = b"POST /v1/chat/completions HTTP/1.1\r\n".to_vec();
                let mut expected = HeaderMap::new();
                for (name, value) in &fields {
                    wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                    let value = HeaderValue::from_str(value.trim()).unwrap();
                    expected.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
                }
                wire.extend_from_slice(b"\r\n");
                let Ok(Some(head)) = take_head(&mut BytesMut::from(&wire[..]), 1 << 20) else {
                    panic!("not taken: {}", String::from_utf8_lossy(&wire));
                };
                let seen: Vec<_> = head.headers.iter().collect();
                proptest::prop_assert_eq!(seen, expected.iter().collect::<Vec<_>>());
            }
        }
    }

    proptest::proptest! {
        /// A name as a client wrote it is a known name exactly when it parses to it:
        /// in any case, with any bytes swapped for their neighbours in the table (`^`
        /// and `~` differ by the same bit as `A` and `a`), or with bytes not ASCII.
        #[test]
        fn a_name_is_known_in_any_case_and_only_then(
            name in "[a-z0-9!#$%&'*+.^_`|~-]{1,24}",
            flips in proptest::collection::vec(proptest::bool::ANY, 24),
            other in proptest::collection::vec(proptest::num::u8::ANY, 1..24),
            swap in proptest::num::u8::ANY,
        ) {
            let known = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let cased: Vec<u8> = name
                .bytes()
                .zip(&flips)
                .map(|(b, &flip)| if flip { b.to_ascii_uppercase() } else { b })
                .collect();
            let mut swapped = cased.clone();
            let at = usize::from(swap) % swapped.len();
            swapped[at] ^= 0x20;
            for given in [cased, swapped, other] {
                let parses = HeaderName::from_bytes(&given).is_ok_and(|n| n == known);
                proptest::prop_assert_eq!(is_named(&known, &given), parses, "{:?}", given);
            }
        }
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        for (length, line) in [
            (0, "0\r\n"),
            (11, "b\r\n"),
            (4096, "1000\r\n"),
            (0xabcdef, "abcdef\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size(&mut out, length);
            assert_eq!(String::from_utf8(out).unwrap(), line);
        }
    }
}
