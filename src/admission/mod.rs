//! Per-tenant limits and budgets with reserve, then reconcile.
//!
//! At admission a request reserves its estimated tokens (prompt + capped completion)
//! against requests per minute, tokens per minute, concurrency and every budget at once,
//! all or nothing, under the tenant's lock. When the answer ends the reservation is
//! settled with the real usage: the difference is refunded or charged (buckets may go
//! into debt). A reservation dropped unsettled (the request never reached an upstream)
//! is refunded whole. Refill is lazy, from `tokio::time::Instant`; budgets follow the
//! wall clock's UTC days and months. Nothing here spawns tasks or does I/O.
//!
//! Replicas sharing state (`[state] backend = "valkey"`) spend from leases instead of
//! local buckets and budgets (`lease.rs`); when a lease is short, `reserve` says so
//! (`Refusal::Unleased`) and the caller asks the shared store (`state`), then tries again.

pub mod bpe;
mod bucket;
pub mod estimate;
pub mod lease;
mod period;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

pub use crate::domain::UsageRecord;
pub use crate::domain::period::{PeriodKey, utc_text};
pub use bucket::Bucket;
pub use period::Period;

pub use crate::domain::snapshot::{PeriodView, TenantView};

use crate::clock;
use crate::domain::{DEFAULT_MAX_TOKENS_CAP, Limits, Price, Tenant, Tier};
use crate::telemetry::Map;

/// What a request asks for, as estimated before it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub prompt_tokens: u64,
    /// The request's `max_tokens` / `max_completion_tokens`; `None` reserves the tier cap.
    pub max_tokens: Option<u64>,
    /// Embeddings produce no completion.
    pub completion: bool,
    pub price: Option<Price>,
    /// A batch line: the tenant's batch limits apply too.
    pub batch: bool,
}

pub use crate::domain::Usage;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Requests,
    Tokens,
    Concurrency,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    UnknownTenant,
    Paused {
        tenant: String,
    },
    RateLimited {
        window: Window,
        limit: u64,
        requested: u64,
        /// `None` when waiting cannot help: the request is larger than the limit.
        retry_after: Option<Duration>,
        headers: RateHeaders,
    },
    BudgetSpent {
        tenant: String,
        period: PeriodKey,
        /// "tokens" or "USD".
        unit: &'static str,
        limit: f64,
        used: f64,
        renews_in: Duration,
        headers: Box<RateHeaders>,
    },
    /// With shared state: this replica's lease is too small for the request; ask the
    /// shared store for more (`Admission::ask`), then try again.
    Unleased,
    /// With shared state: the store has been unreachable longer than the grace period,
    /// and the tenant has budgets no replica can check alone.
    SharedUnavailable,
    /// A batch line held back by the tenant's batch limits: it waits, it did not fail.
    BatchHeld {
        /// "batch_concurrency" or "batch_daily_tokens".
        limit: &'static str,
        value: u64,
        /// `None` when waiting cannot help: the line alone is larger than the limit.
        retry_after: Option<Duration>,
    },
}

impl Refusal {
    /// `tenant`'s budget for `period` is spent: (unit, limit, used).
    fn budget_spent(
        tenant: &str,
        period: PeriodKey,
        (unit, limit, used): (&'static str, f64, f64),
        now: SystemTime,
        headers: RateHeaders,
    ) -> Refusal {
        Refusal::BudgetSpent {
            tenant: tenant.to_string(),
            period,
            unit,
            limit,
            used,
            renews_in: period.remaining(now),
            headers: Box::new(headers),
        }
    }
}

/// OpenAI's `x-ratelimit-*` values at the moment of admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateHeaders {
    pub requests: Option<WindowState>,
    pub tokens: Option<WindowState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl From<&Period> for PeriodView {
    fn from(p: &Period) -> Self {
        PeriodView {
            tokens: p.tokens,
            cost_usd: p.cost,
            requests: p.requests,
            reserved_tokens: p.reserved_tokens,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no tenant is named \"{0}\"")]
    UnknownTenant(String),
    #[error("no tier is named \"{0}\"; defined tiers: {1}")]
    UnknownTier(String, String),
    #[error("{0}")]
    BadLimits(String),
}

struct Account {
    tier: String,
    overrides: Limits,
    limits: Limits,
    paused: bool,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: u32,
    day: Period,
    month: Period,
    /// Batch lines running, and the tokens batch lines used (and hold) today.
    batch_in_flight: u32,
    batch_day: Period,
    /// Usage changed since the ledger last took it.
    dirty: bool,
    /// With shared state: what this replica may spend of the cluster's limits, and
    /// whether it spent since it last told the shared store.
    lease: lease::Lease,
    shared_dirty: bool,
    /// While the shared store cannot be reached.
    fallback: Option<lease::Fallback>,
}

impl Account {
    fn roll(&mut self, now: SystemTime) {
        self.day.roll(PeriodKey::day(now));
        self.batch_day.roll(PeriodKey::day(now));
        self.month.roll(PeriodKey::month(now));
    }

    /// Recomputes the limits in force and resizes the buckets, keeping what was used.
    fn apply_limits(&mut self, tier: &Tier, now: Instant) {
        self.limits = tier.limits.overlay(&self.overrides);
        let resize = |bucket: &Option<Bucket>, rate: Option<u64>| match (bucket, rate) {
            (_, None) => None,
            (Some(b), Some(rate)) => Some(b.resized(rate, now)),
            (None, Some(rate)) => Some(Bucket::per_minute(rate, now)),
        };
        self.requests = resize(&self.requests, self.limits.rpm);
        self.tokens = resize(&self.tokens, self.limits.tpm);
    }

    fn headers(&self, shared: bool) -> RateHeaders {
        if shared {
            // The shared bucket as last seen, plus what this replica holds of it.
            let state = |limit: Option<u64>, left: Option<f64>, held: f64| {
                let limit = limit?;
                let remaining = (left.unwrap_or(limit as f64) + held).clamp(0.0, limit as f64);
                Some(WindowState {
                    limit,
                    remaining: remaining as u64,
                    reset: Duration::from_secs_f64(
                        (limit as f64 - remaining) * 60.0 / limit as f64,
                    ),
                })
            };
            let (lease, cluster) = (&self.lease, &self.lease.cluster);
            return RateHeaders {
                requests: state(self.limits.rpm, cluster.requests_left, lease.requests),
                tokens: state(self.limits.tpm, cluster.tokens_left, lease.tokens),
            };
        }
        let state = |b: &Bucket| WindowState {
            limit: b.capacity(),
            remaining: b.available(),
            reset: b.until_full(),
        };
        RateHeaders {
            requests: self.requests.as_ref().map(state),
            tokens: self.tokens.as_ref().map(state),
        }
    }

