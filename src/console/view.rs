//! `render(&Model, &mut Frame)`: the whole screen from the model, nothing else. No I/O,
//! no locks, no clocks: what is drawn depends only on the model, so it can be tested
//! against a fixed snapshot.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs, Wrap,
};

use super::keys::{self, KEYMAP};
use super::model::{Mode, Model, RegionRow, View, human_bytes, human_count};
use crate::control::Link;
use crate::domain::records::AuditRecord;
use crate::domain::snapshot::{
    BatchView, ClusterView, EventKind, InstanceDetail, InstanceState, RegionState, Snapshot,
    TenantDetail,
};

const ACCENT: Color = Color::Cyan;
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);

pub fn render(model: &Model, frame: &mut Frame) {
    let [header, tabs, body, status, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(model, frame, header);
    render_tabs(model, frame, tabs);
    match &model.snapshot {
        None => frame.render_widget(
            Paragraph::new("waiting for the first snapshot…").block(Block::bordered()),
            body,
        ),
        Some(snapshot) => match model.view {
            View::Overview => overview(model, snapshot, frame, body),
            View::Tenants => tenants(model, snapshot, frame, body),
            View::Regions => regions(model, snapshot, frame, body),
            View::Queues => queues(model, snapshot, frame, body),
            View::Streams => streams(model, snapshot, frame, body),
            View::Latency => latency(model, snapshot, frame, body),
            View::Events => events(model, snapshot, frame, body),
            View::Batches => batches(model, snapshot, frame, body),
            View::Flows => flows(model, snapshot, frame, body),
        },
    }
    // Numbers that stopped arriving are shown as old, never as live.
    if let Some(snapshot) = &model.snapshot
        && model.data_is_old()
    {
        frame.buffer_mut().set_style(
            body,
            Style::new().fg(Color::DarkGray).add_modifier(Modifier::DIM),
        );
        let note = format!(
            " not live: last data from {} UTC ",
            clock(snapshot.taken_at_ms)
        );
        let width = (note.chars().count() as u16).min(body.width);
        let corner = Rect {
            x: body.x + body.width.saturating_sub(width + 1),
            y: body.y,
            width,
            height: 1,
        };
        frame.render_widget(
            Span::styled(note, Style::new().fg(Color::Black).bg(Color::Yellow)),
            corner,
        );
    }
    render_status(model, frame, status);
    render_footer(model, frame, footer);
    match &model.mode {
        Mode::Help(top) => help(frame, body, *top),
        Mode::Confirm { action, impact } => {
            let question = if impact.is_empty() {
                format!("{}?  y/N", capitalise(&action.describe()))
            } else {
                format!("{}? {impact}  y/N", capitalise(&action.describe()))
            };
            dialog(frame, body, "confirm", &question);
        }
        Mode::ConfirmQuit { impact } => {
            let question = format!("Stop the gateway? {impact}  y/N");
            dialog(frame, body, "confirm", &question);
        }
        _ => {}
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

fn render_header(model: &Model, frame: &mut Frame, area: Rect) {
    let (link, style) = match (&model.link, model.stale) {
        (Link::Connected, false) => ("connected".to_string(), Style::new().fg(Color::Green)),
        (Link::Connected, true) => (
            "stale: no snapshot for 5 s".to_string(),
            Style::new().fg(Color::Yellow),
        ),
        (Link::Reconnecting { attempt, reason }, _) => (
            format!("reconnecting (attempt {attempt}: {reason})"),
            Style::new().fg(Color::Red),
        ),
        (Link::Refused(reason), _) => (reason.clone(), Style::new().fg(Color::Red)),
        (Link::Stopped, _) => ("stopped".to_string(), Style::new().fg(Color::Red)),
    };
    let mut spans = vec![
        Span::styled(" switchyard ", Style::new().fg(Color::Black).bg(ACCENT)),
        Span::raw(format!(" {}  ", model.target)),
        Span::styled(link, style),
    ];
    if let Some(s) = &model.snapshot {
        spans.push(Span::raw(format!("  up {}", duration(s.uptime_secs))));
    }
    if let Some(what) = model
        .snapshot
        .as_ref()
        .and_then(|s| s.persistence_degraded.as_ref())
    {
        spans.push(Span::styled(
            format!("  PERSISTENCE DEGRADED ({what})"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    if let Some(cluster) = model.snapshot.as_ref().and_then(|s| s.cluster.as_ref()) {
        let alive = cluster
            .replicas
            .iter()
            .filter(|r| r.silent_ms < 3_000)
            .count();
        spans.push(Span::raw(format!(
            "  {} of {alive} replicas",
            cluster.replica
        )));
        if let Some((secs, why)) = &cluster.degraded {
            spans.push(Span::styled(
                format!(
                    "  SHARED STATE DEGRADED {}: limits enforced here alone ({why})",
                    duration(*secs)
                ),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        }
    }
    if model.stopping {
        let (in_flight, streams) = model
            .snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.totals.in_flight, s.streams.len()));
        spans.push(Span::styled(
            format!("  STOPPING: {in_flight} in flight, {streams} streams (q leaves it finishing)"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    if model.paused {
        spans.push(Span::styled(
            "  PAUSED",
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    if model.read_only {
        spans.push(Span::styled("  read-only", Style::new().fg(Color::Yellow)));
    }
    frame.render_widget(Line::from(spans), area);
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn render_tabs(model: &Model, frame: &mut Frame, area: Rect) {
    let titled = |title: fn(View) -> &'static str| -> Vec<String> {
        View::ALL
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{} {}", i + 1, title(*v)))
            .collect()
    };
    let width = usize::from(area.width);
    let needed = |titles: &[String], divider: usize| -> usize {
        titles.iter().map(|t| t.chars().count()).sum::<usize>() + divider * (titles.len() - 1)
    };
    let selected = View::ALL.iter().position(|v| *v == model.view).unwrap_or(0);
    // Narrow terminals get narrow dividers, then singular titles, so every view's
    // name stays readable.
    let mut titles = titled(View::title);
    let divider = if needed(&titles, 3) <= width {
        " │ "
    } else {
        if needed(&titles, 1) > width {
            titles = titled(View::short_title);
        }
        "│"
    };
    let tabs = Tabs::new(titles)
        .select(selected)
        .highlight_style(Style::new().fg(ACCENT).add_modifier(Modifier::BOLD))
        .padding("", "")
        .divider(divider);
    frame.render_widget(tabs, area);
}

fn render_status(model: &Model, frame: &mut Frame, area: Rect) {
    let line = match &model.mode {
        Mode::Filter(text) => Line::from(format!("/{text}▏")),
        Mode::Command(text) => Line::from(format!(":{text}▏")),
        _ => {
            // A filter set on this view is always shown, so rows never go missing
            // silently.
            let mut spans = Vec::new();
            if !model.filter().is_empty() {
                spans.push(Span::styled(
                    format!(" filter: {} (Esc clears) ", model.filter()),
                    Style::new().fg(Color::Black).bg(Color::Yellow),
                ));
                spans.push(Span::raw(" "));
            }
            if let Some(status) = &model.status {
                spans.push(Span::styled(
                    status.text.clone(),
                    Style::new().fg(if status.error {
                        Color::Red
                    } else {
                        Color::Green
                    }),
                ));
            }
            Line::from(spans)
        }
    };
    frame.render_widget(line, area);
}

/// The view's keys, as many as fit the width; `? more` when some did not.
fn render_footer(model: &Model, frame: &mut Frame, area: Rect) {
    let hints = keys::hints(model.view);
    let width = |key: &str, hint: &str| key.chars().count() + hint.chars().count() + 4;
    let more = width("?", "more");
    let mut room = usize::from(area.width);
    let mut spans = Vec::new();
    for (at, (key, hint)) in hints.iter().enumerate() {
        let need = width(key, hint);
        let last = at + 1 == hints.len();
        if need + if last { 0 } else { more } > room {
            spans.push(Span::styled(
                " ? ",
                Style::new().fg(Color::Black).bg(Color::Gray),
            ));
            spans.push(Span::raw(" more "));
            break;
        }
        room -= need;
        spans.push(Span::styled(
            format!(" {key} "),
            Style::new().fg(Color::Black).bg(Color::Gray),
        ));
        spans.push(Span::raw(format!(" {hint} ")));
    }
    frame.render_widget(Line::from(spans), area);
}

fn block(title: &str) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(format!(" {title} "), Style::new().fg(ACCENT)))
}

fn region_style(state: RegionState) -> Style {
    match state {
        RegionState::Healthy => Style::new().fg(Color::Green),
        RegionState::Degraded | RegionState::Draining => Style::new().fg(Color::Yellow),
        RegionState::Drained => Style::new().fg(Color::DarkGray),
        RegionState::Down => Style::new().fg(Color::Red),
    }
}

fn instance_style(state: InstanceState) -> Style {
    match state {
        InstanceState::Healthy => Style::new().fg(Color::Green),
        InstanceState::CoolingDown | InstanceState::Draining => Style::new().fg(Color::Yellow),
        InstanceState::Drained => Style::new().fg(Color::DarkGray),
        _ => Style::new().fg(Color::Red),
    }
}

fn overview(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Length(3 + s.regions.len() as u16),
        Constraint::Length(6),
        Constraint::Min(3),
    ])
    .areas(area);
    let rows = s.regions.iter().map(|r| {
        let in_flight: u32 = r.instances.iter().map(|i| i.in_flight).sum();
        let ejected = r
            .instances
            .iter()
            .filter(|i| i.health.state != InstanceState::Healthy)
            .count();
        Row::new(vec![
            Cell::from(r.name.clone()),
            Cell::from(r.state.as_str()).style(region_style(r.state)),
            Cell::from(format!("{:.0}%", r.routable * 100.0)),
            Cell::from(format!(
                "{}/{}",
                r.instances.len() - ejected,
                r.instances.len()
            )),
            Cell::from(in_flight.to_string()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new(["REGION", "STATE", "ROUTABLE", "INSTANCES", "IN FLIGHT"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(block("regions"));
    frame.render_widget(table, top);

    let [numbers, refusals, spark] = Layout::horizontal([
        Constraint::Length(50),
        Constraint::Length(34),
        Constraint::Min(10),
    ])
    .areas(middle);
    let t = &s.totals;
    let served_from_cache = s.cache.hits + s.cache.coalesced;
    let cache = match s.cache.hit_ratio() {
        Some(cacheable) if t.requests > 0 => format!(
            "cache hits {}/{} ({:.0}%), {:.0}% of cacheable",
            human_count(served_from_cache),
            human_count(t.requests),
            served_from_cache as f64 * 100.0 / t.requests as f64,
            cacheable * 100.0
        ),
        _ => "cache: no cacheable requests yet".to_string(),
    };
    let text = vec![
        Line::from(format!(
            "requests/s {:>8.1}   tokens/s {:>10.1}",
            t.requests_per_sec, t.tokens_per_sec
        )),
        Line::from(vec![
            Span::raw(format!("errors {:>6.2}%   ", t.error_rate * 100.0)),
            Span::styled(
                format!("refused {:>6.2}%", t.refusal_rate * 100.0),
                if t.refusal_rate > 0.0 {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                },
            ),
            Span::raw(format!("   in flight {}", t.in_flight)),
        ]),
        Line::from(format!(
            "queued {:>8}   streams {:>6}   kept {}",
            t.queued,
            s.streams.len(),
            human_bytes(s.cache.bytes)
        )),
        Line::from(cache),
    ];
    frame.render_widget(
        Paragraph::new(text).block(block("traffic (rates over the last 5 s)")),
        numbers,
    );
    let title = "refused and failed, by code";
    by_code(frame, refusals, title, &s.errors_by_code);
    let title = "queue depth, last 2 min";
    chart(frame, spark, title, &s.queue_history, "", Color::Yellow);

    let height = bottom.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = s.events.iter().rev().take(height).map(event_line).collect();
    let _ = model;
    frame.render_widget(Paragraph::new(lines).block(block("latest events")), bottom);
}

/// `HH:MM:SS` (UTC) of milliseconds since the epoch.
fn clock(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn event_line(e: &crate::domain::snapshot::Event) -> Line<'static> {
    let clock = clock(e.at_ms);
    let (kind, color) = match e.kind {
        EventKind::Routing => ("routing ", Color::Yellow),
        EventKind::Operator => ("operator", ACCENT),
        EventKind::Traffic => ("traffic ", Color::Magenta),
    };
    let mut spans = vec![
        Span::styled(clock, Style::new().fg(Color::DarkGray)),
        Span::raw(" "),
        Span::styled(kind, Style::new().fg(color)),
        Span::raw(" "),
    ];
    if let Some(actor) = &e.actor {
        spans.push(Span::styled(
            format!("{actor}: "),
            Style::new().add_modifier(Modifier::BOLD),
        ));
    }
    spans.push(Span::raw(e.message.clone()));
    Line::from(spans)
}

/// `used/limit` in absolute numbers with their ratio (`720/3.0k 24%`), coloured as the
/// ratio nears the limit; `720/∞` without one.
fn against(used: u64, limit: Option<u64>, show: fn(u64) -> String) -> Cell<'static> {
    match limit {
        None => Cell::from(format!("{}/∞", show(used))).style(Style::new().fg(Color::DarkGray)),
        Some(limit) => {
            let share = if limit == 0 {
                1.0
            } else {
                used as f64 / limit as f64
            };
            let style = match share {
                s if s >= 0.9 => Style::new().fg(Color::Red),
                s if s >= 0.7 => Style::new().fg(Color::Yellow),
                _ => Style::new(),
            };
            Cell::from(format!(
                "{}/{} {:.0}%",
                show(used),
                show(limit),
                (share * 100.0).min(999.0)
            ))
            .style(style)
        }
    }
}

/// Dollars from cents, short: $1.25, $12, $1.2k.
fn dollars(cents: u64) -> String {
    match cents {
        0..1_000 => format!("${:.2}", cents as f64 / 100.0),
        _ => format!("${}", human_count(cents / 100)),
    }
}

/// A tenant in depth: its state and limits against use, its last five minutes per
/// second, its refusals by code and its newest audit records.
fn tenant_detail(d: &TenantDetail, frame: &mut Frame, area: Rect) {
    let t = &d.tenant;
    // Two rows of charts: small ones on a small terminal, so the audit keeps a few lines.
    let chart_height = if area.height >= 36 { 8 } else { 5 };
    let [top, charts, latencies, audit] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(chart_height),
        Constraint::Length(chart_height),
        Constraint::Min(3),
    ])
    .areas(area);
    let used = |name: &str, used: u64, limit: Option<u64>| {
        let limit = limit.map_or("∞".to_string(), human_count);
        format!("{name} {}/{limit}", human_count(used))
    };
    let mut state = vec![Span::styled(
        format!("tier {}", t.tier),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if t.paused {
        state.push(Span::styled("  PAUSED", Style::new().fg(Color::Red)));
    }
    if !t.changed.is_empty() {
        state.push(Span::styled(
            format!("  changed at run time: {}", t.changed.join(", ")),
            Style::new().fg(Color::Yellow),
        ));
    }
    let lines = vec![
        Line::from(state),
        Line::from(format!("limits: {}", t.limits.summary())),
        Line::from(format!(
            "last minute: {}, {}   now: {} in flight, {} queued, p99 {}",
            used("requests", t.requests_last_minute, t.limits.rpm),
            used("tokens", t.tokens_last_minute, t.limits.tpm),
            t.in_flight,
            t.queued,
            t.p99_ms.map_or("-".to_string(), |p| format!("{p:.0}ms")),
        )),
        Line::from(format!(
            "today: {} (${:.2})   month: {} (${:.2})",
            used("tokens", t.day.tokens, t.limits.daily_tokens),
            t.day.cost_usd,
            used("tokens", t.month.tokens, t.limits.monthly_tokens),
            t.month.cost_usd,
        )),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(block(&format!("{} (Esc returns)", t.name))),
        top,
    );

    let [requests, refused, tokens] = thirds(charts);
    let [e2e, queue, codes] = thirds(latencies);
    // The newest seconds that fit, each chart with its scale in its title; requests
    // against the per-second rate the rpm limit allows, tokens per minute against tpm.
    let note = t.limits.rpm.map_or(String::new(), |l| {
        format!(", limit {}/s", human_count(l.div_ceil(60)))
    });
    noted_chart(
        frame,
        requests,
        "requests/s",
        &d.requests_per_sec,
        "",
        ACCENT,
        &note,
    );
    let kinds = by_kind(
        &d.refused_by_code_per_sec,
        d.requests_per_sec.len(),
        |code| {
            let label = refusal_label(code);
            (label.to_string(), refusal_color(label))
        },
    );
    line_chart(frame, refused, "refused/s", "", &series_of(&kinds), None);
    let per_minute = per_minute(&d.tokens_per_sec);
    let limit = t.limits.tpm.map(|l| (l as f64, "tpm limit"));
    line_chart(
        frame,
        tokens,
        "tokens/min",
        "",
        &[Series::new("used", Color::Green, &per_minute)],
        limit,
    );
    percentiles_chart(frame, e2e, "e2e", &d.e2e_p50_ms, &d.e2e_p99_ms);
    line_chart(
        frame,
        queue,
        "queue wait p99",
        " ms",
        &[Series::new("p99", Color::Yellow, &d.queue_p99_ms)],
        None,
    );
    by_code(frame, codes, "refused, by code", &t.refused);

    let lines: Vec<Line> = match &d.audit_unreadable {
        Some(why) => vec![Line::styled(why.clone(), Style::new().fg(Color::Red))],
        None => d
            .audit
            .iter()
            .rev()
            .take(usize::from(audit.height.saturating_sub(2)))
            .map(|r| {
                Line::from(vec![
                    Span::styled(clock(r.at_ms), Style::new().fg(Color::DarkGray)),
                    Span::raw(format!(" {}", r.summary())),
                ])
            })
            .collect(),
    };
    frame.render_widget(
        Paragraph::new(lines).block(block("audit records, newest first")),
        audit,
    );
}

/// A region in depth: its state, each instance's health in full, its latency over the
/// last five minutes, and the events that name it.
fn region_detail(s: &Snapshot, name: &str, frame: &mut Frame, area: Rect) {
    let Some(r) = s.regions.iter().find(|r| r.name == name) else {
        frame.render_widget(
            Paragraph::new(format!("{name} is no longer in the snapshot (Esc returns)"))
                .block(block(name)),
            area,
        );
        return;
    };
    let instances = r.instances.len() as u16;
    let [top, charts, bottom] = Layout::vertical([
        Constraint::Length(instances + 3),
        Constraint::Length(6),
        Constraint::Min(3),
    ])
    .areas(area);
    let rows = r.instances.iter().map(|i| {
        let h = &i.health;
        let detail = match (h.ejected_for_ms, h.cooling_for_ms, h.manual_eject) {
            (_, _, true) => "ejected by an operator".to_string(),
            (Some(ms), _, _) => format!("back in {:.0}s", ms as f64 / 1000.0),
            (_, Some(ms), _) => format!("cooling {:.1}s", ms as f64 / 1000.0),
            _ => String::new(),
        };
        vec![
            Cell::from(i.name.clone()),
            Cell::from(h.state.as_str()).style(instance_style(h.state)),
            Cell::from(detail),
            Cell::from(if h.probe_ok { "ok" } else { "failing" }),
            Cell::from(h.consecutive_failures.to_string()),
            Cell::from(h.ejections.to_string()),
            Cell::from(format!("{}/{}", i.in_flight, i.max_concurrency)),
            Cell::from(format!("{:.1}%", i.error_rate * 100.0)),
            Cell::from(match (i.p50_ms, i.p99_ms) {
                (Some(p50), Some(p99)) => format!("{p50:.0}/{p99:.0}ms"),
                _ => "-".into(),
            }),
        ]
    });
    const COLUMNS: [Column; 9] = [
        col("INSTANCE", 13, 9),
        col("HEALTH", 13, 9),
        col("", 22, 6),
        col("PROBE", 7, 7),
        col("FAILS", 5, 5),
        col("EJECTIONS", 9, 4),
        col("IN FLIGHT", 9, 8),
        col("ERR", 6, 7),
        col("E2E P50/99", 12, 3),
    ];
    let title = format!(
        "{} (order {}): {}, {:.0}% routable (Esc returns)",
        r.name,
        r.order,
        r.state.as_str(),
        r.routable * 100.0
    );
    frame.render_widget(fitted(&COLUMNS, rows, top.width, &title), top);

    let [e2e, ttft] =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(charts);
    let scope = format!("region:{name}");
    for (metric, area) in [("e2e", e2e), ("ttft", ttft)] {
        let series = s
            .latency
            .iter()
            .find(|l| l.metric == metric && l.scope == scope && l.window == "5m")
            .or_else(|| {
                s.latency
                    .iter()
                    .find(|l| l.metric == metric && l.scope == scope)
            });
        let history: Vec<u64> = series
            .map(|l| l.p99_history_ms.iter().map(|v| v.round() as u64).collect())
            .unwrap_or_default();
        let title = format!("{metric} p99 per 10 s");
        chart(frame, area, &title, &history, " ms", Color::Magenta);
    }

    events_naming(s, name, frame, bottom);
}

/// The newest events whose message names `name`, as many as fit.
fn events_naming(s: &Snapshot, name: &str, frame: &mut Frame, area: Rect) {
    let height = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = s
        .events
        .iter()
        .rev()
        .filter(|e| e.message.contains(name))
        .take(height)
        .map(event_line)
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(block(&format!("events naming {name}, newest first"))),
        area,
    );
}

/// An upstream instance in depth: its health and load now, its last five minutes second
/// by second (attempts, failures by kind, the upstream's time) and the events naming it.
fn instance_detail(s: &Snapshot, d: &InstanceDetail, frame: &mut Frame, area: Rect) {
    let name = &d.instance;
    let chart_height = match area.height {
        30.. => 10,
        17.. => 8,
        _ => 5,
    };
    let [top, charts, bottom] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(chart_height),
        Constraint::Min(3),
    ])
    .areas(area);
    let title = format!("{}/{name} (Esc returns)", d.region);
    let now = s
        .regions
        .iter()
        .flat_map(|r| &r.instances)
        .find(|i| &i.name == name);
    let lines = match now {
        None => vec![Line::from("no longer in the snapshot")],
        Some(i) => {
            let h = &i.health;
            let mut state = vec![Span::styled(
                h.state.as_str().to_string(),
                instance_style(h.state).add_modifier(Modifier::BOLD),
            )];
            if h.manual_eject {
                state.push(Span::raw("  ejected by an operator"));
            } else if let Some(ms) = h.ejected_for_ms {
                state.push(Span::raw(format!("  back in {:.0}s", ms as f64 / 1000.0)));
            }
            state.push(Span::raw(format!(
                "  probe {}, {} consecutive failures, {} ejections",
                if h.probe_ok { "ok" } else { "failing" },
                h.consecutive_failures,
                h.ejections
            )));
            vec![
                Line::from(state),
                Line::from(format!(
                    "{}  weight {}  in flight {}/{} ({} tokens)",
                    i.url,
                    i.weight,
                    i.in_flight,
                    i.max_concurrency,
                    human_count(i.outstanding_tokens)
                )),
                Line::from(format!(
                    "time to headers (peak EWMA) {:.0}ms   e2e p50/p99 {}   failed {:.1}% since start",
                    i.latency_ms,
                    match (i.p50_ms, i.p99_ms) {
                        (Some(p50), Some(p99)) => format!("{p50:.0}/{p99:.0}ms"),
                        _ => "-".into(),
                    },
                    i.error_rate * 100.0
                )),
            ]
        }
    };
    frame.render_widget(Paragraph::new(lines).block(block(&title)), top);

    let h = &d.history;
    let [attempts, failures, latency] = thirds(charts);
    chart(frame, attempts, "attempts/s", &h.requests, "", ACCENT);
    let kinds = by_kind(&h.refused_by_code, h.requests.len(), |code| match code {
        "rate_limited" => ("429".to_string(), Color::Yellow),
        _ => ("failed".to_string(), Color::Red),
    });
    line_chart(frame, failures, "failed/s", "", &series_of(&kinds), None);
    percentiles_chart(
        frame,
        latency,
        "upstream time",
        &h.e2e_p50_ms,
        &h.e2e_p99_ms,
    );

    events_naming(s, name, frame, bottom);
}

/// Counts by error code, the most frequent first, as many as fit.
fn by_code(frame: &mut Frame, area: Rect, title: &str, counts: &[(String, u64)]) {
    let mut sorted: Vec<&(String, u64)> = counts.iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let lines: Vec<Line> = if sorted.is_empty() {
        vec![Line::from("none")]
    } else {
        sorted
            .iter()
            .take(usize::from(area.height.saturating_sub(2)))
            .map(|(code, n)| Line::from(format!("{:>7}  {code}", human_count(*n))))
            .collect()
    };
    frame.render_widget(Paragraph::new(lines).block(block(title)), area);
}

/// A sparkline of the newest `data` that fit, its scale in the title (`0 to 1.2k ms`)
/// before any `note`, so a narrow chart loses the note first.
fn chart(frame: &mut Frame, area: Rect, title: &str, data: &[u64], unit: &str, color: Color) {
    noted_chart(frame, area, title, data, unit, color, "");
}

fn noted_chart(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    data: &[u64],
    unit: &str,
    color: Color,
    note: &str,
) {
    let fits = usize::from(area.width.saturating_sub(2));
    let data = &data[data.len().saturating_sub(fits)..];
    let peak = data.iter().copied().max().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(block(&format!(
                "{title} (0 to {}{unit}){note}",
                human_count(peak)
            )))
            .data(data)
            .max(peak.max(1))
            .style(Style::new().fg(color)),
        area,
    );
}

/// An area in three equal columns.
fn thirds(area: Rect) -> [Rect; 3] {
    Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(area)
}

/// Tokens in the minute up to each second: a rolling sum of per-second counts. A long
/// history's first minute is left out, since its sums would miss the seconds before.
fn per_minute(per_second: &[u64]) -> Vec<Option<f64>> {
    let mut sum = 0u64;
    let sums: Vec<Option<f64>> = per_second
        .iter()
        .enumerate()
        .map(|(i, n)| {
            sum += n;
            if i >= 60 {
                sum -= per_second[i - 60];
            }
            Some(sum as f64)
        })
        .collect();
    let skip = if sums.len() >= 120 { 59 } else { 0 };
    sums[skip..].to_vec()
}

/// One line of a `line_chart`: its name in the legend, its colour, a point per second
/// (none where nothing was measured).
struct Series<'a> {
    name: &'a str,
    color: Color,
    points: &'a [Option<f64>],
}

impl<'a> Series<'a> {
    fn new(name: &'a str, color: Color, points: &'a [Option<f64>]) -> Series<'a> {
        Series {
            name,
            color,
            points,
        }
    }
}

/// Lines over the newest seconds that fit (two a cell, in braille) from zero up, the
/// scale and a coloured legend in the title, and a `limit` drawn across when given.
fn line_chart(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    unit: &str,
    series: &[Series],
    limit: Option<(f64, &str)>,
) {
    use ratatui::symbols::Marker;
    use ratatui::widgets::{Axis, Chart, Dataset, GraphType};

    let fits = usize::from(area.width.saturating_sub(2)) * 2;
    let len = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
    let shown = len.min(fits);
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let newest = &s.points[s.points.len().saturating_sub(shown)..];
            let offset = shown - newest.len();
            newest
                .iter()
                .enumerate()
                .filter_map(|(x, y)| y.map(|y| ((offset + x) as f64, y)))
                .collect()
        })
        .collect();
    let peak = points.iter().flatten().map(|p| p.1).fold(0.0, f64::max);
    let top = peak.max(limit.map_or(0.0, |l| l.0)).max(1.0) * 1.05;
    let mut heading = vec![Span::styled(
        format!(" {title} (0 to {}{unit})", human_count(peak.round() as u64)),
        Style::new().fg(ACCENT),
    )];
    if series.len() > 1 {
        for s in series {
            heading.push(Span::styled(
                format!(" {}", s.name),
                Style::new().fg(s.color),
            ));
        }
    }
    if let Some((value, name)) = limit {
        heading.push(Span::styled(
            format!(" {name} {}", human_count(value as u64)),
            Style::new().fg(Color::Yellow),
        ));
    }
    let limit_line = limit.map(|(value, _)| vec![(0.0, value), (shown.max(2) as f64 - 1.0, value)]);
    heading.push(Span::raw(" "));
    let mut datasets: Vec<Dataset> = Vec::new();
    if let Some(line) = &limit_line {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Yellow))
                .data(line),
        );
    }
    for (s, data) in series.iter().zip(&points) {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(s.color))
                .data(data),
        );
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Line::from(heading));
    if shown == 0 {
        frame.render_widget(Paragraph::new("nothing yet").block(block), area);
        return;
    }
    frame.render_widget(
        Chart::new(datasets)
            .block(block)
            .x_axis(Axis::default().bounds([0.0, shown.max(2) as f64 - 1.0]))
            .y_axis(Axis::default().bounds([0.0, top])),
        area,
    );
}

/// Per-second counts by code gathered into kinds (`kind` names and colours each code's),
/// summed per second; a zero line named `none` when nothing was counted in `seconds`.
type Kinds = Vec<(String, Color, Vec<Option<f64>>)>;

fn by_kind(
    by_code: &[(String, Vec<u64>)],
    seconds: usize,
    kind: impl Fn(&str) -> (String, Color),
) -> Kinds {
    let mut kinds: Kinds = Vec::new();
    for (code, counts) in by_code {
        let (label, color) = kind(code);
        let at = match kinds.iter().position(|(l, _, _)| *l == label) {
            Some(at) => at,
            None => {
                kinds.push((label, color, vec![Some(0.0); counts.len()]));
                kinds.len() - 1
            }
        };
        for (sum, n) in kinds[at].2.iter_mut().zip(counts) {
            *sum = sum.map(|s| s + *n as f64);
        }
    }
    if kinds.is_empty() {
        kinds.push(("none".into(), Color::DarkGray, vec![Some(0.0); seconds]));
    }
    kinds
}

fn series_of(kinds: &Kinds) -> Vec<Series<'_>> {
    kinds
        .iter()
        .map(|(label, color, points)| Series::new(label, *color, points))
        .collect()
}

/// A p50 and a p99 line per second, in milliseconds.
fn percentiles_chart(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    p50: &[Option<f64>],
    p99: &[Option<f64>],
) {
    line_chart(
        frame,
        area,
        title,
        " ms",
        &[
            Series::new("p50", ACCENT, p50),
            Series::new("p99", Color::Magenta, p99),
        ],
        None,
    );
}

/// How a refusal kind is coloured in charts.
fn refusal_color(label: &str) -> Color {
    match label {
        "rate" => Color::Yellow,
        "budget" => Color::Magenta,
        "paused" => Color::Red,
        "queue" => Color::Cyan,
        "upstream" => Color::LightRed,
        _ => Color::Gray,
    }
}

/// What a refusal code is called in a narrow column.
fn refusal_label(code: &str) -> &str {
    match code {
        "rate_limit_exceeded" => "rate",
        "insufficient_quota" => "budget",
        "tenant_paused" => "paused",
        "queue_full" | "queue_timeout" | "tenant_queue_full" => "queue",
        "request_cancelled" => "gone",
        code if code.starts_with("upstream_") => "upstream",
        code => code,
    }
}

/// A tenant's refusals since start: the count and its most frequent kind.
fn refused_cell(refused: &[(String, u64)]) -> Cell<'static> {
    let total: u64 = refused.iter().map(|(_, n)| n).sum();
    match refused.iter().max_by_key(|(_, n)| *n) {
        Some((code, _)) if total > 0 => {
            Cell::from(format!("{} {}", human_count(total), refusal_label(code)))
                .style(Style::new().fg(Color::Red))
        }
        _ => Cell::from("0"),
    }
}

/// A table column: its header, its width, and how much it matters when the terminal is
/// too narrow for all (lower goes first).
struct Column {
    header: &'static str,
    width: u16,
    keep: u8,
}

const fn col(header: &'static str, width: u16, keep: u8) -> Column {
    Column {
        header,
        width,
        keep,
    }
}

/// The columns that fit in `width`, in their order: the least needed go first.
fn fitting(columns: &[Column], width: u16) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    let needed =
        |shown: &[usize]| -> u16 { shown.iter().map(|i| columns[*i].width + 1).sum::<u16>() + 2 };
    while needed(&shown) > width && shown.len() > 1 {
        let Some(drop) = shown
            .iter()
            .enumerate()
            .min_by_key(|(at, i)| (columns[**i].keep, usize::MAX - at))
            .map(|(at, _)| at)
        else {
            break;
        };
        shown.remove(drop);
    }
    shown
}

