//! Tidy tests, in the manner of rust-analyzer's: they read the source tree and fail when
//! the code stops keeping what ARCHITECTURE.md says of it. Each names the rule it
//! checks; a failure lists every offending file and line.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The repository root (this crate lives in `integration-tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A file's code lines (1-based numbers), without comment lines and without its
/// `#[cfg(test)]` module at the end.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .collect()
}

/// `(file:line: text)` for every code line of the files under `dirs` that contains one
/// of `needles`, skipping files `allowed` names.
fn offending_lines(dirs: &[&str], needles: &[&str], allowed: &[&str]) -> Vec<String> {
    let mut offences = Vec::new();
    for dir in dirs {
        for file in rust_files(&root().join(dir)) {
            let name = relative(&file);
            if allowed.iter().any(|allowed| name.starts_with(allowed)) {
                continue;
            }
            let text = fs::read_to_string(&file).unwrap();
            for (number, line) in code_lines(&text) {
                if needles.iter().any(|needle| line.contains(needle)) {
                    offences.push(format!("{name}:{number}: {}", line.trim()));
                }
            }
        }
    }
    offences
}

const DOMAINS: &[&str] = &["billing-svc/src/domain", "payment-svc/src/domain"];

#[test]
fn domain_code_knows_no_wire_no_database_and_reads_no_clock() {
    let offences = offending_lines(
        DOMAINS,
        &[
            "sqlx",
            "tonic",
            "prost",
            "billpay_contracts",
            "Utc::now",
            "Local::now",
            "SystemTime",
            "Instant::now",
            "now_v7",
            "new_v4",
            "now_micros()",
            "now_unix_seconds()",
            "clock::",
        ],
        &[],
    );
    assert!(
        offences.is_empty(),
        "domain/ must stay free of IO and clock reads (ARCHITECTURE.md):\n{}",
        offences.join("\n")
    );
}

#[test]
fn sql_lives_only_in_storage() {
    let offences = offending_lines(
        &["billing-svc/src", "payment-svc/src"],
        &[
            "\"SELECT ",
            "\"INSERT ",
            "\"UPDATE ",
            "\"DELETE ",
            "\"CREATE ",
            "sqlx::query",
        ],
        &[
            "billing-svc/src/storage/",
            "payment-svc/src/storage/",
            // The provider simulator's own ledger: it plays another company and keeps
            // its own database, so its storage is its own module.
            "payment-svc/src/sim/ledger.rs",
        ],
    );
    assert!(
        offences.is_empty(),
        "SQL belongs in storage/ (ARCHITECTURE.md):\n{}",
        offences.join("\n")
    );
}

#[test]
fn provider_wire_types_stay_in_providers() {
    // Outside providers/ (our side of the wire) and sim/ (the providers' side), no
    // code (de)serialises provider messages or speaks HTTP to a provider.
    let offences = offending_lines(
        &["payment-svc/src"],
        &["Serialize", "Deserialize", "serde_json", "reqwest"],
        &["payment-svc/src/providers/", "payment-svc/src/sim/"],
    );
    assert!(
        offences.is_empty(),
        "provider wire types leak outside providers/:\n{}",
        offences.join("\n")
    );
    // Inside providers/, the wire structs are private to the adapter.
    let mut public_wire = Vec::new();
    for file in rust_files(&root().join("payment-svc/src/providers")) {
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.contains("derive(")
                && (line.contains("Serialize") || line.contains("Deserialize"))
            {
                let item = lines[index + 1..]
                    .iter()
                    .find(|line| !line.trim_start().starts_with("#["))
                    .unwrap_or(&"");
                if item.trim_start().starts_with("pub ") {
                    public_wire.push(format!(
                        "{}:{}: {}",
                        relative(&file),
                        index + 2,
                        item.trim()
                    ));
                }
            }
        }
    }
    assert!(
        public_wire.is_empty(),
        "provider wire types must not be pub:\n{}",
        public_wire.join("\n")
    );
}