    /// The tokens and cost a request reserves: its prompt and its capped completion.
    fn demand(&self, demand: &Demand) -> (u64, f64) {
        let cap = self.limits.max_tokens_cap.unwrap_or(DEFAULT_MAX_TOKENS_CAP);
        let completion = match (demand.completion, demand.max_tokens) {
            (false, _) => 0,
            (true, Some(max)) => max.min(cap),
            (true, None) => cap,
        };
        let tokens = demand.prompt_tokens.saturating_add(completion);
        let cost = demand
            .price
            .map(|p| p.cost(demand.prompt_tokens, completion))
            .unwrap_or(0.0);
        (tokens, cost)
    }

    /// A question to the shared store, with this replica's limits and spending.
    fn ask(
        &self,
        tenant: &str,
        requests: lease::Range,
        tokens: lease::Range,
        held_tokens: lease::Range,
        held_usd: lease::Range,
        (requests_back, tokens_back): (f64, f64),
    ) -> lease::Ask {
        lease::Ask {
            tenant: tenant.to_string(),
            day: self.day.key,
            month: self.month.key,
            rpm: self.limits.rpm.unwrap_or(0),
            tpm: self.limits.tpm.unwrap_or(0),
            requests_back,
            tokens_back,
            requests,
            tokens,
            day_tokens: self.limits.daily_tokens,
            day_usd: self.limits.daily_usd,
            month_tokens: self.limits.monthly_tokens,
            month_usd: self.limits.monthly_usd,
            spent_day: (self.day.tokens, self.day.cost),
            spent_month: (self.month.tokens, self.month.cost),
            held_tokens,
            held_usd,
            held_then: (self.lease.held_tokens, self.lease.held_usd),
        }
    }

    /// The cluster's spending: the others' as last told, this replica's as it is now.
    fn cluster_usage(&self) -> crate::domain::snapshot::ClusterUsage {
        let c = &self.lease.cluster;
        let others = |total: u64, mine: u64| total.saturating_sub(mine);
        let others_usd = |total: f64, mine: f64| (total - mine).max(0.0);
        crate::domain::snapshot::ClusterUsage {
            day_tokens: others(c.day_tokens, c.mine_day.0) + self.day.tokens,
            day_usd: others_usd(c.day_usd, c.mine_day.1) + self.day.cost,
            month_tokens: others(c.month_tokens, c.mine_month.0) + self.month.tokens,
            month_usd: others_usd(c.month_usd, c.mine_month.1) + self.month.cost,
        }
    }

    /// Tokens and USD held by this replica's requests in flight.
    fn in_flight_spend(&self) -> (f64, f64) {
        (
            self.day.reserved_tokens.max(self.month.reserved_tokens) as f64,
            self.day.reserved_cost.max(self.month.reserved_cost),
        )
    }

    fn token_budget(&self) -> bool {
        self.limits.daily_tokens.is_some() || self.limits.monthly_tokens.is_some()
    }

    fn usd_budget(&self) -> bool {
        self.limits.daily_usd.is_some() || self.limits.monthly_usd.is_some()
    }
}

/// One tenant's account.
pub struct TenantAccount {
    name: String,
    state: Mutex<Account>,
}

impl TenantAccount {
    fn lock(&self) -> MutexGuard<'_, Account> {
        // A panic elsewhere while holding the lock leaves plain numbers behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every tenant's limits, budgets and usage.
pub struct Admission {
    tiers: Map<String, Tier>,
    tenants: Map<String, Arc<TenantAccount>>,
    /// With shared state: the share of each limit a lease may hold beyond what the
    /// request in hand needs (0: exactly what it needs, a round trip per admission).
    lease: Option<f64>,
    /// How long budgets are enforced alone while the shared store cannot be reached.
    grace: Duration,
}

impl Admission {
    pub fn new(tiers: &[Tier], tenants: &[Tenant]) -> Admission {
        let now = clock::now();
        let wall = clock::wall();
        let tiers: Map<String, Tier> = tiers.iter().map(|t| (t.name.clone(), t.clone())).collect();
        let tenants = tenants
            .iter()
            .map(|t| {
                let mut account = Account {
                    tier: t.tier.clone(),
                    overrides: t.overrides,
                    limits: Limits::default(),
                    paused: false,
                    requests: None,
                    tokens: None,
                    in_flight: 0,
                    day: Period::new(PeriodKey::day(wall)),
                    month: Period::new(PeriodKey::month(wall)),
                    batch_in_flight: 0,
                    batch_day: Period::new(PeriodKey::day(wall)),
                    dirty: false,
                    lease: lease::Lease::default(),
                    shared_dirty: false,
                    fallback: None,
                };
                if let Some(tier) = tiers.get(&t.tier) {
                    account.apply_limits(tier, now);
                }
                let account = Arc::new(TenantAccount {
                    name: t.name.clone(),
                    state: Mutex::new(account),
                });
                (t.name.clone(), account)
            })
            .collect();
        Admission {
            tiers,
            tenants,
            lease: None,
            grace: Duration::ZERO,
        }
    }

    /// Spends from leases of the cluster's limits (`lease` of each limit at most beyond
    /// what a request needs) instead of this replica's own buckets and budgets.
    /// While the store cannot be reached, budgets are enforced alone for `grace`.
    pub fn shared(mut self, lease: f64, grace: Duration) -> Admission {
        self.lease = Some(lease.clamp(0.0, 1.0));
        self.grace = grace;
        self
    }