/// A table of the columns that fit `width`; each row gives a cell for every column.
fn fitted<'a>(
    columns: &[Column],
    rows: impl Iterator<Item = Vec<Cell<'a>>>,
    width: u16,
    title: &str,
) -> Table<'a> {
    sorted_table(columns, rows, width, title, None)
}

/// The same, with the column rows are sorted by marked ▲ (ascending) or ▼.
fn sorted_table<'a>(
    columns: &[Column],
    rows: impl Iterator<Item = Vec<Cell<'a>>>,
    width: u16,
    title: &str,
    sorted: Option<(&str, bool)>,
) -> Table<'a> {
    let shown = fitting(columns, width);
    let rows: Vec<Row> = rows
        .map(|cells| {
            Row::new(
                cells
                    .into_iter()
                    .enumerate()
                    .filter(|(at, _)| shown.contains(at))
                    .map(|(_, cell)| cell),
            )
        })
        .collect();
    let widths: Vec<Constraint> = shown
        .iter()
        .map(|i| Constraint::Length(columns[*i].width))
        .collect();
    let headers: Vec<String> = shown
        .iter()
        .map(|i| match sorted {
            Some((header, descending)) if header == columns[*i].header => {
                format!("{header}{}", if descending { "▼" } else { "▲" })
            }
            _ => columns[*i].header.to_string(),
        })
        .collect();
    Table::new(rows, widths)
        .header(Row::new(headers).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(block(title))
}

