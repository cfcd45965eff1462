//! The layout holds (issue 15): the library's modules import each other
//! one way only (no cycle), nothing in the library imports the CLI, and no
//! source file outgrows one concern. Read from the source itself, as
//! `cargo modules dependencies --acyclic` would, without the tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files allowed past the size bound, each with its reason.
const LONG_FILES: &[(&str, &str)] = &[];
const MAX_LINES: usize = 500;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/sink/kafka/mod.rs` → `sink`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules a file's code (not its comments) names as `crate::x`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let name: String =
                rest[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = &rest[at + 7..];
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // A unit test module may reach anywhere; the library may not.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imports(text).into_iter().filter(|d| *d != module));
    }
    graph
}

/// A cycle through `start`, if any, as the path that closes it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn modules_import_each_other_one_way_only() {
    let graph = graph();
    assert!(graph.len() > 10, "the source was not found: {graph:?}");
    let cycles: Vec<String> =
        graph.keys().filter_map(|m| cycle_from(&graph, m)).map(|c| c.join(" → ")).collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    let into_cli: Vec<&String> =
        graph.iter().filter(|(m, deps)| *m != "cli" && deps.contains("cli")).map(|(m, _)| m).collect();
    assert!(into_cli.is_empty(), "library modules importing the CLI: {into_cli:?}");
}

#[test]
fn no_source_file_holds_more_than_one_concern() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            let name = f.strip_prefix(&src).unwrap().to_str().unwrap().to_owned();
            (lines > MAX_LINES && !LONG_FILES.iter().any(|(n, _)| *n == name))
                .then(|| format!("{name}: {lines} lines"))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines (split them, or say why in LONG_FILES): {long:?}");
}

#[test]
fn the_checks_see_what_they_claim() {
    let text = "use crate::token::Kind; // crate::cli in a comment\nlet x = crate::event::ids::of_hit(h);";
    assert_eq!(imports(text), BTreeSet::from(["event".to_owned(), "token".to_owned()]));
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle_from(&g, "a"), Some(vec!["a".into(), "b".into(), "a".into()]));
}