    /// The shared store cannot be reached: each tenant's rates fall back to this
    /// replica's share of them (`1 / replicas`), starting from its share of what the
    /// cluster had left when last seen; its budgets to what it had spent then plus its
    /// share of what was left, for the grace period, then to refusing.
    pub fn degrade(&self, replicas: u32) {
        let n = f64::from(replicas.max(1));
        let now = clock::now();
        for account in self.tenants.values() {
            let mut a = account.lock();
            if a.fallback.is_some() {
                continue;
            }
            let (lease, cluster, limits) = (&a.lease, a.lease.cluster, a.limits);
            let share = |rate: Option<u64>, left: Option<f64>, held: f64| {
                let rate = rate?;
                let per_replica = (rate as f64 / n).ceil().max(1.0) as u64;
                let left = left.unwrap_or(rate as f64) / n + held.max(0.0);
                Some(Bucket::per_minute(per_replica, now).with_level(left))
            };
            let requests = share(limits.rpm, cluster.requests_left, lease.requests);
            let tokens = share(limits.tpm, cluster.tokens_left, lease.tokens);
            let allowance = |limit: Option<f64>, total: f64, mine: f64| {
                limit.map(|limit| mine + (limit - total).max(0.0) / n)
            };
            let fallback = lease::Fallback {
                since: now,
                day_tokens: allowance(
                    limits.daily_tokens.map(|l| l as f64),
                    cluster.day_tokens as f64,
                    cluster.mine_day.0 as f64,
                ),
                day_usd: allowance(limits.daily_usd, cluster.day_usd, cluster.mine_day.1),
                month_tokens: allowance(
                    limits.monthly_tokens.map(|l| l as f64),
                    cluster.month_tokens as f64,
                    cluster.mine_month.0 as f64,
                ),
                month_usd: allowance(limits.monthly_usd, cluster.month_usd, cluster.mine_month.1),
            };
            a.requests = requests;
            a.tokens = tokens;
            a.fallback = Some(fallback);
        }
    }

    /// The shared store answers again: back to leases. What was spent meanwhile is in
    /// this replica's totals, reported with the next round trip (once: they are
    /// absolute).
    pub fn recover(&self) {
        let now = clock::now();
        for account in self.tenants.values() {
            let mut a = account.lock();
            if a.fallback.take().is_none() {
                continue;
            }
            // What was leased before may have lapsed in the store meanwhile (holds
            // expire; a restarted store has none): start again from nothing.
            let cluster = a.lease.cluster;
            a.lease = lease::Lease {
                cluster,
                ..lease::Lease::default()
            };
            if let Some(tier) = self.tiers.get(&a.tier) {
                a.requests = None;
                a.tokens = None;
                a.apply_limits(tier, now);
            }
            a.shared_dirty = true;
        }
    }

    /// Whether limits are the cluster's, spent from leases.
    pub fn is_shared(&self) -> bool {
        self.lease.is_some()
    }

    fn account(&self, tenant: &str) -> Result<&Arc<TenantAccount>, ControlError> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| ControlError::UnknownTenant(tenant.to_string()))
    }

    /// The tier a tenant is in now.
    pub fn tier_of(&self, tenant: &str) -> Option<String> {
        self.tenants.get(tenant).map(|a| a.lock().tier.clone())
    }

    /// Reserves a request's estimated cost against every limit and budget, or refuses it
    /// without taking anything.
    pub fn reserve(&self, tenant: &str, demand: &Demand) -> Result<Reservation, Refusal> {
        self.reserve_with(tenant, demand, None)
    }

    /// Takes the shared store's answer to `ask` and reserves `demand` from it at once,
    /// so that no other request spends the grant first.
    pub fn reserve_granted(
        &self,
        demand: &Demand,
        ask: &lease::Ask,
        answer: &lease::Answer,
    ) -> Result<Reservation, Refusal> {
        if let Some(refusal) = self.refusal(ask, answer) {
            self.answer(ask, answer);
            return Err(refusal);
        }
        self.reserve_with(&ask.tenant, demand, Some((ask, answer)))
    }

