//! The shape of `relay/src`: no import cycle between top-level modules, no source file
//! and no function past the size at which it should be split. Part of `cargo test`, so CI fails on
//! a cycle or an oversized file.
//!
//! A top-level module `a` uses `b` when `a`'s code (outside `#[cfg(test)]` items, and
//! outside comments) names `crate::b`, directly or in a `crate::{b, ...}` group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines of code (before a file's `#[cfg(test)]` part) past which a file is split.
const MAX_FILE_LINES: usize = 500;
/// Lines past which a function is split (a little slack over 100 for formatting).
const MAX_FN_LINES: usize = 110;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules and their files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(src()).expect("read relay/src").flatten() {
        let p = e.path();
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if p.is_dir() {
            let mut fs = Vec::new();
            files(&p, &mut fs);
            out.insert(name, fs);
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            out.insert(name, vec![p]);
        }
    }
    out
}

/// A file's code without its `#[cfg(test)]` part and without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` names as `crate::x` or inside `crate::{x, y::z}`.
fn uses(code: &str, known: &BTreeMap<String, Vec<PathBuf>>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<String> = match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group.split(',').map(|g| ident(g.trim())).collect()
            }
            None => vec![ident(rest)],
        };
        out.extend(names.into_iter().filter(|n| known.contains_key(n)));
    }
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    mods.iter()
        .map(|(m, fs)| {
            let mut used = BTreeSet::new();
            for f in fs {
                used.extend(uses(&code(f), &mods));
            }
            used.remove(m);
            (m.clone(), used)
        })
        .collect()
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "c", "d");
    assert!(cycles(&g).is_empty());
    edge(&mut g, "d", "b");
    assert_eq!(cycles(&g), [vec!["b", "c", "d"]]);
    let known = [("x", vec![]), ("y", vec![]), ("z", vec![])]
        .into_iter()
        .map(|(k, v): (&str, Vec<PathBuf>)| (k.to_owned(), v))
        .collect();
    let found = uses(
        "use crate::x::A;\nuse crate::{y, z::B};\nuse std::q;",
        &known,
    );
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["x", "y", "z"]);
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let g = graph();
    assert!(g.len() > 10, "found the modules of relay/src: {g:?}");
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules of relay/src: {found:?}\nedges: {g:#?}"
    );
}

/// A file's text before its `#[cfg(test)]` part.
fn before_tests(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[test]
fn no_source_file_or_function_is_too_long() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut long = Vec::new();
    for f in &all {
        let text = before_tests(f);
        let lines: Vec<&str> = text.lines().collect();
        let name = f.strip_prefix(src()).unwrap_or(f).display().to_string();
        if lines.len() > MAX_FILE_LINES {
            long.push(format!("{name}: {} lines", lines.len()));
        }
        // A function runs from its `fn` line to the closing brace at the same indent.
        for (i, l) in lines.iter().enumerate() {
            let body = l.trim_start();
            let indent = &l[..l.len() - body.len()];
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "pub(crate) async fn ",
                "pub(super) async fn ",
            ]
            .iter()
            .any(|p| body.starts_with(p));
            if !is_fn || body.ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            if let Some(end) = lines[i + 1..].iter().position(|x| *x == close) {
                if end + 2 > MAX_FN_LINES {
                    long.push(format!("{name}:{}: a function of {} lines", i + 1, end + 2));
                }
            }
        }
    }
    assert!(all.len() > 20, "found the sources: {all:?}");
    assert!(long.is_empty(), "split these: {long:#?}");
}