const TENANT_COLUMNS: [Column; 11] = [
    col("TENANT", 12, 9),
    col("TIER", 10, 6),
    col("", 6, 8),
    col("RPM", 12, 7),
    col("TPM", 13, 7),
    col("CONC", 8, 4),
    col("TODAY", 14, 5),
    col("MONTH", 13, 3),
    col("REFUSED", 11, 8),
    col("QUEUED", 7, 5),
    col("OVERRIDES", 12, 2),
];

fn tenants(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    if let Some((tenant, detail)) = &model.detail {
        match detail {
            Some(detail) => tenant_detail(detail, frame, area),
            None => frame.render_widget(
                Paragraph::new(format!("reading {tenant}…")).block(block(tenant)),
                area,
            ),
        }
        return;
    }
    let rows = model.tenant_rows();
    // Only the rows on screen are built: ratatui scrolls just enough to show the
    // selected one, so the window ends at it (or starts at the top).
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let first = model.selected[1].saturating_sub(visible - 1);
    let selected = model.selected[1] - first;
    let table_rows = rows.iter().skip(first).take(visible).map(|i| {
        let t = &s.tenants[*i];
        // In a cluster, budgets are the cluster's: so is the spending shown.
        let (day_tokens, month_tokens, month_usd) = match &t.cluster {
            Some(c) => (c.day_tokens, c.month_tokens, c.month_usd),
            None => (t.day.tokens, t.month.tokens, t.month.cost_usd),
        };
        let month = match t.limits.monthly_usd {
            Some(budget) => against(
                (month_usd * 100.0) as u64,
                Some((budget * 100.0) as u64),
                dollars,
            ),
            None => against(
                month_tokens + t.month.reserved_tokens,
                t.limits.monthly_tokens,
                human_count,
            ),
        };
        vec![
            Cell::from(t.name.clone()),
            // `*`: changed at run time, no longer the config file's.
            Cell::from(if t.changed.iter().any(|c| c == "tier") {
                format!("{}*", t.tier)
            } else {
                t.tier.clone()
            }),
            Cell::from(if t.paused { "PAUSED" } else { "" }).style(Style::new().fg(Color::Red)),
            against(t.requests_last_minute, t.limits.rpm, human_count),
            against(t.tokens_last_minute, t.limits.tpm, human_count),
            against(
                u64::from(t.in_flight),
                t.limits.max_concurrency.map(u64::from),
                human_count,
            ),
            against(
                day_tokens + t.day.reserved_tokens,
                t.limits.daily_tokens,
                human_count,
            ),
            month,
            refused_cell(&t.refused),
            Cell::from(t.queued.to_string()),
            // What differs from the config file, set by an operator at run time.
            Cell::from(t.changed.join(",")).style(Style::new().fg(Color::Yellow)),
        ]
    });
    let title = format!(
        "tenants ({} shown, sorted by {}; rpm and tpm over the last minute{})",
        rows.len(),
        model.sort.label(),
        if s.cluster.is_some() {
            " on this replica; day and month over the cluster"
        } else {
            ""
        }
    );
    let table = sorted_table(
        &TENANT_COLUMNS,
        table_rows,
        area.width,
        &title,
        Some((model.sort.header(), model.descending)),
    );
    scrolled(frame, table, area, selected);
}