    fn reserve_with(
        &self,
        tenant: &str,
        demand: &Demand,
        granted: Option<(&lease::Ask, &lease::Answer)>,
    ) -> Result<Reservation, Refusal> {
        let account = self.tenants.get(tenant).ok_or(Refusal::UnknownTenant)?;
        let now = clock::now();
        let wall = clock::wall();
        let mut a = account.lock();
        if let Some((ask, answer)) = granted {
            a.lease.take(ask, answer);
        }
        if a.paused {
            return Err(Refusal::Paused {
                tenant: tenant.to_string(),
            });
        }
        a.roll(wall);
        let (tokens, cost) = a.demand(demand);

        let shared = self.lease.is_some() && a.fallback.is_none();
        if let Some(fallback) = a.fallback
            && clock::since(fallback.since) >= self.grace
            && (a.token_budget() || a.usd_budget())
        {
            return Err(Refusal::SharedUnavailable);
        }
        if let Some(b) = a.requests.as_mut() {
            b.refill(now);
        }
        if let Some(b) = a.tokens.as_mut() {
            b.refill(now);
        }
        let headers = a.headers(shared);
        let limited = |window, limit: u64, requested, retry_after| Refusal::RateLimited {
            window,
            limit,
            requested,
            retry_after,
            headers,
        };
        if let Some(max) = a.limits.max_concurrency
            && a.in_flight >= max
        {
            return Err(limited(
                Window::Concurrency,
                u64::from(max),
                1,
                Some(Duration::from_secs(1)),
            ));
        }
        if demand.batch {
            let held = |limit, value, retry_after| Refusal::BatchHeld {
                limit,
                value,
                retry_after,
            };
            if let Some(max) = a.limits.batch_concurrency
                && a.batch_in_flight >= max
            {
                let retry = Some(Duration::from_secs(1));
                return Err(held("batch_concurrency", u64::from(max), retry));
            }
            if let Some(max) = a.limits.batch_daily_tokens {
                let held_now = a.batch_day.tokens + a.batch_day.reserved_tokens;
                if tokens > max {
                    return Err(held("batch_daily_tokens", max, None));
                }
                if held_now + tokens > max {
                    // Lines in flight may give back what they hold; else tomorrow.
                    let retry = if a.batch_day.reserved_tokens > 0 {
                        Duration::from_secs(1)
                    } else {
                        a.batch_day.key.remaining(wall)
                    };
                    return Err(held("batch_daily_tokens", max, Some(retry)));
                }
            }
        }
        if shared {
            let (lease, (reserved_tokens, reserved_cost)) = (&a.lease, a.in_flight_spend());
            let short = (a.limits.rpm.is_some() && lease.requests < 1.0)
                || (a.limits.tpm.is_some() && lease.tokens < tokens as f64)
                || (a.token_budget() && reserved_tokens + tokens as f64 > lease.held_tokens)
                || (a.usd_budget() && reserved_cost + cost > lease.held_usd);
            if short {
                return Err(Refusal::Unleased);
            }
        }
        if !shared
            && let Some(b) = &a.requests
            && !b.has(1)
        {
            return Err(limited(Window::Requests, b.capacity(), 1, b.wait_for(1)));
        }
        if !shared
            && let Some(b) = &a.tokens
            && !b.has(tokens)
        {
            return Err(limited(
                Window::Tokens,
                b.capacity(),
                tokens,
                b.wait_for(tokens),
            ));
        }
        let budgets = [
            (
                a.day.key,
                "tokens",
                a.limits.daily_tokens.map(|l| l as f64),
                &a.day,
                tokens as f64,
            ),
            (
                a.month.key,
                "tokens",
                a.limits.monthly_tokens.map(|l| l as f64),
                &a.month,
                tokens as f64,
            ),
            (a.day.key, "USD", a.limits.daily_usd, &a.day, cost),
            (a.month.key, "USD", a.limits.monthly_usd, &a.month, cost),
        ];
        // Alone, a replica's budgets are its allowance against its own spending.
        let alone = a
            .fallback
            .map(|f| [f.day_tokens, f.month_tokens, f.day_usd, f.month_usd]);
        for (i, (period, unit, limit, usage, wanted)) in budgets.into_iter().enumerate() {
            let limit = match alone {
                Some(allowances) => allowances[i],
                None => limit.filter(|_| !shared),
            };
            let Some(limit) = limit else {
                continue;
            };
            let (used, held) = if unit == "USD" {
                (usage.cost, usage.reserved_cost)
            } else {
                (usage.tokens as f64, usage.reserved_tokens as f64)
            };
            if used + held + wanted > limit {
                let spent = (unit, limit, used);
                return Err(Refusal::budget_spent(tenant, period, spent, wall, headers));
            }
        }

        if shared {
            if a.limits.rpm.is_some() {
                a.lease.requests -= 1.0;
            }
            if a.limits.tpm.is_some() {
                a.lease.tokens -= tokens as f64;
            }
            a.lease.used_at = Some(now);
        } else {
            if let Some(b) = a.requests.as_mut() {
                b.take(1);
            }
            if let Some(b) = a.tokens.as_mut() {
                b.take(tokens);
            }
        }
        a.in_flight += 1;
        if demand.batch {
            a.batch_in_flight += 1;
            a.batch_day.reserved_tokens += tokens;
            a.batch_day.requests += 1;
        }
        for p in {
            let a = &mut *a;
            [&mut a.day, &mut a.month]
        } {
            p.reserved_tokens += tokens;
            p.reserved_cost += cost;
            p.requests += 1;
        }
        a.dirty = true;
        a.shared_dirty = shared;
        let headers = a.headers(shared);
        let tier = a.tier.clone();
        drop(a);
        Ok(Reservation {
            account: account.clone(),
            tier,
            prompt_tokens: demand.prompt_tokens,
            tokens,
            cost,
            price: demand.price,
            day: PeriodKey::day(wall),
            month: PeriodKey::month(wall),
            headers,
            batch: demand.batch,
            shared,
            settled: false,
        })
    }

    /// What to ask the shared store so that `demand` fits this replica's lease: at
    /// least what it lacks, at most that plus the lease share of each limit.
    pub fn ask(&self, tenant: &str, demand: &Demand) -> Option<lease::Ask> {
        let share = self.lease?;
        let account = self.tenants.get(tenant)?;
        let mut a = account.lock();
        a.roll(clock::wall());
        let (tokens, cost) = a.demand(demand);
        let (reserved_tokens, reserved_cost) = a.in_flight_spend();
        let slice = |limit: Option<u64>| limit.map_or(0.0, |l| (l as f64 * share).ceil());
        let lease = &a.lease;
        let range = |lacking: f64, slice: f64| lease::Range {
            min: lacking.max(0.0),
            want: lacking.max(0.0) + slice,
        };
        let requests = match a.limits.rpm {
            Some(rpm) => range(1.0 - lease.requests, slice(Some(rpm))),
            None => lease::Range::default(),
        };
        let tokens_range = match a.limits.tpm {
            Some(tpm) => range(tokens as f64 - lease.tokens, slice(Some(tpm))),
            None => lease::Range::default(),
        };
        let hold = |budgeted: bool, needed: f64, held: f64, slice: f64| {
            if !budgeted {
                return lease::Range::default();
            }
            lease::Range {
                min: needed,
                want: held.max(needed + slice),
            }
        };
        let smallest = |day: Option<u64>, month: Option<u64>| day.into_iter().chain(month).min();
        let usd_slice = a
            .limits
            .daily_usd
            .into_iter()
            .chain(a.limits.monthly_usd)
            .fold(f64::INFINITY, f64::min);
        let held_tokens = hold(
            a.token_budget(),
            reserved_tokens + tokens as f64,
            lease.held_tokens,
            slice(smallest(a.limits.daily_tokens, a.limits.monthly_tokens)),
        );
        let held_usd = hold(
            a.usd_budget(),
            reserved_cost + cost,
            lease.held_usd,
            if usd_slice.is_finite() {
                usd_slice * share
            } else {
                0.0
            },
        );
        Some(a.ask(
            tenant,
            requests,
            tokens_range,
            held_tokens,
            held_usd,
            (0.0, 0.0),
        ))
    }

