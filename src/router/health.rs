//! One instance's health: what active probes say, passive outlier ejection, 429
//! cool-downs, manual ejection and drain. Plain state, advanced by the caller with the
//! current time; nothing here does I/O or spawns tasks.

use std::time::Duration;

use tokio::time::Instant;

use crate::domain::RoutingPolicy;
pub use crate::domain::snapshot::HealthView;
use crate::domain::snapshot::InstanceState;

/// An instance's drain state. Drained is `Draining` with nothing left in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Active,
    Draining { since: Instant, deadline: Instant },
}

#[derive(Debug, Clone)]
pub struct Health {
    /// What active probes concluded; an instance starts up until probes say otherwise.
    pub probe_ok: bool,
    probe_failures: u32,
    probe_successes: u32,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far, decaying while the instance behaves; sets the next ejection's length.
    ejections: u32,
    last_ejection_end: Option<Instant>,
    cooldown_until: Option<Instant>,
    pub manual_eject: bool,
    pub drain: Drain,
}

/// What one attempt on an instance came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect failure, timeout, broken connection or 5xx.
    Failure,
    /// 429: back-pressure; cool down for this long (the upstream's `retry-after`).
    RateLimited(Duration),
}

/// What a report changed, for the operator's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected(Duration),
    CoolingDown(Duration),
}

impl Default for Health {
    fn default() -> Self {
        Health {
            probe_ok: true,
            probe_failures: 0,
            probe_successes: 0,
            consecutive_failures: 0,
            ejected_until: None,
            ejections: 0,
            last_ejection_end: None,
            cooldown_until: None,
            manual_eject: false,
            drain: Drain::Active,
        }
    }
}