fn regions(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    if let Some((name, detail)) = &model.instance_detail {
        match detail {
            Some(detail) => instance_detail(s, detail, frame, area),
            None => frame.render_widget(
                Paragraph::new(format!("reading {name}…")).block(block(name)),
                area,
            ),
        }
        return;
    }
    if let Some(name) = &model.region_detail {
        region_detail(s, name, frame, area);
        return;
    }
    let selected = model.selected[2];
    let rows = model.region_rows().into_iter().map(|row| match row {
        RegionRow::Region(name) => {
            let r = s.regions.iter().find(|r| r.name == name);
            let state = r.map(|r| r.state).unwrap_or_default();
            vec![
                Cell::from(name).style(Style::new().add_modifier(Modifier::BOLD)),
                Cell::from(""),
                Cell::from(state.as_str()).style(region_style(state)),
                Cell::from(
                    r.map(|r| format!("{:.0}% routable", r.routable * 100.0))
                        .unwrap_or_default(),
                ),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
            ]
        }
        RegionRow::Instance { region, name } => {
            let i = s
                .regions
                .iter()
                .filter(|r| r.name == region)
                .flat_map(|r| &r.instances)
                .find(|i| i.name == name);
            match i {
                None => vec![Cell::from(""); REGION_COLUMNS.len()],
                Some(i) => {
                    let detail = match (i.health.ejected_for_ms, i.health.cooling_for_ms) {
                        (Some(ms), _) => format!("back in {:.0}s", ms as f64 / 1000.0),
                        (_, Some(ms)) => format!("cool {:.1}s", ms as f64 / 1000.0),
                        _ => String::new(),
                    };
                    vec![
                        Cell::from(""),
                        Cell::from(i.name.clone()),
                        Cell::from(i.health.state.as_str()).style(instance_style(i.health.state)),
                        Cell::from(detail),
                        Cell::from(format!("{}/{}", i.in_flight, i.max_concurrency)),
                        Cell::from(format!("{:.1}ms", i.latency_ms)),
                        Cell::from(match (i.p50_ms, i.p99_ms) {
                            (Some(p50), Some(p99)) => format!("{p50:.0}/{p99:.0}ms"),
                            _ => "-".into(),
                        }),
                        Cell::from(format!("{:.1}%", i.error_rate * 100.0)),
                        Cell::from(i.health.ejections.to_string()),
                    ]
                }
            }
        }
    });
    let table = fitted(
        &REGION_COLUMNS,
        rows,
        area.width,
        "regions and instances (HDR EWMA: the balancer's average time to upstream headers; E2E: arrival to last byte)",
    );
    let Some(cluster) = &s.cluster else {
        scrolled(frame, table, area, selected);
        return;
    };
    let height = (cluster.replicas.len() as u16 + 3).min(area.height / 2);
    let [top, bottom] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(height)]).areas(area);
    scrolled(frame, table, top, selected);
    replicas(cluster, frame, bottom);
}

