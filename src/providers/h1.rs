//! One HTTP/1.1 exchange with a cleartext upstream, written by hand.
//!
//! hyper's client connection runs in a task of its own: the request crosses a channel to
//! it, its answer's head comes back on another, and every piece of the body is read by
//! that task and handed over again. Here the request's own task writes the request head
//! and body in one write and reads the answer from the socket itself, and the body it
//! hands on is read by whoever reads the answer (the relay, for a stream): no task, no
//! channel, no wake-up between the socket and its reader.
//!
//! What it speaks: a request with a `content-length` body; an answer framed by
//! `content-length`, `transfer-encoding: chunked` (extensions and trailers read and
//! dropped) or the connection's end; informational (1xx) answers skipped; `connection:
//! close` and HTTP/1.0 answers end the connection with their body. Anything else an
//! upstream sends is an error that names what was wrong, and the connection is not used
//! again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The largest answer head read; an upstream that sends more is broken.
const MAX_HEAD: usize = 64 << 10;

/// The most header fields an answer may carry.
const MAX_HEADERS: usize = 100;

/// What each read asks the socket for, at least.
const READ_SIZE: usize = 8 << 10;

/// The answer's header fields anything past this exchange reads (the gateway: the
/// body's type, and how long a 429 asks to wait); the framing fields are read here.
/// Others are not kept: a real upstream sends twenty or more (its own rate limits,
/// tracing ids, cookies), and making each a `HeaderName` and a `HeaderValue` cost more
/// than the rest of reading the head.
const KEPT: [&str; 4] = [
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
];

/// A body at most this long is written in the same write as the head.
const JOINED_BODY: usize = 64 << 10;

/// One connection to an upstream, between exchanges.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used: empty between exchanges.
    buffer: BytesMut,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failed {
    /// Nothing of the request was written: it may go on another connection.
    Unsent(String),
    /// The request was written, wholly or in part, and no usable answer came.
    Broken(String),
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buffer: BytesMut::new(),
        }
    }

    /// Whether a connection that waited unused can be sent on: the upstream has neither
    /// closed it nor sent anything unasked. Asks the socket only when something arrived
    /// since the last read that came up short (tokio keeps that), so a quiet connection
    /// costs no system call.
    pub fn is_usable(&self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes `request` and reads the answer's head. The answer's body is read through
    /// the [`Reading`] it comes with.
    pub async fn exchange(mut self, request: &Wire) -> Result<Response<Reading>, Failed> {
        self.write(request).await?;
        loop {
            match parse_head(&mut self.buffer).map_err(Failed::Broken)? {
                Some(Parsed::Informational) => continue,
                Some(Parsed::Answer(head)) => {
                    let Head {
                        status,
                        headers,
                        framing,
                        keep,
                    } = head;
                    let mut response = Response::new(Reading {
                        conn: Some(self),
                        framing,
                        keep,
                    });
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    return Ok(response);
                }
                None => {}
            }
            let read = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(|e| Failed::Broken(e.to_string()))?;
            if read == 0 {
                return Err(Failed::Broken(
                    "the upstream closed the connection before it answered".into(),
                ));
            }
        }
    }

    async fn write(&mut self, request: &Wire) -> Result<(), Failed> {
        let head = &request.joined;
        let mut written = 0;
        while written < head.len() {
            match self.io.write(&head[written..]).await {
                Ok(0) => return Err(cut_short(written, "the connection closed".into())),
                Ok(n) => written += n,
                Err(e) => return Err(cut_short(written, e.to_string())),
            }
        }
        if !request.rest.is_empty() {
            self.io
                .write_all(&request.rest)
                .await
                .map_err(|e| Failed::Broken(e.to_string()))?;
        }
        Ok(())
    }

    /// Reads what the socket has into the buffer: how much, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < READ_SIZE / 2 {
            self.buffer.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buffer)
    }
}

fn cut_short(written: usize, why: String) -> Failed {
    if written == 0 {
        Failed::Unsent(why)
    } else {
        Failed::Broken(why)
    }
}

