//! Properties of the parsers and arithmetic that read outside input, over generated
//! inputs (proptest): framing never changes what an SSE stream says, units round-trip,
//! a token bucket never lends more than it has, and nothing a client, an upstream, an
//! operator or a config file writes makes them panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};
use serde_json::{Value, json};
use switchyard::admission::Bucket;
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

/// One step of a tenant's life against its bucket, as admission drives it: time passes,
/// a reservation is taken if the bucket has it, and settled with what was really used.
#[derive(Debug, Clone)]
enum Step {
    Wait(u64),
    Reserve { reserved: u64, used: u64 },
}

fn steps(capacity: u64) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (0u64..90_000).prop_map(Step::Wait),
        (
            0..=capacity.saturating_mul(2),
            0..=capacity.saturating_mul(3)
        )
            .prop_map(|(reserved, used)| Step::Reserve { reserved, used }),
    ];
    prop::collection::vec(step, 1..60)
}

/// Drives a bucket through `steps`; with `honest`, no request uses more than it reserved
/// (the gateway sends the reservation upstream as the completion limit and cuts streams
/// at it). Checks the bucket's own bounds at every step; returns the tokens used by
/// admitted requests and the refill over the whole run.
fn drive(per_minute: u64, steps: &[Step], honest: bool) -> Result<(u128, u128), TestCaseError> {
    let start = tokio::time::Instant::now();
    let mut now = start;
    let mut bucket = Bucket::per_minute(per_minute, now);
    let mut admitted = 0u128;
    for step in steps {
        match *step {
            Step::Wait(ms) => {
                now += Duration::from_millis(ms);
                bucket.refill(now);
            }
            Step::Reserve { reserved, used } => {
                if !bucket.has(reserved) {
                    continue;
                }
                let used = if honest { used.min(reserved) } else { used };
                bucket.take(reserved);
                if used > reserved {
                    bucket.take(used - reserved);
                } else {
                    bucket.give(reserved - used);
                }
                admitted += u128::from(used);
            }
        }
        prop_assert!(bucket.available() <= per_minute);
        // Debt is at most one capacity, so every wait ends within two minutes.
        prop_assert!(
            bucket.until_full() <= Duration::from_secs(121),
            "{:?}",
            bucket.until_full()
        );
        if let Some(wait) = bucket.wait_for(per_minute) {
            prop_assert!(wait <= Duration::from_secs(121), "{wait:?}");
        }
        // What it says is available can be taken (in debt nothing is, not even 0).
        if bucket.available() > 0 {
            prop_assert!(bucket.has(bucket.available()));
        }
    }
    let refilled = u128::from(per_minute) * (now - start).as_millis() / 60_000;
    Ok((admitted, refilled))
}

proptest! {
    #![proptest_config(Cases { failure_persistence: None, ..Cases::default() })]

    /// Whatever the reservations and the usage reported, the bucket never holds more
    /// than its capacity and never owes more than one; and when requests use at most
    /// what they reserved, what it admitted never exceeds the capacity plus the refill.
    #[test]
    fn a_bucket_admits_at_most_what_it_refills(
        (per_minute, steps) in (1u64..10_000_000).prop_flat_map(|c| (Just(c), steps(c)))
    ) {
        drive(per_minute, &steps, false)?;
        let (admitted, refilled) = drive(per_minute, &steps, true)?;
        prop_assert!(
            admitted <= u128::from(per_minute) + refilled + 1,
            "admitted {} of {}/min with {} refilled", admitted, per_minute, refilled
        );
    }
}

/// Keys and values an operator (or a script gone wrong) might send the admin API.
fn admin_value() -> impl Strategy<Value = Value> {
    value_with(field())
}

/// JSON values whose objects use `names` as keys, and whose leaves include the names
/// this test's gateway knows and the extremes of each type.
fn value_with(
    names: impl Strategy<Value = String> + Clone + 'static,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            Just(1e308),
            Just(-1e308),
            Just(f64::MIN_POSITIVE),
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just("tenant-a".to_string()),
            Just("us-east".to_string()),
            Just("us-east-a".to_string()),
            Just("pro".to_string()),
            Just("gpt-4o-mini".to_string()),
            Just("user".to_string()),
            "\\PC{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(names.clone(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just("tenant"),
        Just("tier"),
        Just("region"),
        Just("instance"),
        Just("id"),
        Just("deadline_secs"),
        Just("limits"),
        Just("rpm"),
        Just("tpm"),
        Just("max_concurrency"),
        Just("daily_tokens"),
        Just("monthly_usd"),
        Just("max_tokens_cap"),
    ]
    .prop_map(str::to_string)
}

fn admin_action() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just("drain_region"),
        Just("undrain_region"),
        Just("drain_instance"),
        Just("eject_instance"),
        Just("restore_instance"),
        Just("set_tier"),
        Just("set_limits"),
        Just("pause_tenant"),
        Just("resume_tenant"),
        Just("reset_budget"),
        Just("kill_stream"),
        Just("purge_cache"),
        Just("no_such_action"),
    ];
    (
        name,
        prop::collection::btree_map(field(), admin_value(), 0..4),
    )
        .prop_map(|(name, fields)| {
            let mut action: serde_json::Map<String, Value> = fields.into_iter().collect();
            action.insert("action".into(), json!(name));
            Value::Object(action)
        })
}

