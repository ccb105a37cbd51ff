//! Properties of the parsers and arithmetic that read outside input, over generated
//! inputs (proptest): framing never changes what an SSE stream says, units round-trip,
//! and nothing a client, an upstream or a config file writes makes them panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use switchyard::config::{Config, format_duration, format_size, parse_duration, parse_size};
use switchyard::domain::Usage;
use switchyard::streams::{SseEvent, SseParser};

/// An event as upstreams send them: optional type, data of one or more lines.
fn event() -> impl Strategy<Value = SseEvent> {
    let line = "[^\r\n]{0,40}";
    let kind = prop::option::of("[a-z][a-z._]{0,15}").prop_filter("message is the default", |k| {
        k.as_deref() != Some("message")
    });
    (kind, prop::collection::vec(line, 1..4)).prop_map(|(kind, lines)| SseEvent {
        kind,
        data: lines.join("\n"),
    })
}

/// `events` framed with `line_end`, a comment before each when `comments`, and `data:`
/// with or without its space.
fn frame(events: &[SseEvent], line_end: &str, comments: bool, spaced: bool) -> Vec<u8> {
    let mut out = String::new();
    for e in events {
        if comments {
            out.push_str(&format!(": keep-alive{line_end}{line_end}"));
        }
        if let Some(kind) = &e.kind {
            out.push_str(&format!("event: {kind}{line_end}"));
        }
        for line in e.data.split('\n') {
            let sep = if spaced || line.starts_with(' ') {
                " "
            } else {
                ""
            };
            out.push_str(&format!("data:{sep}{line}{line_end}"));
        }
        out.push_str(line_end);
    }
    out.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn framing_and_splits_never_change_the_events(
        events in prop::collection::vec(event(), 0..8),
        line_end in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        comments in any::<bool>(),
        spaced in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let bytes = frame(&events, line_end, comments, spaced);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut parser = SseParser::default();
        let mut seen = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([bytes.len()]) {
            seen.extend(parser.push(&bytes[from..cut]));
            from = cut;
        }
        prop_assert_eq!(&seen, &events);
        // The canonical encoding says the same.
        let canonical: Vec<u8> = events.iter().flat_map(|e| e.encode().to_vec()).collect();
        prop_assert_eq!(SseParser::default().push(&canonical), events);
    }

    #[test]
    fn the_sse_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut parser = SseParser::default();
        for chunk in bytes.chunks(7) {
            let _ = parser.push(chunk);
        }
    }

    #[test]
    fn durations_round_trip(ms in 0u64..10_000_000_000) {
        let d = std::time::Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn sizes_round_trip(bytes in 0usize..(1 << 40)) {
        prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
    }

    #[test]
    fn units_never_panic_on_any_text(text in "\\PC{0,24}") {
        let _ = parse_duration(&text);
        let _ = parse_size(&text);
    }

    #[test]
    fn any_config_text_is_an_answer_not_a_panic(text in "[\\[\\]a-z_=\". 0-9\n{},-]{0,200}") {
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn usage_totals_saturate(prompt in any::<u64>(), completion in any::<u64>()) {
        let usage = Usage { prompt_tokens: prompt, completion_tokens: completion, estimated: false };
        prop_assert_eq!(usage.total(), prompt.saturating_add(completion));
    }
}
