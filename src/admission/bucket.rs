//! A token bucket that can go into debt: reserve an estimate, then refund or charge the
//! difference once the real cost is known. Refill is computed lazily from the time passed.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_sec: f64,
    /// Negative while in debt.
    level: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket refilling `per_minute` over a minute.
    pub fn per_minute(per_minute: u64, now: Instant) -> Bucket {
        let capacity = per_minute as f64;
        Bucket {
            capacity,
            per_sec: capacity / 60.0,
            level: capacity,
            updated: now,
        }
    }

    /// The same bucket with a new rate; what was used (or owed) stays used.
    pub fn resized(&self, per_minute: u64, now: Instant) -> Bucket {
        let mut old = self.clone();
        old.refill(now);
        let used = old.capacity - old.level;
        let mut new = Bucket::per_minute(per_minute, now);
        new.level = new.capacity - used;
        new
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity);
        self.updated = now;
    }

    /// Whole units available now (after `refill`); zero while in debt.
    pub fn available(&self) -> u64 {
        self.level.max(0.0) as u64
    }

    /// Whether `n` can be taken now (after `refill`).
    pub fn has(&self, n: u64) -> bool {
        self.level >= n as f64
    }

    /// How long until `n` can be taken; `None` when `n` exceeds the capacity, so waiting
    /// can never help.
    pub fn wait_for(&self, n: u64) -> Option<Duration> {
        let n = n as f64;
        if n > self.capacity {
            return None;
        }
        let missing = (n - self.level).max(0.0);
        Some(Duration::from_secs_f64(missing / self.per_sec))
    }

    /// How long until the bucket is full again: OpenAI's `x-ratelimit-reset-*`.
    pub fn until_full(&self) -> Duration {
        Duration::from_secs_f64(((self.capacity - self.level) / self.per_sec).max(0.0))
    }

    /// Takes `n` units, into debt if need be, but never more than one capacity deep: a
    /// request that used far more than it reserved waits out a minute, not forever.
    pub fn take(&mut self, n: u64) {
        self.level = (self.level - n as f64).max(-self.capacity);
    }

    /// The same bucket holding `level` units (within its capacity).
    pub fn with_level(mut self, level: f64) -> Bucket {
        self.level = level.clamp(-self.capacity, self.capacity);
        self
    }

    /// Returns `n` units; never beyond the capacity.
    pub fn give(&mut self, n: u64) {
        self.level = (self.level + n as f64).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_minute_refills_a_drained_bucket_evenly() {
        let start = Instant::now();
        let mut bucket = Bucket::per_minute(60, start);
        bucket.take(60);
        assert!(!bucket.has(1));
        assert_eq!(bucket.wait_for(1), Some(Duration::from_secs(1)));

        tokio::time::advance(Duration::from_secs(30)).await;
        bucket.refill(Instant::now());
        assert_eq!(bucket.available(), 30);
        tokio::time::advance(Duration::from_secs(60)).await;
        bucket.refill(Instant::now());
        assert_eq!(bucket.available(), 60, "never above capacity");
    }

    #[tokio::test(start_paused = true)]
    async fn debt_is_paid_back_before_anything_is_available() {
        let mut bucket = Bucket::per_minute(600, Instant::now());
        bucket.take(600);
        bucket.take(300); // a reconcile that charged more than was reserved
        assert_eq!(bucket.available(), 0);
        assert_eq!(bucket.wait_for(60), Some(Duration::from_secs(36)));
        assert_eq!(
            bucket.wait_for(601),
            None,
            "larger than the bucket: hopeless"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resizing_keeps_what_was_used() {
        let now = Instant::now();
        let mut bucket = Bucket::per_minute(100, now);
        bucket.take(40);
        let bigger = bucket.resized(1000, now);
        assert_eq!(bigger.available(), 960);
        assert_eq!(bigger.capacity(), 1000);
    }
}
