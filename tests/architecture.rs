//! The house rules of `ARCHITECTURE.md`, kept by reading the source (rust-analyzer's
//! tidy tests): which top-level modules a module may import, no import cycles between
//! top-level modules, and only `store` knowing sled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it imports (`crate::x`, `crate::{x, y}`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir("src").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "main" || name == "lib" {
            continue;
        }
        let mut uses = BTreeSet::new();
        for file in rust_files(&path) {
            let text = std::fs::read_to_string(&file).unwrap();
            uses.extend(crate_paths(&text));
        }
        uses.remove(&name);
        graph.insert(name, uses);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    graph
}

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The first segment of every `crate::` path in `text`, comments left out.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |at: usize| -> String {
        code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let after = at + "crate::".len();
        if bytes.get(after) != Some(&b'{') {
            found.insert(ident(after));
            continue;
        }
        // `crate::{a::b, c, d::{e, f}}`: the names right after `{` or `,` at depth one.
        let (mut depth, mut expect) = (0usize, true);
        let mut i = after;
        while i < bytes.len() {
            match bytes[i] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => expect = true,
                c if depth == 1 && expect && (c.is_ascii_alphanumeric() || c == b'_') => {
                    let name = ident(i);
                    i += name.len();
                    found.insert(name);
                    expect = false;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

#[test]
fn the_crate_path_reader_sees_grouped_and_plain_imports() {
    let text = "use crate::a::B;\nuse crate::{c::{D, E}, f, g::h};\n// crate::comment\nlet x = crate::i::j();";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["a", "c", "f", "g", "i"]);
}

/// What a module may import, where ARCHITECTURE.md restricts it.
const WALLS: &[(&str, &[&str])] = &[
    // An HTTP adapter: it builds an `Inbound` and renders a `Reply`, nothing more.
    ("api", &["gateway", "domain", "telemetry", "wake", "clock"]),
    ("store", &["domain"]),
    // Flow definitions: checked at load, run by `gateway::flows`.
    ("flows", &["domain"]),
    ("domain", &[]),
    ("mock", &[]),
    ("console", &["control", "domain", "telemetry"]),
    ("shutdown", &[]),
];

#[test]
fn modules_import_only_what_their_wall_allows() {
    let graph = imports();
    let mut breaches = Vec::new();
    for (module, allowed) in WALLS {
        let uses = graph
            .get(*module)
            .unwrap_or_else(|| panic!("no module {module}"));
        for used in uses {
            if !allowed.contains(&used.as_str()) {
                breaches.push(format!("{module} imports {used}"));
            }
        }
    }
    assert!(breaches.is_empty(), "walls breached: {breaches:?}");
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let graph = imports();
    let reaches = |from: &str, to: &str| -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(at) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        false
    };
    let mut cycles = Vec::new();
    for (module, uses) in &graph {
        for used in uses {
            if module < used && reaches(used, module) {
                cycles.push(format!("{module} <-> {used}"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn only_store_knows_sled() {
    let mut knowing = Vec::new();
    for file in rust_files(Path::new("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("sled::") && !file.starts_with("src/store") {
            knowing.push(file.display().to_string());
        }
    }
    assert!(knowing.is_empty(), "sled outside store: {knowing:?}");
}
