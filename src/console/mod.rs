//! The operations console: a ratatui dashboard over a `Control`, the same in-process
//! (`switchyard up`, `demo`) and attached to a remote daemon (`switchyard console`).
//!
//! The Elm architecture: `model::update` turns messages (keys, snapshots, action results)
//! into a new model and commands; `view::render` draws the model. Only this loop does
//! I/O. Keys are read first, snapshots after; a frame is drawn at most ten times a
//! second and only when something changed. The terminal is restored on exit and on panic.
//! The console knows `control` and `domain` only, never the gateway.

pub mod keys;
pub mod model;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{
    self, DisableMouseCapture, EnableMouseCapture, Event, KeyCode, KeyEvent, KeyEventKind,
    KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::control::Control;
use model::{Cmd, Model, Msg};

/// Frames per second at most.
const FRAME: Duration = Duration::from_millis(100);

/// The name `keys` uses for a key press: `q`, `P`, `tab`, `pgdn`, and with Control held
/// `ctrl-c`, `ctrl-d`: a modified key never passes for the bare one, so Ctrl-U cannot
/// undrain a region. Alt and Super combinations are ignored.
pub fn key_name(key: &KeyEvent) -> Option<String> {
    if key
        .modifiers
        .intersects(KeyModifiers::ALT | KeyModifiers::SUPER | KeyModifiers::META)
    {
        return None;
    }
    let name = match key.code {
        KeyCode::Char(' ') => "space".to_string(),
        KeyCode::Char(c) => c.to_string(),
        KeyCode::Tab => "tab".into(),
        KeyCode::BackTab => "backtab".into(),
        KeyCode::Up => "up".into(),
        KeyCode::Down => "down".into(),
        KeyCode::PageUp => "pgup".into(),
        KeyCode::PageDown => "pgdn".into(),
        KeyCode::Home => "home".into(),
        KeyCode::End => "end".into(),
        KeyCode::Enter => "enter".into(),
        KeyCode::Esc => "esc".into(),
        KeyCode::Backspace => "backspace".into(),
        _ => return None,
    };
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return Some(format!("ctrl-{}", name.to_lowercase()));
    }
    Some(name)
}

/// The name `keys` uses for a mouse event: `click:X:Y` (left button), `wheel-up`,
/// `wheel-down`; others are ignored.
pub fn mouse_name(mouse: &MouseEvent) -> Option<String> {
    match mouse.kind {
        MouseEventKind::Down(MouseButton::Left) => {
            Some(format!("click:{}:{}", mouse.column, mouse.row))
        }
        MouseEventKind::ScrollUp => Some("wheel-up".into()),
        MouseEventKind::ScrollDown => Some("wheel-down".into()),
        _ => None,
    }
}