/// A request as it goes on the wire: the head, with the body after it when it is short
/// enough to go in the same write, and the body apart when it is not.
pub struct Wire {
    joined: Vec<u8>,
    rest: Bytes,
}

/// Writes a request: the request line, `host`, the `fields` given (each a whole line,
/// `name: value\r\n`), `content-length` where a body goes, the blank line, and `body`.
pub fn request(
    method: &http::Method,
    target: &str,
    host: &[u8],
    fields: &[u8],
    body: Bytes,
) -> Wire {
    let joined = body.len() <= JOINED_BODY;
    let mut head = Vec::with_capacity(
        64 + target.len() + host.len() + fields.len() + if joined { body.len() } else { 0 },
    );
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host);
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(fields);
    if !body.is_empty() || !matches!(*method, http::Method::GET | http::Method::HEAD) {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if joined {
        head.extend_from_slice(&body);
        Wire {
            joined: head,
            rest: Bytes::new(),
        }
    } else {
        Wire {
            joined: head,
            rest: body,
        }
    }
}

/// Appends one header field line to `fields` (see [`request`]).
pub fn field(fields: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    fields.extend_from_slice(name.as_str().as_bytes());
    fields.extend_from_slice(b": ");
    fields.extend_from_slice(value);
    fields.extend_from_slice(b"\r\n");
}

/// Whether `value` can be sent as a header field's value as it is: visible ASCII,
/// spaces and tabs, as `HeaderValue::from_str` takes.
pub fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

enum Parsed {
    /// A 1xx answer, read and dropped: the real one follows.
    Informational,
    Answer(Head),
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// Whether the connection can be used again once the body has been read.
    keep: bool,
}

/// Reads an answer's head from the front of `buffer`, if it is all there.
fn parse_head(buffer: &mut BytesMut) -> Result<Option<Parsed>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut fields);
    let length = match answer.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => {
            return Err(format!(
                "the upstream's answer head is longer than {} KiB",
                MAX_HEAD >> 10
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("the upstream's answer is not HTTP/1.1: {e}")),
    };
    let code = answer.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| format!("the upstream answered with status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the upstream switched protocols, unasked".into());
    }
    if status.is_informational() {
        buffer.advance(length);
        return Ok(Some(Parsed::Informational));
    }
    let mut keep = answer.version == Some(1);
    let mut content_length = None;
    let mut transfer_encoding = None;
    let mut headers = HeaderMap::new();
    for field in answer.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(field.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    format!(
                        "the upstream's content-length is {:?}",
                        String::from_utf8_lossy(field.value)
                    )
                })?;
            if content_length.is_some_and(|known| known != length) {
                return Err("the upstream sent two different content-lengths".into());
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding is the one that frames the body.
            let last = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && answer.version == Some(0) {
                    keep = true;
                }
            }
        } else if let Some(kept) = KEPT.iter().find(|kept| name.eq_ignore_ascii_case(kept)) {
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| format!("the upstream's {name} header is not a header value"))?;
            headers.append(HeaderName::from_static(kept), value);
        }
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else {
        match (transfer_encoding, content_length) {
            (Some(true), length) => {
                // Both: the coding frames it, and the connection is not trusted after.
                keep &= length.is_none();
                Framing::Chunked(Chunk::Size { size: 0, digits: 0 })
            }
            (Some(false), _) | (None, None) => {
                keep = false;
                Framing::UntilClosed
            }
            (None, Some(length)) => Framing::Length(length),
        }
    };
    buffer.advance(length);
    Ok(Some(Parsed::Answer(Head {
        status,
        headers,
        // An empty body has ended before it is read.
        framing: if framing == Framing::Length(0) {
            Framing::Ended
        } else {
            framing
        },
        keep,
    })))
}

/// How an answer's body ends, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// The body is what comes until the upstream closes the connection.
    UntilClosed,
    /// Read to its end.
    Ended,
}

