//! The console: every view rendered into ratatui's TestBackend from a fixed snapshot and
//! compared with insta snapshots; the update logic without a terminal; and the controls
//! it drives, end to end through the admin API, in-process and remote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use reqwest::Method;
use serde_json::json;
use switchyard::console::model::{Cmd, Mode, Model, Msg, Sort, View, update};
use switchyard::console::view::render;
use switchyard::control::{Control, Feed, Link, Remote};
use switchyard::domain::Limits;
use switchyard::domain::snapshot::*;

fn health(state: InstanceState) -> HealthView {
    HealthView {
        state,
        probe_ok: state != InstanceState::ProbeFailing,
        consecutive_failures: 0,
        ejections: u32::from(state == InstanceState::Ejected),
        ejected_for_ms: (state == InstanceState::Ejected).then_some(12_000),
        cooling_for_ms: None,
        manual_eject: false,
    }
}

fn instance(name: &str, state: InstanceState, in_flight: u32) -> InstanceView {
    InstanceView {
        name: name.into(),
        url: format!("http://{name}/v1"),
        weight: 1,
        max_concurrency: 64,
        in_flight,
        outstanding_tokens: u64::from(in_flight) * 300,
        latency_ms: 180.5,
        p50_ms: Some(420.0),
        p99_ms: Some(910.0),
        error_rate: if state == InstanceState::Ejected {
            0.5
        } else {
            0.01
        },
        health: health(state),
    }
}

fn tenant(name: &str, tier: &str, day_tokens: u64, queued: u64, paused: bool) -> TenantView {
    TenantView {
        name: name.into(),
        tier: tier.into(),
        paused,
        limits: Limits {
            rpm: Some(600),
            tpm: Some(100_000),
            daily_tokens: Some(1_000_000),
            ..Limits::default()
        },
        overrides: Limits::default(),
        in_flight: 3,
        requests_available: Some(450),
        tokens_available: Some(25_000),
        day: PeriodView {
            tokens: day_tokens,
            cost_usd: 1.25,
            requests: 900,
            reserved_tokens: 0,
        },
        month: PeriodView {
            tokens: day_tokens * 10,
            cost_usd: 12.5,
            requests: 9000,
            reserved_tokens: 0,
        },
        batch_in_flight: 0,
        batch_day: PeriodView::default(),
        queued,
        p99_ms: Some(840.0),
        changed: if paused {
            vec!["tier".into(), "paused".into()]
        } else {
            Vec::new()
        },
        requests_last_minute: 450,
        tokens_last_minute: 52_000,
        refused: if paused {
            vec![("tenant_paused".into(), 12)]
        } else {
            Vec::new()
        },
        cluster: None,
    }
}

/// A fixed moment in a gateway's life: us-east degraded, a paused tenant, two streams.
fn fixture() -> Snapshot {
    Snapshot {
        taken_at_ms: 1_795_896_000_000,
        uptime_secs: 3725,
        totals: Totals {
            requests: 120_400,
            errors: 310,
            tokens: 9_800_000,
            requests_per_sec: 42.5,
            tokens_per_sec: 3150.0,
            error_rate: 0.012,
            refusal_rate: 0.085,
            queued: 7,
            in_flight: 19,
        },
        regions: vec![
            RegionView {
                name: "us-east".into(),
                order: 0,
                state: RegionState::Degraded,
                routable: 0.5,
                instances: vec![
                    instance("us-east-a", InstanceState::Healthy, 11),
                    instance("us-east-b", InstanceState::Ejected, 0),
                ],
            },
            RegionView {
                name: "eu-west".into(),
                order: 1,
                state: RegionState::Healthy,
                routable: 1.0,
                instances: vec![instance("eu-west-a", InstanceState::Healthy, 8)],
            },
            RegionView {
                name: "ap-south".into(),
                order: 2,
                state: RegionState::Draining,
                routable: 0.0,
                instances: vec![instance("ap-south-a", InstanceState::Draining, 0)],
            },
        ],
        tenants: vec![
            tenant("acme", "enterprise", 450_000, 0, false),
            tenant("globex", "pro", 900_000, 5, false),
            tenant("initech", "free", 120_000, 2, true),
        ],
        levels: vec![
            LevelView {
                tier: "enterprise".into(),
                share: 60,
                seats: 115,
                in_use: 12,
                borrowed: 0,
                queued: 0,
                oldest_wait_ms: 0,
                dispatched: 80_000,
            },
            LevelView {
                tier: "pro".into(),
                share: 30,
                seats: 57,
                in_use: 6,
                borrowed: 0,
                queued: 5,
                oldest_wait_ms: 1200,
                dispatched: 30_000,
            },
            LevelView {
                tier: "free".into(),
                share: 10,
                seats: 19,
                in_use: 1,
                borrowed: 0,
                queued: 2,
                oldest_wait_ms: 3400,
                dispatched: 10_400,
            },
        ],
        batches: vec![
            BatchView {
                id: "batch_nightly0000000000000001".into(),
                tenant: "globex".into(),
                status: "in_progress".into(),
                endpoint: "/v1/chat/completions".into(),
                total: 10_000,
                completed: 6_180,
                failed: 20,
                tokens: 1_240_000,
                lines_per_sec: Some(41.3),
                eta_secs: Some(92),
                created_at: 1_795_895_850,
                expires_at: 1_795_982_250,
                held: None,
                errors: Vec::new(),
            },
            BatchView {
                id: "batch_reports000000000000002".into(),
                tenant: "acme".into(),
                status: "in_progress".into(),
                endpoint: "/v1/embeddings".into(),
                total: 2_000,
                completed: 500,
                failed: 0,
                tokens: 250_000,
                lines_per_sec: Some(2.0),
                eta_secs: Some(750),
                created_at: 1_795_895_750,
                expires_at: 1_795_982_150,
                held: Some("the tenant's batch lines have used their batch_daily_tokens (250000) for now; the line waits 6h05m".into()),
                errors: Vec::new(),
            },
            BatchView {
                id: "batch_done00000000000000003".into(),
                tenant: "acme".into(),
                status: "completed".into(),
                endpoint: "/v1/chat/completions".into(),
                total: 30,
                completed: 30,
                failed: 0,
                tokens: 4_100,
                lines_per_sec: Some(15.0),
                eta_secs: None,
                created_at: 1_795_890_000,
                expires_at: 1_795_976_400,
                held: None,
                errors: Vec::new(),
            },
        ],
        flow_runs: vec![
            FlowRunView {
                id: "run_handbook00000000000000001".into(),
                tenant: "acme".into(),
                flow: "handbook-ask".into(),
                status: "running".into(),
                current: Some("answer".into()),
                steps_done: 1,
                steps_total: 2,
                elapsed_secs: 4,
                tokens: 48,
                error: None,
                created_at: 1_795_895_996,
                steps: vec![FlowStepView {
                    name: "context".into(),
                    kind: "retrieve".into(),
                    status: "completed".into(),
                    attempts: 1,
                    elapsed_ms: 35,
                    tokens: 48,
                    calls: 1,
                    error: None,
                }],
            },
            FlowRunView {
                id: "run_support000000000000000002".into(),
                tenant: "globex".into(),
                flow: "support-agent".into(),
                status: "failed".into(),
                current: None,
                steps_done: 1,
                steps_total: 1,
                elapsed_secs: 12,
                tokens: 20_400,
                error: Some("agent_budget_exceeded at reply: step reply: the agent used 20400 tokens, over its budget of 20000".into()),
                created_at: 1_795_895_900,
                steps: vec![FlowStepView {
                    name: "reply".into(),
                    kind: "agent".into(),
                    status: "failed".into(),
                    attempts: 1,
                    elapsed_ms: 12_010,
                    tokens: 20_400,
                    calls: 5,
                    error: Some("agent_budget_exceeded: step reply: the agent used 20400 tokens, over its budget of 20000".into()),
                }],
            },
        ],
        streams: vec![
            StreamView {
                id: "str_1".into(),
                tenant: "acme".into(),
                model: "gpt-4o-mini".into(),
                region: "us-east".into(),
                instance: "us-east-a".into(),
                tokens: 120,
                tokens_per_sec: 48.0,
                age_ms: 2500,
                tail: "Switchyards sort freight cars onto tracks.".into(),
            },
            StreamView {
                id: "str_2".into(),
                tenant: "globex".into(),
                model: "gpt-4o".into(),
                region: "eu-west".into(),
                instance: "eu-west-a".into(),
                tokens: 12,
                tokens_per_sec: 24.0,
                age_ms: 500,
                tail: "A marshalling yard".into(),
            },
        ],
        events: vec![
            Event {
                at_ms: 1_795_895_990_000,
                kind: EventKind::Routing,
                actor: None,
                message: "us-east/us-east-b ejected for 30s after 5 consecutive failures".into(),
            },
            Event {
                at_ms: 1_795_895_995_000,
                kind: EventKind::Operator,
                actor: Some("alice".into()),
                message: "ap-south is draining; 3 in flight finish or are cut at the deadline"
                    .into(),
            },
        ],
        queue_history: vec![0, 1, 3, 7, 12, 9, 7],
        latency: vec![LatencyView {
            metric: "e2e".into(),
            scope: "region:us-east".into(),
            window: "1m".into(),
            count: 2400,
            p50_ms: 420.0,
            p90_ms: 700.0,
            p99_ms: 840.0,
            p999_ms: 990.0,
            max_ms: 1200.0,
            buckets: vec![10, 40, 30, 5],
            bucket_ms: vec![250.0, 500.0, 1000.0, 2000.0],
            p99_history_ms: vec![800.0, 840.0],
        }],
        errors_by_code: vec![("rate_limit_exceeded".into(), 12)],
        cache: CacheView {
            enabled: true,
            entries: 1_520,
            bytes: 14_200_000,
            max_bytes: 64 << 20,
            hits: 8_100,
            misses: 2_900,
            bypasses: 109_400,
            coalesced: 240,
            evictions: 0,
            expirations: 310,
            scopes: vec![CacheScopeView {
                scope: "acme".into(),
                entries: 1_200,
                bytes: 11_000_000,
                hits: 7_000,
            }],
        },
        audit: AuditView::default(),
        persistence_degraded: None,
        cluster: None,
    }
}

