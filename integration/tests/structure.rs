//! The shape of the code: crates depend only downward along the pipeline,
//! and no crate has modules that import each other in a circle.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each workspace crate and the ferry crates it may depend on.
const LAYERS: &[(&str, &[&str])] = &[
    ("ferry-core", &[]),
    ("ferry-fs", &[]),
    ("ferry-source", &["ferry-core", "ferry-fs"]),
    ("ferry-tuf", &["ferry-core", "ferry-fs", "ferry-source"]),
    ("ferry-git", &["ferry-core", "ferry-fs", "ferry-source"]),
    ("ferry-sigstore", &["ferry-core"]),
    ("ferry-delta", &["ferry-core"]),
    ("ferry-fleet", &["ferry-core", "ferry-fs"]),
    ("ferry-rules", &["ferry-core"]),
    ("ferry-ingest", &["ferry-core", "ferry-rules"]),
    ("ferry-wasm", &["ferry-core", "ferry-fs"]),
    // `ferry.toml`: the sections of the rules runtime and field sources
    // are those crates' types, checked by them.
    (
        "ferry-config",
        &["ferry-core", "ferry-rules", "ferry-ingest"],
    ),
    // Built and run on the packaging host: it shares only the CLI's
    // definitions (by path), no ferry crate.
    ("ferry-assets", &[]),
    (
        "ferry-engine",
        &[
            "ferry-config",
            "ferry-core",
            "ferry-fs",
            "ferry-source",
            "ferry-tuf",
            "ferry-git",
            "ferry-sigstore",
            "ferry-delta",
            // Not ferry-fleet: the fleet channel reads the engine's state
            // through its read API and owns its `[fleet]` settings.
            "ferry-rules",
            "ferry-ingest",
            "ferry-wasm",
        ],
    ),
];

#[test]
fn crates_depend_only_downward() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen = BTreeSet::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap();
        let Some((_, allowed)) = LAYERS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        seen.insert(name);
        for dep in pkg["dependencies"].as_array().unwrap() {
            // Normal and build dependencies: what the crate is made of.
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            let dep = dep["name"].as_str().unwrap();
            if dep.starts_with("ferry") {
                assert!(
                    allowed.contains(&dep),
                    "{name} depends on {dep}; it may depend only on {allowed:?}"
                );
            }
        }
    }
    assert_eq!(seen.len(), LAYERS.len(), "crates checked: {seen:?}");
}

/// The top-level modules of the crate at `src` and the ones each names
/// through `crate::` (outside comments and test modules).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" || top == "bin" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(top.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(list) => list
                            .split('}')
                            .next()
                            .unwrap_or("")
                            .split(',')
                            .map(|p| p.trim().split("::").next().unwrap_or(""))
                            .collect(),
                        None => vec![rest],
                    };
                    for name in names {
                        let m: String = name
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !m.is_empty() && m != top {
                            deps.insert(m);
                        }
                    }
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_module_cycle() {
    let agent = workspace().join("agent");
    let mut crates = 0;
    for entry in std::fs::read_dir(&agent).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        let graph = module_graph(&src);
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{}: modules in a cycle: {}",
                src.display(),
                cycle.join(" → ")
            );
        }
    }
    assert!(
        crates >= 10,
        "{crates} crates found under {}",
        agent.display()
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let acyclic: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec![])]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}

/// Every relative link in README.md and docs/ names a file that exists, and
/// every `#anchor` into a markdown file names one of its headings.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = workspace();
    let mut pages = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.starts_with("http") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && file.extension().is_some_and(|x| x == "md")
            {
                let headings = std::fs::read_to_string(&file).unwrap();
                if !anchors(&headings).contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of `[text](target)` links outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchors for a page's headings: lowercased, punctuation dropped,
/// spaces as dashes.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(anchor);
    }
    out
}
