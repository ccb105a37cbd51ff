//! Routing decisions, without sockets.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::*;
use crate::domain::snapshot::{InstanceState as Standing, RegionState};
use crate::domain::{Deployment, Dialect, ModelKind, TokenizerKind};

fn policy() -> RoutingPolicy {
    RoutingPolicy {
        overprovisioning: 1.4,
        panic_threshold: 0.5,
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejected_share: 1.0,
        retry_budget: 0.2,
        min_retries: 3,
        deadline: Duration::from_secs(60),
        session_header: "x-session-id".into(),
        session_ttl: Duration::from_secs(600),
        drain_grace: Duration::ZERO,
        drain_deadline: Duration::from_secs(60),
    }
}

fn region(name: &str, order: u32, instances: usize) -> Region {
    Region {
        name: name.into(),
        order,
        instances: (0..instances)
            .map(|i| Instance {
                name: format!("{name}-{i}"),
                url: format!("http://{name}-{i}/v1"),
                dialect: Dialect::OpenAi,
                api_version: String::new(),
                api_key_env: None,
                max_concurrency: 100,
                weight: 1,
                http2: false,
                native_responses: false,
            })
            .collect(),
    }
}

fn model(regions: &[&str]) -> Model {
    Model {
        alias: "m".into(),
        kind: ModelKind::Chat,
        deployments: regions
            .iter()
            .map(|r| Deployment {
                region: r.to_string(),
                upstream_model: format!("m-{r}"),
            })
            .collect(),
        tokenizer: TokenizerKind::Heuristic,
        price: None,
        limit_field: "max_tokens",
    }
}

fn router(regions: &[Region]) -> Router {
    Router::new(regions, policy(), Default::default())
}

fn instance<'a>(router: &'a Router, name: &str) -> &'a Arc<InstanceState> {
    router.instances().find(|i| i.name() == name).unwrap()
}

fn fail(router: &Router, name: &str) {
    router.report(instance(router, name), Outcome::Failure, None);
}