/// The replicas sharing state, as this one hears their heartbeats.
fn replicas(cluster: &ClusterView, frame: &mut Frame, area: Rect) {
    let rows = cluster.replicas.iter().map(|r| {
        let (state, style) = if r.silent_ms < 3_000 {
            ("alive", Style::new().fg(Color::Green))
        } else {
            ("silent", Style::new().fg(Color::Red))
        };
        let this = if r.id == cluster.replica {
            " (this one)"
        } else {
            ""
        };
        vec![
            Cell::from(format!("{}{this}", r.id)),
            Cell::from(state).style(style),
            Cell::from(format!("{:.1}s ago", r.silent_ms as f64 / 1000.0)),
            Cell::from(r.about["listen"].as_str().unwrap_or("-").to_string()),
            Cell::from(
                r.about["in_flight"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string()),
            ),
            Cell::from(r.about["version"].as_str().unwrap_or("-").to_string()),
        ]
    });
    let title = match &cluster.degraded {
        Some((secs, why)) => format!(
            "replicas as last heard: SHARED STATE DEGRADED {} ({why})",
            duration(*secs)
        ),
        None => "replicas sharing limits, budgets and operators' changes".to_string(),
    };
    frame.render_widget(fitted(&REPLICA_COLUMNS, rows, area.width, &title), area);
}

