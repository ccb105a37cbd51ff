//! Server-sent event streams from upstream to client.
//!
//! An upstream stream is relayed event by event: bytes are held only until an event is
//! complete, never the whole answer. A stream that breaks, or ends without `data: [DONE]`,
//! is closed with an SSE error frame in OpenAI's shape, because SDKs take a clean close
//! for success. The relay feeds a chunk log (`hub`) that the client and any watchers read;
//! dropping the relay (nobody listens any more) drops the upstream response and with it
//! the upstream connection, which cancels the generation. `live` lists the streams being
//! relayed now, for the console.

pub mod hub;
pub mod live;

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// Splits a byte stream into whole SSE events and notices the `[DONE]` sentinel.
#[derive(Debug, Default)]
pub struct SseFramer {
    pending: BytesMut,
    done: bool,
}

impl SseFramer {
    /// Adds bytes and returns every event completed by them, terminators included.
    pub fn push(&mut self, bytes: Bytes) -> Option<Bytes> {
        // The common case: whole events in, the same bytes out, nothing copied.
        if self.pending.is_empty() && ends_an_event(&bytes) {
            if !self.done {
                self.done = events_contain_done(&bytes);
            }
            return Some(bytes);
        }
        let scan_from = self.pending.len().saturating_sub(3);
        self.pending.extend_from_slice(&bytes);
        let end = last_event_end(&self.pending, scan_from)?;
        let events = self.pending.split_to(end).freeze();
        if !self.done {
            self.done = events_contain_done(&events);
        }
        Some(events)
    }

    /// Whether `data: [DONE]` has been seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Bytes of an event that never completed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The end (exclusive) of the last complete event in `buf`, looking for a blank line
/// (`\n\n` or `\r\n\r\n`) at or after `from`.
fn last_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut end = None;
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                end = Some(i + 2);
                i += 2;
                continue;
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                end = Some(i + 3);
                i += 3;
                continue;
            }
        }
        i += 1;
    }
    end
}

fn ends_an_event(bytes: &[u8]) -> bool {
    bytes.ends_with(b"\n\n") || bytes.ends_with(b"\r\n\r\n")
}

fn events_contain_done(events: &[u8]) -> bool {
    events.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"data:")
            .map(|data| data.trim_ascii() == b"[DONE]")
            .unwrap_or(false)
    })
}

/// Sees every batch of whole events a relay passes on; dropped when the relay ends, which
/// is where it settles whatever it accounts for.
pub trait Watch: Send + 'static {
    fn events(&mut self, events: &[u8]);
    /// The relay ended the stream with an error event carrying `code`.
    fn ended_with(&mut self, _code: &'static str) {}
}

impl Watch for () {
    fn events(&mut self, _: &[u8]) {}
}

/// The `data:` payloads of whole SSE events, in order.
pub fn data_payloads(events: &[u8]) -> impl Iterator<Item = &[u8]> {
    events.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"data:")
            .map(|d| d.strip_prefix(b" ").unwrap_or(d))
    })
}

/// Drops the usage-only chunk (`choices: []` with `usage`) that the gateway asked for on
/// behalf of a client that did not. Only events mentioning usage are parsed.
pub fn without_usage_chunk(events: Bytes) -> Bytes {
    if !events.windows(9).any(|w| w == b"\"usage\":{") {
        return events;
    }
    let is_usage_chunk = |event: &[u8]| {
        data_payloads(event).any(|data| {
            serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| {
                v.get("choices")
                    .and_then(|c| c.as_array())
                    .is_some_and(|c| c.is_empty())
                    && v.get("usage").is_some_and(|u| u.is_object())
            })
        })
    };
    let mut kept = BytesMut::with_capacity(events.len());
    let mut rest = &events[..];
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\n\n")
            .map_or(rest.len(), |i| i + 2);
        let (event, tail) = rest.split_at(end);
        if !is_usage_chunk(event) {
            kept.extend_from_slice(event);
        }
        rest = tail;
    }
    kept.freeze()
}

/// Where a watcher resumes: the event after its `Last-Event-ID`, or the start.
pub fn resume_from(headers: &axum::http::HeaderMap) -> usize {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |last| last + 1)
}

/// Why a relay was ended from outside: a drain deadline, or an operator.
#[derive(Debug, Clone)]
pub struct Cut {
    pub code: &'static str,
    pub message: String,
}

