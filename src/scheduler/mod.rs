//! A small API Priority and Fairness: who goes upstream next when seats run short.
//!
//! Tiers are priority levels, each with a share of the seats (the requests upstream at
//! once). A level below its share takes the next free seat first; seats a level does not
//! use are lent to the others, in priority order (largest share first). Inside a level,
//! tenants are flows, fair-queued by estimated tokens: each request gets a virtual finish
//! tag (start-time fair queuing), the smallest goes first, and a flow's tags are corrected
//! once a request's real usage is known. Queues are bounded in depth and in wait; a waiter
//! whose client left removes itself at once. Nothing here does I/O; the lock is held only
//! for plain bookkeeping.
//!
//! Below every tier is the batch level (`BATCH`): no seats of its own, it only borrows
//! seats live traffic has not needed lately. It leaves free the most seats live requests
//! held or waited for at once over the last second or two (`Peak`), and a few more
//! (`batch_reserve`), so a live request arriving between two others finds a seat free:
//! live traffic goes first, batch lines soak up what is idle, and a batch holds back
//! while live load fills every seat even for a moment. Batch waiters look again every
//! `PEAK_WINDOW`, so a batch resumes once live load leaves. It is shown once used.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::clock;
use crate::domain::Tier;
pub use crate::domain::snapshot::LevelView;
use crate::telemetry::Map;

/// The level batch lines wait in, below every tier; a tier may not be called this.
pub const BATCH: &str = "batch";

/// How long a batch line may wait for an idle seat, and how many may wait at once.
const BATCH_MAX_WAIT: Duration = Duration::from_secs(3600);
const BATCH_MAX_QUEUE: usize = 100_000;
/// How long a moment of live demand keeps its seats from batch lines: one to two windows.
const PEAK_WINDOW: Duration = Duration::from_secs(1);

/// Why a request got no seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The level's queue is at `max_queue`.
    QueueFull {
        tier: String,
        depth: usize,
        retry_after: Duration,
    },
    /// The tenant has `max_queue_per_tenant` requests waiting in the level already.
    TenantQueueFull {
        tier: String,
        depth: usize,
        retry_after: Duration,
    },
    /// The request waited `max_wait` without a seat.
    Timeout {
        tier: String,
        waited: Duration,
        retry_after: Duration,
    },
    /// An operator paused the tenant while it waited.
    Paused,
    UnknownTier(String),
}

/// A seat upstream; dropping it frees the seat for the next waiter.
pub struct Seat {
    scheduler: Arc<Scheduler>,
    level: usize,
    tenant: String,
    estimate: u64,
    actual: Option<u64>,
}

impl Seat {
    /// Corrects the tenant's fair-queuing tags with what the request really cost.
    pub fn set_actual(&mut self, tokens: u64) {
        self.actual = Some(tokens);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let refused = self
            .scheduler
            .release(self.level, &self.tenant, self.estimate, self.actual);
        drop(refused);
    }
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seat")
            .field("level", &self.level)
            .field("tenant", &self.tenant)
            .finish()
    }
}

type Grant = Result<Seat, Rejection>;

struct Waiter {
    id: u64,
    tenant: String,
    cost: u64,
    enqueued: Instant,
    grant: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct Flow {
    /// Finish tag of the flow's latest request.
    last_finish: u128,
    /// The flow's requests waiting now.
    queued: usize,
}

struct Level {
    tier: String,
    share: u32,
    /// Seats this level is entitled to.
    nominal: u32,
    in_use: u32,
    max_queue: usize,
    max_queue_per_tenant: usize,
    max_wait: Duration,
    queue: BTreeMap<(u128, u64), Waiter>,
    flows: Map<String, Flow>,
    /// Virtual time: the finish tag of the request dispatched last.
    vtime: u128,
    /// Smoothed time between dispatches, for honest `Retry-After`s.
    interval: Option<Duration>,
    last_dispatch: Option<Instant>,
    dispatched: u64,
}

impl Level {
    /// `change` on the tenant's flow, made on its first request (its name copied only
    /// then).
    fn with_flow<T>(&mut self, tenant: &str, change: impl FnOnce(&mut Flow) -> T) -> T {
        match self.flows.get_mut(tenant) {
            Some(flow) => change(flow),
            None => change(self.flows.entry(tenant.to_string()).or_default()),
        }
    }