fn model_with_fixture() -> Model {
    let mut model = Model::new("test gateway", false);
    update(&mut model, Msg::Feed(Feed::Link(Link::Connected)));
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    model
}

fn draw(model: &Model) -> String {
    draw_at(model, 120, 26)
}

fn draw_at(model: &Model, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| render(model, f)).unwrap();
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol().to_string())
            .collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Types `:LINE` and Enter.
fn command(model: &mut Model, line: &str) -> Vec<Cmd> {
    type_line(model, ":", line)
}

/// Types `/TEXT` and Enter.
fn filter(model: &mut Model, text: &str) -> Vec<Cmd> {
    type_line(model, "/", text)
}

/// Opens a prompt with `opener`, types `text` into it and presses Enter.
fn type_line(model: &mut Model, opener: &str, text: &str) -> Vec<Cmd> {
    key(model, opener);
    for c in text.chars() {
        let name = if c == ' ' {
            "space".to_string()
        } else {
            c.to_string()
        };
        key(model, &name);
    }
    key(model, "enter")
}

/// Presses `s` until the tenants are sorted by `sort` (at most once round).
fn sort_by(model: &mut Model, sort: Sort) {
    for _ in 0..12 {
        if model.sort == sort {
            return;
        }
        key(model, "s");
    }
    panic!("s never sorts by {sort:?}");
}

/// The audit view's query with no filter: the newest records.
fn newest_records() -> switchyard::domain::records::AuditQuery {
    switchyard::domain::records::AuditQuery {
        limit: switchyard::console::model::AUDIT_ROWS,
        ..Default::default()
    }
}

fn key(model: &mut Model, key: &str) -> Vec<Cmd> {
    update(model, Msg::Key(key.into()))
}

#[test]
fn every_view_renders_the_snapshot() {
    let mut model = model_with_fixture();
    for view in View::ALL {
        model.view = view;
        insta::assert_snapshot!(view.title().to_lowercase(), draw(&model));
    }
}

#[test]
fn the_help_overlay_and_a_confirmation_render_over_the_view() {
    let mut model = model_with_fixture();
    key(&mut model, "?");
    insta::assert_snapshot!("help", draw(&model));
    key(&mut model, "esc");
    key(&mut model, "3");
    key(&mut model, "d");
    insta::assert_snapshot!("confirm_drain", draw(&model));
}

#[test]
fn d_then_y_on_a_region_drains_it() {
    let mut model = model_with_fixture();
    key(&mut model, "3");
    assert!(key(&mut model, "d").is_empty(), "asks first");
    let Mode::Confirm { action, impact } = &model.mode else {
        panic!("expected a confirmation, got {:?}", model.mode);
    };
    assert_eq!(
        action,
        &Action::DrainRegion {
            region: "us-east".into(),
            deadline_secs: None
        }
    );
    assert_eq!(impact, "11 requests in flight");
    let cmds = key(&mut model, "y");
    assert_eq!(
        cmds,
        [Cmd::Act(Action::DrainRegion {
            region: "us-east".into(),
            deadline_secs: None
        })]
    );
}

#[test]
fn an_operator_follows_a_flow_run_step_by_step_and_cancels_it_after_confirming() {
    let mut model = model_with_fixture();
    key(&mut model, "9");
    assert_eq!(model.view, View::Flows);
    let list = draw(&model);
    for shown in [
        "flow runs: 1 running, 1 ended lately",
        "handbook-ask",
        "support-agent",
        "1/2",
    ] {
        assert!(list.contains(shown), "{shown} not in\n{list}");
    }
    insta::assert_snapshot!("flows", list);
    key(&mut model, "enter");
    let screen = draw(&model);
    for shown in [
        "flow run run_handbook00000000000000001",
        "1 of 2 steps done, answer in flight   48 tokens   running for 4s",
        "context          retrieve  completed  35 ms, 1 attempt, 48 tokens, 1 model call",
        "answer           (in flight)",
    ] {
        assert!(screen.contains(shown), "{shown} not in\n{screen}");
    }
    insta::assert_snapshot!("flow_run_detail", screen);
    // x in the detail cancels the run shown, after asking with what it stops.
    assert!(key(&mut model, "x").is_empty(), "asks first");
    let Mode::Confirm { action, impact } = &model.mode else {
        panic!("expected a confirmation, got {:?}", model.mode);
    };
    let cancel = Action::CancelFlowRun {
        id: "run_handbook00000000000000001".into(),
    };
    assert_eq!(action, &cancel);
    assert_eq!(
        impact,
        "acme's handbook-ask, 1 of 2 steps done, answer in flight is dropped; the rest do not run"
    );
    assert_eq!(key(&mut model, "y"), [Cmd::Act(cancel)]);
    // An ended run shows why it failed, and is not asked about.
    key(&mut model, "esc");
    assert!(model.run_detail.is_none());
    key(&mut model, "j");
    key(&mut model, "enter");
    assert!(draw(&model).contains("agent_budget_exceeded at reply"));
    assert!(key(&mut model, "x").is_empty());
    assert!(matches!(model.mode, Mode::Normal), "{:?}", model.mode);
    let status = model.status.clone().unwrap();
    assert!(
        status.error && status.text.contains("has ended (failed)"),
        "{status:?}"
    );
    assert!(command(&mut model, "cancel-run run_nope").is_empty());
    assert!(
        model
            .status
            .clone()
            .unwrap()
            .text
            .contains("there is no flow run run_nope")
    );
}

#[test]
fn an_operator_follows_a_batch_in_depth_and_cancels_it_after_confirming() {
    let mut model = model_with_fixture();
    key(&mut model, "8");
    assert_eq!(model.view, View::Batches);
    key(&mut model, "enter");
    let screen = draw(&model);
    for shown in [
        "batch batch_nightly0000000000000001",
        "10000 lines: 6180 completed, 20 failed, 3800 to go",
        "1240000 tokens used   41.3 lines/s   done in about 1m32s",
        "expires in 23h57m",
    ] {
        assert!(screen.contains(shown), "{shown} not in\n{screen}");
    }
    insta::assert_snapshot!("batch_detail", screen);
    // x in the detail cancels the batch shown, after asking with what it stops.
    assert!(key(&mut model, "x").is_empty(), "asks first");
    let Mode::Confirm { action, impact } = &model.mode else {
        panic!("expected a confirmation, got {:?}", model.mode);
    };
    let cancel = Action::CancelBatch {
        id: "batch_nightly0000000000000001".into(),
    };
    assert_eq!(action, &cancel);
    assert_eq!(
        impact,
        "globex's, 6200 of 10000 lines done; the other 3800 are not run"
    );
    assert_eq!(key(&mut model, "y"), [Cmd::Act(cancel)]);
    // Back in the list: the waiting batch says it waits, and why in depth; an ended
    // batch is not asked about.
    key(&mut model, "esc");
    assert!(model.batch_detail.is_none());
    key(&mut model, "j");
    key(&mut model, "enter");
    assert!(
        draw(&model)
            .contains("waiting: the tenant's batch lines have used their batch_daily_tokens")
    );
    key(&mut model, "esc");
    key(&mut model, "j");
    assert!(key(&mut model, "x").is_empty());
    assert!(matches!(model.mode, Mode::Normal), "{:?}", model.mode);
    let status = model.status.clone().unwrap();
    assert!(
        status.error && status.text.contains("has ended (completed)"),
        "{status:?}"
    );
    // One already stopping is not asked about again.
    if let Some(snapshot) = model.snapshot.as_mut() {
        snapshot.batches[0].status = "cancelling".into();
    }
    assert!(command(&mut model, "cancel-batch batch_nightly0000000000000001").is_empty());
    assert!(
        model
            .status
            .clone()
            .unwrap()
            .text
            .contains("is already cancelling")
    );
    // The command line names a batch too.
    assert!(command(&mut model, "cancel-batch batch_nope").is_empty());
    assert!(
        model
            .status
            .clone()
            .unwrap()
            .text
            .contains("there is no batch batch_nope")
    );
}

