//! The source tree's shape, read from `gateway/src` itself (the rules in lib.rs's doc):
//! - no import circle between files: a file depends on another when it names it by a
//!   `crate::…`, `super::…`, `self::…` or child-module path, in code or in a
//!   `schema_with = "…"` attribute (tests included);
//! - the folder layering: `observe` uses no other folder, nothing uses `operate`, `admit`
//!   uses neither `accept` nor `forward`, `forward` does not use `accept`;
//! - at most 12 entries directly under `gateway/src`, each file opens with a `//!` line;
//! - README's file table names every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (segments under `crate`) → source file, relative to `src/`.
type Files = BTreeMap<Vec<String>, String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn collect(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if p.is_dir() {
            collect(&p, &child, out);
        } else if name.ends_with(".rs") {
            out.push(child);
        }
    }
}

/// Every library source file (main.rs is the binary: it sees the library as `gateway::`).
fn source_files() -> Vec<String> {
    let mut out = Vec::new();
    collect(&src_dir(), "", &mut out);
    out.retain(|f| f != "main.rs");
    out
}

fn module_of(file: &str) -> Vec<String> {
    let stem = file.trim_end_matches(".rs");
    let mut segs: Vec<String> = stem.split('/').map(str::to_string).collect();
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib")) {
        segs.pop();
    }
    segs
}

/// The text with comments removed and string/char literal contents blanked, except that a
/// string holding a path (`"crate::…"`) is kept: attributes name functions that way.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                while b.get(j) == Some(&b'#') {
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let hashes = j - i - 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let lit = &src[start..j.min(b.len())];
                if lit.starts_with("crate::") || lit.starts_with("super::") {
                    out.push(' ');
                    out.push_str(lit);
                    out.push_str(" ;");
                } else {
                    out.push_str("\"\"");
                }
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is skipped.
                let rest = &b[i + 1..];
                let len = if rest.first() == Some(&b'\\') {
                    rest.iter().skip(1).position(|&c| c == b'\'').map(|p| p + 2)
                } else {
                    let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (rest.get(ch) == Some(&b'\'')).then_some(ch)
                };
                match len {
                    Some(n) => {
                        out.push_str("' '");
                        i += n + 2;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(Tok::Ident(code[i..end].to_string()));
        } else if c == ':' && chars.peek().map(|&(_, d)| d) == Some(':') {
            chars.next();
            toks.push(Tok::PathSep);
        } else if !c.is_whitespace() {
            toks.push(Tok::Punct(c));
        }
    }
    toks
}

/// Expands a `use` tree starting at `toks[i]` (after `use`) into full paths; returns the index
/// after the tree.
fn use_tree(toks: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                if matches!(toks.get(i), Some(Tok::Ident(a)) if a == "as") {
                    i += 2;
                }
                out.push(path);
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while !matches!(toks.get(i), Some(Tok::Punct('}')) | None) {
                    i = use_tree(toks, i, &path, out);
                    if toks.get(i) == Some(&Tok::Punct(',')) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some(Tok::Punct('*')) => {
                out.push(path);
                return i + 1;
            }
            _ => return i,
        }
    }
}

/// A module's inline `mod name {` blocks and the paths named inside each scope.
struct Scoped {
    module: Vec<String>,
    is_use: bool,
    path: Vec<String>,
}

