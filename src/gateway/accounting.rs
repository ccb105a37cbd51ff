//! Accounting for an admitted request: its `Ticket` (reservation and seat), what a whole
//! answer used, and `StreamAccount`, which watches a relayed stream and settles its
//! ticket with what was produced, however the stream ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::{RateHeaders, Reservation, Usage, estimate};
use crate::audit::Audit;
use crate::domain::records::AuditRecord;
use crate::domain::{ModelKind, TokenizerKind};
use crate::router::InFlight;
use crate::scheduler::Seat;
use crate::streams::live::StreamHandle;
use crate::streams::{Watch, data_payloads};
use crate::telemetry::latency::{Latency, Metric, Recent};
use crate::telemetry::meter::Meter;

/// An admitted request: its reservation and its seat upstream. Settle it with the real
/// usage; dropping it unsettled refunds the reservation.
pub struct Ticket {
    pub(super) reservation: Reservation,
    pub(super) seat: Seat,
    /// Time spent waiting for the seat.
    pub queued: Duration,
}

impl Ticket {
    pub fn headers(&self) -> &RateHeaders {
        self.reservation.headers()
    }

    pub fn prompt_tokens(&self) -> u64 {
        self.reservation.prompt_tokens()
    }

    /// Tokens reserved: the load this request puts on an upstream.
    pub fn tokens(&self) -> u64 {
        self.reservation.tokens()
    }

    /// The tenant's tier when the request was admitted.
    pub fn tier(&self) -> &str {
        self.reservation.tier()
    }

    pub fn settle(self, usage: Usage) {
        let Ticket {
            reservation,
            mut seat,
            ..
        } = self;
        seat.set_actual(usage.total());
        reservation.settle(usage);
        drop(seat);
    }
}

/// Puts what a request used on its audit record.
pub fn audit_usage(record: &mut AuditRecord, usage: Usage) {
    record.prompt_tokens = Some(usage.prompt_tokens);
    record.completion_tokens = Some(usage.completion_tokens);
    record.estimated = Some(usage.estimated);
}

/// A request answered from the cache, or by an identical request in flight: it counts
/// as a request, and its tokens count only when `cache.hits_use_tokens` says so.
pub struct CachedTicket {
    pub(super) reservation: Reservation,
    pub(super) use_tokens: bool,
}

impl CachedTicket {
    pub fn headers(&self) -> &RateHeaders {
        self.reservation.headers()
    }

    /// Charges the answer's usage (or none), keeping the request counted.
    pub fn settle(self, usage: Usage) {
        let charged = if self.use_tokens {
            usage
        } else {
            Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
                estimated: false,
            }
        };
        self.reservation.settle(charged);
    }
}

#[derive(serde::Deserialize)]
struct UsageView {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(serde::Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceView<'a>>,
    usage: Option<UsageView>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow)]
    delta: Option<TextView<'a>>,
    #[serde(borrow)]
    message: Option<TextView<'a>>,
}

#[derive(serde::Deserialize)]
struct TextView<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

/// What a whole answer used: the upstream's `usage`, or else the prompt estimate plus
/// the answer's text counted with the model's tokenizer, marked as estimated.
pub fn usage_of_answer(
    kind: ModelKind,
    body: &[u8],
    ticket: &Ticket,
    tokenizer: TokenizerKind,
) -> Usage {
    let parsed = serde_json::from_slice::<ChunkView<'_>>(body).ok();
    if let Some(usage) = parsed.as_ref().and_then(|p| p.usage.as_ref()) {
        return Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            estimated: false,
        };
    }
    let completion = match kind {
        ModelKind::Embeddings => 0,
        ModelKind::Chat => parsed
            .iter()
            .flat_map(|p| &p.choices)
            .filter_map(|c| c.message.as_ref()?.content.as_deref())
            .map(|text| estimate::count(tokenizer, text))
            .sum(),
    };
    Usage {
        prompt_tokens: ticket.prompt_tokens(),
        completion_tokens: completion,
        estimated: true,
    }
}

/// Accounts a stream as it passes: the upstream's usage chunk when there is one, the
/// content otherwise. When the relay ends, however it ends (done, broken, or the client
/// gone), the ticket is settled with what was produced.
pub struct StreamAccount {
    ticket: Option<Ticket>,
    /// Released before the ticket: a freed seat must find a free slot.
    slot: Option<InFlight>,
    tokenizer: TokenizerKind,
    content: String,
    usage: Option<Usage>,
    live: StreamHandle,
    meter: Arc<Meter>,
    timing: Option<Timing>,
    audit: Option<Audited>,
    /// The error code the relay ended the stream with, if it did.
    ended_with: Option<&'static str>,
}