/// How often each region is picked first over `n` routes.
fn first_regions(router: &Router, model: &Model, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let route = router.route(model, None, None).unwrap();
        *counts
            .entry(route.candidates[0].instance.region.to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn the_reason_names_the_instance_picked_and_its_region() {
    let router = router(&[region("us", 0, 3), region("eu", 1, 2)]);
    let m = model(&["us", "eu"]);
    let mut picked = HashSet::new();
    for _ in 0..100 {
        let route = router.route(&m, None, None).unwrap();
        let first = &route.candidates[0].instance;
        let expected = format!("{}: least loaded of two in {}", first.name(), first.region);
        assert_eq!(&*route.reason, expected);
        picked.insert(first.name().to_string());
    }
    assert!(
        picked.len() > 1,
        "more than one instance was picked: {picked:?}"
    );
    // Spilled over: the reason says from where.
    for name in ["us-0", "us-1", "us-2"] {
        fail(&router, name);
    }
    let route = router.route(&m, None, None).unwrap();
    let first = &route.candidates[0].instance;
    assert_eq!(&*first.region, "eu");
    assert!(
        route.reason.starts_with(&format!(
            "{}: least loaded of two in eu (spilled over from us at ",
            first.name()
        )),
        "{}",
        route.reason
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_first_region_takes_everything_and_the_rest_follow_in_order() {
    let router = router(&[region("us", 0, 2), region("eu", 1, 1)]);
    let m = model(&["us", "eu"]);
    assert_eq!(first_regions(&router, &m, 200).get("us"), Some(&200));
    let route = router.route(&m, None, None).unwrap();
    let regions: Vec<&str> = route
        .candidates
        .iter()
        .map(|c| &*c.instance.region)
        .collect();
    assert_eq!(regions, ["us", "us", "eu"]);
    assert_eq!(route.candidates[2].upstream_model, "m-eu");
}

#[tokio::test(start_paused = true)]
async fn a_degraded_region_spills_its_shortfall_to_the_next() {
    let router = router(&[region("us", 0, 4), region("eu", 1, 4)]);
    let m = model(&["us", "eu"]);
    // Half of us-east down: 50% × 1.4 = 70% stays, 30% spills over.
    fail(&router, "us-0");
    fail(&router, "us-1");
    let counts = first_regions(&router, &m, 2000);
    let us = *counts.get("us").unwrap_or(&0);
    assert!((1300..=1500).contains(&us), "us got {us} of 2000");
    // Three quarters healthy: 75% × 1.4 ≥ 100%, so nothing spills.
    let router2 = router_with_one_down();
    assert_eq!(first_regions(&router2, &m, 500).get("us"), Some(&500));
}

fn router_with_one_down() -> Router {
    let router = router(&[region("us", 0, 4), region("eu", 1, 4)]);
    fail(&router, "us-0");
    router
}

#[tokio::test(start_paused = true)]
async fn the_panic_threshold_spreads_load_over_every_instance_when_nothing_better_exists() {
    let router = router(&[region("us", 0, 4)]);
    let m = model(&["us"]);
    for name in ["us-0", "us-1", "us-2"] {
        fail(&router, name);
    }
    let mut firsts = HashMap::new();
    for _ in 0..400 {
        let route = router.route(&m, None, None).unwrap();
        assert!(route.reason.starts_with("panic"), "{}", route.reason);
        *firsts
            .entry(route.candidates[0].instance.name().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        firsts.len(),
        4,
        "ejected instances take traffic too: {firsts:?}"
    );
    // With a healthy region to spill to, there is no panic: the sick one is avoided.
    let router = router_with_one_down();
    for name in ["us-1", "us-2"] {
        fail(&router, name);
    }
    let both = model(&["us", "eu"]);
    let route = router.route(&both, None, None).unwrap();
    assert!(!route.reason.starts_with("panic"), "{}", route.reason);
}

#[tokio::test(start_paused = true)]
async fn residency_never_leaves_the_allowed_regions() {
    let router = router(&[region("us", 0, 2), region("eu", 1, 1)]);
    let m = model(&["us", "eu"]);
    let allowed = vec!["eu".to_string()];
    for _ in 0..50 {
        let route = router.route(&m, Some(&allowed), None).unwrap();
        assert!(route.candidates.iter().all(|c| &*c.instance.region == "eu"));
    }
    fail(&router, "eu-0");
    let error = router.route(&m, Some(&allowed), None);
    // The only allowed instance is ejected: panic routes to it rather than elsewhere.
    let route = error.unwrap();
    assert!(route.candidates.iter().all(|c| &*c.instance.region == "eu"));
    router.eject(&[instance(&router, "eu-0").clone()]);
    let error = router.route(&m, Some(&allowed), None).unwrap_err();
    assert!(error.contains("eu/eu-0: ejected by operator"), "{error}");
    let unknown = router
        .route(&model(&["us"]), Some(&allowed), None)
        .unwrap_err();
    assert!(unknown.contains("may use only eu"), "{unknown}");
}

#[tokio::test(start_paused = true)]
async fn a_session_stays_on_its_instance_until_it_is_drained() {
    let router = router(&[region("us", 0, 4)]);
    let m = model(&["us"]);
    let first = router.route(&m, None, Some("conversation-7")).unwrap();
    let home = first.candidates[0].instance.clone();
    for _ in 0..20 {
        let again = router.route(&m, None, Some("conversation-7")).unwrap();
        assert!(Arc::ptr_eq(again.candidates[0].instance, &home));
        assert!(
            again.reason.starts_with("session sticky"),
            "{}",
            again.reason
        );
    }
    router.drain(std::slice::from_ref(&home), None);
    let moved = router.route(&m, None, Some("conversation-7")).unwrap();
    assert!(!Arc::ptr_eq(moved.candidates[0].instance, &home));
    assert!(moved.reason.contains("drained"), "{}", moved.reason);
    assert!(
        moved
            .candidates
            .iter()
            .all(|c| !Arc::ptr_eq(c.instance, &home))
    );
    // And it stays where it moved.
    let again = router.route(&m, None, Some("conversation-7")).unwrap();
    assert!(Arc::ptr_eq(
        again.candidates[0].instance,
        moved.candidates[0].instance
    ));
}

#[tokio::test(start_paused = true)]
async fn power_of_two_choices_avoids_the_loaded_instance() {
    let router = router(&[region("us", 0, 2)]);
    let m = model(&["us"]);
    let _load = instance(&router, "us-0").try_acquire(10_000).unwrap();
    for _ in 0..50 {
        let route = router.route(&m, None, None).unwrap();
        assert_eq!(route.candidates[0].instance.name(), "us-1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_cools_an_instance_down_and_traffic_goes_around_it() {
    let router = router(&[region("us", 0, 2)]);
    let m = model(&["us"]);
    router.report(
        instance(&router, "us-0"),
        Outcome::RateLimited(Duration::from_secs(5)),
        None,
    );
    for _ in 0..20 {
        let route = router.route(&m, None, None).unwrap();
        assert_eq!(route.candidates[0].instance.name(), "us-1");
    }
    let views = router.views();
    assert_eq!(views[0].instances[0].health.state, Standing::CoolingDown);
    assert_eq!(views[0].instances[0].health.ejections, 0);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        router.views()[0].instances[0].health.state,
        Standing::Healthy
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_has_a_floor_and_grows_with_traffic() {
    let router = router(&[region("us", 0, 1)]);
    let granted = (0..100).filter(|_| router.try_retry()).count();
    assert_eq!(
        granted, 30,
        "the floor: three a second over the ten-second window"
    );
    for _ in 0..1000 {
        router.count_request();
    }
    let granted = (0..500).filter(|_| router.try_retry()).count();
    assert_eq!(granted, 170, "20% of 1000, thirty already spent");
    tokio::time::advance(RETRY_WINDOW * 3).await;
    assert_eq!((0..100).filter(|_| router.try_retry()).count(), 30);
}

#[tokio::test(start_paused = true)]
async fn a_drain_deadline_cuts_what_still_runs() {
    let router = router(&[region("us", 0, 1)]);
    let target = instance(&router, "us-0").clone();
    let slot = target.try_acquire(10).unwrap();
    let cut = target.cut_watch().cut();
    assert_eq!(
        router.drain(std::slice::from_ref(&target), Some(Duration::from_secs(5))),
        1
    );
    assert_eq!(router.views()[0].state, RegionState::Draining);
    assert!(router.enforce_drains().is_empty(), "before the deadline");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(router.enforce_drains(), ["us-0"]);
    tokio::time::timeout(Duration::from_secs(1), cut)
        .await
        .unwrap();
    drop(slot);
    assert_eq!(router.views()[0].state, RegionState::Drained);
    router.undrain(&[target]);
    assert_eq!(router.views()[0].state, RegionState::Healthy);
}

#[test]
fn envoy_priority_load_follows_health() {
    // Healthy first level: everything there.
    assert_eq!(pick_level(&[1.0, 1.0], 2.0, 0.99), 0);
    // 70% first, the rest spills.
    assert_eq!(pick_level(&[0.7, 1.0], 1.7, 0.69), 0);
    assert_eq!(pick_level(&[0.7, 1.0], 1.7, 0.71), 1);
    // Short of 100% overall: normalised.
    assert_eq!(pick_level(&[0.2, 0.2], 0.4, 0.49), 0);
    assert_eq!(pick_level(&[0.2, 0.2], 0.4, 0.51), 1);
}

#[test]
fn an_instance_keeps_its_attempts_failures_and_upstream_time_second_by_second() {
    let router = router(&[region("us", 0, 1)]);
    let name = router.instances().next().unwrap().name().to_string();
    let us = instance(&router, &name);
    for ms in [10, 20, 30] {
        router.report(us, Outcome::Success, Some(Duration::from_millis(ms)));
    }
    router.report(us, Outcome::RateLimited(Duration::from_secs(1)), None);
    router.sample();
    fail(&router, &name);
    router.sample();
    let detail = router.instance_detail(&name).expect("a detail");
    assert_eq!(detail.region, "us");
    let h = detail.history;
    assert_eq!(h.requests, [4, 1]);
    assert_eq!(
        h.refused_by_code,
        [
            ("failed".to_string(), vec![0, 1]),
            ("rate_limited".to_string(), vec![1, 0]),
        ]
    );
    let p99 = h.e2e_p99_ms[0].expect("upstream time in the first second");
    assert!((p99 - 30.0).abs() <= 3.0, "{p99}");
    assert_eq!(h.e2e_p99_ms[1], None, "nothing succeeded in the second");
    assert!(router.instance_detail("nowhere").is_none());
}
