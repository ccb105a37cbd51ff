//! hyper answers a request it cannot parse (a malformed request line or header, a
//! `transfer-encoding` that does not end in `chunked`, headers past its buffer) by itself,
//! with a bodyless 4xx, before any router sees it. Clients are promised OpenAI's error
//! shape for every error, so this wrapper around a connection's stream recognises that
//! one response as it is written and writes it with a JSON body instead.
//!
//! The router's own 4xx answers always carry a JSON body, so a 4xx head with
//! `content-length: 0` and nothing after it can only be hyper's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's stream whose bodyless HTTP/1.1 4xx answers get an OpenAI-shaped body.
pub struct JsonErrors<Io> {
    io: Io,
    /// A reshaped answer being written, and how many of the caller's bytes it replaces.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<Io> JsonErrors<Io> {
    pub fn new(io: Io) -> Self {
        JsonErrors { io, pending: None }
    }
}

/// hyper's answer to an unparseable request, as it writes it.
const BODYLESS: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\n";

/// The same answer with a body, when `head` is hyper's bodyless 4xx and nothing else.
fn reshaped(head: &[u8]) -> Option<Vec<u8>> {
    if !head.starts_with(b"HTTP/1.1 4") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status_end = head.windows(2).position(|w| w == b"\r\n")?;
    if !head[status_end..].starts_with(BODYLESS) {
        return None;
    }
    let (code, message) = match head.get(9..12)? {
        b"431" => (
            "request_header_fields_too_large",
            "the request's headers are too large",
        ),
        b"414" => ("uri_too_long", "the request's URL is too long"),
        _ => (
            "invalid_request",
            "the request is not valid HTTP/1.1: a malformed request line or header, or a transfer-encoding that does not end in chunked",
        ),
    };
    let body = serde_json::json!({
        "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code }
    })
    .to_string();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(&head[..status_end]);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nconnection: close\r\n");
    out.extend_from_slice(format!("content-length: {}", body.len()).as_bytes());
    // The rest of hyper's head (the date), from the line break after content-length.
    out.extend_from_slice(&head[status_end + BODYLESS.len() - 2..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<Io: AsyncWrite + Unpin> JsonErrors<Io> {
    /// Writes the reshaped answer to its end, then reports the caller's bytes written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, replaces)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                let replaces = *replaces;
                self.pending = None;
                return Poll::Ready(Ok(replaces));
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for JsonErrors<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match reshaped(buf) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.io).poll_write(cx, buf),
            }
        }
        this.poll_pending(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            let mut filled = bufs.iter().filter(|b| !b.is_empty());
            let only = match (filled.next(), filled.next()) {
                (Some(only), None) => reshaped(only).map(|bytes| (bytes, only.len())),
                _ => None,
            };
            match only {
                Some((bytes, replaces)) => this.pending = Some((bytes, 0, replaces)),
                None => return Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            }
        }
        this.poll_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for JsonErrors<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPERS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 12:53:09 GMT\r\n\r\n";

    #[test]
    fn hypers_bodyless_answer_gets_a_json_body_and_the_right_length() {
        let out = reshaped(HYPERS).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: "), "{head}");
        assert!(
            head.ends_with("\r\ndate: Mon, 30 Nov 2026 12:53:09 GMT"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(value["error"]["code"], "invalid_request");
    }

    #[test]
    fn answers_with_a_body_or_not_4xx_pass_as_they_are() {
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(reshaped(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(reshaped(ok).is_none());
        let mut with_body = HYPERS.to_vec();
        with_body.extend_from_slice(b"x");
        assert!(reshaped(&with_body).is_none());
    }
}
