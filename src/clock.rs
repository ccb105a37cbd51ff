//! The time as one turn of a connection's task sees it.
//!
//! A whole answer reads the clock some twenty times: its arrival, the limits' refill,
//! the scheduler's wait, the router's health and latency, the upstream's wait, the
//! histograms, the audit record. Each read is a `clock_gettime` (about 22 ns here), and
//! nearly all of them fall in two turns of the connection's task: the one that reads the
//! request and sends it on, and the one that reads the answer and writes it back. A
//! turn takes microseconds; the things the reads time take milliseconds.
//!
//! So a connection's task is polled inside [`Turns`], and within one poll
//! [`now`] and [`wall`] read the clock once, at their first use, and give that reading
//! to every later call (nginx keeps its time the same way, updated once a turn of its
//! event loop). Outside a turn (a spawned task, a test, the console) they read the clock
//! afresh. The instant is tokio's, so paused-time tests see their paused clock.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// What the current thread's turn has read so far.
#[derive(Clone, Copy)]
enum Reading<T> {
    /// No turn is open: every call reads the clock.
    Outside,
    /// A turn is open and has not read this clock yet.
    Unread,
    Read(T),
}

thread_local! {
    static MONOTONIC: Cell<Reading<Instant>> = const { Cell::new(Reading::Outside) };
    static WALL: Cell<Reading<SystemTime>> = const { Cell::new(Reading::Outside) };
}

/// The monotonic time: the turn's reading inside a turn, a fresh one outside.
pub fn now() -> Instant {
    read(&MONOTONIC, Instant::now)
}

/// Reads the monotonic clock afresh, and makes that the turn's reading: for the start
/// of something timed on its own (an upstream's answer), which should not count the
/// turn's work before it.
pub fn fresh() -> Instant {
    let now = Instant::now();
    MONOTONIC.with(|cell| {
        if !matches!(cell.get(), Reading::Outside) {
            cell.set(Reading::Read(now));
        }
    });
    now
}

/// The wall-clock time: the turn's reading inside a turn, a fresh one outside.
pub fn wall() -> SystemTime {
    read(&WALL, SystemTime::now)
}

/// How long since `earlier`, as [`now`] sees it (zero if `earlier` is later).
pub fn since(earlier: Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

fn read<T: Copy + 'static>(
    cell: &'static std::thread::LocalKey<Cell<Reading<T>>>,
    fresh: fn() -> T,
) -> T {
    cell.with(|cell| match cell.get() {
        Reading::Outside => fresh(),
        Reading::Unread => {
            let now = fresh();
            cell.set(Reading::Read(now));
            now
        }
        Reading::Read(now) => now,
    })
}

/// A future whose every poll is one turn of the clock.
pub struct Turns<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Turns<F> {
    pub fn new(inner: F) -> Self {
        Turns {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _turn = Turn::open();
        self.inner.as_mut().poll(cx)
    }
}

/// An open turn; closing it (dropping it, on a panic too) puts back what was before.
struct Turn {
    monotonic: Reading<Instant>,
    wall: Reading<SystemTime>,
}

impl Turn {
    fn open() -> Turn {
        Turn {
            monotonic: MONOTONIC.with(|c| c.replace(Reading::Unread)),
            wall: WALL.with(|c| c.replace(Reading::Unread)),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        MONOTONIC.with(|c| c.set(self.monotonic));
        WALL.with(|c| c.set(self.wall));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that two readings of the clock around it differ: a slower machine
    /// only makes it longer.
    const PAUSE: Duration = Duration::from_millis(2);

    /// Reads the clock, sleeps the thread, and reads it again, in one poll; then
    /// yields and reads it in the next poll.
    async fn reads() -> [(Instant, SystemTime); 3] {
        let first = (now(), wall());
        std::thread::sleep(PAUSE);
        let same = (now(), wall());
        tokio::task::yield_now().await;
        std::thread::sleep(PAUSE);
        [first, same, (now(), wall())]
    }

    #[tokio::test]
    async fn a_turn_reads_the_clock_once_and_the_next_turn_again() {
        let [first, same, next] = Turns::new(reads()).await;
        assert_eq!(first, same, "one poll, one reading");
        assert!(next.0 >= first.0 + PAUSE, "the next poll reads anew");
        assert!(next.1 > first.1);
    }

    #[tokio::test]
    async fn a_fresh_reading_becomes_the_turns() {
        let [first, fresh, same] = Turns::new(async {
            let first = now();
            std::thread::sleep(PAUSE);
            let fresh = super::fresh();
            std::thread::sleep(PAUSE);
            [first, fresh, now()]
        })
        .await;
        assert!(fresh >= first + PAUSE);
        assert_eq!(same, fresh);
    }

    #[tokio::test]
    async fn outside_a_turn_every_read_is_fresh() {
        let [first, same, _] = reads().await;
        assert!(same.0 >= first.0 + PAUSE);
        assert!(same.1 > first.1);
        assert!(since(first.0) >= PAUSE);
        assert_eq!(since(now() + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn a_turn_closes_even_when_its_poll_panics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(Turns::new(async {
                now();
                wall();
                panic!("a handler's bug");
            }))
        }));
        assert!(panicked.is_err());
        assert!(
            matches!(MONOTONIC.with(Cell::get), Reading::Outside),
            "the thread is outside any turn again"
        );
        assert!(matches!(WALL.with(Cell::get), Reading::Outside));
    }
}
