//! Server-sent event streams from upstream to client.
//!
//! An upstream stream is parsed once (`sse`), event by event, and each event is relayed
//! in canonical framing as soon as it is whole; bytes are held only until an event is
//! complete, never the whole answer. Each event's JSON is read once (`Chunk`), for what
//! decisions need: content, usage, whether it is the usage-only chunk, an upstream error.
//! A stream that breaks, stalls, or ends without `data: [DONE]` is closed with an SSE
//! error frame in OpenAI's shape, because SDKs take a clean close for success. The relay
//! feeds a chunk log (`hub`) that the client and any watchers read; dropping the relay
//! (nobody listens any more) drops the upstream response and with it the upstream
//! connection, which cancels the generation.

pub mod chat;
mod chunk;
pub mod hub;
pub mod sse;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

pub use chunk::{Chunk, usage_in};
pub use sse::{SseEvent, SseParser};

use crate::domain::Usage;
use crate::wake::WhenWoken;

/// One event as relayed: canonical bytes, and whether it is the usage-only chunk that
/// readers who did not ask for usage skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub bytes: Bytes,
    pub usage_only: bool,
}

impl Relayed {
    fn plain(bytes: Bytes) -> Relayed {
        Relayed {
            bytes,
            usage_only: false,
        }
    }
}

/// Sees every event a relay passes on; dropped when the relay ends, which is where it
/// settles whatever it accounts for.
pub trait Watch: Send + 'static {
    /// Sees an event before it is relayed; a `Cut` ends the stream there instead.
    fn event(&mut self, event: &SseEvent, chunk: Option<&Chunk<'_>>) -> Option<Cut>;
    /// The relay ended the stream with an error event carrying `code`.
    fn ended_with(&mut self, _code: &'static str) {}
}

impl Watch for () {
    fn event(&mut self, _: &SseEvent, _: Option<&Chunk<'_>>) -> Option<Cut> {
        None
    }
}

/// Drops the usage-only chunk from canonical events (a kept stream replayed to a client
/// that did not ask for usage). Only events that mention usage are parsed.
pub fn without_usage_chunk(event: Bytes) -> Bytes {
    let usage_only = parse_events(&event).iter().any(|e| {
        e.data.contains("usage") && Chunk::parse(&e.data).is_some_and(|c| c.is_usage_only())
    });
    if usage_only { Bytes::new() } else { event }
}

/// The events in canonical (or any) SSE bytes.
pub fn parse_events(bytes: &[u8]) -> Vec<SseEvent> {
    let mut parser = SseParser::default();
    let mut events = parser.push(bytes);
    events.extend(parser.push(b"\n\n"));
    events
}

/// The upstream's usage in a stream's events (its usage chunk), if it sent one.
pub fn usage_in_events(events: &[Bytes]) -> Option<Usage> {
    events
        .iter()
        .rev()
        .flat_map(|bytes| parse_events(bytes))
        .filter(|event| event.data.contains("usage"))
        .find_map(|event| Chunk::parse(&event.data)?.usage())
}

/// Why a relay was ended from outside: a drain deadline, or an operator.
#[derive(Debug, Clone)]
pub struct Cut {
    pub code: &'static str,
    pub message: String,
}

/// How long an upstream stream may be silent: before its first event, and between events.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub first_event: Duration,
    pub idle: Duration,
}