/// Runs the console until the operator quits.
pub async fn run(control: Arc<dyn Control>, read_only: bool) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    // Clicks and the wheel; turned off again however the console ends.
    let _ = ratatui::crossterm::execute!(std::io::stdout(), EnableMouseCapture);
    // ratatui's hook restores the terminal on a panic. A request handler's panic is caught,
    // answered with a 500 and logged: it must not take the terminal from the console.
    let restore = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::telemetry::in_request() {
            tracing::error!(panic = %info, "a request handler panicked");
        } else {
            let _ = ratatui::crossterm::execute!(std::io::stdout(), DisableMouseCapture);
            restore(info);
        }
    }));
    let result = run_loop(&mut terminal, control, read_only).await;
    let _ = ratatui::crossterm::execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    match result {
        Ok(Some(why)) => Err(std::io::Error::other(why)),
        Ok(None) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Resolves when the process is told to end: SIGTERM, or SIGHUP (the ssh session or
/// terminal closed). The console then restores the terminal as `q` does.
async fn ended_by_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

/// Runs until the console quits; `Some(why)` when it was not the operator's choice.
async fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    control: Arc<dyn Control>,
    read_only: bool,
) -> std::io::Result<Option<String>> {
    let mut model = Model::new(&control.describe(), read_only);
    model.stops_gateway = control.quitting_stops_gateway();
    if let Some(line) = control.greeting() {
        model::update(&mut model, Msg::Acted(Ok(line)));
    }
    let signalled = ended_by_signal();
    tokio::pin!(signalled);
    let mut feed = control.subscribe();
    let (key_sender, mut keys) = mpsc::channel::<String>(64);
    let (acted_sender, mut acted) = mpsc::channel::<Result<String, String>>(16);
    let (audited_sender, mut audited) = mpsc::channel(4);
    let (detailed_sender, mut detailed) = mpsc::channel(4);

    // Terminal input is blocking: read it on a thread of its own, never joined. When
    // the terminal hangs up (a dropped ssh session), crossterm's read can spin on end
    // of input for ever; the console must still leave and the daemon still stop.
    let reader = std::thread::Builder::new()
        .name("console-keys".into())
        .spawn(move || {
            loop {
                if key_sender.is_closed() {
                    return;
                }
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return,
                }
                let name = match event::read() {
                    Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => key_name(&key),
                    // Not a key, but the screen must be drawn again at the new size.
                    Ok(Event::Resize(..)) => Some("resize".to_string()),
                    _ => None,
                };
                if let Some(name) = name
                    && key_sender.blocking_send(name).is_err()
                {
                    return;
                }
            }
        })?;
    drop(reader);

    let mut last_snapshot = Instant::now();
    let mut last_height = 0u16;
    let mut dirty = true;
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !model.quit {
        let msg = tokio::select! {
            biased;
            () = &mut signalled => break,
            Some(key) = keys.recv() => Msg::Key(key),
            Some(result) = acted.recv() => Msg::Acted(result),
            Some(records) = audited.recv() => Msg::Audit(records),
            Some(detail) = detailed.recv() => detail,
            Some(item) = feed.recv() => {
                if matches!(item, crate::control::Feed::Snapshot(_)) {
                    last_snapshot = Instant::now();
                }
                Msg::Feed(item)
            }
            _ = frame.tick() => {
                let height = terminal.size()?.height;
                if height != last_height {
                    last_height = height;
                    model::update(&mut model, Msg::Height(height));
                    dirty = true;
                }
                if dirty {
                    terminal.draw(|f| view::render(&model, f))?;
                    dirty = false;
                }
                let silence = last_snapshot.elapsed().as_secs();
                let was_stale = model.stale;
                model::update(&mut model, Msg::Silence(silence));
                dirty |= was_stale != model.stale;
                continue;
            }
        };
        for cmd in model::update(&mut model, msg) {
            match cmd {
                Cmd::StopGateway => control.stop_gateway(),
                Cmd::Outage(region) => {
                    let result = control.simulate_outage(&region);
                    model::update(&mut model, Msg::Acted(result));
                }
                Cmd::ReadDetail(tenant) => {
                    let control = control.clone();
                    let sender = detailed_sender.clone();
                    tokio::spawn(async move {
                        let detail = control.tenant_detail(tenant).await.map(Box::new);
                        let _ = sender.send(Msg::Detail(detail)).await;
                    });
                }
                Cmd::ReadInstance(instance) => {
                    let control = control.clone();
                    let sender = detailed_sender.clone();
                    tokio::spawn(async move {
                        let detail = control.instance_detail(instance).await.map(Box::new);
                        let _ = sender.send(Msg::Instance(detail)).await;
                    });
                }
                Cmd::Act(action) => {
                    let control = control.clone();
                    let sender = acted_sender.clone();
                    tokio::spawn(async move {
                        let _ = sender.send(control.act(action).await).await;
                    });
                }
                Cmd::ReadAudit(query) => {
                    let control = control.clone();
                    let sender = audited_sender.clone();
                    tokio::spawn(async move {
                        let _ = sender.send(control.audit(query).await).await;
                    });
                }
            }
        }
        dirty = true;
    }
    drop(keys);
    Ok(model.exit_message)
}
