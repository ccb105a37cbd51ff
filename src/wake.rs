//! Futures polled only when something woke them, and futures made in their boxes.
//!
//! A task that waits on several things at once (a connection and its shutdown signal and
//! idle timer; a stream relay and its cut) polls all of them each time any one of them
//! wakes it, and the side waits nearly always answer "not yet". Asking them is not free:
//! a watch channel's wait takes its notifier's lock on every poll (one of eight shared
//! by every connection on every worker), a timer checks its entry. Wrapped in
//! [`WhenWoken`], such a wait is polled on its first poll and then only after its own
//! waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future polled only when it was woken since it last answered "not yet", or on its
/// first poll.
pub struct WhenWoken<F> {
    inner: Pin<Box<F>>,
    wake: Arc<WakeFlag>,
    /// `wake` as a waker, made once.
    waker: Waker,
}

/// Set by the inner future's waker, which then wakes the task that polled last.
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WhenWoken<F> {
    pub fn new(inner: F) -> WhenWoken<F> {
        let wake = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        WhenWoken {
            inner: Box::pin(inner),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake in between still reaches the task.
        self.wake.task.register(cx.waker());
        if !self.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// `Box::pin(make())`, with the box made first so that the compiler can make the
/// future in it. `Box::pin(future)` makes the future on the stack and copies it whole
/// into the box (its full size, though only its arguments are set before its first
/// poll): for the request path's largest futures a copy of kilobytes a request, which
/// this way went (callgrind, session 40).
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    #[test]
    fn a_wait_is_asked_again_only_once_it_was_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (cut, mut watching) = tokio::sync::watch::channel(false);
        let mut inner = Box::pin(async move {
            let _ = watching.wait_for(|cut| *cut).await;
            7
        });
        let counted = polls.clone();
        let mut when = WhenWoken::new(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Relaxed);
            inner.as_mut().poll(cx)
        }));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut poll = || Pin::new(&mut when).poll(&mut cx);
        assert_eq!(poll(), Poll::Pending);
        for _ in 0..3 {
            assert_eq!(poll(), Poll::Pending);
        }
        assert_eq!(polls.load(Relaxed), 1, "asked without being woken");
        // Woken, but not yet done: asked once, then quiet again.
        cut.send_replace(false);
        assert_eq!(poll(), Poll::Pending);
        assert_eq!(poll(), Poll::Pending);
        assert_eq!(polls.load(Relaxed), 2);
        cut.send_replace(true);
        assert_eq!(poll(), Poll::Ready(7));
        assert_eq!(polls.load(Relaxed), 3);
    }

    /// A timer wrapped fires when its deadline comes, though nothing polls it between.
    #[tokio::test(start_paused = true)]
    async fn a_timer_wrapped_still_fires() {
        let started = tokio::time::Instant::now();
        WhenWoken::new(tokio::time::sleep(std::time::Duration::from_secs(5))).await;
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
    }
}