const REPLICA_COLUMNS: [Column; 6] = [
    col("REPLICA", 24, 9),
    col("STATE", 7, 8),
    col("HEARD", 9, 5),
    col("LISTEN", 22, 4),
    col("IN FLIGHT", 9, 7),
    col("VERSION", 8, 2),
];

const REGION_COLUMNS: [Column; 9] = [
    col("REGION", 9, 8),
    col("INSTANCE", 13, 9),
    col("HEALTH", 13, 9),
    col("", 14, 4),
    col("IN FLIGHT", 9, 6),
    col("HDR EWMA", 9, 3),
    col("E2E P50/99", 12, 5),
    col("ERR", 6, 7),
    col("EJECTIONS", 9, 2),
];

fn queues(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    let selected = model.selected[3];
    let rows = s.levels.iter().map(|l| {
        vec![
            Cell::from(l.tier.clone()),
            Cell::from(l.share.to_string()),
            Cell::from(l.seats.to_string()),
            Cell::from(l.in_use.to_string()),
            Cell::from(l.borrowed.to_string()),
            Cell::from(l.queued.to_string()),
            Cell::from(format!("{}ms", l.oldest_wait_ms)),
            Cell::from(l.dispatched.to_string()),
            Cell::from(
                model
                    .dispatch_rates
                    .iter()
                    .find(|(tier, _)| *tier == l.tier)
                    .map_or("-".to_string(), |(_, rate)| format!("{rate:.1}")),
            ),
        ]
    });
    const COLUMNS: [Column; 9] = [
        col("TIER", 12, 9),
        col("SHARE", 5, 4),
        col("SEATS", 5, 6),
        col("IN USE", 6, 7),
        col("BORROWED", 8, 3),
        col("QUEUED", 6, 8),
        col("OLDEST WAIT", 11, 7),
        col("DISPATCHED", 10, 2),
        col("PER SEC", 7, 5),
    ];
    let table = fitted(&COLUMNS, rows, area.width, "priority levels");
    scrolled(frame, table, area, selected);
}

fn streams(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    if let Some(id) = &model.tailing {
        stream_detail(model, s, id, frame, area);
        return;
    }
    let selected = model.selected[4];
    let rows = model.stream_rows().into_iter().map(|i| {
        let st = &s.streams[i];
        vec![
            Cell::from(st.id.clone()),
            Cell::from(st.tenant.clone()),
            Cell::from(st.model.clone()),
            Cell::from(format!("{}/{}", st.region, st.instance)),
            Cell::from(st.tokens.to_string()),
            Cell::from(format!("{:.1}", st.tokens_per_sec)),
            Cell::from(format!("{:.1}s", st.age_ms as f64 / 1000.0)),
        ]
    });
    const COLUMNS: [Column; 7] = [
        col("STREAM", 20, 9),
        col("TENANT", 12, 8),
        col("MODEL", 14, 6),
        col("WHERE", 22, 3),
        col("TOKENS", 7, 7),
        col("TOK/S", 7, 4),
        col("AGE", 7, 5),
    ];
    let title = format!("live streams ({}); Enter for one in depth", s.streams.len());
    let table = fitted(&COLUMNS, rows, area.width, &title);
    scrolled(frame, table, area, selected);
}

