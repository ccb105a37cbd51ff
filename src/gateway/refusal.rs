//! Every way a request is refused, as the one error value a client sees: status, OpenAI's
//! `type`, `code`, `param`, a message a person can act on, and headers (`retry-after`,
//! `x-ratelimit-*`). Fronts render it (`api::error` in OpenAI's shape); the pipeline
//! records its status and code. Messages never carry keys or internals beyond what the
//! client needs to act.

use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};

use crate::admission::{self, RateHeaders, Window};
use crate::auth::AuthError;
use crate::domain::headers;
use crate::gateway::{GatewayError, Refused};
use crate::scheduler::Rejection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub message: String,
    /// Extra response headers: `retry-after`, `x-should-retry`, `x-ratelimit-*`.
    pub headers: Headers,
}

/// Response headers the gateway adds, as values ready to send (see `Values`).
pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// A header value of a number.
pub fn number_value(n: impl itoa::Integer) -> HeaderValue {
    // Digits are always a header value.
    HeaderValue::from_str(itoa::Buffer::new().format(n)).unwrap_or(HeaderValue::from_static(""))
}

const INVALID_REQUEST: &str = "invalid_request_error";

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Refusal {
            status,
            kind,
            code: Some(code),
            param: None,
            message,
            headers: Vec::new(),
        }
    }

    /// The error body a client is sent: OpenAI's `{"error": {…}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers.extend(headers);
        self
    }

    /// Tells SDKs when to retry: both `retry-after-ms` and `retry-after` (whole seconds,
    /// rounded up), which they honour up to a limit.
    fn waiting(mut self, wait: Duration) -> Self {
        let ms = wait.as_millis().max(1);
        self.headers
            .push((headers::RETRY_AFTER_MS, number_value(ms)));
        self.headers
            .push((headers::RETRY_AFTER, number_value(ms.div_ceil(1000))));
        self
    }

    /// The wait this refusal asks for, if it asks for one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .iter()
            .find(|(name, _)| *name == headers::RETRY_AFTER_MS)
            .and_then(|(_, ms)| ms.to_str().ok()?.parse().ok())
            .map(Duration::from_millis)
    }

    /// Tells SDKs that retrying cannot help.
    fn never_retry(mut self) -> Self {
        self.headers
            .push((headers::SHOULD_RETRY, HeaderValue::from_static("false")));
        self
    }

    fn paused(tenant: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            INVALID_REQUEST,
            "tenant_paused",
            format!(
                "tenant {tenant} is paused by an operator; requests are refused until it is resumed"
            ),
        )
        .never_retry()
    }

    fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn bad_json(detail: &serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_json",
            format!("the request body is not valid JSON: {detail}"),
        )
    }

    pub fn not_an_object() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_json",
            "the request body must be a JSON object".into(),
        )
    }

    pub fn missing_model() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "missing_required_parameter",
            "missing required parameter: 'model'".into(),
        )
        .param("model")
    }

    pub fn bad_parameter(param: &'static str, message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_parameter",
            message,
        )
        .param(param)
    }

    pub fn unknown_model(alias: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "model_not_found",
            format!(
                "the model `{alias}` does not exist on this gateway; available: {}",
                known.join(", ")
            ),
        )
        .param("model")
    }

    pub fn wrong_endpoint(alias: &str, kind: &str, path: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "model_not_supported",
            format!("the model `{alias}` is a {kind} model; send it to {path}"),
        )
        .param("model")
    }

    /// OpenAI's answer to a chat request without messages.
    pub fn empty_messages() -> Self {
        Self {
            code: None,
            ..Self::bad_parameter("messages", "[] is too short - 'messages'".into())
        }
    }

    /// The gateway is stopping and cut this request at the end of its grace period.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "server_shutting_down",
            "the gateway is shutting down and could not finish this request in time; send it again"
                .into(),
        )
        .waiting(Duration::from_secs(1))
    }

    /// The limits are the cluster's and the shared store could not be asked, past what
    /// the failure policy lets a replica decide alone.
    pub fn shared_state_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shared_state_unavailable",
            "the gateway could not reach its shared state to check this tenant's limits; send the request again shortly"
                .into(),
        )
        .waiting(Duration::from_secs(1))
    }

    /// The client did not send its whole body in time (a slow-body attack, or a stalled
    /// client).
    pub fn body_timeout(timeout: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            "request_timeout",
            format!(
                "the request body did not arrive within {}",
                crate::config::format_duration(timeout)
            ),
        )
    }

    /// The tenant already has `watching` watchers following streams, its most.
    pub fn too_many_watchers(watching: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "too_many_watchers",
            format!(
                "this tenant already has {watching} watchers following streams, its most (streams.max_watchers_per_tenant); close one first"
            ),
        )
        .waiting(Duration::from_secs(1))
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            "request_too_large",
            format!("the request body is larger than this gateway accepts ({limit} bytes)"),
        )
    }

    pub fn unreadable_body(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "invalid_body",
            format!("the request body could not be read: {detail}"),
        )
    }

    pub fn stream_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "stream_not_found",
            format!("no stream {id} is live or recently finished for this key"),
        )
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "unknown_url",
            format!("invalid URL ({method} {path})"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// A transfer coding other than `chunked` (RFC 9112 §6.1: 501).
    pub fn unsupported_transfer_coding(coding: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            INVALID_REQUEST,
            "unsupported_transfer_encoding",
            format!(
                "transfer coding \"{coding}\" is not supported; send the body with content-length or transfer-encoding: chunked alone"
            ),
        )
    }

    pub fn response_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "response_not_found",
            format!(
                "no response {id} is kept for this key's tenant; responses are kept for six hours"
            ),
        )
    }

    pub fn previous_response_not_found(message: &str) -> Self {
        let mut refusal = Self::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "previous_response_not_found",
            message.to_string(),
        );
        refusal.param = Some("previous_response_id");
        refusal
    }

    /// A batch that could not be created, found or changed.
    pub fn batch(error: super::batches::BatchError) -> Self {
        use super::batches::BatchError;
        match error {
            BatchError::Invalid { param, message } => Self::bad_parameter(param, message),
            BatchError::NotFound(id) => Self::new(
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "batch_not_found",
                format!("no batch {id} for this tenant"),
            ),
            BatchError::Io(reason) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "batch_not_stored",
                format!("the batch could not be stored: {reason}"),
            ),
        }
    }

    /// A flow run that could not start.
    pub fn flow(error: super::flows::FlowError) -> Self {
        use super::flows::FlowError;
        match error {
            FlowError::UnknownFlow { name, known } => Self::new(
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "flow_not_found",
                format!(
                    "no flow is named \"{name}\"; flows: {}",
                    if known.is_empty() {
                        "none configured ([flows] files)".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ),
            FlowError::BadInput(message) => Self::bad_parameter("input", message),
        }
    }

    /// A flow run this tenant does not have.
    pub fn unknown_run(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "run_not_found",
            format!("no flow run {id} for this tenant"),
        )
    }

    /// A file upload, read or deletion that could not be done.
    pub fn file(error: crate::files::FileError) -> Self {
        use crate::files::FileError;
        let (status, kind, code) = match &error {
            FileError::Invalid(_) => (StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_file"),
            FileError::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                "file_too_large",
            ),
            FileError::TenantFull { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                "tenant_files_full",
            ),
            FileError::NotFound(_) => (StatusCode::NOT_FOUND, INVALID_REQUEST, "file_not_found"),
            FileError::Io(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "file_not_stored",
            ),
        };
        let mut refusal = Self::new(status, kind, code, error.to_string());
        if matches!(error, FileError::Invalid(_) | FileError::TooLarge { .. }) {
            refusal.param = Some("file");
        }
        refusal
    }

    /// The instance that stores a response could not be asked about it.
    pub fn upstream_unreachable(instance: &str, reason: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_unreachable",
            format!(
                "instance {instance}, which stores this response, could not be asked: {reason}"
            ),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "the gateway failed while handling this request; it has been logged with the request id"
                .into(),
        )
    }
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        if let AuthError::TooManyFailures { retry_after } = error {
            return Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                error.code(),
                error.to_string(),
            )
            .waiting(retry_after);
        }
        Self::new(
            StatusCode::UNAUTHORIZED,
            INVALID_REQUEST,
            error.code(),
            error.to_string(),
        )
    }
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Limits(refusal) => refusal.into(),
            Refused::Queue { rejection, headers } => {
                let error = match rejection {
                    Rejection::QueueFull {
                        tier,
                        depth,
                        retry_after,
                    } => Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "requests",
                        "queue_full",
                        format!(
                            "the {tier} queue is full ({depth} requests waiting); try again in {}",
                            openai_duration(retry_after)
                        ),
                    )
                    .waiting(retry_after),
                    Rejection::TenantQueueFull {
                        tier,
                        depth,
                        retry_after,
                    } => Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "requests",
                        "tenant_queue_full",
                        format!(
                            "this tenant already has {depth} requests waiting in the {tier} queue, its most; try again in {}",
                            openai_duration(retry_after)
                        ),
                    )
                    .waiting(retry_after),
                    Rejection::Timeout {
                        tier,
                        waited,
                        retry_after,
                    } => Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "requests",
                        "queue_timeout",
                        format!(
                            "no upstream capacity freed up within {} in the {tier} queue; try again in {}",
                            openai_duration(waited),
                            openai_duration(retry_after)
                        ),
                    )
                    .waiting(retry_after),
                    Rejection::Paused => Self::paused("this tenant"),
                    Rejection::UnknownTier(_) => Self::internal(),
                };
                error.with_headers(rate_headers(&headers))
            }
        }
    }
}

