//! The scheduler under paused time: no sleeps, every wait exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::domain::Limits;

fn tier(name: &str, share: u32, max_queue: usize, max_wait: Duration) -> Tier {
    Tier {
        name: name.into(),
        share,
        max_queue,
        max_queue_per_tenant: max_queue,
        max_wait,
        limits: Limits::default(),
    }
}

fn one_level(seats: u32) -> Arc<Scheduler> {
    Scheduler::new(seats, &[tier("pro", 10, 10_000, Duration::from_secs(600))])
}

/// Lets spawned tasks run until the queue holds `n` requests.
async fn until_queued(scheduler: &Scheduler, n: usize) {
    for _ in 0..10_000 {
        if scheduler.queued() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("expected {n} queued, found {}", scheduler.queued());
}

/// Spawns a waiter that records its tenant when it gets a seat, then holds it for `hold`.
fn waiter(
    scheduler: &Arc<Scheduler>,
    tenant: &str,
    tier: &str,
    cost: u64,
    hold: Duration,
    order: &Arc<Mutex<Vec<(String, Duration)>>>,
) -> tokio::task::JoinHandle<Result<(), Rejection>> {
    let (scheduler, tenant, tier, order) = (
        scheduler.clone(),
        tenant.to_string(),
        tier.to_string(),
        order.clone(),
    );
    tokio::spawn(async move {
        let asked = Instant::now();
        let seat = scheduler.acquire(&tenant, &tier, cost).await?;
        order.lock().unwrap().push((tenant, asked.elapsed()));
        tokio::time::sleep(hold).await;
        drop(seat);
        Ok(())
    })
}

#[tokio::test(start_paused = true)]
async fn a_free_seat_is_granted_at_once() {
    let scheduler = one_level(2);
    let a = scheduler.acquire("a", "pro", 10).await;
    let b = scheduler.acquire("b", "pro", 10).await;
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(scheduler.levels()[0].in_use, 2);
    // Seated without waiting, and counted as the console counts any dispatch.
    assert_eq!(scheduler.levels()[0].dispatched, 2);
    assert_eq!(scheduler.queued(), 0);
    drop(a);
    assert_eq!(scheduler.levels()[0].in_use, 1);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_sending_ten_times_more_does_not_crowd_out_the_other() {
    let scheduler = one_level(1);
    let holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        tasks.push(waiter(
            &scheduler,
            "heavy",
            "pro",
            100,
            Duration::ZERO,
            &order,
        ));
    }
    for _ in 0..20 {
        tasks.push(waiter(
            &scheduler,
            "light",
            "pro",
            100,
            Duration::ZERO,
            &order,
        ));
    }
    until_queued(&scheduler, 220).await;
    drop(holder);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let order = order.lock().unwrap();
    let light = order[..40].iter().filter(|(t, _)| t == "light").count();
    // While both are backlogged each gets half the seats: 20 of the first 40, within 10%.
    assert!(
        (18..=22).contains(&light),
        "light got {light} of the first 40"
    );
}

#[tokio::test(start_paused = true)]
async fn fairness_is_by_tokens_and_corrected_by_real_usage() {
    let scheduler = one_level(1);
    let holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // "big" asks for four times the tokens per request.
    for _ in 0..20 {
        tasks.push(waiter(
            &scheduler,
            "big",
            "pro",
            400,
            Duration::ZERO,
            &order,
        ));
        tasks.push(waiter(
            &scheduler,
            "small",
            "pro",
            100,
            Duration::ZERO,
            &order,
        ));
    }
    until_queued(&scheduler, 40).await;
    drop(holder);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let big = order.lock().unwrap()[..20]
        .iter()
        .filter(|(t, _)| t == "big")
        .count();
    assert!(
        (3..=5).contains(&big),
        "big got {big} of the first 20 seats"
    );

    // A correction: a request estimated at 100 that used 1000 pushes its flow back.
    let scheduler = one_level(1);
    let mut seat = scheduler.acquire("greedy", "pro", 100).await.unwrap();
    seat.set_actual(1000);
    drop(seat);
    let holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let greedy = waiter(&scheduler, "greedy", "pro", 100, Duration::ZERO, &order);
    until_queued(&scheduler, 1).await;
    let modest = waiter(&scheduler, "modest", "pro", 100, Duration::ZERO, &order);
    until_queued(&scheduler, 2).await;
    drop(holder);
    greedy.await.unwrap().unwrap();
    modest.await.unwrap().unwrap();
    let first = order.lock().unwrap()[0].0.clone();
    assert_eq!(
        first, "modest",
        "the greedy flow's tag was corrected upward"
    );
}

#[tokio::test(start_paused = true)]
async fn under_saturation_the_larger_share_waits_less_and_the_smaller_still_progresses() {
    let long = Duration::from_secs(600);
    let scheduler = Scheduler::new(
        4,
        &[
            tier("enterprise", 3, 1000, long),
            tier("free", 1, 1000, long),
        ],
    );
    let order = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_millis(100);
    let mut tasks = Vec::new();
    for i in 0..120 {
        let tier = if i % 2 == 0 { "enterprise" } else { "free" };
        tasks.push(waiter(&scheduler, tier, tier, 100, hold, &order));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let order = order.lock().unwrap();
    let waits = |tier: &str| {
        let mut w: Vec<Duration> = order
            .iter()
            .filter(|(t, _)| t == tier)
            .map(|(_, d)| *d)
            .collect();
        w.sort();
        w
    };
    let (enterprise, free) = (waits("enterprise"), waits("free"));
    let p99 = |w: &[Duration]| w[(w.len() * 99 / 100).min(w.len() - 1)];
    assert!(
        p99(&enterprise) < p99(&free),
        "{:?} vs {:?}",
        p99(&enterprise),
        p99(&free)
    );
    // While both were backlogged (the first 80 grants), free held its one seat in four.
    let free_share = order[..80].iter().filter(|(t, _)| t == "free").count();
    assert!(
        (18..=22).contains(&free_share),
        "free got {free_share} of the first 80 seats; its share is 20"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_waits_too_long_is_refused_with_a_retry_after() {
    let scheduler = Scheduler::new(1, &[tier("pro", 1, 10, Duration::from_secs(2))]);
    let _holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let started = Instant::now();
    let refused = scheduler.acquire("a", "pro", 1).await;
    let Err(Rejection::Timeout { retry_after, .. }) = refused else {
        panic!("expected a timeout, got {refused:?}");
    };
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(retry_after >= Duration::from_secs(1));
    assert_eq!(
        scheduler.queued(),
        0,
        "the timed-out request left the queue"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let scheduler = Scheduler::new(1, &[tier("pro", 1, 2, Duration::from_secs(30))]);
    let _holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let _a = waiter(&scheduler, "a", "pro", 1, Duration::ZERO, &order);
    let _b = waiter(&scheduler, "b", "pro", 1, Duration::ZERO, &order);
    until_queued(&scheduler, 2).await;
    let refused = scheduler.acquire("c", "pro", 1).await;
    assert!(
        matches!(refused, Err(Rejection::QueueFull { depth: 2, .. })),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_goes_away_leaves_the_queue_at_once() {
    let scheduler = one_level(1);
    let holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let gone = waiter(&scheduler, "a", "pro", 1, Duration::ZERO, &order);
    until_queued(&scheduler, 1).await;
    gone.abort();
    until_queued(&scheduler, 0).await;
    drop(holder);
    assert_eq!(
        scheduler.levels()[0].in_use,
        0,
        "no seat went to the departed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tier_change_moves_waiting_requests_ahead() {
    let long = Duration::from_secs(600);
    let scheduler = Scheduler::new(
        1,
        &[tier("enterprise", 6, 100, long), tier("free", 1, 100, long)],
    );
    let holder = scheduler.acquire("x", "free", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(waiter(&scheduler, "a", "free", 1, Duration::ZERO, &order));
    }
    until_queued(&scheduler, 5).await;
    tasks.push(waiter(
        &scheduler,
        "upgraded",
        "free",
        1,
        Duration::ZERO,
        &order,
    ));
    until_queued(&scheduler, 6).await;
    assert_eq!(scheduler.move_tenant("upgraded", "enterprise"), 1);
    assert_eq!(
        scheduler.levels()[0].queued,
        1,
        "now in the enterprise level"
    );
    drop(holder);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(order.lock().unwrap()[0].0, "upgraded");
}

#[tokio::test(start_paused = true)]
async fn pausing_a_tenant_refuses_its_waiting_requests() {
    let scheduler = one_level(1);
    let _holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let paused = waiter(&scheduler, "a", "pro", 1, Duration::ZERO, &order);
    let other = waiter(&scheduler, "b", "pro", 1, Duration::ZERO, &order);
    until_queued(&scheduler, 2).await;
    assert_eq!(scheduler.reject_tenant("a"), 1);
    assert_eq!(paused.await.unwrap(), Err(Rejection::Paused));
    assert_eq!(scheduler.queued(), 1);
    other.abort();
}

#[tokio::test(start_paused = true)]
async fn more_seats_go_to_waiters_at_once() {
    let scheduler = one_level(1);
    let _holder = scheduler.acquire("x", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiting = waiter(&scheduler, "a", "pro", 1, Duration::from_secs(60), &order);
    until_queued(&scheduler, 1).await;
    scheduler.set_seats(2);
    until_queued(&scheduler, 0).await;
    assert_eq!(scheduler.seats(), 2);
    assert_eq!(scheduler.levels()[0].in_use, 2);
    waiting.abort();
}

#[tokio::test(start_paused = true)]
async fn one_tenant_cannot_fill_its_tiers_queue_alone() {
    let mut pro = tier("pro", 10, 10, Duration::from_secs(60));
    pro.max_queue_per_tenant = 3;
    let scheduler = Scheduler::new(1, &[pro]);
    let _seat = scheduler.acquire("a", "pro", 1).await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let s = scheduler.clone();
        waiting.push(tokio::spawn(async move {
            s.acquire("a", "pro", 1).await.map(|_| ())
        }));
    }
    tokio::task::yield_now().await;
    let refused = scheduler.acquire("a", "pro", 1).await;
    assert!(
        matches!(refused, Err(Rejection::TenantQueueFull { depth: 3, .. })),
        "{refused:?}"
    );
    // Another tenant still gets in line.
    let other = scheduler.clone();
    let queued = tokio::spawn(async move { other.acquire("b", "pro", 1).await.map(|_| ()) });
    tokio::task::yield_now().await;
    assert_eq!(scheduler.queued(), 4);
    for w in waiting {
        w.abort();
    }
    queued.abort();
}

#[tokio::test(start_paused = true)]
async fn batch_lines_take_only_seats_no_tier_waits_for_and_leave_one_free() {
    let scheduler = one_level(3);
    assert_eq!(
        scheduler.levels().len(),
        1,
        "the batch level is shown once used"
    );
    let order = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_secs(1);
    // Idle seats go to batch lines at once, all but the reserve (one of three).
    let batch: Vec<_> = (0..4)
        .map(|_| waiter(&scheduler, "a", BATCH, 10, hold, &order))
        .collect();
    until_queued(&scheduler, 2).await;
    assert_eq!(order.lock().unwrap().len(), 2);
    // A live request arriving now takes the reserved seat at once; the others wait for
    // seats the batch lines free, and get them before the batch lines still waiting.
    let live: Vec<_> = (0..3)
        .map(|_| waiter(&scheduler, "b", "pro", 10, hold, &order))
        .collect();
    until_queued(&scheduler, 4).await;
    for task in batch.into_iter().chain(live) {
        task.await.unwrap().unwrap();
    }
    let order = order.lock().unwrap().clone();
    let tenants: Vec<&str> = order.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tenants, ["a", "a", "b", "b", "b", "a", "a"]);
    assert_eq!(order[2].1, Duration::ZERO, "the reserved seat was free");
    let batch_level = scheduler
        .levels()
        .into_iter()
        .find(|l| l.tier == BATCH)
        .unwrap();
    assert_eq!((batch_level.seats, batch_level.dispatched), (0, 4));
}

#[tokio::test(start_paused = true)]
async fn a_tier_change_leaves_batch_lines_below_every_tier() {
    let scheduler = Scheduler::new(
        2,
        &[
            tier("pro", 10, 100, Duration::from_secs(600)),
            tier("free", 1, 100, Duration::from_secs(600)),
        ],
    );
    let held = scheduler.acquire("x", "pro", 1).await.unwrap();
    let also_held = scheduler.acquire("y", "pro", 1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let line = waiter(&scheduler, "a", BATCH, 1, Duration::ZERO, &order);
    let live = waiter(&scheduler, "a", "free", 1, Duration::ZERO, &order);
    until_queued(&scheduler, 2).await;
    assert_eq!(
        scheduler.move_tenant("a", "pro"),
        1,
        "only the live request moves"
    );
    drop((held, also_held));
    live.await.unwrap().unwrap();
    line.await.unwrap().unwrap();
    assert_eq!(order.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_holds_back_while_live_load_fills_every_seat_and_resumes_when_it_leaves() {
    let scheduler = one_level(8);
    let start = Instant::now();
    // Eight live clients on eight seats, each thinking a little between its requests:
    // seats are free for moments, but live traffic needs them all.
    let live: Vec<_> = (0..8u64)
        .map(|i| {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                while Instant::now() < start + Duration::from_secs(10) {
                    let seat = scheduler.acquire("live", "pro", 10).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    drop(seat);
                    tokio::time::sleep(Duration::from_millis(10 * (i + 1))).await;
                }
                Instant::now()
            })
        })
        .collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    tokio::task::yield_now().await;
    let batch: Vec<_> = (0..2)
        .map(|_| waiter(&scheduler, "a", BATCH, 10, Duration::ZERO, &order))
        .collect();
    let mut ends = Vec::new();
    for client in live {
        ends.push(client.await.unwrap());
    }
    for line in batch {
        line.await.unwrap().unwrap();
    }
    let (first_end, last_end) = (*ends.iter().min().unwrap(), *ends.iter().max().unwrap());
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 2);
    for (_, waited) in order {
        let granted = start + waited;
        assert!(
            granted >= first_end,
            "a batch line got a seat {:?} after the start, while live load needed every seat",
            granted - start
        );
        assert!(
            granted <= last_end + 2 * PEAK_WINDOW,
            "the batch resumed {:?} after live load left",
            granted.saturating_duration_since(last_end)
        );
    }
}