    /// What to tell the shared store for `tenant` on a routine round trip: what it
    /// spent, its hold renewed (or, when it went quiet, let go of beyond its requests
    /// in flight), its unused rates given back when quiet and what it owes paid.
    /// `None` when there is nothing to say.
    pub fn report(&self, tenant: &str, quiet: Duration) -> Option<lease::Ask> {
        self.lease?;
        let account = self.tenants.get(tenant)?;
        let mut a = account.lock();
        a.roll(clock::wall());
        let idle = a.lease.idle(clock::now(), quiet);
        let lease = &a.lease;
        let owes = lease.tokens < 0.0;
        let holds = lease.held_tokens > 0.0 || lease.held_usd > 0.0;
        let unused = lease.requests > 0.0 || lease.tokens > 0.0;
        if !(a.shared_dirty || owes || holds || (idle && unused)) {
            return None;
        }
        let back = (
            if idle { lease.requests.max(0.0) } else { 0.0 },
            if idle || owes { lease.tokens } else { 0.0 },
        );
        let (reserved_tokens, reserved_cost) = a.in_flight_spend();
        let keep = |held: f64, in_flight: f64| {
            let want = if idle { held.min(in_flight) } else { held };
            lease::Range { min: 0.0, want }
        };
        let held_tokens = keep(lease.held_tokens, reserved_tokens);
        let held_usd = keep(lease.held_usd, reserved_cost);
        let none = lease::Range::default();
        let ask = a.ask(tenant, none, none, held_tokens, held_usd, back);
        // Given back now, so it cannot be spent twice; `unask` restores it when the
        // store could not be told.
        a.lease.requests -= back.0;
        a.lease.tokens -= back.1;
        a.shared_dirty = false;
        Some(ask)
    }

    /// Puts back what `ask` gave back, when the store could not be told.
    pub fn unask(&self, ask: &lease::Ask) {
        if let Some(account) = self.tenants.get(&ask.tenant) {
            let mut a = account.lock();
            a.lease.requests += ask.requests_back;
            a.lease.tokens += ask.tokens_back;
            a.shared_dirty = true;
        }
    }

    /// Takes the shared store's answer to `ask`.
    pub fn answer(&self, ask: &lease::Ask, answer: &lease::Answer) {
        if let Some(account) = self.tenants.get(&ask.tenant) {
            account.lock().lease.take(ask, answer);
        }
    }

    /// The refusal of a request the shared store had too little for.
    pub fn refusal(&self, ask: &lease::Ask, answer: &lease::Answer) -> Option<Refusal> {
        use lease::Shortage;
        let shortage = answer.refused?;
        let account = self.tenants.get(&ask.tenant)?;
        let a = account.lock();
        let headers = a.headers(true);
        let wall = clock::wall();
        let limited = |window, limit: u64, requested: f64, retry_after| Refusal::RateLimited {
            window,
            limit,
            requested: requested as u64,
            retry_after,
            headers,
        };
        let cluster = &answer.cluster;
        let spent = |period, unit, limit, used| {
            Refusal::budget_spent(&ask.tenant, period, (unit, limit, used), wall, headers)
        };
        let tokens = |limit: Option<u64>| limit.unwrap_or(0) as f64;
        let usd = |limit: Option<f64>| limit.unwrap_or(0.0);
        Some(match shortage {
            Shortage::Requests(wait) => limited(Window::Requests, ask.rpm, 1.0, wait),
            Shortage::Tokens(wait) => {
                let requested = ask.tokens.min + a.lease.tokens.max(0.0);
                limited(Window::Tokens, ask.tpm, requested, wait)
            }
            Shortage::DayTokens => spent(
                ask.day,
                "tokens",
                tokens(ask.day_tokens),
                cluster.day_tokens as f64,
            ),
            Shortage::MonthTokens => spent(
                ask.month,
                "tokens",
                tokens(ask.month_tokens),
                cluster.month_tokens as f64,
            ),
            Shortage::DayUsd => spent(ask.day, "USD", usd(ask.day_usd), cluster.day_usd),
            Shortage::MonthUsd => spent(ask.month, "USD", usd(ask.month_usd), cluster.month_usd),
        })
    }

    /// Tenants by name, for routine round trips.
    pub fn tenant_names(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    pub fn view(&self, tenant: &str) -> Result<TenantView, ControlError> {
        let account = self.account(tenant)?;
        let now = clock::now();
        let mut a = account.lock();
        a.roll(clock::wall());
        let available = |b: &mut Option<Bucket>| {
            b.as_mut().map(|b| {
                b.refill(now);
                b.available()
            })
        };
        let requests_available = available(&mut a.requests);
        let tokens_available = available(&mut a.tokens);
        Ok(TenantView {
            name: account.name.clone(),
            tier: a.tier.clone(),
            paused: a.paused,
            limits: a.limits,
            overrides: a.overrides,
            in_flight: a.in_flight,
            requests_available,
            tokens_available,
            day: PeriodView::from(&a.day),
            month: PeriodView::from(&a.month),
            batch_in_flight: a.batch_in_flight,
            batch_day: PeriodView::from(&a.batch_day),
            queued: 0,
            p99_ms: None,
            changed: Vec::new(),
            requests_last_minute: 0,
            tokens_last_minute: 0,
            refused: Vec::new(),
            cluster: self.lease.map(|_| a.cluster_usage()),
        })
    }

    /// Every tenant, by name.
    pub fn views(&self) -> Vec<TenantView> {
        let mut names: Vec<&String> = self.tenants.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.view(n).ok())
            .collect()
    }

    /// Moves a tenant to another tier; its limits follow at once.
    pub fn set_tier(&self, tenant: &str, tier: &str) -> Result<(), ControlError> {
        let Some(new) = self.tiers.get(tier) else {
            let mut known: Vec<&str> = self.tiers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(ControlError::UnknownTier(
                tier.to_string(),
                known.join(", "),
            ));
        };
        let mut a = self.account(tenant)?.lock();
        a.tier = tier.to_string();
        a.apply_limits(new, clock::now());
        Ok(())
    }

    /// Replaces the limits a tenant's overrides set; fields left `None` keep their value.
    pub fn set_limits(&self, tenant: &str, change: &Limits) -> Result<Limits, ControlError> {
        crate::config::check_limits("limits", change)
            .map_err(|e| ControlError::BadLimits(e.to_string()))?;
        let account = self.account(tenant)?;
        let mut a = account.lock();
        a.overrides = a.overrides.overlay(change);
        let tier = self.tiers.get(&a.tier).cloned();
        if let Some(tier) = tier {
            a.apply_limits(&tier, clock::now());
        }
        Ok(a.limits)
    }

    /// Replaces a tenant's overrides of its tier's limits whole (as the cluster's
    /// operators left them), unlike `set_limits`, which changes some.
    pub fn replace_overrides(&self, tenant: &str, overrides: Limits) -> Result<(), ControlError> {
        let account = self.account(tenant)?;
        let mut a = account.lock();
        a.overrides = overrides;
        if let Some(tier) = self.tiers.get(&a.tier).cloned() {
            a.apply_limits(&tier, clock::now());
        }
        Ok(())
    }

