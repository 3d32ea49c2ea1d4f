//! The module layout's rule, checked from the source (no root): every `crate::` path in a
//! top-level module of src/ names a module of the same or a lower layer, so the arrows go one
//! way and there is no circle between top-level modules. Test code (`tests.rs` files and
//! what follows `#[cfg(test)]`) may reach anywhere.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may use those before it and itself.
const LAYERS: &[&[&str]] = &[
    &["go_duration", "log"],
    &["cli"],
    &["config"],
    &["plan"],
    &["render"],
    &["sys"],
    &["driver"],
    &["engine"],
    &["execute"],
    &["trace", "validate"],
    &["run"],
    &["cni"],
    &["entry"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The non-test code of a file, without comments.
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named by `crate::` paths (and `use crate::{a, b}` lists).
fn used(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            list[..end]
                .split(',')
                .map(|s| s.trim().split("::").next().unwrap_or("").trim())
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![&rest[..end]]
        };
        out.extend(
            names
                .into_iter()
                .filter(|n| !n.is_empty() && *n != "self")
                .map(String::from),
        );
    }
    out
}

/// Every edge between top-level modules: (from, to) → the files that make it.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for to in used(&code(&text)) {
            if to != from && layer_of(&to).is_some() {
                out.entry((from.clone(), to))
                    .or_default()
                    .push(file.strip_prefix(&src).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        if let Some(module) = module_of(&src, &file) {
            assert!(
                layer_of(&module).is_some(),
                "src/{module} has no layer in LAYERS: add it where its imports allow"
            );
        }
    }
}

#[test]
fn imports_point_down_the_layers_only() {
    let mut upward = Vec::new();
    for ((from, to), files) in edges() {
        let (f, t) = (layer_of(&from).unwrap(), layer_of(&to).unwrap());
        if t > f {
            upward.push(format!("{from} → {to} ({})", files.join(", ")));
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layer order:\n{}",
        upward.join("\n")
    );
}

#[test]
fn there_is_no_import_circle_between_top_level_modules() {
    let edges = edges();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            let mut circle = path[i..].to_vec();
            circle.push(node);
            return Some(circle);
        }
        if done.contains(&node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.push(node);
        None
    }
    let mut done = Vec::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
}

/// Inside `render/` too the arrows go one way, lowest first: set arithmetic below the ruleset
/// that uses it, the ruleset below its netlink encoding (whose `sets` and `text` submodules
/// belong to it).
const RENDER_LAYERS: &[&[&str]] = &[
    &["netlink_wire", "iptables_text", "nft_sets"],
    &["iptables_save", "nft_ruleset"],
    &["shadowing", "nft_netlink"],
];

#[test]
fn render_modules_import_down_only() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/render");
    let layer = |m: &str| RENDER_LAYERS.iter().position(|l| l.contains(&m));
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&dir).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let from = first.trim_end_matches(".rs");
        if from == "mod" {
            continue;
        }
        let from_layer = layer(from).unwrap_or_else(|| panic!("render/{from} has no layer"));
        let text = code(&fs::read_to_string(&file).unwrap());
        // `super::` is render/ only in render's own files; in nft_netlink/ it is nft_netlink.
        let prefixes: &[&str] = if rel.components().count() == 1 {
            &["crate::render::", "super::"]
        } else {
            &["crate::render::"]
        };
        for prefix in prefixes {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let to = &rest[..end];
                if let Some(to_layer) = layer(to) {
                    if to != from && to_layer >= from_layer {
                        wrong.push(format!("render/{} → {to}", rel.display()));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "render imports against its layer order:\n{}",
        wrong.join("\n")
    );
}