#[test]
fn anything_but_y_cancels_and_undrain_needs_no_confirmation() {
    let mut model = model_with_fixture();
    key(&mut model, "3");
    key(&mut model, "j");
    key(&mut model, "e");
    assert!(key(&mut model, "n").is_empty());
    assert_eq!(model.status.as_ref().unwrap().text, "cancelled");
    let cmds = key(&mut model, "u");
    assert_eq!(
        cmds,
        [Cmd::Act(Action::UndrainInstance {
            instance: "us-east-a".into()
        })]
    );
}

#[test]
fn purging_the_cache_asks_first_and_names_what_goes() {
    let mut model = model_with_fixture();
    command(&mut model, "purge-cache acme");
    let Mode::Confirm { action, impact } = &model.mode else {
        panic!("{:?}", model.mode)
    };
    assert_eq!(action.describe(), "purge acme's cache");
    assert_eq!(impact, "1200 answers kept, 10.5 MiB");
    let cmds = key(&mut model, "y");
    assert_eq!(
        cmds,
        [Cmd::Act(Action::PurgeCache {
            tenant: Some("acme".into())
        })]
    );
    assert_eq!(
        switchyard::console::model::parse_command("purge-cache").unwrap(),
        Some(Action::PurgeCache { tenant: None })
    );
    assert!(switchyard::console::model::parse_command("purge-cache a b").is_err());
}

#[test]
fn the_events_view_switches_to_the_audit_log() {
    let mut model = model_with_fixture();
    key(&mut model, "7");
    assert_eq!(key(&mut model, "a"), [Cmd::ReadAudit(newest_records())]);
    let record = |at_ms, status, tenant: &str| switchyard::domain::records::AuditRecord {
        at_ms,
        kind: Some(switchyard::domain::records::AuditKind::Request),
        tenant: Some(tenant.into()),
        status: Some(status),
        model: Some("gpt-4o-mini".into()),
        prompt_tokens: Some(12),
        completion_tokens: Some(30),
        latency_ms: Some(410),
        instance: Some("us-east-a".into()),
        ..Default::default()
    };
    update(
        &mut model,
        Msg::Audit(Ok(vec![
            record(1_795_895_990_000, 200, "acme"),
            record(1_795_895_995_000, 429, "initech"),
        ])),
    );
    let screen = draw(&model);
    assert!(screen.contains("audit log, newest first"), "{screen}");
    let newest = screen.find("initech 429").unwrap();
    let older = screen
        .find("acme 200 gpt-4o-mini 12+30 tokens 410ms via us-east-a")
        .unwrap();
    assert!(newest < older, "newest first: {screen}");
    // Every other snapshot asks again; `a` goes back to the events.
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    let cmds = update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    assert_eq!(cmds, [Cmd::ReadAudit(newest_records())]);
    key(&mut model, "a");
    assert!(draw(&model).contains("events, newest first"));
    let cmds = update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    assert!(cmds.is_empty());
}

#[test]
fn the_command_line_parses_tier_and_limits() {
    let mut model = model_with_fixture();
    command(&mut model, "tier globex enterprise");
    assert!(matches!(model.mode, Mode::Confirm { .. }));
    let cmds = key(&mut model, "y");
    assert_eq!(
        cmds,
        [Cmd::Act(Action::SetTier {
            tenant: "globex".into(),
            tier: "enterprise".into()
        })]
    );

    let parsed =
        switchyard::console::model::parse_command("limits initech rpm=10 tpm=5000").unwrap();
    let Some(Action::SetLimits { tenant, limits }) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(tenant, "initech");
    assert_eq!((limits.rpm, limits.tpm), (Some(10), Some(5000)));
    assert!(switchyard::console::model::parse_command("drain").is_err());
    assert!(switchyard::console::model::parse_command("limits x rpm=many").is_err());
}

#[test]
fn tenants_sort_filter_and_pause_from_the_keyboard() {
    let mut model = model_with_fixture();
    key(&mut model, "2");
    sort_by(&mut model, Sort::TokensToday);
    let first = model.tenant_rows()[0];
    assert_eq!(
        model.snapshot.as_ref().unwrap().tenants[first].name,
        "globex",
        "most tokens today first"
    );
    filter(&mut model, "init");
    assert_eq!(model.tenant_rows().len(), 1);
    key(&mut model, "p");
    assert!(
        matches!(&model.mode, Mode::Confirm { action: Action::PauseTenant { tenant }, .. } if tenant == "initech")
    );
}

#[test]
fn a_read_only_console_never_acts() {
    let mut model = Model::new("ro", true);
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    key(&mut model, "3");
    assert!(key(&mut model, "d").is_empty());
    assert!(key(&mut model, "y").is_empty());
    assert!(model.status.as_ref().unwrap().error);
}

#[test]
fn space_pauses_the_view_while_snapshots_keep_arriving() {
    let mut model = model_with_fixture();
    key(&mut model, "space");
    let mut newer = fixture();
    newer.uptime_secs += 10;
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(newer))));
    assert_eq!(
        model.snapshot.as_ref().unwrap().uptime_secs,
        3725,
        "held while paused"
    );
    key(&mut model, "space");
    assert_eq!(model.snapshot.as_ref().unwrap().uptime_secs, 3735);
}

#[test]
fn a_silent_link_is_shown_as_stale() {
    let mut model = model_with_fixture();
    assert!(!draw(&model).contains("not live"));
    update(&mut model, Msg::Silence(6));
    let screen = draw(&model);
    assert!(screen.contains("stale: no snapshot for 5 s"));
    assert!(
        screen.contains("not live: last data from 20:00:00 UTC"),
        "{screen}"
    );
    // The body's numbers are dimmed, not shown as live.
    let mut terminal = Terminal::new(TestBackend::new(120, 26)).unwrap();
    terminal.draw(|f| render(&model, f)).unwrap();
    let cell = &terminal.backend().buffer()[(3, 4)];
    assert!(
        cell.modifier.contains(ratatui::style::Modifier::DIM),
        "{cell:?}"
    );
    // A lost link too; a fresh snapshot makes it live again.
    update(
        &mut model,
        Msg::Feed(Feed::Link(Link::Reconnecting {
            attempt: 1,
            reason: "connection refused".into(),
        })),
    );
    update(&mut model, Msg::Silence(0));
    assert!(draw(&model).contains("not live"));
    update(&mut model, Msg::Feed(Feed::Link(Link::Connected)));
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    assert!(!draw(&model).contains("not live"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_actions_change_routing_and_admission_through_the_admin_api() {
    let us = quick_mock().spawn_local().await.unwrap();
    let eu = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us), ("eu-west", &eu)]).await;
    let remote = Remote::new(&gw.daemon.admin_url().unwrap(), ADMIN_TOKEN, "alice", None).unwrap();

    let done = remote
        .act(Action::DrainRegion {
            region: "us-east".into(),
            deadline_secs: Some(30.0),
        })
        .await
        .unwrap();
    assert!(done.contains("us-east is draining"), "{done}");
    let reply = gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    assert_eq!(header(&reply, "x-switchyard-region"), "eu-west");

    let mut streamed = gw.chat(KEY_B, &hello_stream("gpt-4o-mini")).await;
    while streamed.chunk().await.unwrap().is_some() {}

    remote
        .act(Action::PauseTenant {
            tenant: "tenant-a".into(),
        })
        .await
        .unwrap();
    assert_eq!(gw.chat(KEY_A, &hello("gpt-4o-mini")).await.status(), 403);
    let refused = remote
        .act(Action::SetTier {
            tenant: "tenant-a".into(),
            tier: "gold".into(),
        })
        .await;
    assert!(refused.unwrap_err().contains("gold"));

    // The audit log through the same control: the requests and alice's actions.
    let records = remote
        .audit(switchyard::domain::records::AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let lines: Vec<String> = records.iter().map(|r| r.summary()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("operator alice: us-east is draining")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("operator alice: move tenant-a to tier gold refused")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("request  tenant-a 403")),
        "{lines:#?}"
    );

    // The snapshot feed shows it, and the event log names who did it.
    let mut feed = remote.subscribe();
    let first = async {
        loop {
            match feed.recv().await {
                Some(Feed::Snapshot(s)) => break s,
                Some(Feed::Link(Link::Reconnecting { reason, .. })) if reason != "connecting" => {
                    panic!("the feed broke: {reason}")
                }
                Some(Feed::Link(_)) => continue,
                None => panic!("the feed ended"),
            }
        }
    };
    let snapshot = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap();
    assert_eq!(snapshot.regions[0].state, RegionState::Drained);
    assert!(
        snapshot
            .tenants
            .iter()
            .any(|t| t.name == "tenant-a" && t.paused)
    );
    assert!(
        snapshot.events.iter().any(
            |e| e.actor.as_deref() == Some("alice") && e.message.contains("tenant-a is paused")
        )
    );
    let ttft = snapshot
        .latency
        .iter()
        .find(|l| l.metric == "ttft" && l.scope == "region:eu-west" && l.window == "1m")
        .expect("the stream's time to first token was recorded");
    assert_eq!(ttft.count, 1);
    assert!(
        snapshot
            .latency
            .iter()
            .any(|l| l.metric == "overhead" && l.scope == "tier:pro")
    );
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_or_wrong_token_and_tenant_keys() {
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &us)]).await;
    let base = gw.daemon.admin_url().unwrap();
    for path in ["/admin/snapshot", "/admin/events", "/metrics"] {
        let none = gw.client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        for wrong in ["not-the-token", KEY_A] {
            let reply = gw
                .client
                .get(format!("{base}{path}"))
                .bearer_auth(wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 401, "{path} with {wrong}");
        }
    }
    let action = gw
        .client
        .post(format!("{base}/admin/actions"))
        .bearer_auth(KEY_A)
        .json(&json!({ "action": "pause_tenant", "tenant": "tenant-b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(action.status(), 401);
    assert_eq!(
        gw.chat(KEY_B, &hello("gpt-4o-mini")).await.status(),
        200,
        "nothing was paused"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains("switchyard_requests_total 1"), "{metrics}");
    assert!(
        metrics.contains("switchyard_cache_lookups_total{result=\"bypass\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_audit_backlog "), "{metrics}");
    assert!(
        metrics.contains(
            "switchyard_instance_up{region=\"us-east\",instance=\"us-east-a\",state=\"healthy\"} 1"
        ),
        "{metrics}"
    );
    let _ = Arc::new(());
}

#[test]
fn the_selected_row_scrolls_into_view_in_a_long_list() {
    let mut snapshot = fixture();
    snapshot.tenants = (0..300)
        .map(|i| tenant(&format!("tenant-{i:03}"), "pro", 10, 0, false))
        .collect();
    let mut model = Model::new("test gateway", false);
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(snapshot))));
    key(&mut model, "2");
    for _ in 0..150 {
        key(&mut model, "j");
    }
    let screen = draw(&model);
    assert!(screen.contains("tenant-150"), "{screen}");
    assert!(!screen.contains("tenant-000"), "scrolled past the top");
}