    pub fn set_paused(&self, tenant: &str, paused: bool) -> Result<(), ControlError> {
        self.account(tenant)?.lock().paused = paused;
        Ok(())
    }

    /// Forgets what a tenant spent this day and month (in-flight reservations stay).
    pub fn reset_budget(&self, tenant: &str) -> Result<(), ControlError> {
        let mut a = self.account(tenant)?.lock();
        for p in {
            let a = &mut *a;
            [&mut a.day, &mut a.month]
        } {
            p.tokens = 0;
            p.cost = 0.0;
            p.requests = 0;
        }
        a.batch_day.tokens = 0;
        a.batch_day.requests = 0;
        a.dirty = true;
        Ok(())
    }

    /// The usage of tenants that changed since the last call, for the ledger to store.
    pub fn take_dirty(&self) -> Vec<(String, UsageRecord)> {
        let mut out = Vec::new();
        for (name, account) in &self.tenants {
            let mut a = account.lock();
            if !a.dirty {
                continue;
            }
            a.dirty = false;
            for p in [&a.day, &a.month] {
                out.push((
                    name.clone(),
                    UsageRecord {
                        period: p.key,
                        tokens: p.tokens,
                        cost: p.cost,
                        requests: p.requests,
                        batch_tokens: if p.key == a.batch_day.key {
                            a.batch_day.tokens
                        } else {
                            0
                        },
                    },
                ));
            }
        }
        out
    }

    /// Marks every tenant for the next checkpoint (after a failed write).
    pub fn mark_all_dirty(&self) {
        for account in self.tenants.values() {
            account.lock().dirty = true;
        }
    }

    /// Puts stored usage back after a restart; records of other periods are ignored.
    pub fn restore(&self, records: &[(String, UsageRecord)]) {
        let wall = clock::wall();
        for (tenant, record) in records {
            let Some(account) = self.tenants.get(tenant) else {
                continue;
            };
            let mut a = account.lock();
            a.roll(wall);
            for p in {
                let a = &mut *a;
                [&mut a.day, &mut a.month]
            } {
                if p.key == record.period {
                    p.tokens = record.tokens;
                    p.cost = record.cost;
                    p.requests = record.requests;
                }
            }
            if a.batch_day.key == record.period {
                a.batch_day.tokens = record.batch_tokens;
            }
        }
    }
}

/// Held while a request runs; settle it with the real usage, or drop it to refund.
pub struct Reservation {
    account: Arc<TenantAccount>,
    tier: String,
    prompt_tokens: u64,
    tokens: u64,
    cost: f64,
    price: Option<Price>,
    day: PeriodKey,
    month: PeriodKey,
    headers: RateHeaders,
    batch: bool,
    /// Spent from a lease of shared limits.
    shared: bool,
    settled: bool,
}

impl Reservation {
    /// Tokens reserved: the prompt estimate plus the capped completion.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// The completion reserved: the client's `max_tokens` within the tier's cap, or the cap.
    pub fn completion_tokens(&self) -> u64 {
        self.tokens.saturating_sub(self.prompt_tokens)
    }

    pub fn tenant(&self) -> &str {
        &self.account.name
    }

    /// The tenant's tier when the request was admitted.
    pub fn tier(&self) -> &str {
        &self.tier
    }

    pub fn headers(&self) -> &RateHeaders {
        &self.headers
    }

    /// Charges what the request really used, refunding or owing the difference.
    pub fn settle(mut self, usage: Usage) {
        self.finish(Some(usage));
    }

