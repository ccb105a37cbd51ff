//! Usage within a budget period (a UTC day or a calendar month).

use crate::domain::period::PeriodKey;

/// Usage within one period: what was spent, and what in-flight requests hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Period {
    pub key: PeriodKey,
    pub tokens: u64,
    pub cost: f64,
    pub requests: u64,
    pub reserved_tokens: u64,
    pub reserved_cost: f64,
}

impl Period {
    pub fn new(key: PeriodKey) -> Period {
        Period {
            key,
            tokens: 0,
            cost: 0.0,
            requests: 0,
            reserved_tokens: 0,
            reserved_cost: 0.0,
        }
    }

    /// Starts a fresh period when `key` moved on; reservations made before stay with the
    /// old one.
    pub fn roll(&mut self, key: PeriodKey) {
        if self.key != key {
            *self = Period::new(key);
        }
    }
}