#[tokio::test]
async fn an_operator_kills_a_live_stream_and_its_client_is_told() {
    let slow = switchyard::mock::MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(10.0)
        .answer_tokens(200)
        .spawn_local()
        .await
        .unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &slow)]).await;
    let mut reply = gw.chat(KEY_A, &hello_stream("gpt-4o-mini")).await;
    let id = header(&reply, "x-switchyard-stream-id").to_string();
    assert!(id.starts_with("str_"), "{id}");
    let mut seen = String::new();
    while streamed_text(&seen).is_empty() {
        seen.push_str(&String::from_utf8_lossy(
            &reply.chunk().await.unwrap().unwrap(),
        ));
    }
    let listed: serde_json::Value = gw.admin_json(Method::GET, "/admin/snapshot", None).await;
    assert!(
        listed["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str())
    );
    let killed = gw
        .admin(
            Method::POST,
            "/admin/actions",
            Some(json!({ "action": "kill_stream", "id": id })),
        )
        .await;
    assert_eq!(killed.status(), 200);
    while let Some(chunk) = reply.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last: serde_json::Value = serde_json::from_str(sse_data(&seen).last().unwrap()).unwrap();
    assert_eq!(last.pointer("/error/code"), Some(&json!("stream_killed")));
    let stats = slow
        .wait_for(Duration::from_secs(5), |s| s.streams_cancelled == 1)
        .await;
    assert_eq!(
        stats.streams_cancelled, 1,
        "the upstream generation was cancelled too"
    );
    let again = gw
        .admin(
            Method::POST,
            "/admin/actions",
            Some(json!({ "action": "kill_stream", "id": id })),
        )
        .await;
    assert_eq!(again.status(), 400, "the stream is gone");
    // The audit record of the stream says how it ended.
    let audit: serde_json::Value = gw
        .admin_json(Method::GET, "/admin/audit?kind=request", None)
        .await;
    let stream = &audit["records"][0];
    assert_eq!(stream["stream"], true);
    assert_eq!(stream["error"], "stream_killed", "{audit}");
}

#[test]
fn dispatch_rates_come_from_consecutive_snapshots() {
    let mut model = model_with_fixture();
    let mut later = fixture();
    later.taken_at_ms += 2000;
    later.levels[1].dispatched += 30;
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(later))));
    let pro = model
        .dispatch_rates
        .iter()
        .find(|(t, _)| t == "pro")
        .unwrap();
    assert_eq!(pro.1, 15.0);
    key(&mut model, "4");
    assert!(draw(&model).contains("15.0"));
}

#[test]
fn control_keys_never_pass_for_their_bare_letter() {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use switchyard::console::key_name;
    let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
    assert_eq!(key_name(&ctrl('u')).as_deref(), Some("ctrl-u"));
    assert_eq!(key_name(&ctrl('c')).as_deref(), Some("ctrl-c"));
    assert_eq!(
        key_name(&KeyEvent::new(KeyCode::Char('u'), KeyModifiers::ALT)),
        None
    );
    assert_eq!(
        key_name(&KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE)).as_deref(),
        Some("pgdn")
    );

    // Ctrl-U in Regions pages up; it never undrains ap-south (which `u` would).
    let mut model = model_with_fixture();
    key(&mut model, "3");
    key(&mut model, "G");
    let last = model.selected[2];
    assert!(last > 0);
    assert!(key(&mut model, "ctrl-u").is_empty());
    assert_eq!(model.mode, Mode::Normal);
    assert!(model.selected[2] < last, "paged up");
    key(&mut model, "ctrl-d");
    assert_eq!(model.selected[2], last, "paged down to the end");
    key(&mut model, "g");
    assert_eq!(model.selected[2], 0);

    // Inside a prompt Ctrl-C cancels; it never types.
    key(&mut model, ":");
    key(&mut model, "d");
    key(&mut model, "ctrl-c");
    assert_eq!(model.mode, Mode::Normal);
    // And outside one it quits.
    key(&mut model, "ctrl-c");
    assert!(model.quit);
}

#[test]
fn the_selection_follows_its_tenant_when_rows_move() {
    let mut model = model_with_fixture();
    key(&mut model, "2");
    // Sorted by name: acme, globex, initech. Select globex.
    key(&mut model, "j");
    // Sort by tokens today: globex first now, and still selected.
    sort_by(&mut model, Sort::TokensToday);
    assert_eq!(model.selected[1], 0);
    // A refresh where acme overtakes globex moves globex down; the selection goes along.
    let mut next = fixture();
    next.tenants[0].day.tokens = 5_000_000;
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(next))));
    assert_eq!(model.selected[1], 1);
    key(&mut model, "p");
    assert!(
        matches!(&model.mode, Mode::Confirm { action: Action::PauseTenant { tenant }, .. } if tenant == "globex"),
        "{:?}",
        model.mode
    );
    // A tenant that disappears leaves the selection on a row that exists.
    key(&mut model, "n");
    let mut fewer = fixture();
    fewer.tenants.retain(|t| t.name != "globex");
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fewer))));
    assert!(model.selected[1] < model.tenant_rows().len());
}

#[test]
fn commands_are_checked_before_asking_and_confirmations_show_the_change() {
    let mut model = model_with_fixture();
    assert!(command(&mut model, "drain mars").is_empty());
    assert_eq!(
        model.mode,
        Mode::Normal,
        "no prompt for a region that is not there"
    );
    let status = model.status.clone().unwrap();
    assert!(
        status.error && status.text.contains("no region mars"),
        "{status:?}"
    );
    assert!(
        status.text.contains("us-east"),
        "names the regions there are"
    );
    command(&mut model, "tier acme platinum");
    assert!(
        model
            .status
            .as_ref()
            .unwrap()
            .text
            .contains("no tier platinum")
    );
    command(&mut model, "kill str_404");
    assert!(
        model
            .status
            .as_ref()
            .unwrap()
            .text
            .contains("no live stream str_404")
    );

    command(&mut model, "limits acme rpm=10 daily_usd=5");
    let Mode::Confirm { impact, .. } = &model.mode else {
        panic!("{:?}", model.mode)
    };
    assert_eq!(impact, "rpm 600 → 10, daily_usd none → $5.00");
    key(&mut model, "n");
    command(&mut model, "reset globex");
    let Mode::Confirm { impact, .. } = &model.mode else {
        panic!("{:?}", model.mode)
    };
    assert!(impact.contains("forgives 900k tokens today"), "{impact}");
    let screen = draw(&model);
    assert!(screen.contains("forgives 900k tokens today"), "{screen}");
    assert!(!screen.contains("Some("), "{screen}");
}