/// The audit record a stream writes when it ends.
struct Audited {
    audit: Arc<Audit>,
    record: AuditRecord,
    keep_answer: bool,
}

/// Where and since when a stream's latency is recorded.
struct Timing {
    latency: Arc<Latency>,
    recent: Arc<Recent>,
    /// "tenant:NAME" and "instance:NAME".
    recent_names: Vec<String>,
    arrival: Instant,
    scopes: Vec<String>,
    first_token: bool,
}

impl StreamAccount {
    pub fn new(
        ticket: Ticket,
        slot: InFlight,
        tokenizer: TokenizerKind,
        live: StreamHandle,
        meter: Arc<Meter>,
    ) -> StreamAccount {
        StreamAccount {
            ticket: Some(ticket),
            slot: Some(slot),
            tokenizer,
            content: String::new(),
            usage: None,
            live,
            meter,
            timing: None,
            audit: None,
            ended_with: None,
        }
    }

    /// Writes `record` to the audit log when the stream ends, with what it used (and,
    /// with `keep_answer`, its text).
    pub fn audited(
        mut self,
        audit: Arc<Audit>,
        record: Option<AuditRecord>,
        keep_answer: bool,
    ) -> Self {
        self.audit = record.map(|record| Audited {
            audit,
            record,
            keep_answer,
        });
        self
    }

    /// Records time to first token and end to end under `scopes`, from `arrival`.
    pub fn timed(
        mut self,
        latency: Arc<Latency>,
        recent: (Arc<Recent>, Vec<String>),
        arrival: Instant,
        scopes: Vec<String>,
    ) -> Self {
        self.timing = Some(Timing {
            latency,
            recent: recent.0,
            recent_names: recent.1,
            arrival,
            scopes,
            first_token: false,
        });
        self
    }

    fn record(&mut self, metric: Metric) {
        if let Some(t) = &self.timing {
            let scopes: Vec<&str> = t.scopes.iter().map(String::as_str).collect();
            let elapsed = t.arrival.elapsed();
            t.latency.record(metric, &scopes, elapsed);
            if metric == Metric::EndToEnd {
                for name in &t.recent_names {
                    t.recent.record(name, elapsed);
                }
            }
        }
    }
}

impl Watch for StreamAccount {
    fn ended_with(&mut self, code: &'static str) {
        self.ended_with = Some(code);
    }

    fn events(&mut self, events: &[u8]) {
        for data in data_payloads(events) {
            let Ok(chunk) = serde_json::from_slice::<ChunkView<'_>>(data) else {
                continue;
            };
            if let Some(usage) = chunk.usage {
                self.usage = Some(Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    estimated: false,
                });
            }
            for choice in &chunk.choices {
                if let Some(text) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                    self.content.push_str(text);
                    self.live.text(text);
                    if self.timing.as_ref().is_some_and(|t| !t.first_token) {
                        self.record(Metric::Ttft);
                        if let Some(t) = self.timing.as_mut() {
                            t.first_token = true;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for StreamAccount {
    fn drop(&mut self) {
        // The slot goes first: settling frees the seat, and whoever gets it next must
        // find the instance's slot free.
        drop(self.slot.take());
        self.record(Metric::EndToEnd);
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let usage = self.usage.unwrap_or_else(|| Usage {
            prompt_tokens: ticket.prompt_tokens(),
            completion_tokens: estimate::count(self.tokenizer, &self.content),
            estimated: true,
        });
        self.meter.tokens(usage.total());
        let reserved = ticket.tokens();
        ticket.settle(usage);
        if let Some(Audited {
            audit,
            mut record,
            keep_answer,
        }) = self.audit.take()
        {
            record.status = Some(200);
            record.error = self.ended_with.map(str::to_string);
            record.tokens_reserved = Some(reserved);
            audit_usage(&mut record, usage);
            record.latency_ms = self
                .timing
                .as_ref()
                .map(|t| t.arrival.elapsed().as_millis() as u64);
            if keep_answer {
                record.answer = Some(std::mem::take(&mut self.content));
            }
            audit.record(record);
        }
    }
}