fn named_paths(file_module: &[String], code: &str) -> Vec<Scoped> {
    let toks = tokens(code);
    let mut out = Vec::new();
    // (brace depth at which the inline module closes, module path inside it)
    let mut scopes: Vec<(usize, Vec<String>)> = vec![(usize::MAX, file_module.to_vec())];
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let module = scopes.last().unwrap().1.clone();
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if scopes.last().unwrap().0 == depth {
                    scopes.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    let mut inner = module.clone();
                    inner.push(name.clone());
                    scopes.push((depth, inner));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(k) if k == "use" => {
                let mut paths = Vec::new();
                i = use_tree(&toks, i + 1, &[], &mut paths);
                out.extend(paths.into_iter().map(|path| Scoped {
                    module: module.clone(),
                    is_use: true,
                    path,
                }));
                continue;
            }
            Tok::Ident(k)
                if (k == "crate" || k == "super") && toks.get(i + 1) == Some(&Tok::PathSep) =>
            {
                let prev_sep = i > 0 && toks[i - 1] == Tok::PathSep;
                let mut path = Vec::new();
                let mut j = i;
                while let Some(Tok::Ident(s)) = toks.get(j) {
                    path.push(s.clone());
                    if toks.get(j + 1) != Some(&Tok::PathSep) {
                        break;
                    }
                    j += 2;
                }
                if !prev_sep {
                    out.push(Scoped {
                        module: module.clone(),
                        is_use: false,
                        path,
                    });
                }
                i = j + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The absolute module path a named path starts from, or None for external crates.
fn absolute(scoped: &Scoped, files: &Files) -> Option<Vec<String>> {
    let mut path = scoped.path.clone();
    let mut base = scoped.module.clone();
    match path.first().map(String::as_str) {
        Some("crate") => {
            path.remove(0);
            return Some(path);
        }
        Some("super") | Some("self") => {
            while let Some(first) = path.first() {
                match first.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                path.remove(0);
            }
        }
        Some(first) if scoped.is_use => {
            // `use child::Item` names a child module of this one; anything else is extern.
            let mut child = base.clone();
            child.push(first.to_string());
            if !files.contains_key(&child) {
                return None;
            }
        }
        _ => return None,
    }
    base.extend(path);
    Some(base)
}

/// The file a module path lives in: its longest prefix that is a file module.
fn file_of<'a>(path: &[String], files: &'a Files) -> Option<&'a String> {
    (0..=path.len()).rev().find_map(|n| files.get(&path[..n]))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let names = source_files();
    let files: Files = names.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in &names {
        let src = std::fs::read_to_string(src_dir().join(name)).unwrap();
        let deps = edges.entry(name.clone()).or_default();
        for scoped in named_paths(&module_of(name), &code_only(&src)) {
            let Some(target) = absolute(&scoped, &files).and_then(|p| file_of(&p, &files).cloned())
            else {
                continue;
            };
            if &target != name && target != "lib.rs" {
                deps.insert(target);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_circle_between_files() {
    let found = cycles(&graph());
    assert!(
        found.is_empty(),
        "files that import each other (directly or round a loop): {found:#?}"
    );
}

/// The folder a file belongs to (`state.rs` and `lib.rs` are their own).
fn folder(file: &str) -> &str {
    file.split_once('/').map_or(file, |(dir, _)| dir)
}

#[test]
fn folders_keep_the_layering() {
    // (from, to) folder pairs that must never appear.
    let forbidden = |from: &str, to: &str| match (from, to) {
        ("observe", _) => true,
        (_, "operate") => from != "operate",
        ("admit", "accept" | "forward") => true,
        ("forward", "accept") => true,
        _ => false,
    };
    let bad: Vec<String> = graph()
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |t| (from, t)))
        .filter(|(from, to)| folder(from) != folder(to) && forbidden(folder(from), folder(to)))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        bad.is_empty(),
        "imports against the layering (lib.rs): {bad:#?}"
    );
}

#[test]
fn a_short_top_level_and_every_file_says_what_it_is() {
    let top: Vec<_> = std::fs::read_dir(src_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        top.len() <= 12,
        "{} entries directly under gateway/src: {top:?}",
        top.len()
    );
    let mut all = source_files();
    all.push("main.rs".into());
    let undocumented: Vec<&String> = all
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(src_dir().join(f))
                .unwrap()
                .starts_with("//! ")
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "files without a leading `//!` line: {undocumented:?}"
    );
}

/// The paths in the first column of README's gateway source table.
fn readme_table() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("Gateway source (`gateway/src/`)")
        .expect("README has the gateway source table");
    readme[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn readme_lists_every_source_file() {
    let listed = readme_table();
    let mut all = source_files();
    all.push("main.rs".into());
    let missing: Vec<&String> = all.iter().filter(|f| !listed.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "README's gateway source table lacks: {missing:?}"
    );
    let stale: Vec<&String> = listed
        .iter()
        .filter(|f| f.ends_with(".rs") && !all.contains(f))
        .collect();
    assert!(
        stale.is_empty(),
        "README's gateway source table names files that do not exist: {stale:?}"
    );
}

#[test]
fn the_parser_sees_what_rust_sees() {
    let files: Files = ["a/mod.rs", "a/b.rs", "c.rs", "d/mod.rs", "d/e.rs"]
        .iter()
        .map(|f| (module_of(f), f.to_string()))
        .collect();
    let src = r##"
        //! `crate::c::X` in a comment is no dependency
        use crate::{c::{self, Y}, a::b as bee};
        use e::Z;
        const S: &str = "crate::d::Q"; // a string naming a path is one (schema_with)
        const T: &str = r#"crate::a::b is text"#;
        fn f<'a>(x: &'a str) -> char { let _ = super::c::g(); '{' }
        #[cfg(test)]
        mod tests { use super::*; use super::e::W; }
    "##;
    let found: BTreeSet<String> = named_paths(&module_of("d/mod.rs"), &code_only(src))
        .iter()
        .filter_map(|s| absolute(s, &files).and_then(|p| file_of(&p, &files).cloned()))
        .collect();
    let want: BTreeSet<String> = ["c.rs", "a/b.rs", "d/e.rs", "d/mod.rs"]
        .map(String::from)
        .into();
    assert_eq!(found, want);
    assert!(!cycles(&BTreeMap::from([
        ("x".to_string(), BTreeSet::from(["y".to_string()])),
        ("y".to_string(), BTreeSet::from(["z".to_string()])),
        ("z".to_string(), BTreeSet::from(["x".to_string()])),
    ]))
    .is_empty());
}