fn request_field() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just("model"),
        Just("messages"),
        Just("role"),
        Just("content"),
        Just("max_tokens"),
        Just("max_completion_tokens"),
        Just("stream"),
        Just("stream_options"),
        Just("include_usage"),
        Just("temperature"),
        Just("n"),
        Just("user"),
        Just("input"),
        Just("tools"),
    ]
    .prop_map(str::to_string)
}

/// A chat request as clients send them, with any field swapped for any value.
fn chat_body() -> impl Strategy<Value = Value> {
    let base = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    (
        prop::collection::btree_map(request_field(), value_with(request_field()), 0..4),
        any::<bool>(),
    )
        .prop_map(move |(changes, from_base)| {
            let mut body = if from_base { base.clone() } else { json!({}) };
            if let Value::Object(fields) = &mut body {
                fields.extend(changes);
            }
            body
        })
}

/// A runtime, a mock and a gateway in front of it, and a runner for generated inputs
/// against them: PROPTEST_CASES (default 256) sets how many; scripts/randomized.sh
/// runs thousands.
fn live_gateway() -> (
    tokio::runtime::Runtime,
    switchyard::mock::MockHandle,
    TestGateway,
    TestRunner,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mock, gw) = runtime.block_on(async {
        let mock = quick_mock().spawn_local().await.unwrap();
        let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
        (mock, gw)
    });
    let runner = TestRunner::new(Cases {
        failure_persistence: None,
        ..Cases::default()
    });
    (runtime, mock, gw, runner)
}

/// Whatever a client sends as a chat or embeddings request, the gateway answers: the
/// upstream's answer, or a refusal in OpenAI's shape; never a 5xx of its own, never a
/// dropped connection.
#[test]
fn any_request_body_gets_an_answer_or_an_openai_refusal() {
    let (runtime, mock, gw, mut runner) = live_gateway();
    let target = (
        prop::sample::select(vec!["/v1/chat/completions", "/v1/embeddings"]),
        chat_body(),
    );
    let outcome = runner.run(&target, |(path, body)| {
        let (status, answer) = runtime.block_on(async {
            let response = gw.post(path, KEY_A, &body).await;
            let status = response.status();
            (status, response.bytes().await.unwrap())
        });
        let text = String::from_utf8_lossy(&answer);
        if status.is_success() {
            return Ok(());
        }
        prop_assert!(status.is_client_error(), "{path} {body}: {status} {text}");
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|e| TestCaseError::fail(format!("{path} {body}: not JSON ({e}): {text}")))?;
        prop_assert!(answer["error"]["message"].is_string(), "{text}");
        prop_assert!(
            answer["error"]["code"].is_string() || answer["error"]["type"].is_string(),
            "{text}"
        );
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    runtime.block_on(async {
        let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
        assert_eq!(reply.status(), 200);
        gw.stop().await;
        drop(mock);
    });
}

/// Every body the admin API gets is answered, never with a 5xx, always in OpenAI's error
/// shape when refused; and the gateway still serves afterwards.
#[test]
fn the_admin_api_answers_any_input_without_failing() {
    let (runtime, mock, gw, mut runner) = live_gateway();
    let target = prop_oneof![
        admin_action().prop_map(|body| ("/admin/actions".to_string(), body)),
        admin_value().prop_map(|body| ("/admin/tenants/tenant-a/limits".to_string(), body)),
        admin_value().prop_map(|body| ("/admin/tenants/tenant-b/tier".to_string(), body)),
        admin_value().prop_map(|body| ("/admin/regions/us-east/drain".to_string(), body)),
    ];
    let outcome = runner.run(&target, |(path, body)| {
        let (status, answer) = runtime.block_on(async {
            let response = gw
                .admin(reqwest::Method::POST, &path, Some(body.clone()))
                .await;
            let status = response.status();
            (status, response.text().await.unwrap())
        });
        prop_assert!(
            !status.is_server_error(),
            "{path} {body}: {status} {answer}"
        );
        let answer: Value = serde_json::from_str(&answer)
            .map_err(|e| TestCaseError::fail(format!("{path} {body}: not JSON ({e}): {answer}")))?;
        if status.is_client_error() {
            prop_assert!(answer["error"]["message"].is_string(), "{answer}");
            prop_assert!(answer["error"]["code"].is_string(), "{answer}");
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    runtime.block_on(async {
        // Undo what the generated actions did, then serve.
        for action in [
            json!({"action": "undrain_region", "region": "us-east"}),
            json!({"action": "restore_instance", "instance": "us-east-a"}),
            json!({"action": "resume_tenant", "tenant": "tenant-a"}),
            json!({"action": "set_limits", "tenant": "tenant-a", "limits": {"rpm": 1000000, "tpm": 1000000000u64, "max_concurrency": 100, "max_tokens_cap": 100000, "daily_tokens": 1000000000000u64, "monthly_tokens": 1000000000000u64, "daily_usd": 1e9, "monthly_usd": 1e9}}),
            json!({"action": "reset_budget", "tenant": "tenant-a"}),
        ] {
            let response = gw.admin(reqwest::Method::POST, "/admin/actions", Some(action.clone())).await;
            assert!(response.status().is_success(), "{action}: {}", response.text().await.unwrap());
        }
        let health = gw.client.get(gw.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
        assert_eq!(reply.status(), 200, "{}", reply.text().await.unwrap());
        gw.stop().await;
        drop(mock);
    });
}