/// The sibling modules `text` (a file of module directory `dir`) uses.
fn sibling_uses(text: &str, dir_module: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = code_lines(text)
        .into_iter()
        .map(|(_, line)| line)
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = BTreeSet::new();
    let prefixes = ["super::".to_owned(), format!("crate::{dir_module}::")];
    for prefix in &prefixes {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix.as_str()) {
            rest = &rest[at + prefix.len()..];
            let items: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                // `use super::{a::X, b, c::{Y, Z}}`: the first name of each top-level item.
                let mut depth = 1;
                let mut end = 0;
                for (index, character) in group.char_indices() {
                    match character {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = index;
                        break;
                    }
                }
                let mut depth = 0;
                let mut items = vec![String::new()];
                for character in group[..end].chars() {
                    match character {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(String::new()),
                        _ => items.last_mut().unwrap().push(character),
                    }
                }
                items
            } else {
                vec![
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect(),
                ]
            };
            for item in items {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&name) {
                    used.insert(name);
                }
            }
        }
    }
    used
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn sibling_modules_do_not_import_each_other_in_a_circle() {
    let mut circles = Vec::new();
    for krate in ["billing-svc", "payment-svc", "service-kit", "billpay"] {
        for module_file in rust_files(&root().join(krate).join("src")) {
            if module_file.file_name().is_none_or(|name| name != "mod.rs") {
                continue;
            }
            let dir = module_file.parent().unwrap();
            let dir_module = dir
                .strip_prefix(root().join(krate).join("src"))
                .unwrap()
                .display()
                .to_string()
                .replace('/', "::");
            let files: Vec<PathBuf> = fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension().is_some_and(|ext| ext == "rs")
                        && path.file_name().is_some_and(|name| name != "mod.rs")
                })
                .collect();
            let siblings: BTreeSet<String> = files
                .iter()
                .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
                .collect();
            let graph: BTreeMap<String, BTreeSet<String>> = files
                .iter()
                .map(|path| {
                    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                    let text = fs::read_to_string(path).unwrap();
                    let mut used = sibling_uses(&text, &dir_module, &siblings);
                    used.remove(&name);
                    (name, used)
                })
                .collect();
            if let Some(cycle) = find_cycle(&graph) {
                circles.push(format!("{}: {}", relative(dir), cycle.join(" → ")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules that import each other in a circle (move what both need into a leaf):\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    // The tidy test above is only as good as this: a circle is found, a line is not.
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).into())
                .or_default()
                .insert((*to).into());
            graph.entry((*to).into()).or_default();
        }
        graph
    };
    assert!(find_cycle(&graph(&[("a", "b"), ("b", "c")])).is_none());
    assert!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).is_some());
    let siblings: BTreeSet<String> = ["apr", "schedule", "method"].map(String::from).into();
    let used = sibling_uses(
        "use super::{\n    apr::Apr,\n    schedule::{Schedule, MAX},\n};\nuse crate::domain::method::M;\n",
        "domain",
        &siblings,
    );
    assert_eq!(used, ["apr", "method", "schedule"].map(String::from).into());
}

#[test]
fn architecture_names_only_files_that_exist() {
    let text = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    // Where a path in backticks may be relative to: the root, a crate, a crate's src/.
    let mut bases = vec![root()];
    for krate in [
        "billing-svc",
        "payment-svc",
        "service-kit",
        "billpay",
        "integration-tests",
    ] {
        bases.push(root().join(krate));
        bases.push(root().join(krate).join("src"));
    }
    let mut missing = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for (position, quoted) in line.split('`').enumerate() {
            // Odd pieces are inside backticks.
            let looks_like_a_path = position % 2 == 1
                && quoted.contains('/')
                && !quoted.contains(' ')
                && !quoted.contains("://")
                && !quoted.starts_with('/')
                && !quoted.contains('{')
                && !quoted.contains('*')
                && quoted
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.is_empty() || last.contains('.'));
            if looks_like_a_path && !bases.iter().any(|base| base.join(quoted).exists()) {
                missing.push(format!("ARCHITECTURE.md:{}: `{quoted}`", index + 1));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names files that do not exist:\n{}",
        missing.join("\n")
    );
}