impl From<admission::Refusal> for Refusal {
    fn from(refusal: admission::Refusal) -> Self {
        match refusal {
            admission::Refusal::UnknownTenant => AuthError::Invalid.into(),
            admission::Refusal::Paused { tenant } => Self::paused(&tenant),
            admission::Refusal::RateLimited {
                window,
                limit,
                requested,
                retry_after,
                headers,
            } => {
                let (kind, what) = match window {
                    Window::Requests => ("requests", "requests per minute (RPM)"),
                    Window::Tokens => ("tokens", "tokens per minute (TPM)"),
                    Window::Concurrency => ("requests", "concurrent requests"),
                };
                let advice = match retry_after {
                    Some(wait) => format!("try again in {}", openai_duration(wait)),
                    None => "the request is larger than the limit; make it smaller".to_string(),
                };
                let error = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    kind,
                    "rate_limit_exceeded",
                    format!("rate limit reached for {what}: limit {limit}, requested {requested}; {advice}"),
                )
                .with_headers(rate_headers(&headers));
                match retry_after {
                    Some(wait) => error.waiting(wait),
                    None => error.never_retry(),
                }
            }
            admission::Refusal::BudgetSpent {
                tenant,
                period,
                unit,
                limit,
                used,
                renews_in,
                headers,
            } => {
                let amount = |v: f64| {
                    if unit == "USD" {
                        format!("${v:.2}")
                    } else {
                        format!("{v:.0} tokens")
                    }
                };
                Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    "insufficient_quota",
                    format!(
                        "the {} budget of tenant {tenant} is spent ({} used of {}, counting requests in flight); it renews in {}",
                        period.label(),
                        amount(used),
                        amount(limit),
                        openai_duration(renews_in)
                    ),
                )
                .waiting(renews_in)
                .never_retry()
                .with_headers(rate_headers(&headers))
            }
            admission::Refusal::Unleased | admission::Refusal::SharedUnavailable => {
                Self::shared_state_unavailable()
            }
            admission::Refusal::BatchHeld {
                limit,
                value,
                retry_after,
            } => {
                let message = match (limit, retry_after) {
                    (_, None) => format!(
                        "this line alone needs more tokens than the tenant's {limit} ({value}) allows; make it smaller or raise the limit"
                    ),
                    ("batch_concurrency", Some(_)) => format!(
                        "the tenant's batch lines are at batch_concurrency ({value}); the line waits for one to finish"
                    ),
                    (_, Some(wait)) => format!(
                        "the tenant's batch lines have used their {limit} ({value}) for now; the line waits {}",
                        openai_duration(wait)
                    ),
                };
                let error = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "batch_limit_reached",
                    message,
                );
                match retry_after {
                    Some(wait) => error.waiting(wait),
                    None => error.never_retry(),
                }
            }
        }
    }
}