    fn finish(&mut self, usage: Option<Usage>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut a = self.account.lock();
        a.in_flight = a.in_flight.saturating_sub(1);
        a.roll(clock::wall());
        let (tokens, cost) = match usage {
            Some(u) => (
                u.total(),
                self.price
                    .map(|p| p.cost(u.prompt_tokens, u.completion_tokens))
                    .unwrap_or(0.0),
            ),
            None => (0, 0.0),
        };
        if self.shared {
            let a = &mut *a;
            let lease = &mut a.lease;
            if a.limits.tpm.is_some() {
                lease.tokens += self.tokens as f64 - tokens as f64;
            }
            // What was spent leaves the hold: everyone's spending plus holds stay put.
            lease.held_tokens = (lease.held_tokens - tokens as f64).max(0.0);
            lease.held_usd = (lease.held_usd - cost.max(0.0)).max(0.0);
        } else if let Some(bucket) = a.tokens.as_mut() {
            bucket.give(self.tokens);
            bucket.take(tokens);
        }
        if self.batch {
            a.batch_in_flight = a.batch_in_flight.saturating_sub(1);
            let batch = &mut a.batch_day;
            if batch.key == self.day {
                batch.reserved_tokens = batch.reserved_tokens.saturating_sub(self.tokens);
                if usage.is_none() {
                    batch.requests = batch.requests.saturating_sub(1);
                }
            }
            batch.tokens = batch.tokens.saturating_add(tokens);
        }
        for (period, key) in {
            let a = &mut *a;
            [(&mut a.day, self.day), (&mut a.month, self.month)]
        } {
            if period.key == key {
                period.reserved_tokens = period.reserved_tokens.saturating_sub(self.tokens);
                period.reserved_cost = (period.reserved_cost - self.cost).max(0.0);
                if usage.is_none() {
                    period.requests = period.requests.saturating_sub(1);
                }
            }
            period.tokens = period.tokens.saturating_add(tokens);
            if cost.is_finite() {
                period.cost += cost;
            }
        }
        a.dirty = true;
        a.shared_dirty |= self.shared;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(limits: Limits) -> Tier {
        Tier {
            name: "pro".into(),
            share: 10,
            max_queue: 10,
            max_queue_per_tenant: 10,
            max_wait: Duration::from_secs(1),
            limits,
        }
    }

    fn admission(limits: Limits) -> Admission {
        let tenant = Tenant {
            name: "acme".into(),
            tier: "pro".into(),
            keys: vec![],
            overrides: Limits::default(),
            regions: None,
            audit_content: false,
        };
        Admission::new(&[tier(limits)], &[tenant])
    }

    fn demand(prompt: u64, max: u64) -> Demand {
        Demand {
            prompt_tokens: prompt,
            max_tokens: Some(max),
            completion: true,
            price: None,
            batch: false,
        }
    }

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated: false,
        }
    }

    /// What a shared store would answer: everything asked for.
    fn granted(ask: &lease::Ask) -> lease::Answer {
        lease::Answer {
            refused: None,
            requests: ask.requests.want,
            tokens: ask.tokens.want,
            held_tokens: ask.held_tokens.want,
            held_usd: ask.held_usd.want,
            cluster: lease::Cluster::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_tenant_spends_from_its_lease_and_reports_what_it_spent() {
        let admission = admission(Limits {
            rpm: Some(100),
            tpm: Some(10_000),
            daily_tokens: Some(1_000),
            ..Limits::default()
        })
        .shared(0.05, Duration::from_secs(60));
        // Nothing leased yet: ask for the request and a twentieth of each limit more.
        assert_eq!(
            admission.reserve("acme", &demand(10, 20)).err(),
            Some(Refusal::Unleased)
        );
        let ask = admission.ask("acme", &demand(10, 20)).unwrap();
        assert_eq!((ask.requests.min, ask.requests.want), (1.0, 6.0));
        assert_eq!((ask.tokens.min, ask.tokens.want), (30.0, 530.0));
        assert_eq!((ask.held_tokens.min, ask.held_tokens.want), (30.0, 80.0));
        let held = admission
            .reserve_granted(&demand(10, 20), &ask, &granted(&ask))
            .unwrap();
        // The next one spends from the lease, with no round trip; the hold (80 tokens)
        // covers both in flight (60), not a third.
        let second = admission.reserve("acme", &demand(10, 20)).unwrap();
        assert_eq!(
            admission.reserve("acme", &demand(10, 20)).err(),
            Some(Refusal::Unleased)
        );
        held.settle(usage(10, 5));
        second.settle(usage(10, 5));
        // Spent 30 of its 80 held: 50 left to hold; the spending is reported whole.
        let report = admission.report("acme", Duration::from_secs(1)).unwrap();
        assert_eq!(report.spent_day.0, 30);
        assert_eq!(report.held_tokens.want, 50.0);
        assert_eq!((report.requests_back, report.tokens_back), (0.0, 0.0));
        admission.answer(&report, &granted(&report));
        // Quiet for a second: unused rates go back, the hold shrinks to what is in flight.
        tokio::time::advance(Duration::from_secs(1)).await;
        let quiet = admission.report("acme", Duration::from_secs(1)).unwrap();
        assert_eq!(quiet.requests_back, 4.0);
        assert_eq!(quiet.tokens_back, 530.0 - 30.0, "530 leased, 30 used");
        assert_eq!(quiet.held_tokens.want, 0.0);
        admission.answer(&quiet, &granted(&quiet));
        assert!(admission.report("acme", Duration::from_secs(1)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn alone_a_replica_spends_its_share_of_what_was_left_then_refuses() {
        let admission = admission(Limits {
            daily_tokens: Some(1_000),
            ..Limits::default()
        })
        .shared(0.0, Duration::from_secs(60));
        // Last seen: the cluster had spent 400 of the day's 1,000 tokens.
        let ask = admission.ask("acme", &demand(10, 20)).unwrap();
        let mut answer = granted(&ask);
        answer.cluster.day_tokens = 400;
        admission
            .reserve_granted(&demand(10, 20), &ask, &answer)
            .unwrap()
            .settle(usage(10, 20));
        // Two replicas alive: this one (none of the 400 its own when last seen) may
        // spend half of the 600 left, 300, of which the request above spent 30.
        admission.degrade(2);
        let mut admitted = 0;
        while let Ok(held) = admission.reserve("acme", &demand(10, 20)) {
            held.settle(usage(10, 20));
            admitted += 1;
        }
        assert_eq!(admitted, 9, "270 tokens at 30 a request");
        assert!(matches!(
            admission.reserve("acme", &demand(10, 20)),
            Err(Refusal::BudgetSpent { .. })
        ));
        // Past the grace period, a budget no one can check refuses everything.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            admission.reserve("acme", &demand(1, 1)).err(),
            Some(Refusal::SharedUnavailable)
        );
        // The store is back: leases again, and the spending of the outage is reported.
        admission.recover();
        assert_eq!(
            admission.reserve("acme", &demand(1, 1)).err(),
            Some(Refusal::Unleased)
        );
        let report = admission.report("acme", Duration::from_secs(1)).unwrap();
        assert_eq!(report.spent_day.0, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_refill_over_the_window() {
        let admission = admission(Limits {
            rpm: Some(2),
            ..Limits::default()
        });
        admission
            .reserve("acme", &demand(1, 1))
            .unwrap()
            .settle(usage(1, 1));
        admission
            .reserve("acme", &demand(1, 1))
            .unwrap()
            .settle(usage(1, 1));
        let Err(Refusal::RateLimited {
            window,
            retry_after,
            ..
        }) = admission.reserve("acme", &demand(1, 1))
        else {
            panic!("the third request in a minute is refused");
        };
        assert_eq!(window, Window::Requests);
        assert_eq!(retry_after, Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(admission.reserve("acme", &demand(1, 1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reserved_then_refunded_to_what_was_used() {
        let admission = admission(Limits {
            tpm: Some(1000),
            ..Limits::default()
        });
        let held = admission.reserve("acme", &demand(100, 800)).unwrap();
        assert_eq!(held.tokens(), 900);
        assert!(
            admission.reserve("acme", &demand(100, 100)).is_err(),
            "900 of 1000 are held"
        );
        held.settle(usage(100, 50));
        assert_eq!(admission.view("acme").unwrap().tokens_available, Some(850));
        let view = admission.view("acme").unwrap();
        assert_eq!(view.day.tokens, 150);
        assert_eq!(view.day.reserved_tokens, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_beyond_the_reservation_becomes_debt() {
        let admission = admission(Limits {
            tpm: Some(600),
            max_tokens_cap: Some(100),
            ..Limits::default()
        });
        let held = admission.reserve("acme", &demand(10, 5000)).unwrap();
        assert_eq!(held.tokens(), 110, "max_tokens is capped by the tier");
        held.settle(usage(10, 700));
        assert_eq!(admission.view("acme").unwrap().tokens_available, Some(0));
        let Err(Refusal::RateLimited { retry_after, .. }) =
            admission.reserve("acme", &demand(10, 10))
        else {
            panic!("in debt");
        };
        // 110 owed plus the 20 asked for, at 10 tokens a second.
        assert_eq!(retry_after, Some(Duration::from_secs(13)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_reservation_refunds_everything_but_the_request() {
        let admission = admission(Limits {
            tpm: Some(1000),
            rpm: Some(10),
            ..Limits::default()
        });
        drop(admission.reserve("acme", &demand(100, 100)).unwrap());
        let view = admission.view("acme").unwrap();
        assert_eq!(view.tokens_available, Some(1000));
        assert_eq!(view.requests_available, Some(9));
        assert_eq!(view.in_flight, 0);
        assert_eq!(view.day.tokens, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_takes_nothing_from_the_other_limits() {
        let admission = admission(Limits {
            rpm: Some(10),
            daily_tokens: Some(100),
            ..Limits::default()
        });
        let refused = admission.reserve("acme", &demand(50, 100));
        assert!(matches!(refused, Err(Refusal::BudgetSpent { .. })));
        assert_eq!(admission.view("acme").unwrap().requests_available, Some(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_token_limit_is_hopeless() {
        let admission = admission(Limits {
            tpm: Some(100),
            ..Limits::default()
        });
        let Err(Refusal::RateLimited { retry_after, .. }) =
            admission.reserve("acme", &demand(50, 100))
        else {
            panic!("refused");
        };
        assert_eq!(retry_after, None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_and_pause_and_tier_changes_apply_at_once() {
        let admission = admission(Limits {
            max_concurrency: Some(1),
            ..Limits::default()
        });
        let first = admission.reserve("acme", &demand(1, 1)).unwrap();
        assert!(matches!(
            admission.reserve("acme", &demand(1, 1)),
            Err(Refusal::RateLimited {
                window: Window::Concurrency,
                ..
            })
        ));
        drop(first);
        admission.set_paused("acme", true).unwrap();
        assert!(matches!(
            admission.reserve("acme", &demand(1, 1)),
            Err(Refusal::Paused { .. })
        ));
        admission.set_paused("acme", false).unwrap();
        admission
            .set_limits(
                "acme",
                &Limits {
                    rpm: Some(1),
                    ..Limits::default()
                },
            )
            .unwrap();
        assert!(admission.reserve("acme", &demand(1, 1)).is_ok());
        assert!(admission.reserve("acme", &demand(1, 1)).is_err());
        assert!(matches!(
            admission.set_tier("acme", "gold"),
            Err(ControlError::UnknownTier(..))
        ));
    }

    fn line(prompt: u64, max: u64) -> Demand {
        Demand {
            batch: true,
            ..demand(prompt, max)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batch_lines_are_held_by_the_batch_limits_and_live_requests_are_not() {
        let admission = admission(Limits {
            batch_concurrency: Some(2),
            batch_daily_tokens: Some(1_000),
            ..Limits::default()
        });
        let first = admission.reserve("acme", &line(100, 100)).unwrap();
        let second = admission.reserve("acme", &line(100, 100)).unwrap();
        let Err(Refusal::BatchHeld {
            limit, retry_after, ..
        }) = admission.reserve("acme", &line(100, 100))
        else {
            panic!("a third line ran beside two at batch_concurrency 2");
        };
        assert_eq!(limit, "batch_concurrency");
        assert_eq!(retry_after, Some(Duration::from_secs(1)));
        let live = admission.reserve("acme", &demand(100, 100));
        assert!(live.is_ok(), "live requests are not batch lines");
        drop(live);
        // An operator raises it; then 200 used of 1,000 and 400 held: a line of 200
        // fits, one of 500 waits for the lines in flight, and once they settled, tomorrow.
        let raised = Limits {
            batch_concurrency: Some(10),
            ..Limits::default()
        };
        admission.set_limits("acme", &raised).unwrap();
        first.settle(usage(100, 100));
        let third = admission.reserve("acme", &line(100, 100)).unwrap();
        let Err(Refusal::BatchHeld {
            limit, retry_after, ..
        }) = admission.reserve("acme", &line(400, 100))
        else {
            panic!("batch_daily_tokens overspent");
        };
        assert_eq!(limit, "batch_daily_tokens");
        assert_eq!(retry_after, Some(Duration::from_secs(1)));
        second.settle(usage(100, 100));
        third.settle(usage(300, 100));
        let view = admission.view("acme").unwrap();
        assert_eq!((view.batch_in_flight, view.batch_day.tokens), (0, 800));
        assert_eq!(
            view.day.tokens, 800,
            "batch tokens count as the tenant's too"
        );
        let Err(Refusal::BatchHeld { retry_after, .. }) =
            admission.reserve("acme", &line(100, 150))
        else {
            panic!("batch_daily_tokens overspent");
        };
        let renews = retry_after.unwrap();
        assert!(renews > Duration::from_secs(1) && renews <= Duration::from_secs(86_400));
        // A line larger than the whole day's allowance can never run.
        let Err(Refusal::BatchHeld { retry_after, .. }) =
            admission.reserve("acme", &line(900, 200))
        else {
            panic!("a hopeless line was not refused");
        };
        assert_eq!(retry_after, None);
        // The day's batch tokens are kept with the usage records, and come back.
        let records = admission.take_dirty();
        let again = super::tests::admission(Limits::default());
        again.restore(&records);
        assert_eq!(again.view("acme").unwrap().batch_day.tokens, 800);
    }

    #[tokio::test(start_paused = true)]
    async fn cost_budgets_use_the_model_price() {
        let admission = admission(Limits {
            daily_usd: Some(1.0),
            ..Limits::default()
        });
        let price = Some(Price {
            input_per_mtok: 1_000.0,
            output_per_mtok: 10_000.0,
        });
        let mut ask = demand(100, 50);
        ask.price = price;
        // 100 × $0.001 + 50 × $0.01 = $0.60 reserved.
        let held = admission.reserve("acme", &ask).unwrap();
        assert!(admission.reserve("acme", &ask).is_err(), "$1.20 > $1");
        held.settle(usage(100, 10));
        // $0.20 spent; $0.60 more fits.
        assert!(admission.reserve("acme", &ask).is_ok());
    }
}
