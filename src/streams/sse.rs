//! Server-sent events parsed once, by the WHATWG rules, whatever the upstream's framing:
//! LF, CRLF or lone CR line ends, `:` comments (keep-alives), multi-line `data:`, `id:`,
//! `event:` and `retry:` fields, a byte-order mark, and events split at any byte (a
//! UTF-8 character included: lines are decoded only once they are whole).
//!
//! Every event leaves in one canonical form, `event:` (if any) then one `data:` line per
//! line of data, then a blank line, so whatever reads the gateway's streams (clients,
//! watchers, the cache) sees the same framing from every upstream.

use bytes::{Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` for the default type (`message`).
    pub kind: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    pub fn data(data: impl Into<String>) -> SseEvent {
        SseEvent {
            kind: None,
            data: data.into(),
        }
    }

    /// Whether this is OpenAI's end-of-stream sentinel.
    pub fn is_done(&self) -> bool {
        self.kind.is_none() && self.data.trim() == "[DONE]"
    }

    /// The event in canonical framing.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.framed_len());
        self.write(&mut out);
        out.freeze()
    }

    /// The framed length of a single line of data; more lines take more.
    fn framed_len(&self) -> usize {
        let kind = self.kind.as_ref().map_or(0, |kind| kind.len() + 8);
        kind + self.data.len() + 8
    }

    fn write(&self, out: &mut BytesMut) {
        if let Some(kind) = &self.kind {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(kind.as_bytes());
            out.extend_from_slice(b"\n");
        }
        let mut data = self.data.as_bytes();
        // A line of data, nearly always: one search, then one copy.
        while let Some(end) = memchr::memchr(b'\n', data) {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&data[..=end]);
            data = &data[end + 1..];
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\n\n");
    }
}

/// Where one stream's events are encoded: into shared blocks, so that an event costs
/// neither an allocation of its own nor another on its first clone (the bytes cut from a
/// block share its count). A stream's first block holds its first event exactly and each
/// next one is twice the last, up to `MAX_BLOCK`: a stream held open with a few events
/// keeps little room it does not use, and a long one allocates once a kilobyte.
#[derive(Debug, Default)]
pub struct EventBlocks {
    block: BytesMut,
    size: usize,
}

impl EventBlocks {
    const MAX_BLOCK: usize = 1024;

    /// The event in canonical framing, as `SseEvent::encode` writes it.
    pub fn encode(&mut self, event: &SseEvent) -> Bytes {
        let len = event.framed_len();
        if self.block.capacity() < len {
            self.size = (self.size * 2).clamp(len, Self::MAX_BLOCK.max(len));
            self.block = BytesMut::with_capacity(self.size);
        }
        event.write(&mut self.block);
        self.block.split().freeze()
    }
}

/// Parses a byte stream into events. Holds at most one incomplete line and the fields
/// of one incomplete event.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The last byte seen was a CR: a following LF belongs to the same line end.
    after_cr: bool,
    started: bool,
    kind: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed, in order.
    ///
    /// Lines are found with a vectorised search and read where they lie in `bytes`;
    /// only a line split across reads is copied, into a buffer kept for the next one.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.each(bytes, |event| events.push(event));
        events
    }

    /// As `push`, handing each event to `event` as it ends (no list to allocate).
    pub fn each(&mut self, mut bytes: &[u8], mut event: impl FnMut(SseEvent)) {
        if !self.started && !bytes.is_empty() {
            self.started = true;
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        while let Some(&first) = bytes.first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                // The LF of a CRLF whose CR ended the last line.
                bytes = &bytes[1..];
                continue;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) else {
                self.line.extend_from_slice(bytes);
                break;
            };
            self.after_cr = bytes[end] == b'\r';
            let ended = if self.line.is_empty() {
                self.line_ended(&bytes[..end])
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                let ended = self.line_ended(&line);
                line.clear();
                self.line = line;
                ended
            };
            if let Some(ended) = ended {
                event(ended);
            }
            bytes = &bytes[end + 1..];
        }
    }

    /// Bytes held for an event that has not ended yet.
    pub fn pending(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&text(value));
                self.has_data = true;
            }
            b"event" => self.kind = Some(text(value).into_owned()),
            // `id` and `retry` steer a browser's reconnection; the gateway numbers its own
            // events for watchers and never reconnects to an upstream.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let kind = self.kind.take().filter(|k| !k.is_empty() && k != "message");
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            kind,
            data: std::mem::take(&mut self.data),
        })
    }
}

/// A field's value as text: borrowed when it is UTF-8, as it nearly always is (checked
/// a word at a time), replaced where it is not.
fn text(value: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(text: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        text.chunks(piece).flat_map(|p| parser.push(p)).collect()
    }

    #[test]
    fn every_framing_gives_the_same_events() {
        let expected = vec![
            SseEvent::data("{\"a\": 1}"),
            SseEvent::data("line one\nline two"),
            SseEvent {
                kind: Some("error".into()),
                data: "x".into(),
            },
            SseEvent::data("[DONE]"),
        ];
        let lf = b": keep-alive\n\ndata: {\"a\": 1}\n\ndata: line one\ndata:line two\n\nid: 7\nretry: 10\nevent: error\ndata: x\n\ndata: [DONE]\n\n";
        let crlf = String::from_utf8_lossy(lf).replace('\n', "\r\n");
        let cr = String::from_utf8_lossy(lf).replace('\n', "\r");
        for text in [lf.to_vec(), crlf.into_bytes(), cr.into_bytes()] {
            for piece in [1, 2, 3, 7, text.len()] {
                assert_eq!(parse_in_pieces(&text, piece), expected, "piece {piece}");
            }
        }
    }

    /// Lines read where they lie (large reads) and lines gathered a byte at a time give
    /// the same events, over random framings, fields, invalid UTF-8 and split points.
    #[test]
    fn any_split_of_any_framing_gives_the_events_of_a_byte_at_a_time() {
        const PIECES: [&[u8]; 16] = [
            b"data: ",
            b"data:",
            b"event: ",
            b"id: 7",
            b": ping",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"{\"a\":1}",
            b"[DONE]",
            "h\u{e9}llo \u{1f44b}".as_bytes(),
            b"\xff\xfe",
            b"message",
            b"retry: 10",
            b" x ",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let mut text = Vec::new();
            for _ in 0..rng.usize(1..40) {
                text.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
            }
            let expected = parse_in_pieces(&text, 1);
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            let mut rest = &text[..];
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(rng.usize(1..=rest.len()));
                events.extend(parser.push(piece));
                rest = tail;
            }
            assert_eq!(events, expected, "{:?}", String::from_utf8_lossy(&text));
            assert_eq!(parse_in_pieces(&text, text.len()), expected);
            let mut blocks = EventBlocks::default();
            let mut cut = Vec::new();
            for event in &expected {
                let encoded = event.encode();
                assert_eq!(encoded, line_by_line(event), "{event:?}");
                assert_eq!(
                    parse_in_pieces(&encoded, encoded.len()),
                    vec![event.clone()]
                );
                cut.push(blocks.encode(event));
            }
            // Events cut from shared blocks are each the event alone, whatever came
            // after it in the block.
            for (event, cut) in expected.iter().zip(&cut) {
                assert_eq!(*cut, line_by_line(event), "{event:?}");
            }
        }
    }

    /// The canonical framing written the plain way: `event:`, then a `data:` line for
    /// each line of the data, then a blank line.
    fn line_by_line(event: &SseEvent) -> Bytes {
        let mut out = String::new();
        if let Some(kind) = &event.kind {
            out.push_str(&format!("event: {kind}\n"));
        }
        for line in event.data.split('\n') {
            out.push_str(&format!("data: {line}\n"));
        }
        out.push('\n');
        Bytes::from(out)
    }

    #[test]
    fn a_character_split_across_reads_is_whole() {
        let text = "data: {\"content\":\"héllo 👋\"}\n\n".as_bytes();
        for piece in 1..6 {
            let events = parse_in_pieces(text, piece);
            assert_eq!(events, vec![SseEvent::data("{\"content\":\"héllo 👋\"}")]);
        }
    }

    #[test]
    fn a_bom_and_an_event_without_data_are_ignored() {
        let events = parse_in_pieces(b"\xEF\xBB\xBFevent: ping\n\ndata: x\n\n", 4);
        assert_eq!(events, vec![SseEvent::data("x")]);
    }

    #[test]
    fn done_is_recognised_only_as_the_whole_data() {
        assert!(SseEvent::data(" [DONE] ").is_done());
        assert!(!SseEvent::data("{\"content\":\"data: [DONE]\"}").is_done());
    }

    #[test]
    fn a_streams_events_share_blocks_that_double_up_to_a_kilobyte() {
        let mut blocks = EventBlocks::default();
        let event = SseEvent::data("{\"content\":\"token of32\"}");
        let framed = line_by_line(&event);
        assert_eq!(framed.len(), 32);
        let cut: Vec<Bytes> = (0..80).map(|_| blocks.encode(&event)).collect();
        assert!(cut.iter().all(|c| *c == framed));
        // Where each new block starts: after 1, 2, 4, 8, 16 and 32 events, then every
        // 32 (a kilobyte).
        let starts: Vec<usize> = (1..cut.len())
            .filter(|&i| cut[i].as_ptr() != cut[i - 1].as_ptr().wrapping_add(32))
            .collect();
        assert_eq!(starts, [1, 3, 7, 15, 31, 63]);
        // An event larger than a block has one of its own.
        let large = SseEvent::data("x".repeat(2000));
        assert_eq!(blocks.encode(&large), line_by_line(&large));
        assert_eq!(blocks.encode(&event), line_by_line(&event));
    }

    #[test]
    fn canonical_framing_round_trips() {
        let event = SseEvent {
            kind: Some("response.created".into()),
            data: "a\nb".into(),
        };
        let encoded = event.encode();
        assert_eq!(
            &encoded[..],
            b"event: response.created\ndata: a\ndata: b\n\n"
        );
        assert_eq!(parse_in_pieces(&encoded, 3), vec![event]);
    }
}
