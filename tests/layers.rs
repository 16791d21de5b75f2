//! The layers of `src/` point one way: a module may use only modules of lower layers (and the
//! few peers named in `PEERS`). Reads every `crate::…` reference outside test modules.
//!
//! `DEBT` lists the references that still point the wrong way. It may only shrink: a new
//! reference against the order fails, and so does an entry of `DEBT` that no longer occurs
//! (delete it: the cycle is gone for good). `docs/architecture.md` draws the picture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    // Leaf domain types.
    &["types"],
    // The error type, then what renders it and other leaves.
    &["error"],
    &["respond", "sse", "metrics", "keys"],
    // Configuration (TOML → types), then the database layer.
    &["config"],
    &["db"],
    // Domains: types and narrow handles only.
    &[
        "safety",
        "translate",
        "routing",
        "telemetry",
        "usage",
        "governance",
        "mcp",
        "filters",
    ],
    // The control plane: the snapshot and its only writer.
    &["control"],
    // The admin API, the answers both listeners give, then the data plane.
    &["api"],
    &["endpoints"],
    &["proxy"],
    // The console calls the API in process; the admin listener dispatches to both.
    &["console"],
    &["admin"],
    // Wiring.
    &["services"],
    &["server"],
];

/// Same-layer references that are part of the design.
const PEERS: &[(&str, &str)] = &[
    // Filter chains run the safety detectors.
    ("filters", "safety"),
];

/// References against the order that are still there (the architecture issue's debt).
const DEBT: &[(&str, &str)] = &[("config", "governance")];

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root, binaries, the
/// mock provider).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let m = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(m, "lib" | "main" | "bin" | "mock")).then(|| m.to_string())
}

/// The code of a file without its `#[cfg(test)]` modules.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Top-level modules named by `crate::…` in `code`.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `wharf_crate::` or `foo_crate::` are other paths.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

/// Every module-to-module reference of `src/`, with one file that makes it.
fn edges() -> BTreeMap<(String, String), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let Some(from) = module_of(rel) else { continue };
        let text = std::fs::read_to_string(&f).expect("read file");
        for to in references(without_tests(&text)) {
            if to != from {
                out.entry((from.clone(), to))
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    out
}

#[test]
fn every_module_has_a_layer() {
    let missing: BTreeSet<String> = edges()
        .keys()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/layers.rs: {missing:?}"
    );
}

#[test]
fn references_point_down_the_layers() {
    let edges = edges();
    let mut wrong = Vec::new();
    let mut seen_debt = BTreeSet::new();
    for ((from, to), file) in &edges {
        let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else {
            continue;
        };
        if b < a || PEERS.contains(&(from.as_str(), to.as_str())) {
            continue;
        }
        if DEBT.contains(&(from.as_str(), to.as_str())) {
            seen_debt.insert((from.clone(), to.clone()));
            continue;
        }
        wrong.push(format!("{from} -> {to} ({file})"));
    }
    assert!(
        wrong.is_empty(),
        "references against the layer order (see docs/architecture.md): {wrong:#?}"
    );
    let paid: Vec<&(&str, &str)> = DEBT
        .iter()
        .filter(|(a, b)| !seen_debt.contains(&(a.to_string(), b.to_string())))
        .collect();
    assert!(
        paid.is_empty(),
        "these references are gone: delete them from DEBT in tests/layers.rs: {paid:?}"
    );
}

#[test]
fn the_leaves_import_nothing_above_them() {
    let edges = edges();
    let from = |m: &str| -> Vec<String> {
        edges
            .keys()
            .filter(|(a, _)| a == m)
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert_eq!(from("types"), Vec::<String>::new(), "types is a leaf");
    assert_eq!(from("error"), vec!["types".to_string()]);
    let respond = from("respond");
    assert!(
        respond.iter().all(|m| m == "error" || m == "types"),
        "{respond:?}"
    );
}

#[test]
fn the_scanner_sees_references_and_skips_test_modules() {
    let code = "use crate::config::Model;\nfn f() { crate::usage::x(); my_crate::no(); }\n#[cfg(test)]\nmod tests { use crate::proxy; }\n";
    let refs = references(without_tests(code));
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["config".to_string(), "usage".to_string()]
    );
}