#[test]
fn the_help_overlay_scrolls_to_every_key() {
    let mut model = model_with_fixture();
    key(&mut model, "?");
    let top = draw(&model);
    assert!(top.contains("keys 1-"), "{top}");
    assert!(
        !top.contains("audit log: switch"),
        "the last key is below: {top}"
    );
    key(&mut model, "G");
    let bottom = draw(&model);
    assert!(bottom.contains("back to the newest records"), "{bottom}");
    key(&mut model, "x");
    assert_eq!(model.mode, Mode::Normal);
}

#[test]
fn quitting_up_asks_naming_what_is_in_flight_then_shows_the_stop() {
    let mut model = model_with_fixture();
    model.stops_gateway = true;
    for quit in ["q", "ctrl-c"] {
        key(&mut model, quit);
        let Mode::ConfirmQuit { impact } = &model.mode else {
            panic!("{quit}: {:?}", model.mode)
        };
        assert_eq!(impact, "19 requests in flight, 2 streams");
        assert!(draw(&model).contains("Stop the gateway? 19 requests in flight, 2 streams  y/N"));
        assert!(key(&mut model, "n").is_empty());
        assert!(!model.quit && !model.stopping);
    }
    assert!(command(&mut model, "q").is_empty());
    assert!(
        matches!(model.mode, Mode::ConfirmQuit { .. }),
        ":q asks too"
    );
    assert_eq!(key(&mut model, "y"), [Cmd::StopGateway]);
    assert!(
        model.stopping && !model.quit,
        "the console stays to show the stop"
    );
    assert!(draw(&model).contains("STOPPING: 19 in flight, 2 streams"));
    update(&mut model, Msg::Feed(Feed::Link(Link::Stopped)));
    assert!(model.quit && model.exit_message.is_none());

    // A console attached to a remote daemon only detaches: no question.
    let mut remote = model_with_fixture();
    key(&mut remote, "q");
    assert!(remote.quit);
}

#[test]
fn a_refused_token_ends_the_console_with_the_reason() {
    let mut model = model_with_fixture();
    let reason = "the admin API refused the token (HTTP 401)".to_string();
    update(
        &mut model,
        Msg::Feed(Feed::Link(Link::Refused(reason.clone()))),
    );
    assert!(model.quit);
    assert_eq!(model.exit_message, Some(reason));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_admin_token_is_refused_once_not_retried_for_ever() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let remote = Remote::new(
        &gw.daemon.admin_url().unwrap(),
        "not-the-admin-token",
        "mallory",
        None,
    )
    .unwrap();
    let mut feed = remote.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("an answer")
        .expect("a link state");
    let Feed::Link(Link::Refused(reason)) = first else {
        panic!("{first:?}")
    };
    assert!(reason.contains("refused the token (HTTP 401)"), "{reason}");
    let after = tokio::time::timeout(Duration::from_secs(10), feed.recv()).await;
    assert!(matches!(after, Ok(None)), "the feed ends: {after:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_changes_nothing_says_so_and_is_not_on_the_record() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    let remote = Remote::new(&gw.daemon.admin_url().unwrap(), ADMIN_TOKEN, "alice", None).unwrap();
    let done = remote
        .act(Action::RestoreInstance {
            instance: "us-east-a".into(),
        })
        .await
        .unwrap();
    assert_eq!(done, "restore us-east-a: nothing to change");
    let done = remote
        .act(Action::ResumeTenant {
            tenant: "tenant-a".into(),
        })
        .await
        .unwrap();
    assert!(done.ends_with("nothing to change"), "{done}");
    let done = remote
        .act(Action::EjectInstance {
            instance: "us-east-a".into(),
        })
        .await
        .unwrap();
    assert!(done.contains("out of rotation"), "{done}");
    // The change is on the record, under the person who made it; the no-ops are not.
    let records = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let records = remote
                .audit(switchyard::domain::records::AuditQuery {
                    limit: 50,
                    ..Default::default()
                })
                .await
                .unwrap();
            if records
                .iter()
                .any(|r| r.action.as_deref() == Some("eject_instance"))
            {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the eject is audited");
    let operator: Vec<_> = records.iter().filter(|r| r.actor.is_some()).collect();
    assert_eq!(operator.len(), 1, "{operator:?}");
    assert_eq!(operator[0].actor.as_deref(), Some("alice"));
    gw.stop().await;
}

/// What the console shows is what clients got: refusals by code overall and per tenant,
/// and requests in the last minute against the limit, in absolute numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numbers_an_operator_reads_are_what_clients_saw() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let toml =
        config_for(&[("us-east", mock.url())], "").replace("[tiers.pro]", "[tiers.pro]\nrpm = 5");
    let gw = TestGateway::from_toml(&toml).await;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let status = gw
            .chat(KEY_A, &hello("gpt-4o-mini"))
            .await
            .status()
            .as_u16();
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, 5), (429, 3)].into_iter().collect());
    gw.admin(Method::POST, "/admin/tenants/tenant-b/pause", None)
        .await;
    for _ in 0..2 {
        assert_eq!(gw.chat(KEY_B, &hello("gpt-4o-mini")).await.status(), 403);
    }

    let snapshot = gw.daemon.gateway().snapshot();
    let tenant = |name: &str| snapshot.tenants.iter().find(|t| t.name == name).unwrap();
    assert_eq!(
        tenant("tenant-a").refused,
        [("rate_limit_exceeded".to_string(), 3)]
    );
    assert_eq!(tenant("tenant-a").requests_last_minute, 8);
    assert_eq!(
        tenant("tenant-b").refused,
        [("tenant_paused".to_string(), 2)]
    );
    let by_code: std::collections::BTreeMap<_, _> =
        snapshot.errors_by_code.iter().cloned().collect();
    assert_eq!(by_code.get("rate_limit_exceeded"), Some(&3));
    assert_eq!(by_code.get("tenant_paused"), Some(&2));

    let mut model = Model::new("test gateway", false);
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(snapshot))));
    key(&mut model, "2");
    let screen = draw(&model);
    let row = screen.lines().find(|l| l.contains("tenant-a")).unwrap();
    assert!(row.contains("8/5 160%"), "{row}");
    assert!(row.contains("3 rate"), "{row}");
    let row = screen.lines().find(|l| l.contains("tenant-b")).unwrap();
    assert!(row.contains("2 paused") && row.contains("PAUSED"), "{row}");
    key(&mut model, "1");
    let screen = draw(&model);
    assert!(screen.contains("3  rate_limit_exceeded"), "{screen}");
    assert!(screen.contains("2  tenant_paused"), "{screen}");
    gw.stop().await;
}

#[test]
fn each_view_keeps_its_own_filter_always_shown_and_esc_clears_it() {
    let mut model = model_with_fixture();
    key(&mut model, "2");
    filter(&mut model, "init");
    assert_eq!(model.tenant_rows().len(), 1);
    // Another action's message does not hide the filter.
    key(&mut model, "s");
    let screen = draw(&model);
    assert!(screen.contains("filter: init (Esc clears)"), "{screen}");

    // Streams has its own, and matches ids.
    key(&mut model, "5");
    assert_eq!(model.stream_rows().len(), 2);
    assert!(!draw(&model).contains("filter: init"));
    filter(&mut model, "str_2");
    assert_eq!(model.stream_rows().len(), 1);

    key(&mut model, "2");
    assert_eq!(
        model.tenant_rows().len(),
        1,
        "the tenants' filter is still set"
    );
    key(&mut model, "esc");
    assert_eq!(model.tenant_rows().len(), 3);
    assert!(!draw(&model).contains("filter:"));
    key(&mut model, "5");
    assert_eq!(
        model.stream_rows().len(),
        1,
        "only the current view's is cleared"
    );
}

/// Every view at the smallest terminal an operator may have (80x24) and a large one
/// (200x60): names whole, ids told apart, the footer within the width.
#[test]
fn every_view_reads_at_80x24_and_at_200x60() {
    let mut model = model_with_fixture();
    for (width, height) in [(80u16, 24u16), (200, 60)] {
        for view in View::ALL {
            model.view = view;
            let screen = draw_at(&model, width, height);
            insta::assert_snapshot!(
                format!("{width}x{height}_{}", view.title().to_lowercase()),
                screen
            );
            let footer = screen.lines().last().unwrap_or_default();
            assert!(footer.chars().count() <= usize::from(width), "{footer}");
            match view {
                View::Tenants => {
                    for name in ["acme", "globex", "initech"] {
                        assert!(screen.contains(name), "{width}x{height}: {screen}");
                    }
                    assert!(screen.contains("REFUSED"), "{screen}");
                }
                View::Streams => {
                    assert!(
                        screen.contains("str_1") && screen.contains("str_2"),
                        "{screen}"
                    );
                }
                View::Batches => {
                    assert!(
                        screen.contains("batch_nightly") && screen.contains("waiting"),
                        "{screen}"
                    );
                }
                View::Regions => {
                    assert!(
                        screen.contains("us-east-a") && screen.contains("ap-south-a"),
                        "{screen}"
                    );
                }
                _ => {}
            }
        }
    }
}

