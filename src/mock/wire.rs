//! What the mock's answers are made of: OpenAI error bodies, ids, answer text and the
//! token counts that go with it.

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Knobs;

/// An error in OpenAI's shape.
pub fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    (status, axum::Json(body)).into_response()
}

/// An error in Anthropic's shape (`{"type":"error","error":{…}}`).
pub fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({ "type": "error", "error": { "type": kind, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// The answer to a request to Anthropic's API picked by `error_rate`: 429
/// `rate_limit_error` with `retry-after`, 529 `overloaded_error`, else `api_error`.
pub fn anthropic_injected_error(knobs: &Knobs) -> Response {
    let status =
        StatusCode::from_u16(knobs.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, message) = match status.as_u16() {
        429 => (
            "rate_limit_error",
            "Number of requests has exceeded your rate limit.",
        ),
        529 => ("overloaded_error", "Overloaded"),
        400..=499 => ("invalid_request_error", "The request was rejected."),
        _ => ("api_error", "Internal server error"),
    };
    let mut response = anthropic_error(status, kind, message);
    if status == StatusCode::TOO_MANY_REQUESTS
        && let Ok(v) = HeaderValue::from_str(&knobs.retry_after_secs.to_string())
    {
        response.headers_mut().insert("retry-after", v);
    }
    response
}

/// The answer to a request picked by `error_rate`.
pub fn injected_error(knobs: &Knobs) -> Response {
    let status =
        StatusCode::from_u16(knobs.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let mut response = error(
            status,
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests. Please try again later.",
        );
        let secs = knobs.retry_after_secs.to_string();
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            headers.insert("retry-after", v);
        }
        if let Ok(v) = HeaderValue::from_str(&(knobs.retry_after_secs * 1000).to_string()) {
            headers.insert("retry-after-ms", v);
        }
        return response;
    }
    let (kind, message) = if status.is_server_error() {
        (
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
        )
    } else {
        ("invalid_request_error", "The request was rejected.")
    };
    error(status, kind, None, message)
}

pub fn bad_json(detail: &serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        &format!(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.) {detail}"
        ),
    )
}

pub fn missing_parameter(name: &str) -> Response {
    let body = json!({
        "error": {
            "message": format!("Missing required parameter: '{name}'."),
            "type": "invalid_request_error",
            "param": name,
            "code": "missing_required_parameter",
        }
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

pub fn unknown_model(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("model_not_found"),
        &format!("The model `{model}` does not exist or you do not have access to it."),
    )
}

/// A random id with OpenAI's look: `chatcmpl-` followed by 24 letters and digits.
pub fn id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

const WORDS: &[&str] = &[
    "switch", "yard", "signal", "track", "freight", "engine", "token", "route", "region", "queue",
    "steady", "gateway", "north", "south", "river", "bridge", "lantern", "harbor", "copper",
    "meadow", "orbit", "quiet", "rapid", "silver", "timber", "violet", "willow", "amber", "beacon",
    "cinder", "delta", "ember",
];

/// The answer's tokens: deterministic for a prompt, one word per token.
pub fn answer_tokens(seed: u64, count: usize) -> Vec<String> {
    let mut state = (seed ^ 0x9e37_79b9_7f4a_7c15).max(1);
    (0..count)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = WORDS[(state % WORDS.len() as u64) as usize];
            if i == 0 {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            } else if i + 1 == count {
                format!(" {word}.")
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// FNV-1a, to seed answers and vectors from their input.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Tokens in a piece of text, by the usual four-characters-a-token rule.
pub fn text_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The prompt's token count: the text of every message plus OpenAI's framing overhead
/// (three tokens a message, three to prime the reply).
pub fn prompt_tokens(messages: &[Value]) -> u64 {
    let per_message: u64 = messages
        .iter()
        .map(|m| 3 + message_text(m).map(text_tokens).unwrap_or_default())
        .sum();
    per_message + 3
}

fn message_text(message: &Value) -> Option<&str> {
    match message.get("content")? {
        Value::String(s) => Some(s),
        // Content parts: count the first text part; images and audio are not simulated.
        Value::Array(parts) => parts.iter().find_map(|p| p.get("text")?.as_str()),
        _ => None,
    }
}

/// How the mock frames its streams, to stand in for servers other than OpenAI's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    /// JSON with Python's `json.dumps` spacing (`{"a": 1, "b": 2}`), as LiteLLM and
    /// other Python servers write it.
    pub spaced: bool,
    /// CRLF line ends.
    pub crlf: bool,
    /// A `: keep-alive` comment before every event.
    pub keepalive: bool,
}

impl Framing {
    /// One SSE event carrying `data`.
    pub fn event(&self, data: &Value) -> Bytes {
        self.frame(&self.json(data))
    }

    /// One SSE event of type `kind` carrying `data`, as Anthropic names its events.
    pub fn named(&self, kind: &str, data: &Value) -> Bytes {
        self.lines(Some(kind), &self.json(data))
    }

    /// One SSE event carrying `text` as it is (e.g. `[DONE]`).
    pub fn frame(&self, text: &str) -> Bytes {
        self.lines(None, text)
    }

    fn json(&self, data: &Value) -> String {
        if self.spaced {
            spaced_json(data)
        } else {
            data.to_string()
        }
    }

    fn lines(&self, kind: Option<&str>, text: &str) -> Bytes {
        let end = if self.crlf { "\r\n" } else { "\n" };
        let comment = if self.keepalive {
            format!(": keep-alive{end}{end}")
        } else {
            String::new()
        };
        let kind = kind.map_or(String::new(), |kind| format!("event: {kind}{end}"));
        Bytes::from(format!("{comment}{kind}data: {text}{end}{end}"))
    }
}

/// JSON on one line with `", "` and `": "` between items, as Python writes it.
pub fn spaced_json(value: &Value) -> String {
    struct Spaced;
    fn comma<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            comma(writer, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            comma(writer, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    let _ = serde::Serialize::serialize(value, &mut serializer);
    String::from_utf8(out).unwrap_or_default()
}

/// Cuts `bytes` into pieces of `size` bytes, wherever that falls (inside a UTF-8
/// character too), as a slow network or a small write buffer would; 0 keeps it whole.
pub fn pieces(bytes: Bytes, size: usize) -> Vec<Bytes> {
    if size == 0 {
        return vec![bytes];
    }
    let mut pieces = Vec::with_capacity(bytes.len() / size + 1);
    let mut rest = bytes;
    while rest.len() > size {
        pieces.push(rest.split_to(size));
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_and_end_with_a_period() {
        let a = answer_tokens(42, 5);
        assert_eq!(a, answer_tokens(42, 5));
        assert_eq!(a.len(), 5);
        assert!(a[4].ends_with('.'));
        assert!(a[1].starts_with(' '));
        assert_ne!(a, answer_tokens(43, 5));
    }

    #[test]
    fn prompt_tokens_count_text_and_framing() {
        let messages = vec![json!({"role": "user", "content": "12345678"})];
        assert_eq!(prompt_tokens(&messages), 3 + 2 + 3);
    }

    #[test]
    fn spaced_json_is_written_the_way_python_writes_it() {
        let value = json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        assert_eq!(
            spaced_json(&value),
            r#"{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}"#
        );
        let framing = Framing {
            spaced: true,
            crlf: true,
            keepalive: true,
        };
        assert_eq!(
            &framing.event(&json!([1, 2]))[..],
            b": keep-alive\r\n\r\ndata: [1, 2]\r\n\r\n"
        );
    }
}