/// A stream in depth: who and where, its rate since it was opened here, and its text as
/// it comes; what was last seen once it has ended.
fn stream_detail(model: &Model, s: &Snapshot, id: &str, frame: &mut Frame, area: Rect) {
    let [top, rate, text] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(if area.height >= 24 { 8 } else { 5 }),
        Constraint::Min(3),
    ])
    .areas(area);
    let live = s.streams.iter().find(|st| st.id == id);
    let lines = match live {
        Some(st) => vec![
            Line::from(format!(
                "tenant {}   model {}   via {}/{}",
                st.tenant, st.model, st.region, st.instance
            )),
            Line::from(format!(
                "{} tokens   {:.1} tokens/s   running {:.1}s   x kills it",
                st.tokens,
                st.tokens_per_sec,
                st.age_ms as f64 / 1000.0
            )),
        ],
        None => {
            let last = model.stream_seen.last().copied().unwrap_or_default();
            vec![Line::styled(
                format!(
                    "ended: last seen with {} tokens after {:.1}s",
                    last.1,
                    last.0 as f64 / 1000.0
                ),
                Style::new().fg(Color::Yellow),
            )]
        }
    };
    frame.render_widget(
        Paragraph::new(lines).block(block(&format!("stream {id} (Esc returns)"))),
        top,
    );
    // Tokens per second between two snapshots.
    let rates: Vec<u64> = model
        .stream_seen
        .windows(2)
        .map(|w| {
            let seconds = w[1].0.saturating_sub(w[0].0) as f64 / 1000.0;
            (w[1].1.saturating_sub(w[0].1) as f64 / seconds.max(0.001)).round() as u64
        })
        .collect();
    chart(
        frame,
        rate,
        "tokens/s, since opened",
        &rates,
        "",
        Color::Green,
    );
    // The newest text that fits, with room for wrapping at word boundaries.
    let room =
        usize::from(text.width.saturating_sub(2)) * usize::from(text.height.saturating_sub(2));
    let tail = live.map_or("", |st| st.tail.as_str());
    let skip = tail.chars().count().saturating_sub(room * 3 / 4);
    let tail: String = tail.chars().skip(skip).collect();
    frame.render_widget(
        Paragraph::new(tail)
            .wrap(Wrap { trim: false })
            .block(block("its text, newest last")),
        text,
    );
}

fn batch_progress(b: &BatchView) -> String {
    let percent = (b.done() * 100).checked_div(b.total).unwrap_or(0);
    format!(
        "{percent:>3}% {}/{}",
        human_count(b.done()),
        human_count(b.total)
    )
}

fn batches(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    if let Some(id) = &model.batch_detail {
        batch_detail(s, id, frame, area);
        return;
    }
    let selected = model.selected[View::Batches.index()];
    let rows = model.batch_rows().into_iter().map(|i| {
        let b = &s.batches[i];
        let failed = Cell::from(human_count(b.failed)).style(if b.failed > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        });
        vec![
            Cell::from(b.id.clone()),
            Cell::from(b.tenant.clone()),
            Cell::from(batch_status(b)),
            Cell::from(batch_progress(b)),
            failed,
            Cell::from(human_count(b.tokens)),
            Cell::from(b.lines_per_sec.map_or("-".into(), |r| format!("{r:.1}"))),
            Cell::from(b.eta_secs.map_or("-".into(), duration)),
        ]
    });
    const COLUMNS: [Column; 8] = [
        col("BATCH", 30, 9),
        col("TENANT", 12, 6),
        col("STATUS", 11, 9),
        col("DONE", 16, 9),
        col("FAILED", 6, 8),
        col("TOKENS", 6, 4),
        col("LINES/S", 7, 5),
        col("ETA", 7, 7),
    ];
    let running = s.batches.iter().filter(|b| b.running()).count();
    let title = format!(
        "batches: {running} running, {} ended lately; Enter for one in depth, x cancels",
        s.batches.len() - running
    );
    let table = fitted(&COLUMNS, rows, area.width, &title);
    scrolled(frame, table, area, selected);
}

