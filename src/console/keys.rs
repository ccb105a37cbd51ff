//! The key map: one table that drives dispatch, the `?` overlay and the footer hints.

/// The console's views, in the order `Tab` and `1`..`8` go through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Tenants,
    Regions,
    Queues,
    Streams,
    Latency,
    Events,
    Batches,
    Flows,
}

impl View {
    pub const ALL: [View; 9] = [
        View::Overview,
        View::Tenants,
        View::Regions,
        View::Queues,
        View::Streams,
        View::Latency,
        View::Events,
        View::Batches,
        View::Flows,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Tenants => "Tenants",
            View::Regions => "Regions",
            View::Queues => "Queues",
            View::Streams => "Streams",
            View::Latency => "Latency",
            View::Events => "Events",
            View::Batches => "Batches",
            View::Flows => "Flows",
        }
    }

    /// The title in one word less, for terminals too narrow for every full title.
    pub fn short_title(self) -> &'static str {
        match self {
            View::Batches => "Batch",
            View::Overview | View::Latency => self.title(),
            other => other.title().trim_end_matches('s'),
        }
    }

    pub(super) fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Does {
    Quit,
    Help,
    NextView,
    PrevView,
    GoTo(View),
    Down,
    Up,
    PageDown,
    PageUp,
    First,
    Last,
    Filter,
    ClearFilter,
    Detail,
    RegionDetail,
    Outage,
    Older,
    Newest,
    Command,
    Pause,
    Sort,
    Reverse,
    Drain,
    Undrain,
    Eject,
    Restore,
    PauseTenant,
    ResumeTenant,
    Tier,
    Limits,
    ResetBudget,
    Kill,
    Tail,
    CancelBatch,
    BatchDetail,
    CancelRun,
    RunDetail,
    Window,
    Audit,
}

pub struct Binding {
    /// Key names as `key_name` spells them.
    pub keys: &'static [&'static str],
    pub label: &'static str,
    pub help: &'static str,
    /// A word or two for the footer; empty: not in the footer.
    pub hint: &'static str,
    /// The views where it applies; `None`: everywhere.
    pub views: Option<&'static [View]>,
    pub does: Does,
}

const REGIONS: &[View] = &[View::Regions];
const TENANTS: &[View] = &[View::Tenants];
const STREAMS: &[View] = &[View::Streams];
const BATCHES: &[View] = &[View::Batches];
const FLOWS: &[View] = &[View::Flows];
const LATENCY: &[View] = &[View::Latency];
const EVENTS: &[View] = &[View::Events];

pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: &["q", "ctrl-c"],
        label: "q/^C",
        help: "quit",
        views: None,
        hint: "quit",
        does: Does::Quit,
    },
    Binding {
        keys: &["?"],
        label: "?",
        help: "help: every key",
        views: None,
        hint: "help",
        does: Does::Help,
    },
    Binding {
        keys: &["tab"],
        label: "Tab",
        help: "next view",
        views: None,
        hint: "",
        does: Does::NextView,
    },
    Binding {
        keys: &["backtab"],
        label: "S-Tab",
        help: "previous view",
        views: None,
        hint: "",
        does: Does::PrevView,
    },
    Binding {
        keys: &["1"],
        label: "1",
        help: "overview",
        views: None,
        hint: "",
        does: Does::GoTo(View::Overview),
    },
    Binding {
        keys: &["2"],
        label: "2",
        help: "tenants",
        views: None,
        hint: "",
        does: Does::GoTo(View::Tenants),
    },
    Binding {
        keys: &["3"],
        label: "3",
        help: "regions",
        views: None,
        hint: "",
        does: Does::GoTo(View::Regions),
    },
    Binding {
        keys: &["4"],
        label: "4",
        help: "queues",
        views: None,
        hint: "",
        does: Does::GoTo(View::Queues),
    },
    Binding {
        keys: &["5"],
        label: "5",
        help: "streams",
        views: None,
        hint: "",
        does: Does::GoTo(View::Streams),
    },
    Binding {
        keys: &["6"],
        label: "6",
        help: "latency",
        views: None,
        hint: "",
        does: Does::GoTo(View::Latency),
    },
    Binding {
        keys: &["7"],
        label: "7",
        help: "events",
        views: None,
        hint: "",
        does: Does::GoTo(View::Events),
    },
    Binding {
        keys: &["8"],
        label: "8",
        help: "batches",
        views: None,
        hint: "",
        does: Does::GoTo(View::Batches),
    },
    Binding {
        keys: &["9"],
        label: "9",
        help: "flow runs",
        views: None,
        hint: "",
        does: Does::GoTo(View::Flows),
    },
    Binding {
        keys: &["j", "down"],
        label: "j/↓",
        help: "select next",
        views: None,
        hint: "",
        does: Does::Down,
    },
    Binding {
        keys: &["k", "up"],
        label: "k/↑",
        help: "select previous",
        views: None,
        hint: "",
        does: Does::Up,
    },
    Binding {
        keys: &["pgdn", "ctrl-d"],
        label: "PgDn/^D",
        help: "page down",
        views: None,
        hint: "",
        does: Does::PageDown,
    },
    Binding {
        keys: &["pgup", "ctrl-u"],
        label: "PgUp/^U",
        help: "page up",
        views: None,
        hint: "",
        does: Does::PageUp,
    },
    Binding {
        keys: &["home", "g"],
        label: "g/Home",
        help: "first row",
        views: None,
        hint: "",
        does: Does::First,
    },
    Binding {
        keys: &["end", "G"],
        label: "G/End",
        help: "last row",
        views: None,
        hint: "",
        does: Does::Last,
    },
    Binding {
        keys: &["/"],
        label: "/",
        help: "filter this view's rows (each view keeps its own)",
        views: None,
        hint: "filter",
        does: Does::Filter,
    },
    Binding {
        keys: &["esc"],
        label: "Esc",
        help: "leave a tenant's detail, or clear this view's filter",
        views: None,
        hint: "",
        does: Does::ClearFilter,
    },
    Binding {
        keys: &[":"],
        label: ":",
        help: "command line (:drain us-east, :tier globex pro)",
        views: None,
        hint: "command",
        does: Does::Command,
    },
    Binding {
        keys: &["space"],
        label: "Space",
        help: "pause the view (data keeps flowing in)",
        views: None,
        hint: "",
        does: Does::Pause,
    },
    Binding {
        keys: &["s"],
        label: "s",
        help: "sort by the next column (marked ▲/▼ in the header)",
        views: Some(TENANTS),
        hint: "sort",
        does: Does::Sort,
    },
    Binding {
        keys: &["S"],
        label: "S",
        help: "reverse the sort",
        hint: "",
        views: Some(TENANTS),
        does: Does::Reverse,
    },
    Binding {
        keys: &["d"],
        label: "d",
        help: "drain the selected region or instance",
        views: Some(REGIONS),
        hint: "drain",
        does: Does::Drain,
    },
    Binding {
        keys: &["u"],
        label: "u",
        help: "undrain the selected region or instance",
        views: Some(REGIONS),
        hint: "undrain",
        does: Does::Undrain,
    },
    Binding {
        keys: &["e"],
        label: "e",
        help: "eject the selected instance",
        views: Some(REGIONS),
        hint: "eject",
        does: Does::Eject,
    },
    Binding {
        keys: &["r"],
        label: "r",
        help: "restore the selected instance",
        views: Some(REGIONS),
        hint: "restore",
        does: Does::Restore,
    },
    Binding {
        keys: &["enter"],
        label: "Enter",
        help: "the selected region in depth: its instances' health, latency over five minutes, its events (Esc returns)",
        hint: "detail",
        views: Some(REGIONS),
        does: Does::RegionDetail,
    },
    Binding {
        keys: &["o"],
        label: "o",
        help: "demo only: take the selected region's simulated upstreams down now (:outage REGION)",
        hint: "",
        views: Some(REGIONS),
        does: Does::Outage,
    },
    Binding {
        keys: &["p"],
        label: "p",
        help: "pause the selected tenant",
        views: Some(TENANTS),
        hint: "pause",
        does: Does::PauseTenant,
    },
    Binding {
        keys: &["P"],
        label: "P",
        help: "resume the selected tenant",
        views: Some(TENANTS),
        hint: "resume",
        does: Does::ResumeTenant,
    },
    Binding {
        keys: &["t"],
        label: "t",
        help: "change the selected tenant's tier",
        views: Some(TENANTS),
        hint: "tier",
        does: Does::Tier,
    },
    Binding {
        keys: &["l"],
        label: "l",
        help: "change the selected tenant's limits",
        views: Some(TENANTS),
        hint: "limits",
        does: Does::Limits,
    },
    Binding {
        keys: &["b"],
        label: "b",
        help: "reset the selected tenant's budget",
        views: Some(TENANTS),
        hint: "reset budget",
        does: Does::ResetBudget,
    },
    Binding {
        keys: &["enter"],
        label: "Enter",
        help: "the selected tenant in depth: its last five minutes, limits, audit records (Esc returns)",
        hint: "detail",
        views: Some(TENANTS),
        does: Does::Detail,
    },
    Binding {
        keys: &["x"],
        label: "x",
        help: "kill the selected stream",
        views: Some(STREAMS),
        hint: "kill",
        does: Does::Kill,
    },
    Binding {
        keys: &["enter"],
        label: "Enter",
        help: "the selected stream in depth: its rate and its text as it comes (Esc returns)",
        views: Some(STREAMS),
        hint: "detail",
        does: Does::Tail,
    },
    Binding {
        keys: &["x"],
        label: "x",
        help: "cancel the selected batch (asks first): lines in flight finish, what finished is kept",
        views: Some(BATCHES),
        hint: "cancel",
        does: Does::CancelBatch,
    },
    Binding {
        keys: &["enter"],
        label: "Enter",
        help: "the selected batch in depth: its progress, tokens, why it waits, its errors (Esc returns)",
        views: Some(BATCHES),
        hint: "detail",
        does: Does::BatchDetail,
    },
    Binding {
        keys: &["x"],
        label: "x",
        help: "cancel the selected flow run (asks first): the step in flight is dropped, no other starts",
        views: Some(FLOWS),
        hint: "cancel",
        does: Does::CancelRun,
    },
    Binding {
        keys: &["enter"],
        label: "Enter",
        help: "the selected flow run in depth: each step's status, attempts, time, tokens and error (Esc returns)",
        views: Some(FLOWS),
        hint: "detail",
        does: Does::RunDetail,
    },
    Binding {
        keys: &["w"],
        label: "w",
        help: "latency window: 10 s, 1 m, 5 m",
        views: Some(LATENCY),
        hint: "window",
        does: Does::Window,
    },
    Binding {
        keys: &["a"],
        label: "a",
        help: "audit log: switch between events and audit records",
        views: Some(EVENTS),
        hint: "audit log",
        does: Does::Audit,
    },
    Binding {
        keys: &["]"],
        label: "]",
        help: "audit log: the records before the oldest shown",
        hint: "older",
        views: Some(EVENTS),
        does: Does::Older,
    },
    Binding {
        keys: &["["],
        label: "[",
        help: "audit log: back to the newest records",
        hint: "",
        views: Some(EVENTS),
        does: Does::Newest,
    },
];

/// The binding for a key in a view, if any.
pub fn lookup(key: &str, view: View) -> Option<&'static Binding> {
    KEYMAP
        .iter()
        .find(|b| b.keys.contains(&key) && b.views.is_none_or(|vs| vs.contains(&view)))
}

/// The hints for the footer: the view's own keys first, then the common ones.
pub fn hints(view: View) -> Vec<(&'static str, &'static str)> {
    let own = KEYMAP
        .iter()
        .filter(|b| b.views.is_some_and(|vs| vs.contains(&view)));
    let common = KEYMAP.iter().filter(|b| b.views.is_none());
    own.chain(common)
        .filter(|b| !b.hint.is_empty())
        .map(|b| (b.label, b.hint))
        .collect()
}