/// Where a chunked body's reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk's size, `digits` hex digits read.
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, after the size, before its line's end.
    Extension {
        size: u64,
    },
    /// The size line's `\r` read.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its `\r`.
    DataCr,
    DataLf,
    /// After the last chunk: at a trailer line's start.
    TrailerStart,
    /// In a trailer line.
    Trailer,
    TrailerLf,
    /// The blank line's `\r` read.
    EndLf,
}

impl Framing {
    /// Reads what frames the body at the front of `buffer` (a chunk's size line, the
    /// line end after its data, the trailers), up to data or the end of what is there.
    fn skip_framing(&mut self, buffer: &mut BytesMut) -> Result<(), String> {
        let mut state = match *self {
            Framing::Chunked(state) => state,
            Framing::Length(0) => {
                *self = Framing::Ended;
                return Ok(());
            }
            _ => return Ok(()),
        };
        let mut used = 0;
        let mut ended = false;
        for &byte in buffer.iter() {
            if let Chunk::Data(left) = state {
                if left > 0 {
                    break;
                }
                state = Chunk::DataCr;
            }
            state = match (state, byte) {
                (Chunk::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                    if digits >= 16 {
                        return Err("the upstream sent a chunk size too large to be one".into());
                    }
                    let digit = (byte as char).to_digit(16).unwrap_or_default();
                    Chunk::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { size, digits: 1.. }, b'\r') => Chunk::SizeLf { size },
                (Chunk::Size { size, digits: 1.. }, b';' | b' ' | b'\t') => {
                    Chunk::Extension { size }
                }
                (Chunk::Extension { size }, b'\r') => Chunk::SizeLf { size },
                (Chunk::Extension { size }, _) => Chunk::Extension { size },
                (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => {
                    used += 1;
                    ended = true;
                    break;
                }
                (state, byte) => {
                    return Err(format!(
                        "the upstream's chunked body is malformed (byte {byte:#04x} in {state:?})"
                    ));
                }
            };
            used += 1;
        }
        // A chunk whose data is all read moves on without waiting for more bytes.
        if state == Chunk::Data(0) {
            state = Chunk::DataCr;
        }
        buffer.advance(used);
        *self = if ended {
            Framing::Ended
        } else {
            Framing::Chunked(state)
        };
        Ok(())
    }

    /// The body's data at the front of `buffer`, as much as is there and belongs to it.
    fn take_data(&mut self, buffer: &mut BytesMut) -> Option<Bytes> {
        if buffer.is_empty() {
            return None;
        }
        let left = match self {
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => left,
            Framing::UntilClosed => return Some(buffer.split().freeze()),
            _ => return None,
        };
        let n = usize::try_from(*left)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        if n == 0 {
            return None;
        }
        *left -= n as u64;
        Some(buffer.split_to(n).freeze())
    }
}

/// An answer's body, read from its connection by whoever polls it. Read to its end, it
/// gives its connection back (see [`Reading::take_reusable`]).
pub struct Reading {
    /// `None` once the connection has been given back or lost.
    conn: Option<Conn>,
    framing: Framing,
    keep: bool,
}

impl Reading {
    /// The next piece of the body, `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let Some(conn) = &mut self.conn else {
                return Poll::Ready(None);
            };
            if let Err(e) = self.framing.skip_framing(&mut conn.buffer) {
                return Poll::Ready(Some(Err(self.broken(e))));
            }
            if self.framing == Framing::Ended {
                return Poll::Ready(None);
            }
            if let Some(data) = self.framing.take_data(&mut conn.buffer) {
                // See past the framing that follows, so a body whose last bytes these
                // were says so now: its connection goes back without another poll.
                if let Err(e) = self.framing.skip_framing(&mut conn.buffer) {
                    return Poll::Ready(Some(Err(self.broken(e))));
                }
                return Poll::Ready(Some(Ok(data)));
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.framing == Framing::UntilClosed => {
                    self.framing = Framing::Ended;
                    self.conn = None;
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(self.broken(
                        "the upstream closed the connection before the answer's end".into(),
                    ))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(self.broken(e.to_string())))),
            }
        }
    }

    fn broken(&mut self, why: String) -> io::Error {
        self.conn = None;
        self.framing = Framing::Ended;
        io::Error::other(why)
    }

    /// Moves the reading out, leaving one that has ended.
    pub fn take(&mut self) -> Reading {
        Reading {
            conn: self.conn.take(),
            framing: std::mem::replace(&mut self.framing, Framing::Ended),
            keep: self.keep,
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_end(&self) -> bool {
        self.framing == Framing::Ended
    }

    /// How many bytes are left, where the answer said.
    pub fn left(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(left) => Some(left),
            Framing::Ended => Some(0),
            _ => None,
        }
    }

    /// The connection, once the body has been read to its end and it can carry another
    /// exchange.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if self.framing == Framing::Ended && self.keep {
            self.conn.take()
        } else {
            None
        }
    }

    /// Reads the end of a body left before it (a stream's relay stops at `data:
    /// [DONE]`, before a chunked body's last chunk), if what is left is only framing:
    /// `true` once the body has ended, `false` as soon as more data comes (a client that
    /// left mid-answer: the connection is closed, which tells the upstream to stop) or
    /// the connection fails.
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        match ready!(self.poll_data(cx)) {
            None => Poll::Ready(self.is_end()),
            Some(_) => {
                self.conn = None;
                Poll::Ready(false)
            }
        }
    }

    /// [`Reading::poll_rest`] with what is there now: the connection's buffer and what
    /// the socket holds.
    pub fn rest_now(&mut self) -> Poll<bool> {
        self.poll_rest(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// Waits for what [`Reading::poll_rest`] waits for; the connection, if the body
    /// ended and it can carry another exchange.
    pub async fn finish(mut self) -> Option<Conn> {
        if std::future::poll_fn(|cx| self.poll_rest(cx)).await {
            self.take_reusable()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` (a body's bytes) fed in pieces of `step` bytes: the data, and
    /// whether the body ended.
    fn decode(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), String> {
        let mut framing = framing;
        let mut buffer = BytesMut::new();
        let mut data = Vec::new();
        for piece in wire.chunks(step) {
            buffer.extend_from_slice(piece);
            loop {
                framing.skip_framing(&mut buffer)?;
                match framing.take_data(&mut buffer) {
                    Some(bytes) => data.extend_from_slice(&bytes),
                    None => break,
                }
            }
        }
        framing.skip_framing(&mut buffer)?;
        Ok((data, framing == Framing::Ended))
    }

    fn chunked() -> Framing {
        Framing::Chunked(Chunk::Size { size: 0, digits: 0 })
    }

    #[test]
    fn a_chunked_body_reads_the_same_however_it_is_split() {
        let wire = b"f\r\ndata: {\"a\":1}\n\n\r\n1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                     e\r\ndata: [DONE]\n\n\r\n0\r\nx-trailer: 1\r\n\r\n";
        let expected = b"data: {\"a\":1}\n\nabcdefghijklmnopqrstuvwxyzdata: [DONE]\n\n";
        for step in 1..=wire.len() {
            let (data, ended) = decode(chunked(), wire, step).expect("well formed");
            assert_eq!(data, expected, "in pieces of {step}");
            assert!(ended, "in pieces of {step}");
        }
    }

    #[test]
    fn a_chunked_body_cut_short_has_not_ended() {
        let wire = b"5\r\nhello\r\n0\r\n\r";
        let (data, ended) = decode(chunked(), wire, 3).expect("well formed so far");
        assert_eq!(data, b"hello");
        assert!(!ended);
    }

    #[test]
    fn malformed_chunked_bodies_are_errors_that_say_so() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello",
            b"11111111111111111\r\n",
        ] {
            let error = decode(chunked(), wire, 1).expect_err("malformed");
            assert!(error.contains("chunk"), "{error}");
        }
    }

    #[test]
    fn a_length_framed_body_takes_only_its_own_bytes() {
        let mut framing = Framing::Length(5);
        let mut buffer = BytesMut::from(&b"helloHTTP/1.1"[..]);
        assert_eq!(
            framing.take_data(&mut buffer).as_deref(),
            Some(&b"hello"[..])
        );
        framing.skip_framing(&mut buffer).expect("nothing to skip");
        assert_eq!(framing, Framing::Ended);
        assert_eq!(&buffer[..], b"HTTP/1.1");
    }

    fn head(wire: &[u8]) -> Result<Head, String> {
        let mut buffer = BytesMut::from(wire);
        loop {
            match parse_head(&mut buffer)? {
                Some(Parsed::Answer(head)) => return Ok(head),
                Some(Parsed::Informational) => {}
                None => return Err("partial".into()),
            }
        }
    }

    #[test]
    fn an_answer_head_says_how_its_body_ends_and_whether_the_connection_is_kept() {
        let cases: [(&[u8], Framing, bool); 8] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
                Framing::Length(11),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                chunked(),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
                chunked(),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Framing::UntilClosed,
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClosed, false),
            (
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n",
                Framing::Length(2),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
                Framing::Length(2),
                false,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                Framing::Ended,
                true,
            ),
        ];
        for (wire, framing, keep) in cases {
            let head = head(wire).expect("an answer");
            let text = String::from_utf8_lossy(wire);
            assert_eq!(head.framing, framing, "{text}");
            assert_eq!(head.keep, keep, "{text}");
        }
        let head = head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 0\r\n\r\n")
            .expect("an answer");
        assert_eq!(head.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(head.headers["retry-after"], "2");
        assert!(head.headers.get("x-a").is_none(), "{:?}", head.headers);
    }

    #[test]
    fn only_the_fields_the_gateway_reads_are_kept() {
        let head = head(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n\
              openai-organization: org-1\r\nRetry-After-Ms: 1500\r\nset-cookie: a=b\r\n\
              X-RateLimit-Reset-Requests: 6m0s\r\nx-request-id: req_1\r\n\
              Content-Length: 0\r\nConnection: keep-alive\r\n\r\n",
        )
        .expect("an answer");
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers["retry-after-ms"], "1500");
        assert_eq!(head.headers["x-ratelimit-reset-requests"], "6m0s");
        assert_eq!(head.headers.len(), 3, "{:?}", head.headers);
        assert_eq!(head.framing, Framing::Ended);
    }

    #[test]
    fn bad_answer_heads_are_errors_that_say_what_was_wrong() {
        for (wire, says) in [
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "not HTTP/1.1"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
                "two different",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "content-length",
            ),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "switched"),
        ] {
            let error = head(wire).err().expect("an error");
            assert!(error.contains(says), "{error}");
        }
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() <= MAX_HEAD {
            long.extend_from_slice(b"x-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let error = head(&long).err().expect("too long or too many");
        assert!(error.contains("upstream"), "{error}");
    }

    #[test]
    fn a_request_head_is_written_in_one_piece() {
        let mut fields = Vec::new();
        field(
            &mut fields,
            &http::header::CONTENT_TYPE,
            b"application/json",
        );
        let body = Bytes::from_static(br#"{"model":"m"}"#);
        let wire = request(
            &http::Method::POST,
            "/v1/chat/completions",
            b"10.0.0.1:8000",
            &fields,
            body,
        );
        assert_eq!(
            String::from_utf8(wire.joined).expect("text"),
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.1:8000\r\n\
             content-type: application/json\r\ncontent-length: 13\r\n\r\n{\"model\":\"m\"}"
        );
        assert!(wire.rest.is_empty());
        let get = request(&http::Method::GET, "/health", b"h:1", b"", Bytes::new());
        assert_eq!(get.joined, b"GET /health HTTP/1.1\r\nhost: h:1\r\n\r\n");
        let large = Bytes::from(vec![b'x'; JOINED_BODY + 1]);
        let apart = request(&http::Method::POST, "/", b"h:1", b"", large.clone());
        assert!(apart.joined.ends_with(b"content-length: 65537\r\n\r\n"));
        assert_eq!(apart.rest, large, "a long body goes in a write of its own");
        assert!(is_field_value(b"req-1\tok"));
        assert!(!is_field_value(b"req-1\r\nx-admin: 1"));
        assert!(!is_field_value("req-é".as_bytes()));
    }
}