/// A batch in depth: its progress, what it used, why it waits, when it expires, and
/// why it failed.
fn batch_detail(s: &Snapshot, id: &str, frame: &mut Frame, area: Rect) {
    let Some(b) = s.batches.iter().find(|b| b.id == id) else {
        frame.render_widget(
            Paragraph::new("this batch is no longer among the newest; Esc returns")
                .block(block(&format!("batch {id}"))),
            area,
        );
        return;
    };
    let now = s.taken_at_ms / 1000;
    let mut lines = vec![
        Line::from(vec![
            Span::raw(format!("tenant {}   {}   ", b.tenant, b.endpoint)),
            batch_status(b),
        ]),
        Line::from(format!(
            "{} lines: {} completed, {} failed, {} {}   {}",
            b.total,
            b.completed,
            b.failed,
            b.total.saturating_sub(b.done()),
            if b.running() { "to go" } else { "not run" },
            batch_progress(b).trim_start()
        )),
        Line::from(format!(
            "{} tokens used   {}   {}",
            b.tokens,
            b.lines_per_sec
                .map_or("no rate yet".into(), |r| format!("{r:.1} lines/s")),
            b.eta_secs.map_or(String::new(), |eta| format!(
                "done in about {}",
                duration(eta)
            ))
        )),
        Line::from(format!(
            "created {} UTC, {} ago   {}",
            clock(b.created_at * 1000),
            duration(now.saturating_sub(b.created_at)),
            if b.running() {
                format!("expires in {}", duration(b.expires_at.saturating_sub(now)))
            } else {
                String::new()
            }
        )),
    ];
    if let Some(held) = &b.held {
        lines.push(Line::styled(
            format!("waiting: {held}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    for error in &b.errors {
        lines.push(Line::styled(error.clone(), Style::new().fg(Color::Red)));
    }
    if b.cancellable() {
        lines.push(Line::from(
            "x cancels it: lines in flight finish, what finished is kept",
        ));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(&format!("batch {id} (Esc returns)"))),
        area,
    );
}

/// A batch's state as a word, coloured: "waiting" (on a limit, a pause) in yellow,
/// failures in red.
fn batch_status(b: &BatchView) -> Span<'static> {
    let word = match b.status.as_str() {
        "in_progress" if b.held.is_some() => "waiting",
        "in_progress" => "running",
        other => other,
    };
    let color = match word {
        "waiting" | "cancelling" | "cancelled" | "validating" | "finalizing" => Color::Yellow,
        "running" => Color::Green,
        "failed" | "expired" => Color::Red,
        _ => Color::Reset,
    };
    Span::styled(word.to_string(), Style::new().fg(color))
}

fn flows(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    if let Some(id) = &model.run_detail {
        run_detail(s, id, frame, area);
        return;
    }
    let selected = model.selected[View::Flows.index()];
    let rows = model.flow_rows().into_iter().map(|i| {
        let r = &s.flow_runs[i];
        let error =
            Cell::from(r.error.clone().unwrap_or_default()).style(Style::new().fg(Color::Red));
        vec![
            Cell::from(r.id.clone()),
            Cell::from(r.tenant.clone()),
            Cell::from(r.flow.clone()),
            Cell::from(run_status(&r.status)),
            Cell::from(r.current.clone().unwrap_or_else(|| "-".into())),
            Cell::from(format!("{}/{}", r.steps_done, r.steps_total)),
            Cell::from(duration(r.elapsed_secs)),
            Cell::from(human_count(r.tokens)),
            error,
        ]
    });
    const COLUMNS: [Column; 9] = [
        col("RUN", 28, 9),
        col("TENANT", 10, 7),
        col("FLOW", 16, 8),
        col("STATUS", 10, 9),
        col("STEP", 12, 6),
        col("DONE", 5, 5),
        col("ELAPSED", 7, 4),
        col("TOKENS", 6, 3),
        col("ERROR", 40, 2),
    ];
    let running = s.flow_runs.iter().filter(|r| r.running()).count();
    let title = format!(
        "flow runs: {running} running, {} ended lately; Enter for one in depth, x cancels",
        s.flow_runs.len() - running
    );
    let table = fitted(&COLUMNS, rows, area.width, &title);
    scrolled(frame, table, area, selected);
}

/// A flow run in depth: each step as it went, and why the run failed.
fn run_detail(s: &Snapshot, id: &str, frame: &mut Frame, area: Rect) {
    let Some(r) = s.flow_runs.iter().find(|r| r.id == id) else {
        frame.render_widget(
            Paragraph::new("this run is no longer among the newest; Esc returns")
                .block(block(&format!("flow run {id}"))),
            area,
        );
        return;
    };
    let mut lines = vec![
        Line::from(vec![
            Span::raw(format!("tenant {}   flow {}   ", r.tenant, r.flow)),
            run_status(&r.status),
        ]),
        Line::from(format!(
            "{} of {} steps done{}   {} tokens   {} {}",
            r.steps_done,
            r.steps_total,
            r.current
                .as_ref()
                .map(|c| format!(", {c} in flight"))
                .unwrap_or_default(),
            r.tokens,
            if r.running() { "running for" } else { "took" },
            duration(r.elapsed_secs)
        )),
        Line::from(""),
    ];
    for step in &r.steps {
        let mut spans = vec![
            Span::raw(format!("{:<16} {:<9} ", step.name, step.kind)),
            run_status(&step.status),
            Span::raw(format!(
                "  {} ms, {} attempt{}, {} tokens, {} model call{}",
                step.elapsed_ms,
                step.attempts,
                if step.attempts == 1 { "" } else { "s" },
                step.tokens,
                step.calls,
                if step.calls == 1 { "" } else { "s" }
            )),
        ];
        if let Some(error) = &step.error {
            spans.push(Span::styled(
                format!("  {error}"),
                Style::new().fg(Color::Red),
            ));
        }
        lines.push(Line::from(spans));
    }
    if let Some(current) = &r.current {
        lines.push(Line::styled(
            format!("{current:<16} (in flight)"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(error) = &r.error {
        lines.push(Line::from(""));
        lines.push(Line::styled(error.clone(), Style::new().fg(Color::Red)));
    }
    if r.status == "running" {
        lines.push(Line::from(
            "x cancels it: the step in flight is dropped, no other starts",
        ));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(&format!("flow run {id} (Esc returns)"))),
        area,
    );
}

/// A run's or a step's state as a word, coloured.
fn run_status(status: &str) -> Span<'static> {
    let color = match status {
        "running" => Color::Green,
        "cancelling" | "cancelled" => Color::Yellow,
        "failed" => Color::Red,
        _ => Color::Reset,
    };
    Span::styled(status.to_string(), Style::new().fg(color))
}

fn latency(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    let selected = model.selected[5];
    let shown = model.latency_rows();
    if shown.is_empty() {
        frame.render_widget(
            Paragraph::new(format!("no latency recorded in the last {}", model.window))
                .block(block("latency")),
            area,
        );
        return;
    }
    let [table_area, charts] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(9)]).areas(area);
    let rows = shown.iter().map(|i| &s.latency[*i]).map(|l| {
        vec![
            Cell::from(l.metric.clone()),
            Cell::from(l.scope.clone()),
            Cell::from(l.count.to_string()),
            Cell::from(format!("{:.1}", l.p50_ms)),
            Cell::from(format!("{:.1}", l.p90_ms)),
            Cell::from(format!("{:.1}", l.p99_ms)),
            Cell::from(format!("{:.1}", l.p999_ms)),
            Cell::from(format!("{:.1}", l.max_ms)),
        ]
    });
    const COLUMNS: [Column; 8] = [
        col("METRIC", 8, 9),
        col("SCOPE", 24, 9),
        col("COUNT", 7, 6),
        col("P50 ms", 8, 8),
        col("P90 ms", 8, 4),
        col("P99 ms", 8, 8),
        col("P99.9 ms", 8, 3),
        col("MAX ms", 8, 5),
    ];
    let title = format!("latency percentiles, last {} (w: window)", model.window);
    let table = fitted(&COLUMNS, rows, table_area.width, &title);
    scrolled(frame, table, table_area, selected);

    let Some(l) = shown.get(selected).map(|i| &s.latency[*i]) else {
        return;
    };
    let [bars, spark] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(charts);
    let last = l.bucket_ms.len().saturating_sub(1);
    let labels: Vec<String> = l
        .bucket_ms
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if i == last {
                "more".into()
            } else {
                format!("{b}")
            }
        })
        .collect();
    let data: Vec<(&str, u64)> = labels
        .iter()
        .map(String::as_str)
        .zip(l.buckets.iter().copied())
        .collect();
    frame.render_widget(
        ratatui::widgets::BarChart::default()
            .block(block(&format!(
                "{} {}: requests by latency, bars up to N ms (tallest {})",
                l.metric,
                l.scope,
                l.buckets.iter().max().copied().unwrap_or(0)
            )))
            .data(data.as_slice())
            .bar_width(5)
            .bar_gap(1)
            .bar_style(Style::new().fg(ACCENT)),
        bars,
    );
    let history: Vec<u64> = l.p99_history_ms.iter().map(|v| v.round() as u64).collect();
    chart(
        frame,
        spark,
        "p99 per 10 s, last 5 m",
        &history,
        " ms",
        Color::Magenta,
    );
}

fn events(model: &Model, s: &Snapshot, frame: &mut Frame, area: Rect) {
    let selected = model.selected[6];
    let (title, line_of): (&str, Box<dyn Fn(usize) -> Line<'static>>) = match &model.audit {
        Some(records) => (
            "audit log, newest first (a: events)",
            Box::new(move |i| audit_line(&records[i])),
        ),
        None => (
            "events, newest first (a: audit log)",
            Box::new(|i| event_line(&s.events[i])),
        ),
    };
    let lines: Vec<Line> = model
        .event_rows()
        .into_iter()
        .enumerate()
        .map(|(n, i)| {
            let line = line_of(i);
            if n == selected {
                line.style(SELECTED)
            } else {
                line
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn audit_line(r: &AuditRecord) -> Line<'static> {
    let clock = clock(r.at_ms);
    let color = match r.status {
        Some(s) if s >= 500 => Color::Red,
        Some(s) if s >= 400 => Color::Yellow,
        None => ACCENT,
        _ => Color::Reset,
    };
    Line::from(vec![
        Span::styled(clock, Style::new().fg(Color::DarkGray)),
        Span::raw(" "),
        Span::styled(r.summary(), Style::new().fg(color)),
    ])
}

/// Renders a table with the selected row highlighted and scrolled into view.
fn scrolled(frame: &mut Frame, table: Table, area: Rect, selected: usize) {
    let mut state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table.row_highlight_style(SELECTED), area, &mut state);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn dialog(frame: &mut Frame, area: Rect, title: &str, text: &str) {
    let width = (text.chars().count() as u16 + 4).max(30);
    let rect = centered(area, width, 3);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text.to_string()).block(block(title).style(Style::new().fg(Color::Yellow))),
        rect,
    );
}

/// The key list from line `top`, scrolling when it is taller than the screen.
fn help(frame: &mut Frame, area: Rect, top: usize) {
    let lines: Vec<Line> = KEYMAP
        .iter()
        .skip(top)
        .map(|b| {
            let scope = match b.views {
                None => String::new(),
                Some(views) => format!(
                    " ({})",
                    views
                        .iter()
                        .map(|v| v.title())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            Line::from(vec![
                Span::styled(format!("{:>8}  ", b.label), Style::new().fg(ACCENT)),
                Span::raw(format!("{}{scope}", b.help)),
            ])
        })
        .collect();
    let rect = centered(area, 76, lines.len() as u16 + 2);
    let shown = usize::from(rect.height.saturating_sub(2));
    let title = if top > 0 || lines.len() > shown {
        format!(
            "keys {}-{} of {} (j/k scroll, any other key closes)",
            top + 1,
            (top + shown).min(KEYMAP.len()),
            KEYMAP.len()
        )
    } else {
        "keys (any key closes)".to_string()
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(lines).block(block(&title)), rect);
}
