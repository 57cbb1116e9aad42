//! Every ```ini block of README.md and docs/*.md loads as what it claims to be, so that a
//! sample an operator copies works: a node.conf through `NodeConfig::from_doc`, a service
//! config through `ServiceConfig::parse`.
//!
//! A block is a service config when it has a `[DEFAULT]` section or a resource section
//! (`[app#1]`), else a node.conf. A value written `...` is a placeholder for something the
//! reader supplies; it is allowed only where the test knows a valid stand-in
//! ([`PLACEHOLDERS`]), so a sample cannot hide a wrong value behind it.

use std::path::Path;
use std::path::PathBuf;

use om::config::IniDoc;
use om::config::NodeConfig;
use om::model::service::ServiceConfig;

/// `section.key` whose value may be `...` in a sample, and what the test puts there.
const PLACEHOLDERS: &[(&str, &str)] = &[(
    "cluster.secret",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
)];

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The ```ini blocks of `text`, each with the line its first line is on.
fn ini_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```ini") => current = Some((i + 2, String::new())),
            Some(_) if fence.starts_with("```") => out.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an ```ini block is not closed");
    out
}

/// Replaces the `...` placeholders a sample may hold; panics on one it may not.
fn fill_placeholders(doc: &IniDoc, at: &str) -> IniDoc {
    let mut filled = doc.clone();
    for (section, key, value) in doc.entries() {
        if value != "..." {
            continue;
        }
        let param = format!("{section}.{key}");
        let stand_in = PLACEHOLDERS
            .iter()
            .find(|(p, _)| *p == param)
            .unwrap_or_else(|| panic!("{at}: {param} = ... is not a known placeholder"))
            .1;
        filled.set(&section, &key, stand_in);
    }
    filled
}

#[test]
fn every_ini_sample_in_the_docs_loads() {
    let mut node_confs = 0;
    let mut services = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (line, block) in ini_blocks(&text) {
            let at = format!("{name}:{line}");
            let doc = IniDoc::parse(&block)
                .unwrap_or_else(|e| panic!("{at}: the sample does not parse: {e}"));
            let sections: Vec<String> = doc.entries().into_iter().map(|(s, _, _)| s).collect();
            let is_service = sections
                .iter()
                .any(|s| s == "DEFAULT" || (s.contains('#') && !s.starts_with("worktype#")));
            if is_service {
                ServiceConfig::parse(&block)
                    .unwrap_or_else(|e| panic!("{at}: not a valid service config: {e}"));
                services += 1;
            } else {
                NodeConfig::from_doc(&fill_placeholders(&doc, &at))
                    .unwrap_or_else(|e| panic!("{at}: not a valid node.conf: {e}"));
                node_confs += 1;
            }
        }
    }
    // The samples this test exists for: README's node.conf and SERVICES.md's service.
    assert!(node_confs >= 1, "no node.conf sample found");
    assert!(services >= 1, "no service config sample found");
}

#[test]
fn the_block_reader_and_the_loaders_catch_a_broken_sample() {
    // The test above must be able to fail: a sample with a bad value is refused.
    let text = "x\n```ini\n[node]\nsplit_action = maybe   # stop | none\n```\n";
    let blocks = ini_blocks(text);
    assert_eq!(
        blocks,
        [(3, "[node]\nsplit_action = maybe   # stop | none\n".into())]
    );
    let doc = IniDoc::parse(&blocks[0].1).unwrap();
    assert!(NodeConfig::from_doc(&doc).is_err());
    let doc = IniDoc::parse("[cluster]\nname = ...\n").unwrap();
    let unknown = std::panic::catch_unwind(|| fill_placeholders(&doc, "t"));
    assert!(unknown.is_err(), "an unknown placeholder is refused");
}
