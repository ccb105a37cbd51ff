//! Leases: what a replica may spend of a tenant's cluster-wide limits without asking.
//!
//! With shared state, the tenant's RPM and TPM buckets and its budgets live in the
//! shared store; a replica asks for a slice (at least what the request in hand needs,
//! at most that plus `lease` of each limit) and spends it locally, so most admissions
//! stay off the network. What it did not use goes back when the tenant goes quiet.
//! Budgets are held, not taken: a replica's hold covers its requests in flight and
//! what it may still admit, and everyone's spending plus everyone's holds never pass
//! the limit. Spending is reported as absolute totals per replica and period, so a
//! report sent twice (after a lost answer, or after an outage) counts once.
//!
//! This file only does the arithmetic; the round trips are `state`'s.

use std::time::Duration;

use tokio::time::Instant;

use crate::domain::period::PeriodKey;

/// A tenant's lease on this replica.
#[derive(Debug, Clone, Default)]
pub(super) struct Lease {
    /// Requests and tokens granted from the shared buckets, not yet spent. Tokens may
    /// be negative: used beyond what was reserved, owed to the shared bucket.
    pub requests: f64,
    pub tokens: f64,
    /// The budget this replica holds (tokens, USD): in flight, or not yet spent.
    pub held_tokens: f64,
    pub held_usd: f64,
    /// When a request last spent from the lease.
    pub used_at: Option<Instant>,
    /// The shared buckets' levels and everyone's spending, at the last round trip.
    pub cluster: Cluster,
}

/// The whole cluster's view of a tenant, as of the last round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cluster {
    pub requests_left: Option<f64>,
    pub tokens_left: Option<f64>,
    pub day_tokens: u64,
    pub day_usd: f64,
    pub month_tokens: u64,
    pub month_usd: f64,
    /// What this replica had spent then (tokens, USD), in the day and the month.
    pub mine_day: (u64, f64),
    pub mine_month: (u64, f64),
    /// When it was learned (`None`: never).
    pub at: Option<Instant>,
}

/// While the shared store cannot be reached: what this replica may spend alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Fallback {
    pub since: Instant,
    /// What it may have spent (its own spending, in flight included) of each budget:
    /// what it had spent when last told, plus its share of what the cluster had left.
    pub day_tokens: Option<f64>,
    pub day_usd: Option<f64>,
    pub month_tokens: Option<f64>,
    pub month_usd: Option<f64>,
}

/// A round trip's question, for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub tenant: String,
    pub day: PeriodKey,
    pub month: PeriodKey,
    /// Limits per minute (0: none).
    pub rpm: u64,
    pub tpm: u64,
    /// Unused lease given back (negative: debt paid).
    pub requests_back: f64,
    pub tokens_back: f64,
    pub requests: Range,
    pub tokens: Range,
    /// Budgets (`None`: none).
    pub day_tokens: Option<u64>,
    pub day_usd: Option<f64>,
    pub month_tokens: Option<u64>,
    pub month_usd: Option<f64>,
    /// What this replica spent in the periods (absolute).
    pub spent_day: (u64, f64),
    pub spent_month: (u64, f64),
    /// The hold wanted (absolute).
    pub held_tokens: Range,
    pub held_usd: Range,
    /// The hold when the question was asked, so what was spent meanwhile is kept.
    pub held_then: (f64, f64),
}

/// At least `min`, at most `want`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub min: f64,
    pub want: f64,
}

/// A round trip's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Granted, or what refused it.
    pub refused: Option<Shortage>,
    pub requests: f64,
    pub tokens: f64,
    pub held_tokens: f64,
    pub held_usd: f64,
    pub cluster: Cluster,
}

/// Which shared limit had too little.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shortage {
    /// A rate: how long until it has enough (`None`: never, the request is larger).
    Requests(Option<Duration>),
    Tokens(Option<Duration>),
    DayTokens,
    DayUsd,
    MonthTokens,
    MonthUsd,
}

impl Lease {
    /// Takes an answer: grants are added, holds moved by what changed since the ask.
    pub(super) fn take(&mut self, ask: &Ask, answer: &Answer) {
        self.cluster = Cluster {
            mine_day: ask.spent_day,
            mine_month: ask.spent_month,
            ..answer.cluster
        };
        if answer.refused.is_some() {
            return;
        }
        self.requests += answer.requests;
        self.tokens += answer.tokens;
        self.held_tokens = (self.held_tokens + answer.held_tokens - ask.held_then.0).max(0.0);
        self.held_usd = (self.held_usd + answer.held_usd - ask.held_then.1).max(0.0);
    }

    /// Whether nothing spent from it for `quiet`.
    pub(super) fn idle(&self, now: Instant, quiet: Duration) -> bool {
        self.used_at
            .is_none_or(|at| now.saturating_duration_since(at) >= quiet)
    }
}
