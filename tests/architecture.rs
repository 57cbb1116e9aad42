//! The layering of `src/` (docs/ARCHITECTURE.md): the top-level modules import each other
//! without a cycle, and the layers below the daemon never name it.
//!
//! An import is a `crate::<module>` path in code (comments and doc comments aside) of any
//! file under `src/<module>/` or `src/<module>.rs`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each top-level module of `src/` and the modules its code names as `crate::<m>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |p: &Path| {
        let rel = p.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|p| module_of(p)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        let deps = graph.entry(m.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != m && modules.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one (depth-first, in name order).
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let here = path.last().unwrap().clone();
    for next in graph.get(&here).into_iter().flatten() {
        if next == start {
            let mut c = path.clone();
            c.push(start.to_string());
            return Some(c);
        }
        if path.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(c) = cycle_from(graph, start, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(graph.len() >= 10, "too few modules found: {graph:?}");
    for m in graph.keys() {
        let found = cycle_from(&graph, m, &mut vec![m.clone()]);
        assert!(
            found.is_none(),
            "module cycle: {}",
            found.unwrap().join(" -> ")
        );
    }
}

#[test]
fn the_layers_below_the_daemon_never_name_it_nor_the_cli() {
    let graph = imports();
    for low in [
        "api", "wire", "logging", "config", "model", "services", "monitor", "control", "work",
    ] {
        let deps = &graph[low];
        assert!(
            !deps.contains("daemon") && !deps.contains("cli"),
            "{low} imports {deps:?}"
        );
    }
    for base in ["api", "wire", "logging", "config", "model"] {
        for up in ["services", "monitor", "control", "work", "listener"] {
            assert!(!graph[base].contains(up), "{base} imports {up}");
        }
    }
}