impl From<GatewayError> for Refusal {
    fn from(error: GatewayError) -> Self {
        let status = error.status();
        if let Some(wait) = error.rate_limited_for() {
            return Self::new(
                status,
                "requests",
                "upstream_rate_limited",
                format!(
                    "every upstream that serves this model is rate limiting; try again in {} ({error})",
                    openai_duration(wait)
                ),
            )
            .waiting(wait);
        }
        let code = match status {
            StatusCode::GATEWAY_TIMEOUT => "upstream_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "upstream_unavailable",
            _ => "upstream_error",
        };
        Self::new(status, "server_error", code, error.to_string())
    }
}

/// OpenAI's `x-ratelimit-*` headers for the limits a tenant has.
pub fn rate_headers(limits: &RateHeaders) -> Headers {
    Values::with_capacity(64).rate_headers(limits)
}

/// Header values written in one scratch buffer. An answer carries a dozen numbers and
/// names (limits, remaining, resets, the queue time, where it was served); each is
/// copied out into a value of its own. Cut from one shared buffer instead, every value
/// took an atomic count when cut and again when dropped, which cost more than the
/// small allocations do (a tenth of the samples of a c=50 profile sat on locked
/// instructions).
pub struct Values(String);

impl Values {
    pub fn with_capacity(bytes: usize) -> Values {
        Values(String::with_capacity(bytes))
    }

