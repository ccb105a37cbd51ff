//! Accounting for an admitted request: its `Ticket` (reservation and seat), what a whole
//! answer used, and `StreamAccount`, which watches a relayed stream and settles its
//! ticket with what was produced, however the stream ends.

use std::sync::Arc;
use std::time::Duration;

use super::record::Recorder;
use crate::admission::{RateHeaders, Reservation, Usage, estimate};
use crate::domain::{ModelKind, TokenizerKind};
use crate::router::{InFlight, Outcome, Router};
use crate::scheduler::Seat;
use crate::streams::hub::ChunkLog;
use crate::streams::{Chunk, Cut, SseEvent, Watch};

/// Usage beyond this many times the reservation, plus the slack, is not believed. Prompt
/// estimates miss images and tool schemas, hence the room.
const PLAUSIBLE_FACTOR: u64 = 8;
const PLAUSIBLE_SLACK: u64 = 16_384;
/// No request is charged more than this, whatever was reported (a shared answer has no
/// reservation of its own to compare with).
const MAX_REQUEST_TOKENS: u64 = 10_000_000;

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

    /// The completion reserved, which is also the limit sent upstream.
    pub fn completion_tokens(&self) -> u64 {
        self.reservation.completion_tokens()
    }

    /// `usage` within what is plausible for this request: the upstream's numbers are
    /// input like any other. Returns the usage to charge, and whether it was capped.
    pub fn plausible(&self, usage: Usage) -> (Usage, bool) {
        let prompt = self
            .prompt_tokens()
            .saturating_mul(PLAUSIBLE_FACTOR)
            .saturating_add(PLAUSIBLE_SLACK);
        let completion = self
            .completion_tokens()
            .saturating_mul(PLAUSIBLE_FACTOR)
            .saturating_add(PLAUSIBLE_SLACK);
        let capped = Usage {
            prompt_tokens: usage.prompt_tokens.min(prompt),
            completion_tokens: usage.completion_tokens.min(completion),
            estimated: usage.estimated,
        };
        if capped != usage {
            tracing::warn!(
                reported_prompt = usage.prompt_tokens,
                reported_completion = usage.completion_tokens,
                reserved = self.tokens(),
                charged = capped.total(),
                "the upstream reported implausible usage; charging the plausible most"
            );
        }
        (capped, capped != usage)
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
            Usage {
                prompt_tokens: usage.prompt_tokens.min(MAX_REQUEST_TOKENS),
                completion_tokens: usage.completion_tokens.min(MAX_REQUEST_TOKENS),
                estimated: usage.estimated,
            }
        } else {
            Usage::default()
        };
        self.reservation.settle(charged);
    }
}

/// What a whole answer used: the upstream's `usage`, or else the prompt estimate plus
/// the answer's text counted with the model's tokenizer, marked as estimated.
pub(super) fn usage_of_answer(
    kind: ModelKind,
    body: &[u8],
    ticket: &Ticket,
    tokenizer: TokenizerKind,
) -> Usage {
    let text = std::str::from_utf8(body).unwrap_or_default();
    if let Some(usage) = crate::streams::usage_in(text) {
        return usage;
    }
    let parsed = Chunk::parse(text);
    let completion = match kind {
        ModelKind::Embeddings => 0,
        ModelKind::Chat | ModelKind::Completions | ModelKind::Responses | ModelKind::Messages => {
            parsed
                .iter()
                .flat_map(Chunk::texts)
                .map(|text| estimate::count(tokenizer, &text))
                .sum()
        }
    };
    Usage {
        prompt_tokens: ticket.prompt_tokens(),
        completion_tokens: completion,
        estimated: true,
    }
}