fn detail_fixture() -> TenantDetail {
    let tenant = fixture().tenants.remove(1);
    TenantDetail {
        tenant,
        requests_per_sec: (0..300).map(|s| 5 + s % 7).collect(),
        tokens_per_sec: (0..300).map(|s| 800 + (s % 5) * 100).collect(),
        refused_per_sec: (0..300).map(|s| u64::from(s % 60 > 50)).collect(),
        refused_by_code_per_sec: vec![
            (
                "rate_limit_exceeded".into(),
                (0..300).map(|s| u64::from(s % 60 > 50) * 3).collect(),
            ),
            (
                "tenant_paused".into(),
                (0..300).map(|s| u64::from(s % 60 < 5)).collect(),
            ),
        ],
        e2e_p50_ms: (0..300)
            .map(|s| (s % 9 != 0).then_some(40.0 + (s % 13) as f64))
            .collect(),
        e2e_p99_ms: (0..300)
            .map(|s| (s % 9 != 0).then_some(180.0 + (s % 17) as f64 * 10.0))
            .collect(),
        queue_p99_ms: (0..300).map(|s| Some((s % 11) as f64 * 2.0)).collect(),
        audit: vec![switchyard::domain::records::AuditRecord {
            at_ms: 1_795_896_000_000,
            kind: Some(switchyard::domain::records::AuditKind::Operator),
            actor: Some("alice".into()),
            outcome: Some("globex's limits: rpm 600, tpm 100000".into()),
            ..Default::default()
        }],
        audit_unreadable: None,
    }
}