    /// A request of this level leaves for a seat, after waiting or not: its tag moves the
    /// level's virtual time, and the pace of dispatches is followed.
    fn dispatched(&mut self, tag: u128, now: Instant) {
        self.vtime = self.vtime.max(tag);
        self.in_use += 1;
        self.dispatched += 1;
        if let Some(last) = self.last_dispatch {
            let gap = now.saturating_duration_since(last);
            self.interval = Some(match self.interval {
                Some(i) => i.mul_f64(0.8) + gap.mul_f64(0.2),
                None => gap,
            });
        }
        self.last_dispatch = Some(now);
    }

    /// A waiter of `tenant` left the queue (granted, gone, timed out).
    fn left_queue(&mut self, tenant: &str) {
        if let Some(flow) = self.flows.get_mut(tenant) {
            flow.queued = flow.queued.saturating_sub(1);
        }
    }

    fn tag(&mut self, tenant: &str, cost: u64) -> u128 {
        let vtime = self.vtime;
        self.with_flow(tenant, |flow| {
            let finish = flow.last_finish.max(vtime) + u128::from(cost.max(1));
            flow.last_finish = finish;
            finish
        })
    }

    /// How long a request joining the back of the queue can expect to wait.
    fn expected_wait(&self) -> Duration {
        match self.interval {
            Some(interval) => interval.saturating_mul(self.queue.len() as u32 + 1).clamp(
                Duration::from_secs(1),
                self.max_wait.max(Duration::from_secs(1)),
            ),
            None => self.max_wait.max(Duration::from_secs(1)),
        }
    }
}

struct State {
    seats: u32,
    in_use: u32,
    /// In priority order: largest share first.
    levels: Vec<Level>,
    /// Where each queued request is: level and queue key.
    queued: Map<u64, (usize, (u128, u64))>,
    next_id: u64,
    /// The most seats live requests held or waited for at once, lately.
    live_peak: Peak,
}

/// The largest value seen over the current window and the one before it.
struct Peak {
    since: Instant,
    current: u32,
    previous: u32,
}

impl Peak {
    fn note(&mut self, value: u32, now: Instant) -> u32 {
        let age = now.saturating_duration_since(self.since);
        if age >= PEAK_WINDOW {
            self.previous = if age < 2 * PEAK_WINDOW {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.since = now;
        }
        self.current = self.current.max(value);
        self.current.max(self.previous)
    }
}

pub struct Scheduler {
    state: Mutex<State>,
}

impl Scheduler {
    pub fn new(seats: u32, tiers: &[Tier]) -> Arc<Scheduler> {
        let seats = seats.max(1);
        let mut tiers: Vec<&Tier> = tiers.iter().collect();
        tiers.sort_by(|a, b| b.share.cmp(&a.share).then_with(|| a.name.cmp(&b.name)));
        let total_share: u64 = tiers.iter().map(|t| u64::from(t.share)).sum::<u64>().max(1);
        let level = |tier: &str, share, nominal, max_queue, max_queue_per_tenant, max_wait| Level {
            tier: tier.to_string(),
            share,
            nominal,
            in_use: 0,
            max_queue,
            max_queue_per_tenant,
            max_wait,
            queue: BTreeMap::new(),
            flows: Map::default(),
            vtime: 0,
            interval: None,
            last_dispatch: None,
            dispatched: 0,
        };
        let mut levels: Vec<Level> = tiers
            .iter()
            .map(|t| {
                let nominal = ((u64::from(seats) * u64::from(t.share) / total_share) as u32).max(1);
                level(
                    &t.name,
                    t.share,
                    nominal,
                    t.max_queue,
                    t.max_queue_per_tenant,
                    t.max_wait,
                )
            })
            .collect();
        // Last, with no seats of its own: it is served only when no tier waits.
        levels.push(level(
            BATCH,
            0,
            0,
            BATCH_MAX_QUEUE,
            BATCH_MAX_QUEUE,
            BATCH_MAX_WAIT,
        ));
        Arc::new(Scheduler {
            state: Mutex::new(State {
                seats,
                in_use: 0,
                levels,
                queued: Map::default(),
                next_id: 0,
                live_peak: Peak {
                    since: clock::now(),
                    current: 0,
                    previous: 0,
                },
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a seat for `tenant` in `tier`'s level (`BATCH` for a batch line),
    /// costing `cost` estimated tokens. Dropping the future leaves the queue at once.
    pub async fn acquire(self: &Arc<Self>, tenant: &str, tier: &str, cost: u64) -> Grant {
        let (receiver, id, deadline, level_index) = {
            let mut state = self.lock();
            let Some(level) = state.levels.iter().position(|l| l.tier == tier) else {
                return Err(Rejection::UnknownTier(tier.to_string()));
            };
            let l = &state.levels[level];
            if l.queue.len() >= l.max_queue {
                return Err(Rejection::QueueFull {
                    tier: tier.to_string(),
                    depth: l.queue.len(),
                    retry_after: l.expected_wait(),
                });
            }
            let own = l.flows.get(tenant).map_or(0, |f| f.queued);
            if own >= l.max_queue_per_tenant {
                return Err(Rejection::TenantQueueFull {
                    tier: tier.to_string(),
                    depth: own,
                    retry_after: l.expected_wait(),
                });
            }
            let now = clock::now();
            // Nothing waits and a seat is free: dispatch would give it to this request at
            // once, so it is given here, without a queue entry, a channel or a timer.
            if tier != BATCH && state.queued.is_empty() && state.in_use < state.seats {
                return Ok(self.seat_now(&mut state, level, tenant, cost, now));
            }
            let (sender, receiver) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            let deadline = now + state.levels[level].max_wait;
            let waiter = Waiter {
                id,
                tenant: tenant.to_string(),
                cost,
                enqueued: now,
                grant: sender,
            };
            state.enqueue(level, waiter);
            let refused = self.dispatch(&mut state);
            drop(state);
            drop(refused);
            (receiver, id, deadline, level)
        };
        let mut queued = Queued {
            scheduler: self,
            id,
            armed: true,
        };
        let outcome = if tier == BATCH {
            self.wait_idle(deadline, receiver).await
        } else {
            tokio::time::timeout_at(deadline, receiver).await.ok()
        };
        queued.armed = false;
        match outcome {
            Some(Ok(grant)) => grant,
            Some(Err(_)) => Err(Rejection::Paused),
            None => {
                // Out of time. A seat granted at the very last moment went back when the
                // receiver holding it was dropped.
                let mut state = self.lock();
                let removed = state.remove(id);
                let level = &state.levels[level_index];
                let rejection = Rejection::Timeout {
                    tier: level.tier.clone(),
                    waited: level.max_wait,
                    retry_after: level.expected_wait(),
                };
                drop(state);
                drop(removed);
                Err(rejection)
            }
        }
    }

    /// A batch line's wait: no release may come when live load leaves (nothing of
    /// the batch runs), so it looks again every `PEAK_WINDOW`. None when out of time.
    async fn wait_idle(
        self: &Arc<Self>,
        deadline: Instant,
        mut receiver: oneshot::Receiver<Grant>,
    ) -> Option<Result<Grant, oneshot::error::RecvError>> {
        loop {
            let look = (clock::now() + PEAK_WINDOW).min(deadline);
            match tokio::time::timeout_at(look, &mut receiver).await {
                Ok(grant) => return Some(grant),
                Err(_) if look >= deadline => return None,
                Err(_) => {
                    let mut state = self.lock();
                    let refused = self.dispatch(&mut state);
                    drop(state);
                    drop(refused);
                }
            }
        }
    }

    /// A seat for a request of `level` that nothing waits before, counted as `dispatch`
    /// counts one it takes from the queue.
    fn seat_now(
        self: &Arc<Self>,
        state: &mut State,
        level: usize,
        tenant: &str,
        cost: u64,
        now: Instant,
    ) -> Seat {
        // The live demand `dispatch` would see: the seats held outside the batch level,
        // and this request.
        let batch = state.levels.len() - 1;
        let live = state.in_use - state.levels[batch].in_use + 1;
        state.live_peak.note(live, now);
        let l = &mut state.levels[level];
        let tag = l.tag(tenant, cost);
        l.dispatched(tag, now);
        state.in_use += 1;
        Seat {
            scheduler: self.clone(),
            level,
            tenant: tenant.to_string(),
            estimate: cost,
            actual: None,
        }
    }

    /// Hands free seats to waiters. Grants that found their receiver gone come back as
    /// seats, returned to the caller to drop once the lock is released.
    fn dispatch(self: &Arc<Self>, state: &mut State) -> Vec<Grant> {
        let mut refused = Vec::new();
        let now = clock::now();
        // Live demand: seats held and requests waiting, outside the batch level (last).
        let batch = state.levels.len() - 1;
        let live = (state.in_use - state.levels[batch].in_use)
            + (state.queued.len() - state.levels[batch].queue.len()) as u32;
        let live_peak = state.live_peak.note(live, now);
        while state.in_use < state.seats {
            // A level under its own share first, then any level borrowing an idle seat;
            // the batch level only with the seats live requests lately needed, and a
            // reserve, still free.
            let batch_may =
                state.levels[batch].in_use + live_peak + batch_reserve(state.seats) < state.seats;
            let pick = state
                .levels
                .iter()
                .position(|l| l.in_use < l.nominal && !l.queue.is_empty())
                .or_else(|| {
                    state
                        .levels
                        .iter()
                        .position(|l| !l.queue.is_empty() && (batch_may || l.tier != BATCH))
                });
            let Some(index) = pick else { break };
            let level = &mut state.levels[index];
            let Some(((tag, id), waiter)) = level.queue.pop_first() else {
                break;
            };
            level.left_queue(&waiter.tenant);
            level.dispatched(tag, now);
            state.in_use += 1;
            state.queued.remove(&id);
            let seat = Seat {
                scheduler: self.clone(),
                level: index,
                tenant: waiter.tenant,
                estimate: waiter.cost,
                actual: None,
            };
            if let Err(grant) = waiter.grant.send(Ok(seat)) {
                refused.push(grant);
            }
        }
        refused
    }

    fn release(
        self: &Arc<Self>,
        level: usize,
        tenant: &str,
        estimate: u64,
        actual: Option<u64>,
    ) -> Vec<Grant> {
        let mut state = self.lock();
        state.in_use = state.in_use.saturating_sub(1);
        if let Some(l) = state.levels.get_mut(level) {
            l.in_use = l.in_use.saturating_sub(1);
            if let (Some(actual), Some(flow)) = (actual, l.flows.get_mut(tenant)) {
                // The flow was charged its estimate; correct it by what it really used.
                let corrected = flow.last_finish as i128 + actual as i128 - estimate as i128;
                flow.last_finish = corrected.max(0) as u128;
            }
        }
        self.dispatch(&mut state)
    }

    /// Refuses every waiting request of a tenant (it was paused).
    pub fn reject_tenant(self: &Arc<Self>, tenant: &str) -> usize {
        let mut state = self.lock();
        let ids: Vec<u64> = state
            .levels
            .iter()
            .flat_map(|l| l.queue.values())
            .filter(|w| w.tenant == tenant)
            .map(|w| w.id)
            .collect();
        let mut rejected = Vec::new();
        for id in &ids {
            if let Some(waiter) = state.remove(*id) {
                rejected.push(waiter);
            }
        }
        let refused = self.dispatch(&mut state);
        drop(state);
        for waiter in rejected {
            let _ = waiter.grant.send(Err(Rejection::Paused));
        }
        drop(refused);
        ids.len()
    }

    /// Moves a tenant's waiting requests to another tier's level, in arrival order.
    pub fn move_tenant(self: &Arc<Self>, tenant: &str, tier: &str) -> usize {
        let mut state = self.lock();
        let Some(target) = state.levels.iter().position(|l| l.tier == tier) else {
            return 0;
        };
        // Batch lines stay below every tier, whatever the tenant's tier.
        let mut ids: Vec<u64> = state
            .levels
            .iter()
            .enumerate()
            .filter(|(i, l)| *i != target && l.tier != BATCH)
            .flat_map(|(_, l)| l.queue.values())
            .filter(|w| w.tenant == tenant)
            .map(|w| w.id)
            .collect();
        ids.sort_unstable();
        for id in &ids {
            if let Some(waiter) = state.remove(*id) {
                state.enqueue(target, waiter);
            }
        }
        let refused = self.dispatch(&mut state);
        drop(state);
        drop(refused);
        ids.len()
    }

    pub fn levels(&self) -> Vec<LevelView> {
        let state = self.lock();
        let now = clock::now();
        state
            .levels
            .iter()
            .filter(|l| l.tier != BATCH || l.dispatched > 0 || !l.queue.is_empty())
            .map(|l| LevelView {
                tier: l.tier.clone(),
                share: l.share,
                seats: l.nominal,
                in_use: l.in_use,
                borrowed: l.in_use.saturating_sub(l.nominal),
                queued: l.queue.len(),
                oldest_wait_ms: l
                    .queue
                    .values()
                    .map(|w| now.saturating_duration_since(w.enqueued))
                    .max()
                    .unwrap_or_default()
                    .as_millis() as u64,
                dispatched: l.dispatched,
            })
            .collect()
    }

    /// Changes the number of seats (upstream capacity came or went) and shares them out
    /// again; new seats go to waiters at once.
    pub fn set_seats(self: &Arc<Self>, seats: u32) {
        let mut state = self.lock();
        let seats = seats.max(1);
        if state.seats == seats {
            return;
        }
        state.seats = seats;
        let total_share: u64 = state
            .levels
            .iter()
            .map(|l| u64::from(l.share))
            .sum::<u64>()
            .max(1);
        for level in state.levels.iter_mut().filter(|l| l.tier != BATCH) {
            level.nominal =
                ((u64::from(seats) * u64::from(level.share) / total_share) as u32).max(1);
        }
        let refused = self.dispatch(&mut state);
        drop(state);
        drop(refused);
    }

    pub fn seats(&self) -> u32 {
        self.lock().seats
    }

    /// Requests waiting, by tenant.
    pub fn queued_by_tenant(&self) -> HashMap<String, u64> {
        let state = self.lock();
        let mut counts = HashMap::new();
        for waiter in state.levels.iter().flat_map(|l| l.queue.values()) {
            *counts.entry(waiter.tenant.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Requests waiting in all levels.
    pub fn queued(&self) -> usize {
        self.lock().queued.len()
    }
}

/// Seats the batch level leaves free for live requests: an eighth, at least one (none
/// when there is only one seat, or batches would never run).
fn batch_reserve(seats: u32) -> u32 {
    if seats < 2 { 0 } else { (seats / 8).max(1) }
}

impl State {
    fn enqueue(&mut self, level: usize, waiter: Waiter) {
        let l = &mut self.levels[level];
        let tag = l.tag(&waiter.tenant, waiter.cost);
        let key = (tag, waiter.id);
        self.queued.insert(waiter.id, (level, key));
        l.with_flow(&waiter.tenant, |flow| flow.queued += 1);
        l.queue.insert(key, waiter);
    }

    fn remove(&mut self, id: u64) -> Option<Waiter> {
        let (level, key) = self.queued.remove(&id)?;
        let l = self.levels.get_mut(level)?;
        let waiter = l.queue.remove(&key)?;
        l.left_queue(&waiter.tenant);
        Some(waiter)
    }
}

/// Removes a waiter from the queue if its future is dropped before a seat came.
struct Queued<'a> {
    scheduler: &'a Arc<Scheduler>,
    id: u64,
    armed: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.scheduler.lock();
            let removed = state.remove(self.id);
            drop(state);
            drop(removed);
        }
    }
}

#[cfg(test)]
mod tests;