/// An SSE frame carrying an error in OpenAI's shape, as the SDKs expect mid-stream.
pub fn error_frame(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": code }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// Relays an upstream SSE body to the client. `watch` sees every event passed on and
/// lives as long as the relay; `describe` names the upstream in error messages.
pub fn relay<S, E, W, C>(
    upstream: S,
    watch: W,
    cut: C,
    describe: String,
    request_id: String,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + 'static,
    W: Watch,
    C: std::future::Future<Output = Cut> + Send + 'static,
{
    struct Relay<S, W: Watch> {
        upstream: S,
        framer: SseFramer,
        finished: bool,
        watch: W,
        cut: std::pin::Pin<Box<dyn std::future::Future<Output = Cut> + Send>>,
        describe: String,
        request_id: String,
    }

    impl<S, W: Watch> Drop for Relay<S, W> {
        fn drop(&mut self) {
            // Dropped before the end: nobody listened any more and the relay was aborted.
            if !self.finished && !self.framer.done() {
                self.watch.ended_with("stream_cancelled");
            }
        }
    }

    futures_util::stream::unfold(
        Relay {
            upstream,
            framer: SseFramer::default(),
            finished: false,
            watch,
            cut: Box::pin(cut),
            describe,
            request_id,
        },
        |mut relay| async move {
            if relay.finished {
                return None;
            }
            loop {
                let next = tokio::select! {
                    next = relay.upstream.next() => next,
                    cut = &mut relay.cut => {
                        relay.finished = true;
                        relay.watch.ended_with(cut.code);
                        tracing::warn!(request_id = %relay.request_id, upstream = %relay.describe, code = cut.code, "stream cut");
                        return Some((Ok(error_frame(&cut.message, cut.code)), relay));
                    }
                };
                let failure = match next {
                    Some(Ok(bytes)) => match relay.framer.push(bytes) {
                        Some(events) => {
                            relay.watch.events(&events);
                            return Some((Ok(events), relay));
                        }
                        None => continue,
                    },
                    Some(Err(error)) => {
                        format!("connection lost: {}", crate::providers::root_cause(&error))
                    }
                    None if relay.framer.done() => return None,
                    None => "the stream ended without [DONE]".to_string(),
                };
                relay.finished = true;
                if relay.framer.done() {
                    // The answer was complete; whatever broke afterwards does not matter.
                    return None;
                }
                tracing::warn!(
                    request_id = %relay.request_id,
                    upstream = %relay.describe,
                    reason = %failure,
                    "upstream stream failed mid-way"
                );
                let message = format!(
                    "the upstream {} failed mid-stream ({failure}); the answer is incomplete",
                    relay.describe
                );
                relay.watch.ended_with("upstream_stream_error");
                return Some((Ok(error_frame(&message, "upstream_stream_error")), relay));
            }
        },
    )
}

/// The upstream's usage in a stream's events (its usage chunk), if it sent one.
pub fn usage_in_events(events: &[Bytes]) -> Option<crate::admission::Usage> {
    #[derive(serde::Deserialize)]
    struct Chunk {
        usage: Option<Counts>,
    }
    #[derive(serde::Deserialize)]
    struct Counts {
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    events
        .iter()
        .rev()
        .filter(|event| event.windows(9).any(|w| w == b"\"usage\":{"))
        .flat_map(|event| data_payloads(event))
        .find_map(|data| serde_json::from_slice::<Chunk>(data).ok()?.usage)
        .map(|counts| crate::admission::Usage {
            prompt_tokens: counts.prompt_tokens,
            completion_tokens: counts.completion_tokens,
            estimated: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_holds_partial_events_until_complete() {
        let mut framer = SseFramer::default();
        assert_eq!(framer.push(Bytes::from_static(b"data: {\"a\":")), None);
        assert_eq!(
            framer.push(Bytes::from_static(b"1}\n\ndata: {\"b\"")),
            Some(Bytes::from_static(b"data: {\"a\":1}\n\n"))
        );
        assert_eq!(framer.pending(), 10);
        assert_eq!(
            framer.push(Bytes::from_static(b":2}\n")),
            None,
            "one newline does not end an event"
        );
        assert_eq!(
            framer.push(Bytes::from_static(b"\ndata: [DONE]\n\n")),
            Some(Bytes::from_static(b"data: {\"b\":2}\n\ndata: [DONE]\n\n"))
        );
        assert!(framer.done());
    }

    #[test]
    fn framer_accepts_crlf_and_a_blank_line_split_across_reads() {
        let mut framer = SseFramer::default();
        assert_eq!(framer.push(Bytes::from_static(b"data: x\r\n\r")), None);
        assert_eq!(
            framer.push(Bytes::from_static(b"\n")),
            Some(Bytes::from_static(b"data: x\r\n\r\n"))
        );
        assert!(!framer.done());
    }

    #[test]
    fn done_inside_content_is_not_the_sentinel() {
        let mut framer = SseFramer::default();
        framer.push(Bytes::from_static(
            b"data: {\"content\":\"data: [DONE]\"}\n\n",
        ));
        assert!(!framer.done());
    }

    #[test]
    fn only_the_usage_only_chunk_is_stripped() {
        let events = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            without_usage_chunk(events),
            Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: [DONE]\n\n"
            )
        );
        let untouched = Bytes::from_static(b"data: {\"choices\":[]}\n\n");
        assert_eq!(without_usage_chunk(untouched.clone()), untouched);
    }

    #[tokio::test]
    async fn a_broken_stream_ends_with_an_error_frame() {
        let upstream = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"data: {\"n\":1}\n\ndata: {\"n\"")),
            Err(std::io::Error::other("reset")),
        ]);
        let frames: Vec<Bytes> = relay(
            upstream,
            (),
            std::future::pending(),
            "us-east-a".into(),
            "req_1".into(),
        )
        .map(|r| r.unwrap_or_else(|e| match e {}))
        .collect()
        .await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Bytes::from_static(b"data: {\"n\":1}\n\n"));
        let last = String::from_utf8_lossy(&frames[1]);
        assert!(last.starts_with("data: {\"error\":"), "{last}");
        assert!(last.contains("upstream_stream_error"), "{last}");
    }

    #[tokio::test]
    async fn a_complete_stream_passes_through_untouched() {
        let upstream = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"n\":1}\n\n")),
            Ok(Bytes::from_static(b"data: [DONE]\n\n")),
        ]);
        let frames: Vec<Bytes> = relay(
            upstream,
            (),
            std::future::pending::<Cut>(),
            "x".into(),
            "r".into(),
        )
        .map(|r| r.unwrap_or_else(|e| match e {}))
        .collect()
        .await;
        assert_eq!(
            frames.concat(),
            b"data: {\"n\":1}\n\ndata: [DONE]\n\n".to_vec()
        );
    }
}