/// Accounts a stream as it passes: the upstream's usage chunk when there is one, the
/// content otherwise. When the relay ends, however it ends (done, broken, stalled, cut,
/// or the client gone), the ticket is settled with what was produced and the request
/// recorded; an upstream that broke or stalled is charged a failure.
pub(super) struct StreamAccount {
    pub ticket: Option<Ticket>,
    /// Released before the ticket: a freed seat must find a free slot.
    pub slot: Option<InFlight>,
    pub router: Arc<Router>,
    pub tokenizer: TokenizerKind,
    pub log: Arc<ChunkLog>,
    pub recorder: Recorder,
    pub content: String,
    pub usage: Option<Usage>,
    /// Completion tokens seen so far, by the model's tokenizer.
    pub completion: u64,
    /// The error code the relay ended the stream with, if it did.
    pub ended_with: Option<&'static str>,
}

/// Tokenizers differ: a stream is cut only this far past its limit.
fn limit_with_slack(limit: u64) -> u64 {
    limit.saturating_add(limit / 4).saturating_add(16)
}

impl Watch for StreamAccount {
    fn ended_with(&mut self, code: &'static str) {
        self.ended_with = Some(code);
    }

    fn event(&mut self, _: &SseEvent, chunk: Option<&Chunk<'_>>) -> Option<Cut> {
        let chunk = chunk?;
        if let Some(usage) = chunk.usage() {
            // Counts only grow: a Messages stream tells its input at the start and its
            // output at the end, and some servers repeat usage on every chunk.
            self.usage = Some(match self.usage {
                Some(seen) => Usage {
                    prompt_tokens: seen.prompt_tokens.max(usage.prompt_tokens),
                    completion_tokens: seen.completion_tokens.max(usage.completion_tokens),
                    estimated: false,
                },
                None => usage,
            });
        }
        let allowed = self
            .ticket
            .as_ref()
            .map_or(u64::MAX, |t| limit_with_slack(t.completion_tokens()));
        for text in chunk.texts() {
            let text = &*text;
            self.content.push_str(text);
            self.log.text(text);
            self.recorder.first_token();
            self.completion = match self.tokenizer {
                // A delta is at least one token; the heuristic counts characters, which
                // would overcount short deltas and cut honest streams.
                TokenizerKind::Heuristic => self.completion + u64::from(!text.is_empty()),
                // A token is at least a byte: while the text is within the limit in bytes
                // it cannot be over it in tokens, and nothing needs counting. Past that,
                // the BPE count (once for what came before, then per delta).
                _ if (self.content.len() as u64) <= allowed => 0,
                bpe if self.completion == 0 => estimate::count(bpe, &self.content),
                bpe => self.completion.saturating_add(estimate::count(bpe, text)),
            };
        }
        let limit = self.ticket.as_ref()?.completion_tokens();
        (self.completion > limit_with_slack(limit)).then(|| Cut {
            code: "completion_limit_exceeded",
            message: format!(
                "the upstream went past the {limit}-token completion limit this request reserved; the answer is cut there"
            ),
        })
    }
}

impl Drop for StreamAccount {
    fn drop(&mut self) {
        if let (Some(slot), Some("upstream_stream_error" | "upstream_stream_stalled")) =
            (&self.slot, self.ended_with)
        {
            self.router.report(slot.instance(), Outcome::Failure, None);
        }
        // The slot goes first: settling frees the seat, and whoever gets it next must
        // find the instance's slot free.
        drop(self.slot.take());
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let reported = self.usage.unwrap_or_else(|| Usage {
            prompt_tokens: ticket.prompt_tokens(),
            completion_tokens: estimate::count(self.tokenizer, &self.content),
            estimated: true,
        });
        let (usage, capped) = ticket.plausible(reported);
        let queued = ticket.queued;
        ticket.settle(usage);
        self.recorder.used(usage, capped);
        self.recorder.answered(queued, None);
        if self.recorder.keeps_content() {
            let answer = std::mem::take(&mut self.content);
            self.recorder.note(|r| r.answer = Some(answer));
        }
        self.recorder.finish(200, self.ended_with);
    }
}