#[test]
fn enter_drills_into_a_tenant_and_esc_comes_back() {
    let mut model = model_with_fixture();
    key(&mut model, "2");
    key(&mut model, "j");
    assert_eq!(key(&mut model, "enter"), [Cmd::ReadDetail("globex".into())]);
    assert!(draw(&model).contains("reading globex"));
    // Every snapshot reads it again while it is open.
    let cmds = update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    assert_eq!(cmds, [Cmd::ReadDetail("globex".into())]);
    update(&mut model, Msg::Detail(Ok(Box::new(detail_fixture()))));
    for (width, height) in [(80u16, 24u16), (200, 60)] {
        let screen = draw_at(&model, width, height);
        insta::assert_snapshot!(format!("{width}x{height}_tenant_detail"), screen);
        assert!(screen.contains("globex (Esc returns)"), "{screen}");
        assert!(screen.contains("requests/s (0 to 11)"), "{screen}");
        if width >= 200 {
            // rpm 600 and tpm 100000 as the per-second rates they allow.
            assert!(
                screen.contains("requests/s (0 to 11), limit 10/s"),
                "{screen}"
            );
            // Tokens per minute against tpm 100000; refusals by kind, coloured.
            assert!(
                screen.contains("tokens/min (0 to 60k) tpm limit 100k"),
                "{screen}"
            );
            assert!(
                screen.contains("refused/s (0 to 3) rate paused"),
                "{screen}"
            );
            assert!(screen.contains("e2e (0 to 340 ms) p50 p99"), "{screen}");
            assert!(screen.contains("queue wait p99 (0 to 20 ms)"), "{screen}");
        }
        assert!(screen.contains("refused/s (0 to 3)"), "{screen}");
        assert!(
            screen.contains("operator alice: globex's limits"),
            "{screen}"
        );
    }
    // Actions apply to the tenant shown.
    key(&mut model, "p");
    assert!(
        matches!(&model.mode, Mode::Confirm { action: Action::PauseTenant { tenant }, .. } if tenant == "globex")
    );
    key(&mut model, "n");
    key(&mut model, "esc");
    assert!(model.detail.is_none());
    assert!(draw(&model).contains("TENANT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_detail_comes_through_the_admin_api_with_its_seconds_and_records() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let toml =
        config_for(&[("us-east", mock.url())], "").replace("[tiers.pro]", "[tiers.pro]\nrpm = 4");
    let gw = TestGateway::from_toml(&toml).await;
    for _ in 0..6 {
        gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    }
    let remote = Remote::new(&gw.daemon.admin_url().unwrap(), ADMIN_TOKEN, "alice", None).unwrap();
    // The per-second history fills as the daemon samples, once a second.
    let detail = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let detail = remote.tenant_detail("tenant-a".into()).await.unwrap();
            // Counted as they arrive, refusals and latencies as they finish.
            if detail.requests_per_sec.iter().sum::<u64>() == 6
                && detail.refused_per_sec.iter().sum::<u64>() == 2
                && detail.e2e_p99_ms.iter().flatten().count() > 0
            {
                return detail;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("six requests in the history");
    assert_eq!(detail.tenant.name, "tenant-a");
    assert!(
        detail.tenant.p99_ms.is_some_and(|p| p > 0.0),
        "{:?}",
        detail.tenant
    );
    assert!(detail.tokens_per_sec.iter().sum::<u64>() > 0);
    let by_code: Vec<(&str, u64)> = detail
        .refused_by_code_per_sec
        .iter()
        .map(|(code, seconds)| (code.as_str(), seconds.iter().sum()))
        .collect();
    assert_eq!(by_code, [("rate_limit_exceeded", 2)]);
    // Every series covers the same seconds.
    let seconds = detail.requests_per_sec.len();
    for len in [
        detail.e2e_p50_ms.len(),
        detail.e2e_p99_ms.len(),
        detail.queue_p99_ms.len(),
        detail.refused_by_code_per_sec[0].1.len(),
    ] {
        assert_eq!(len, seconds);
    }
    assert!(detail.e2e_p99_ms.iter().flatten().all(|ms| *ms > 0.0));
    assert_eq!(
        detail.tenant.refused,
        [("rate_limit_exceeded".to_string(), 2)]
    );
    let requests = detail
        .audit
        .iter()
        .filter(|r| r.tenant.as_deref() == Some("tenant-a"))
        .count();
    assert_eq!(requests, 6, "{:?}", detail.audit);
    let missing = remote.tenant_detail("nobody".into()).await.unwrap_err();
    assert!(missing.contains("no tenant"), "{missing}");
    gw.stop().await;
}

#[test]
fn tenants_sort_by_any_column_both_ways_marked_in_the_header() {
    let mut model = model_with_fixture();
    key(&mut model, "2");
    let names = |model: &Model| -> Vec<String> {
        let s = model.snapshot.as_ref().unwrap();
        model
            .tenant_rows()
            .iter()
            .map(|i| s.tenants[*i].name.clone())
            .collect()
    };
    assert!(draw(&model).contains("TENANT▲"));
    sort_by(&mut model, Sort::Queued);
    assert_eq!(
        names(&model),
        ["globex", "initech", "acme"],
        "most queued first"
    );
    assert!(draw(&model).contains("QUEUED▼"), "{}", draw(&model));
    key(&mut model, "S");
    assert_eq!(names(&model), ["acme", "initech", "globex"]);
    assert!(draw(&model).contains("QUEUED▲"));
    sort_by(&mut model, Sort::Refused);
    assert_eq!(names(&model)[0], "initech", "the only one refused");
    sort_by(&mut model, Sort::Tier);
    assert_eq!(
        names(&model),
        ["acme", "initech", "globex"],
        "enterprise, free, pro"
    );
}

#[test]
fn o_in_regions_asks_the_demo_for_an_outage_in_the_selected_region() {
    let mut model = model_with_fixture();
    key(&mut model, "3");
    assert_eq!(key(&mut model, "o"), [Cmd::Outage("us-east".into())]);
    assert!(command(&mut model, "outage mars").is_empty());
    assert!(
        model
            .status
            .as_ref()
            .unwrap()
            .text
            .contains("no region mars")
    );
    assert_eq!(
        command(&mut model, "outage eu-west"),
        [Cmd::Outage("eu-west".into())]
    );
}

#[test]
fn the_audit_view_pages_back_through_the_store_and_filters_as_the_cli_does() {
    use switchyard::domain::records::{AuditKind, AuditRecord};
    let mut model = model_with_fixture();
    key(&mut model, "7");
    key(&mut model, "a");
    let records: Vec<AuditRecord> = (0..3)
        .map(|n| AuditRecord {
            at_ms: 1_795_896_000_000 + n * 1000,
            kind: Some(AuditKind::Request),
            tenant: Some(if n == 1 { "globex" } else { "acme" }.into()),
            status: Some(200),
            ..Default::default()
        })
        .collect();
    update(&mut model, Msg::Audit(Ok(records)));
    // ] asks for what came before the oldest shown; [ returns to the newest.
    let cmds = key(&mut model, "]");
    let older = switchyard::domain::records::AuditQuery {
        until_ms: Some(1_795_896_000_000),
        ..newest_records()
    };
    assert_eq!(cmds, [Cmd::ReadAudit(older)]);
    // While paged back, refreshes do not pull it forward.
    let cmds = update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    let cmds2 = update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    assert!(cmds.is_empty() && cmds2.is_empty());
    assert_eq!(key(&mut model, "["), [Cmd::ReadAudit(newest_records())]);

    // key=value words go to the store, the rest match the text.
    key(&mut model, "/");
    for c in "tenant=acme status=5xx kind=operator drain".chars() {
        key(
            &mut model,
            &if c == ' ' {
                "space".to_string()
            } else {
                c.to_string()
            },
        );
    }
    let cmds = key(&mut model, "enter");
    let filtered = switchyard::domain::records::AuditQuery {
        tenant: Some("acme".into()),
        status: Some("5xx".into()),
        kind: Some(AuditKind::Operator),
        ..newest_records()
    };
    assert_eq!(cmds, [Cmd::ReadAudit(filtered)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_console_reads_the_audit_log_by_tenant_and_pages_back() {
    use switchyard::domain::records::AuditQuery;
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions(&[("us-east", &mock)]).await;
    for key in [KEY_A, KEY_B, KEY_A] {
        assert_eq!(gw.chat(key, &hello("gpt-4o-mini")).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let remote = Remote::new(&gw.daemon.admin_url().unwrap(), ADMIN_TOKEN, "alice", None).unwrap();
    let query = AuditQuery {
        tenant: Some("tenant-a".into()),
        limit: 10,
        ..Default::default()
    };
    let records = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let records = remote.audit(query.clone()).await.unwrap();
            if records.len() == 2 {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both of tenant-a's requests on the record");
    assert!(
        records
            .iter()
            .all(|r| r.tenant.as_deref() == Some("tenant-a"))
    );
    let before_newest = AuditQuery {
        until_ms: Some(records[1].at_ms),
        ..query
    };
    let older = remote.audit(before_newest).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].at_ms, records[0].at_ms);
    gw.stop().await;
}

#[test]
fn clicks_pick_tabs_and_rows_where_they_are_drawn_and_the_wheel_scrolls() {
    let mut model = model_with_fixture();
    update(&mut model, Msg::Height(26));
    let screen = draw(&model);
    let tabs = screen.lines().nth(1).unwrap();
    let x = tabs.find("2 Tenants").unwrap() + 2;
    key(&mut model, &format!("click:{x}:1"));
    assert_eq!(model.view, View::Tenants);

    let screen = draw(&model);
    let y = screen.lines().position(|l| l.contains("initech")).unwrap();
    key(&mut model, &format!("click:10:{y}"));
    assert!(
        matches!(key(&mut model, "p").as_slice(), [] if matches!(&model.mode, Mode::Confirm { action: Action::PauseTenant { tenant }, .. } if tenant == "initech")),
        "{:?}",
        model.mode
    );
    key(&mut model, "n");
    key(&mut model, "wheel-up");
    assert_eq!(model.selected[1], 1);
    key(&mut model, "wheel-down");
    assert_eq!(model.selected[1], 2);
    // A click below the rows selects nothing new.
    key(&mut model, "click:10:20");
    assert_eq!(model.selected[1], 2);
}

#[test]
fn mouse_events_have_names_and_the_rest_are_ignored() {
    use ratatui::crossterm::event::{KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
    use switchyard::console::mouse_name;
    let event = |kind| MouseEvent {
        kind,
        column: 7,
        row: 3,
        modifiers: KeyModifiers::NONE,
    };
    assert_eq!(
        mouse_name(&event(MouseEventKind::Down(MouseButton::Left))).as_deref(),
        Some("click:7:3")
    );
    assert_eq!(
        mouse_name(&event(MouseEventKind::ScrollDown)).as_deref(),
        Some("wheel-down")
    );
    assert_eq!(mouse_name(&event(MouseEventKind::Moved)), None);
}

fn instance_fixture() -> InstanceDetail {
    let failed: Vec<u64> = (0..300).map(|s| u64::from(s % 50 > 44) * 4).collect();
    InstanceDetail {
        instance: "us-east-b".into(),
        region: "us-east".into(),
        history: History {
            requests: (0..300).map(|s| 20 + s % 6).collect(),
            refused: failed.clone(),
            refused_by_code: vec![
                ("failed".into(), failed),
                (
                    "rate_limited".into(),
                    (0..300).map(|s| u64::from(s % 50 < 3)).collect(),
                ),
            ],
            e2e_p50_ms: (0..300).map(|s| Some(90.0 + (s % 7) as f64)).collect(),
            e2e_p99_ms: (0..300)
                .map(|s| (s % 50 <= 44).then_some(400.0 + (s % 23) as f64 * 10.0))
                .collect(),
            ..History::default()
        },
    }
}

#[test]
fn enter_drills_into_an_instance_with_its_own_history() {
    let mut model = model_with_fixture();
    key(&mut model, "3");
    key(&mut model, "j");
    key(&mut model, "j"); // us-east-b
    assert_eq!(
        key(&mut model, "enter"),
        [Cmd::ReadInstance("us-east-b".into())]
    );
    assert!(draw(&model).contains("reading us-east-b"));
    // Every snapshot reads it again while it is open.
    let cmds = update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(fixture()))));
    assert_eq!(cmds, [Cmd::ReadInstance("us-east-b".into())]);
    // What was read of another instance is not shown as this one.
    let mut other = instance_fixture();
    other.instance = "us-east-a".into();
    update(&mut model, Msg::Instance(Ok(Box::new(other))));
    assert!(draw(&model).contains("reading us-east-b"));
    update(&mut model, Msg::Instance(Ok(Box::new(instance_fixture()))));
    for (width, height) in [(80u16, 24u16), (200, 60)] {
        let screen = draw_at(&model, width, height);
        insta::assert_snapshot!(format!("{width}x{height}_instance_detail"), screen);
        assert!(
            screen.contains("us-east/us-east-b (Esc returns)"),
            "{screen}"
        );
        assert!(screen.contains("attempts/s (0 to 25)"), "{screen}");
        assert!(screen.contains("failed/s (0 to 4)"), "{screen}");
        assert!(screen.contains("us-east/us-east-b ejected"), "{screen}");
        if width >= 200 {
            assert!(screen.contains("failed/s (0 to 4) failed 429"), "{screen}");
            assert!(
                screen.contains("upstream time (0 to 620 ms) p50 p99"),
                "{screen}"
            );
            assert!(screen.contains("back in 12s"), "{screen}");
        }
    }
    key(&mut model, "esc");
    assert!(model.instance_detail.is_none());
    assert!(draw(&model).contains("regions and instances"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instances_detail_comes_through_the_admin_api_with_its_failures() {
    let mock = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::from_toml(&config_for(&[("us-east", mock.url())], "")).await;
    for _ in 0..3 {
        gw.chat(KEY_A, &hello("gpt-4o-mini")).await;
    }
    let instance = gw.first_instance().await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let remote = Remote::new(&gw.daemon.admin_url().unwrap(), ADMIN_TOKEN, "alice", None).unwrap();
    let detail = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let detail = remote.instance_detail(instance.clone()).await.unwrap();
            if detail.history.requests.iter().sum::<u64>() == 3 {
                return detail;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("three attempts in the history");
    assert_eq!(detail.region, "us-east");
    assert_eq!(detail.history.refused_by_code, []);
    // Its end-to-end p50/p99 over its last requests, as listings show them.
    let view = gw.first_instance().await;
    assert!(view["p50_ms"].as_f64().unwrap() > 0.0, "{view}");
    assert!(view["p99_ms"].as_f64().unwrap() >= view["p50_ms"].as_f64().unwrap());
    assert!(detail.history.e2e_p99_ms.iter().flatten().count() > 0);
    let missing = remote.instance_detail("nowhere".into()).await.unwrap_err();
    assert!(
        missing.contains("no instance is named nowhere"),
        "{missing}"
    );
    gw.stop().await;
}

#[test]
fn enter_drills_into_a_region_and_esc_comes_back() {
    let mut model = model_with_fixture();
    key(&mut model, "3");
    assert!(key(&mut model, "enter").is_empty());
    assert_eq!(model.region_detail.as_deref(), Some("us-east"));
    for (width, height) in [(80u16, 24u16), (200, 60)] {
        let screen = draw_at(&model, width, height);
        insta::assert_snapshot!(format!("{width}x{height}_region_detail"), screen);
        assert!(
            screen.contains("us-east (order 0): degraded, 50% routable (Esc returns)"),
            "{screen}"
        );
        assert!(
            screen.contains("us-east-b") && screen.contains("back in 12s"),
            "{screen}"
        );
        assert!(screen.contains("e2e p99 per 10 s (0 to"), "{screen}");
        assert!(screen.contains("us-east/us-east-b ejected"), "{screen}");
    }
    key(&mut model, "esc");
    assert!(model.region_detail.is_none());
    assert!(draw(&model).contains("regions and instances"));
}

#[test]
fn enter_drills_into_a_stream_charts_its_rate_and_x_kills_the_one_shown() {
    let mut model = model_with_fixture();
    key(&mut model, "5");
    key(&mut model, "j"); // str_2 (globex)
    assert!(key(&mut model, "enter").is_empty());
    assert_eq!(model.tailing.as_deref(), Some("str_2"));
    // It streams 20 tokens a second, then 40, as snapshots come every half second.
    let mut snapshot = fixture();
    for (age, tokens) in [(1000, 22), (1500, 32), (2000, 52), (2500, 72)] {
        snapshot.streams[1].age_ms = age;
        snapshot.streams[1].tokens = tokens;
        snapshot.streams[1].tail.push_str(" sorts cars");
        update(
            &mut model,
            Msg::Feed(Feed::Snapshot(Box::new(snapshot.clone()))),
        );
    }
    assert_eq!(
        model.stream_seen,
        [(500, 12), (1000, 22), (1500, 32), (2000, 52), (2500, 72)]
    );
    for (width, height) in [(80u16, 24u16), (200, 60)] {
        let screen = draw_at(&model, width, height);
        insta::assert_snapshot!(format!("{width}x{height}_stream_detail"), screen);
        assert!(screen.contains("stream str_2 (Esc returns)"), "{screen}");
        assert!(screen.contains("tenant globex"), "{screen}");
        assert!(
            screen.contains("tokens/s, since opened (0 to 40)"),
            "{screen}"
        );
        assert!(screen.contains("A marshalling yard sorts cars"), "{screen}");
    }
    // The list reorders under it (str_1 ends); x still names the stream shown.
    snapshot.streams.remove(0);
    update(
        &mut model,
        Msg::Feed(Feed::Snapshot(Box::new(snapshot.clone()))),
    );
    key(&mut model, "x");
    assert!(
        matches!(&model.mode, Mode::Confirm { action: Action::KillStream { id }, .. } if id == "str_2"),
        "{:?}",
        model.mode
    );
    key(&mut model, "n");
    // Once it ends, what was last seen stays.
    snapshot.streams.clear();
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(snapshot))));
    let screen = draw(&model);
    assert!(
        screen.contains("ended: last seen with 72 tokens after 2.5s"),
        "{screen}"
    );
    key(&mut model, "esc");
    assert!(model.tailing.is_none());
    assert!(draw(&model).contains("live streams (0)"));
}

#[test]
fn in_a_cluster_the_console_shows_the_replicas_and_the_cluster_spending() {
    use switchyard::domain::snapshot::{ClusterUsage, ClusterView, ReplicaView};
    let mut snapshot = fixture();
    let replica = |id: &str, silent_ms: u64, in_flight: u64| ReplicaView {
        id: id.into(),
        silent_ms,
        about: serde_json::json!({"listen": format!("10.0.0.{}:8080", id.len()), "in_flight": in_flight, "version": "0.1.0"}),
    };
    snapshot.cluster = Some(ClusterView {
        replica: "gw-a".into(),
        degraded: Some((75, "the shared store did not answer in time".into())),
        replicas: vec![
            replica("gw-a", 0, 12),
            replica("gw-b", 800, 7),
            replica("gw-c", 9_000, 0),
        ],
    });
    snapshot.tenants[0].cluster = Some(ClusterUsage {
        day_tokens: 987_654,
        ..ClusterUsage::default()
    });
    let mut model = Model::new("test gateway", false);
    update(&mut model, Msg::Feed(Feed::Link(Link::Connected)));
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(snapshot))));
    model.view = View::Regions;
    let screen = draw_at(&model, 160, 30);
    let header = screen.lines().next().unwrap();
    assert!(header.contains("gw-a of 2 replicas"), "{header}");
    assert!(header.contains("SHARED STATE DEGRADED 1m15s"), "{header}");
    for (id, state) in [
        ("gw-a (this one)", "alive"),
        ("gw-b ", "alive"),
        ("gw-c ", "silent"),
    ] {
        let line = screen.lines().find(|l| l.contains(id)).unwrap_or_default();
        assert!(line.contains(state), "{id} {state}\n{screen}");
    }
    model.view = View::Tenants;
    let screen = draw_at(&model, 160, 30);
    assert!(
        screen.contains("day and month over the cluster"),
        "{screen}"
    );
    assert!(
        screen.contains("988k"),
        "the cluster's day tokens\n{screen}"
    );
}

/// Counts by (tenant, error code) of request records; "" for answered requests.
fn audit_counts(records: &serde_json::Value) -> std::collections::BTreeMap<(String, String), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for record in records["records"].as_array().unwrap() {
        let tenant = record["tenant"].as_str().unwrap_or("").to_string();
        let code = record["error"].as_str().unwrap_or("").to_string();
        *counts.entry((tenant, code)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn the_consoles_counts_are_the_audit_logs_after_concurrent_load_on_two_workers() {
    // Requests of two tenants, answered and refused, on eight connections spread over
    // two connection workers at once: every request is counted where the console reads
    // it and recorded in the audit log, the same number of each kind in both.
    let us = quick_mock().spawn_local().await.unwrap();
    let gw = TestGateway::with_regions_and(&[("us-east", &us)], "workers = 2").await;
    let clients: Vec<reqwest::Client> = (0..8)
        .map(|_| {
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap()
        })
        .collect();
    let url = gw.url("/v1/chat/completions");
    let send = |i: usize| {
        let client = clients[i % clients.len()].clone();
        let url = url.clone();
        // Tenant A: 40 answered, 10 for a model nobody serves; tenant B: 30 answered,
        // 10 whose body is not JSON.
        async move {
            let request = client.post(&url);
            let request = match i {
                0..40 => request.bearer_auth(KEY_A).json(&hello("gpt-4o-mini")),
                40..50 => request.bearer_auth(KEY_A).json(&hello("no-such-model")),
                50..80 => request.bearer_auth(KEY_B).json(&hello("gpt-4o-mini")),
                _ => request
                    .bearer_auth(KEY_B)
                    .header("content-type", "application/json")
                    .body("{not json"),
            };
            let reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            reply.bytes().await.unwrap();
            status
        }
    };
    let statuses = futures_util::future::join_all((0..90).map(send)).await;
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 70);
    assert!(statuses[40..50].iter().all(|&s| s == 404), "{statuses:?}");
    assert!(statuses[80..].iter().all(|&s| s == 400), "{statuses:?}");
    // Both workers served: the clients' kept-alive connections are open on each.
    let metrics = gw.metrics().await;
    for worker in 0..2 {
        let series = format!("switchyard_worker_connections{{worker=\"{worker}\"}}");
        let open = sample(&metrics, &series).unwrap_or(0.0);
        assert!(open > 0.0, "no connection on worker {worker}:\n{metrics}");
    }

    // Wait (bounded) for the audit writer to have every record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot: Snapshot = gw.admin_json(Method::GET, "/admin/snapshot", None).await;
        if snapshot.audit.backlog == 0 && snapshot.audit.written >= 90 {
            break snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit log never caught up: {:?}",
            snapshot.audit
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let records: serde_json::Value = gw
        .admin_json(Method::GET, "/admin/audit?kind=request&limit=0", None)
        .await;
    let audited = audit_counts(&records);
    let count = |tenant: &str, code: &str| {
        audited
            .get(&(tenant.to_string(), code.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("tenant-a", ""), 40, "{audited:?}");
    assert_eq!(count("tenant-b", ""), 30, "{audited:?}");
    assert_eq!(audited.values().sum::<u64>(), 90, "{audited:?}");

    // What the console shows: totals, errors by code, and each tenant's requests and
    // refusals.
    assert_eq!(snapshot.totals.requests, 90);
    assert_eq!(snapshot.audit.written, 90);
    let mut by_code: Vec<(String, u64)> = snapshot.errors_by_code.clone();
    by_code.sort();
    let mut audited_by_code: std::collections::BTreeMap<String, u64> = Default::default();
    for ((_, code), n) in &audited {
        if !code.is_empty() {
            *audited_by_code.entry(code.clone()).or_insert(0) += n;
        }
    }
    assert_eq!(by_code, audited_by_code.into_iter().collect::<Vec<_>>());
    for name in ["tenant-a", "tenant-b"] {
        let tenant = snapshot.tenants.iter().find(|t| t.name == name).unwrap();
        let of_tenant: Vec<(String, u64)> = audited
            .iter()
            .filter(|((t, code), _)| t == name && !code.is_empty())
            .map(|((_, code), n)| (code.clone(), *n))
            .collect();
        let mut refused = tenant.refused.clone();
        refused.sort();
        assert_eq!(refused, of_tenant, "{name}");
        assert_eq!(refused.iter().map(|(_, n)| n).sum::<u64>(), 10, "{name}");
        let all: u64 = audited
            .iter()
            .filter(|((t, _), _)| t == name)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(tenant.requests_last_minute, all, "{name}");
    }
}
