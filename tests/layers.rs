//! The house's rules, checked on the source itself: the command line's clap types stay in
//! `src/cli/` and `main.rs`; modules import one way, floor by floor (`FLOORS`), with no circle
//! between any two files, a folder's `mod.rs` and its files included; no source file is over
//! 700 lines. A module's imports are the `crate::` and `super::` paths its code names (tests
//! excluded), and, for a `mod.rs`, the paths into its own files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, bottom to top: a module may import its own floor's and lower ones'.
const FLOORS: &[&[&str]] = &[
    &["config", "console", "generator"],
    &["topology"],
    &["backend"],
    &["comm", "timing"],
    &["model"],
    &["strategy"],
    &["metrics"],
    &["plan"],
    &["output", "calibrate", "chart"],
    &["fault", "journal", "launch"],
    &["harness", "bench", "selftest"],
    &["sweep", "report", "info"],
    &["cli"],
    &["commands"],
    &["main", "lib"],
];

/// The most imports allowed to run back up a floor.
const MAX_UPWARD: usize = 2;

/// The longest a source file may be.
const MAX_LINES: usize = 700;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// "strategy::ring" for src/strategy/ring.rs, "strategy" for src/strategy/mod.rs.
fn module_name(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its test module and its comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or(text);
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Identifier paths that start right after each occurrence of `prefix` ("a::b::c"), and the
/// items of a brace list there ("{a, b::c}" gives "a" and "b::c").
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    for (at, _) in code.match_indices(prefix) {
        if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            out.extend(list.split(',').map(|i| i.trim().split([' ', '{']).next().unwrap_or("").trim_end_matches(':').to_string()));
        } else {
            // A trailing "::" (before a brace list) says the path is a module's.
            out.push(rest.chars().take_while(|&c| ident(c)).collect::<String>());
        }
    }
    out.into_iter().filter(|p| !p.trim_end_matches(':').is_empty()).collect()
}

/// The module a path names: its longest prefix that is a module. A one-segment path into the
/// parent that names one of the parent's own functions (`super::spec`) is the parent.
fn resolve(modules: &BTreeMap<String, String>, base: &[&str], path: &str) -> Option<String> {
    let (path, module_path) = match path.strip_suffix("::") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let segs: Vec<&str> = base.iter().copied().chain(path.split("::").filter(|s| !s.is_empty())).collect();
    if !module_path && !path.contains("::") && !base.is_empty() {
        let parent = base.join("::");
        if modules.get(&parent).is_some_and(|src| src.contains(&format!("fn {path}("))) {
            return Some(parent);
        }
    }
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| modules.contains_key(m))
}

fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<String, String> =
        files.iter().map(|f| (module_name(&src, f), code(&std::fs::read_to_string(f).unwrap()))).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &modules {
        let own: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
        let parent = &own[..own.len().saturating_sub(1)];
        let is_folder = modules.keys().any(|k| k.starts_with(&format!("{m}::")));
        let mut to = BTreeSet::new();
        for p in paths_after(text, "crate::") {
            to.extend(resolve(&modules, &[], &p));
        }
        for p in paths_after(text, "super::") {
            // `super` of a folder's mod.rs and of a file alike is the enclosing module.
            let base = if is_folder { parent } else { parent };
            to.extend(resolve(&modules, base, &p));
        }
        if is_folder {
            // A mod.rs reaching into its own files by their names ("ring::SPEC").
            for child in
                modules.keys().filter(|k| k.starts_with(&format!("{m}::")) && k.matches("::").count() == m.matches("::").count() + 1)
            {
                let short = child.rsplit("::").next().unwrap();
                if paths_after(text, &format!("{short}::")).iter().any(|_| true) || text.contains(&format!(" {short}::")) {
                    to.insert(child.clone());
                }
            }
        }
        to.remove(m);
        to.remove("");
        edges.insert(m.clone(), to);
    }
    (edges, modules)
}

fn floor(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap();
    FLOORS.iter().position(|f| f.contains(&top))
}

#[test]
fn clap_stays_in_the_command_line_wing() {
    let (_, modules) = graph();
    let outside: Vec<&String> =
        modules.iter().filter(|(m, src)| !(m.starts_with("cli") || *m == "main") && src.contains("clap")).map(|(m, _)| m).collect();
    assert!(outside.is_empty(), "clap outside src/cli and main.rs: {outside:?}");
}

#[test]
fn modules_import_one_way_with_no_circle() {
    let (edges, _) = graph();
    // Every module has a floor.
    for m in edges.keys() {
        assert!(floor(m).is_some(), "{m} has no floor in FLOORS");
    }
    let upward: Vec<(String, String)> =
        edges.iter().flat_map(|(m, to)| to.iter().filter(|t| floor(t) > floor(m)).map(move |t| (m.clone(), t.clone()))).collect();
    assert!(upward.len() <= MAX_UPWARD, "imports running back up: {upward:?}");
    // A circle is a module that reaches itself: a depth-first search from each.
    for start in edges.keys() {
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for t in &edges[&m] {
                assert!(t != start, "import circle: {} -> {start}", path.join(" -> "));
                if seen.insert(t.clone()) {
                    stack.push((t.clone(), [path.clone(), vec![t.clone()]].concat()));
                }
            }
        }
    }
    // The check sees imports at all: the harness uses the strategies, a strategy its table.
    assert!(edges["harness::measure"].contains("strategy"), "{:?}", edges["harness::measure"]);
    assert!(edges["strategy::ring"].contains("strategy::spec"), "{:?}", edges["strategy::ring"]);
    assert!(edges["strategy"].contains("strategy::ring"), "{:?}", edges["strategy"]);
}

#[test]
fn no_source_file_is_over_700_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for f in files {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n <= MAX_LINES, "{}: {n} lines", f.display());
    }
}