impl Health {
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    pub fn cooling(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|t| now < t)
    }

    pub fn draining(&self) -> bool {
        matches!(self.drain, Drain::Draining { .. })
    }

    /// Takes new requests: up, not ejected, not cooling down, not draining.
    pub fn routable(&self, now: Instant) -> bool {
        self.probe_ok
            && !self.manual_eject
            && !self.draining()
            && !self.ejected(now)
            && !self.cooling(now)
    }

    /// Takes requests in panic mode, when health is ignored: everything not set aside
    /// by an operator.
    pub fn panic_routable(&self) -> bool {
        !self.manual_eject && !self.draining()
    }

    /// Still serves its sticky sessions: routable, or draining within the grace period.
    pub fn keeps_sessions(&self, now: Instant, grace: Duration) -> bool {
        match self.drain {
            Drain::Active => self.routable(now),
            Drain::Draining { since, .. } => {
                now < since + grace && self.probe_ok && !self.manual_eject && !self.ejected(now)
            }
        }
    }

    /// Records an attempt's outcome. `may_eject` says whether the region's ejection cap
    /// leaves room for one more.
    pub fn report(
        &mut self,
        outcome: Outcome,
        now: Instant,
        policy: &RoutingPolicy,
        may_eject: bool,
    ) -> Change {
        match outcome {
            Outcome::Success => {
                self.consecutive_failures = 0;
                Change::None
            }
            Outcome::RateLimited(wait) => {
                self.cooldown_until = Some(now + wait);
                Change::CoolingDown(wait)
            }
            Outcome::Failure => {
                self.consecutive_failures += 1;
                let due = self.consecutive_failures >= policy.consecutive_failures;
                if !due || self.ejected(now) || !may_eject {
                    return Change::None;
                }
                // Good behaviour since the last ejection ended pays the multiplier back.
                if let Some(end) = self.last_ejection_end {
                    let healthy = now.saturating_duration_since(end);
                    let paid = (healthy.as_secs_f64() / policy.base_ejection.as_secs_f64()) as u32;
                    self.ejections = self.ejections.saturating_sub(paid);
                }
                self.ejections += 1;
                let length = policy
                    .base_ejection
                    .saturating_mul(self.ejections)
                    .min(policy.max_ejection);
                self.ejected_until = Some(now + length);
                self.last_ejection_end = Some(now + length);
                self.consecutive_failures = 0;
                Change::Ejected(length)
            }
        }
    }

    /// Records an active probe; returns the new `probe_ok` if it changed.
    pub fn probe(&mut self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> Option<bool> {
        if ok {
            self.probe_failures = 0;
            self.probe_successes += 1;
            if !self.probe_ok && self.probe_successes >= healthy_after {
                self.probe_ok = true;
                return Some(true);
            }
        } else {
            self.probe_successes = 0;
            self.probe_failures += 1;
            if self.probe_ok && self.probe_failures >= unhealthy_after {
                self.probe_ok = false;
                return Some(false);
            }
        }
        None
    }

    /// Ends any ejection and cool-down (an operator's restore).
    pub fn restore(&mut self) {
        self.manual_eject = false;
        self.ejected_until = None;
        self.cooldown_until = None;
        self.consecutive_failures = 0;
    }

    pub fn view(&self, now: Instant, in_flight: u32) -> HealthView {
        let remaining = |t: Option<Instant>| {
            t.filter(|t| now < *t)
                .map(|t| t.saturating_duration_since(now).as_millis() as u64)
        };
        let state = if self.manual_eject {
            InstanceState::EjectedByOperator
        } else if self.draining() && in_flight == 0 {
            InstanceState::Drained
        } else if self.draining() {
            InstanceState::Draining
        } else if !self.probe_ok {
            InstanceState::ProbeFailing
        } else if self.ejected(now) {
            InstanceState::Ejected
        } else if self.cooling(now) {
            InstanceState::CoolingDown
        } else {
            InstanceState::Healthy
        };
        HealthView {
            state,
            probe_ok: self.probe_ok,
            consecutive_failures: self.consecutive_failures,
            ejections: self.ejections,
            ejected_for_ms: remaining(self.ejected_until),
            cooling_for_ms: remaining(self.cooldown_until),
            manual_eject: self.manual_eject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RoutingPolicy {
        RoutingPolicy {
            overprovisioning: 1.4,
            panic_threshold: 0.5,
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_share: 0.5,
            retry_budget: 0.2,
            min_retries: 3,
            deadline: Duration::from_secs(60),
            session_header: "x-session-id".into(),
            session_ttl: Duration::from_secs(60),
            drain_grace: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(60),
        }
    }

    fn fail(h: &mut Health, times: u32) -> Change {
        let mut last = Change::None;
        for _ in 0..times {
            last = h.report(Outcome::Failure, Instant::now(), &policy(), true);
        }
        last
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_instance_is_ejected_for_growing_times_up_to_the_cap() {
        let mut h = Health::default();
        assert_eq!(fail(&mut h, 2), Change::None, "two failures are not enough");
        assert_eq!(fail(&mut h, 1), Change::Ejected(Duration::from_secs(10)));
        assert!(!h.routable(Instant::now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(h.routable(Instant::now()), "back after the ejection");
        assert_eq!(fail(&mut h, 3), Change::Ejected(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            fail(&mut h, 3),
            Change::Ejected(Duration::from_secs(25)),
            "capped"
        );
        // A long healthy spell pays the multiplier back.
        tokio::time::advance(Duration::from_secs(25 + 100)).await;
        assert_eq!(fail(&mut h, 3), Change::Ejected(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_cools_down_without_ejecting() {
        let mut h = Health::default();
        for _ in 0..10 {
            let change = h.report(
                Outcome::RateLimited(Duration::from_secs(2)),
                Instant::now(),
                &policy(),
                true,
            );
            assert_eq!(change, Change::CoolingDown(Duration::from_secs(2)));
        }
        assert!(!h.routable(Instant::now()));
        assert!(!h.ejected(Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(h.routable(Instant::now()));
        assert_eq!(h.view(Instant::now(), 0).ejections, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejection_cap_is_respected() {
        let mut h = Health::default();
        for _ in 0..10 {
            assert_eq!(
                h.report(Outcome::Failure, Instant::now(), &policy(), false),
                Change::None
            );
        }
        assert!(h.routable(Instant::now()));
    }

    #[test]
    fn probes_need_consecutive_results_to_flip() {
        let mut h = Health::default();
        assert_eq!(h.probe(false, 2, 2), None);
        assert_eq!(h.probe(false, 2, 2), Some(false));
        assert_eq!(h.probe(true, 2, 2), None);
        assert_eq!(h.probe(true, 2, 2), Some(true));
    }
}