/// An SSE frame carrying an error in OpenAI's shape, as the SDKs expect mid-stream.
pub fn error_frame(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": code }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// Relays an upstream SSE body. `watch` sees every event passed on and lives as long as
/// the relay; `cut` ends it from outside; `describe` names the upstream in messages.
pub fn relay<S, E, W, C>(
    upstream: S,
    watch: W,
    cut: C,
    patience: Patience,
    describe: String,
    request_id: String,
) -> impl Stream<Item = Relayed> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + 'static,
    W: Watch,
    C: std::future::Future<Output = Cut> + Send + 'static,
{
    struct Relay<S, W: Watch, C> {
        upstream: S,
        parser: SseParser,
        opening: chunk::Opening,
        encoded: sse::EventBlocks,
        ready: VecDeque<Relayed>,
        /// No more from upstream: done, failed or cut.
        finished: bool,
        done: bool,
        seen_event: bool,
        upstream_error: bool,
        /// When the upstream has been silent too long: one timer for the stream, moved
        /// on by each event (a later deadline is a store; a timer made and dropped for
        /// every read took the timer wheel's lock twice).
        silence: std::pin::Pin<Box<tokio::time::Sleep>>,
        patience: Patience,
        watch: W,
        cut: WhenWoken<C>,
        describe: String,
        request_id: String,
    }

    impl<S, W: Watch, C> Relay<S, W, C> {
        /// Reads `bytes` and relays the events they complete.
        fn read(&mut self, bytes: &[u8]) {
            let mut parser = std::mem::take(&mut self.parser);
            let mut any = false;
            parser.each(bytes, |event| {
                any = true;
                self.take(event);
            });
            self.parser = parser;
            // Comments and partial events keep the connection busy, not the stream.
            if any {
                self.seen_event = true;
                let idle = self.patience.idle;
                self.silence.as_mut().reset(Instant::now() + idle);
            }
        }

        fn take(&mut self, event: SseEvent) {
            if self.done || self.finished {
                return;
            }
            let chunk = Chunk::parse_next(&event.data, &mut self.opening);
            if let Some(cut) = self.watch.event(&event, chunk.as_ref()) {
                tracing::warn!(request_id = %self.request_id, upstream = %self.describe, code = cut.code, "stream cut");
                self.fail(cut.code, cut.message);
                return;
            }
            self.done = event.is_done() || chunk.as_ref().is_some_and(Chunk::ends_response);
            self.upstream_error |= chunk.as_ref().is_some_and(Chunk::is_error);
            self.ready.push_back(Relayed {
                bytes: self.encoded.encode(&event),
                usage_only: chunk.as_ref().is_some_and(Chunk::is_usage_only),
            });
        }

        fn fail(&mut self, code: &'static str, message: String) {
            self.finished = true;
            self.watch.ended_with(code);
            self.ready
                .push_back(Relayed::plain(error_frame(&message, code)));
        }
    }

    impl<S, W: Watch, C> Drop for Relay<S, W, C> {
        fn drop(&mut self) {
            // Dropped before the end: nobody listened any more and the relay was aborted.
            if !self.finished && !self.done {
                self.watch.ended_with("stream_cancelled");
            }
        }
    }

    let relay = Relay {
        upstream,
        parser: SseParser::default(),
        opening: chunk::Opening::default(),
        encoded: sse::EventBlocks::default(),
        ready: VecDeque::new(),
        finished: false,
        done: false,
        seen_event: false,
        upstream_error: false,
        silence: Box::pin(tokio::time::sleep(patience.first_event)),
        patience,
        watch,
        cut: WhenWoken::new(cut),
        describe,
        request_id,
    };
    // Boxed: unfold moves its state into each step's future and back out with the
    // event, and the relay is 1.5 KiB; a box moves as a pointer.
    futures_util::stream::unfold(Box::new(relay), |mut relay| async move {
        loop {
            if let Some(next) = relay.ready.pop_front() {
                return Some((next, relay));
            }
            if relay.finished || relay.done {
                return None;
            }
            // In this order: a cut ends the stream even while data flows (it is asked
            // only once woken, so asking is cheap), and data that is there counts
            // before a deadline that passed with it.
            let next = tokio::select! {
                biased;
                cut = &mut relay.cut => {
                    tracing::warn!(request_id = %relay.request_id, upstream = %relay.describe, code = cut.code, "stream cut");
                    relay.fail(cut.code, cut.message);
                    continue;
                }
                next = relay.upstream.next() => Ok(next),
                () = relay.silence.as_mut() => Err(()),
            };
            let (code, failure) = match next {
                Ok(Some(Ok(bytes))) => {
                    relay.read(&bytes);
                    continue;
                }
                Err(_) => {
                    let waited = if relay.seen_event {
                        relay.patience.idle
                    } else {
                        relay.patience.first_event
                    };
                    (
                        "upstream_stream_stalled",
                        format!(
                            "it sent nothing for {}",
                            crate::config::format_duration(waited)
                        ),
                    )
                }
                Ok(Some(Err(error))) => (
                    "upstream_stream_error",
                    format!("connection lost: {}", crate::telemetry::root_cause(&error)),
                ),
                Ok(None) => {
                    // A last event without its blank line still counts.
                    relay.read(b"\n\n");
                    if relay.done {
                        continue;
                    }
                    if relay.upstream_error {
                        // The upstream said what went wrong; its error event is the end.
                        relay.finished = true;
                        relay.watch.ended_with("upstream_stream_error");
                        continue;
                    }
                    (
                        "upstream_stream_error",
                        "the stream ended without [DONE]".to_string(),
                    )
                }
            };
            tracing::warn!(
                request_id = %relay.request_id,
                upstream = %relay.describe,
                reason = %failure,
                code,
                "upstream stream failed mid-way"
            );
            let message = format!(
                "the upstream {} failed mid-stream ({failure}); the answer is incomplete",
                relay.describe
            );
            relay.fail(code, message);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading only the usage finds what reading the whole chunk finds, for every shape
    /// that reports one and those that do not.
    #[test]
    fn usage_alone_reads_as_the_whole_chunk_does() {
        let bodies = [
            r#"{"id":"c","choices":[{"message":{"role":"assistant","content":"hi \"there\""}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
            r#"{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":9,"output_tokens":2,"cache_read_input_tokens":4,"cache_creation_input_tokens":1}}"#,
            r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":3,"output_tokens":8}}}"#,
            r#"{"type":"message_start","message":{"usage":{"input_tokens":6,"output_tokens":1}}}"#,
            r#"{"object":"response","output":[],"usage":{"input_tokens":2,"output_tokens":4}}"#,
            r#"{"choices":[{"message":{"content":"no usage here"}}]}"#,
            r#"{"choices":[{"message":{"content":"x"}}],"usage":null}"#,
            r#"{"choices":[{"message":{"content":"x"}}],"usage":{}}"#,
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            r#"{"usage":{"prompt_tokens":"many"}}"#,
            r#"[1,2,3]"#,
            "not json",
            "",
        ];
        for body in bodies {
            assert_eq!(
                usage_in(body).map(|u| (u.prompt_tokens, u.completion_tokens)),
                Chunk::parse(body)
                    .and_then(|c| c.usage())
                    .map(|u| (u.prompt_tokens, u.completion_tokens)),
                "{body}"
            );
        }
        assert_eq!(usage_in(bodies[2]).map(|u| u.prompt_tokens), Some(14));
    }

    const PATIENT: Patience = Patience {
        first_event: Duration::from_secs(60),
        idle: Duration::from_secs(60),
    };

    async fn relayed<E: std::error::Error + Send + 'static>(
        upstream: Vec<Result<Bytes, E>>,
    ) -> Vec<Relayed> {
        relay(
            futures_util::stream::iter(upstream),
            (),
            std::future::pending::<Cut>(),
            PATIENT,
            "us-east-a".into(),
            "req_1".into(),
        )
        .collect()
        .await
    }

    #[tokio::test]
    async fn a_broken_stream_ends_with_an_error_frame() {
        let frames = relayed(vec![
            Ok(Bytes::from_static(b"data: {\"n\":1}\n\ndata: {\"n\"")),
            Err(std::io::Error::other("reset")),
        ])
        .await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].bytes, Bytes::from_static(b"data: {\"n\":1}\n\n"));
        let last = String::from_utf8_lossy(&frames[1].bytes);
        assert!(last.starts_with("data: {\"error\":"), "{last}");
        assert!(last.contains("upstream_stream_error"), "{last}");
    }

    #[tokio::test]
    async fn any_framing_is_relayed_canonically_and_usage_is_found_by_json() {
        let frames = relayed(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(
                b": keep-alive\r\n\r\ndata: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}]}\r\n\r\n",
            )),
            Ok(Bytes::from_static(
                b"data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 1}}\r\n\r\ndata: [DONE]\r\n\r\n",
            )),
        ])
        .await;
        let bytes: Vec<&[u8]> = frames.iter().map(|f| &f.bytes[..]).collect();
        assert_eq!(
            bytes,
            [
                &b"data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}]}\n\n"[..],
                &b"data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 1}}\n\n"[..],
                &b"data: [DONE]\n\n"[..],
            ]
        );
        let flags: Vec<bool> = frames.iter().map(|f| f.usage_only).collect();
        assert_eq!(flags, [false, true, false]);
        let events: Vec<Bytes> = frames.into_iter().map(|f| f.bytes).collect();
        assert_eq!(
            usage_in_events(&events),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                estimated: false
            })
        );
    }

    #[tokio::test]
    async fn nothing_after_done_is_read() {
        let frames = relayed(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(
                b"data: [DONE]\n\ndata: {\"late\":1}\n\n",
            )),
            Err(std::io::Error::other("reset after the end")),
        ])
        .await;
        assert_eq!(
            frames,
            [Relayed::plain(Bytes::from_static(b"data: [DONE]\n\n"))]
        );
    }

    /// Everything a relay passes on from `upstream`, with these waits (seconds).
    async fn relayed_with_patience(
        upstream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        first_event: u64,
        idle: u64,
    ) -> Vec<Relayed> {
        let patience = Patience {
            first_event: Duration::from_secs(first_event),
            idle: Duration::from_secs(idle),
        };
        let cut = std::future::pending::<Cut>();
        relay(
            Box::pin(upstream),
            (),
            cut,
            patience,
            "x".into(),
            "r".into(),
        )
        .collect()
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_is_ended_as_stalled() {
        let upstream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
            Bytes::from_static(b"data: {\"n\":1}\n\n"),
        )])
        .chain(futures_util::stream::pending());
        let frames = relayed_with_patience(upstream, 5, 2).await;
        assert_eq!(frames.len(), 2);
        let last = String::from_utf8_lossy(&frames[1].bytes);
        assert!(last.contains("upstream_stream_stalled"), "{last}");
        assert!(last.contains("sent nothing for 2s"), "{last}");
    }

    /// Each event moves the deadline on: a stream that never pauses for `idle` runs
    /// longer than `idle` and `first_event` together, and then ends on its own.
    #[tokio::test(start_paused = true)]
    async fn a_steady_upstream_is_never_stalled() {
        let upstream = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let data: &'static [u8] = match n {
                0..6 => b"data: {\"n\":1}\n\n",
                6 => b"data: [DONE]\n\n",
                _ => return None,
            };
            Some((Ok::<_, std::io::Error>(Bytes::from_static(data)), n + 1))
        });
        let started = Instant::now();
        let frames = relayed_with_patience(upstream, 2, 2).await;
        assert_eq!(frames.len(), 7, "{frames:?}");
        assert_eq!(&frames[6].bytes[..], b"data: [DONE]\n\n");
        assert!(started.elapsed() >= Duration::from_millis(7 * 1500));
    }

    #[test]
    fn only_the_usage_only_chunk_is_stripped() {
        let usage = Bytes::from_static(
            b"data: {\"choices\": [], \"usage\": {\"total_tokens\": 3, \"prompt_tokens\": 2}}\n\n",
        );
        assert_eq!(without_usage_chunk(usage), Bytes::new());
        let kept = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n");
        assert_eq!(without_usage_chunk(kept.clone()), kept);
    }
}