    pub fn number(&mut self, n: impl itoa::Integer) -> HeaderValue {
        self.0.push_str(itoa::Buffer::new().format(n));
        // Digits are always a header value.
        self.cut().unwrap_or(HeaderValue::from_static(""))
    }

    /// A duration as OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
    pub fn duration(&mut self, d: Duration) -> HeaderValue {
        write_duration(&mut self.0, d);
        // Digits and unit letters are always a header value.
        self.cut().unwrap_or(HeaderValue::from_static(""))
    }

    /// A name the gateway holds (a region, an instance, an id), or none when it cannot
    /// be a header value.
    pub fn text(&mut self, text: &str) -> Option<HeaderValue> {
        self.0.push_str(text);
        self.cut()
    }

    /// OpenAI's `x-ratelimit-*` headers for the limits a tenant has.
    pub fn rate_headers(&mut self, limits: &RateHeaders) -> Headers {
        let mut out = Vec::with_capacity(12);
        if let Some(r) = &limits.requests {
            out.push((headers::LIMIT_REQUESTS, self.number(r.limit)));
            out.push((headers::REMAINING_REQUESTS, self.number(r.remaining)));
            out.push((headers::RESET_REQUESTS, self.duration(r.reset)));
        }
        if let Some(t) = &limits.tokens {
            out.push((headers::LIMIT_TOKENS, self.number(t.limit)));
            out.push((headers::REMAINING_TOKENS, self.number(t.remaining)));
            out.push((headers::RESET_TOKENS, self.duration(t.reset)));
        }
        out
    }

    /// What was written since the last cut, as a value of its own.
    fn cut(&mut self) -> Option<HeaderValue> {
        let value = HeaderValue::from_str(&self.0).ok();
        self.0.clear();
        value
    }
}

/// Durations as OpenAI writes them in headers and messages: `20ms`, `1.5s`, `6m0s`.
pub fn openai_duration(d: Duration) -> String {
    let mut out = String::new();
    write_duration(&mut out, d);
    out
}

/// Written a piece at a time, digits by itoa: an answer carries two of these (the
/// `x-ratelimit-reset-*` headers), and `write!` cost over 400 instructions each.
fn write_duration(out: &mut impl std::fmt::Write, d: Duration) {
    fn put(out: &mut impl std::fmt::Write, n: u128, unit: &str) {
        let _ = out.write_str(itoa::Buffer::new().format(n));
        let _ = out.write_str(unit);
    }
    let ms = d.as_millis();
    if ms < 1000 {
        put(out, ms, "ms");
        return;
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    if hours > 0 {
        put(out, hours, "h");
        put(out, minutes, "m");
    } else if minutes > 0 {
        put(out, minutes, "m");
    }
    let (seconds, millis) = (rest / 1000, rest % 1000);
    if millis == 0 {
        put(out, seconds, "s");
        return;
    }
    put(out, seconds, ".");
    // Three digits, zero-padded, less the zeros they end in: .5, .25, .005.
    let digits = [millis / 100, millis / 10 % 10, millis % 10].map(|d| b'0' + d as u8);
    let len = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    let _ = out.write_str(std::str::from_utf8(&digits[..len]).unwrap_or_default());
    let _ = out.write_str("s");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_the_way_openai_writes_them() {
        assert_eq!(openai_duration(Duration::ZERO), "0ms");
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(999)), "999ms");
        assert_eq!(openai_duration(Duration::from_millis(1_050)), "1.05s");
        assert_eq!(openai_duration(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(openai_duration(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(openai_duration(Duration::from_millis(1_005)), "1.005s");
        assert_eq!(
            openai_duration(Duration::from_millis(7_230_500)),
            "2h0m30.5s"
        );
    }

    #[test]
    fn values_cut_from_one_buffer_are_each_their_own() {
        let mut values = Values::with_capacity(8);
        let first = values.number(1_000_000_u64);
        let reset = values.duration(Duration::from_millis(1_005));
        // Cannot be a header value: refused, and nothing of it reaches the next value.
        assert!(values.text("eu-west\r\nx-injected: 1").is_none());
        let name = values.text("us-east/vllm-1").unwrap();
        let last = values.number(0_u32);
        assert_eq!(first.to_str().unwrap(), "1000000");
        assert_eq!(reset.to_str().unwrap(), "1.005s");
        assert_eq!(name.to_str().unwrap(), "us-east/vllm-1");
        assert_eq!(last.to_str().unwrap(), "0");
        assert_eq!(number_value(1_000_000_u64), first);
    }
}
