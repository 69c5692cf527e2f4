//! The direction of imports inside this crate, checked on its source: every
//! use of one top-level module by another (`crate::<module>`, or `super::`
//! climbing to it) must be an edge of [`ALLOWED`], and in no directory may the
//! modules use one another in a circle. The layers, each using only what is
//! below it (a request flows down through them; `client` implements the
//! transport's handler traits, so it uses `net` and `grpc`, and they know
//! nothing of etcd):
//!
//! ```text
//! server                        the process: starts the cores, wires them
//! client                        etcd's API on a client core
//! net -> grpc     store         the client port's transport | the store core
//!                 peer  apply   raft between members | etcd's KV semantics
//! tls                           rustls configurations from the TLS flags
//! auth                          etcd's auth state, checks and tokens
//! leaves: watch, snapshot_read, etcd_error, status, config, listener, fatal,
//!         metrics, version, log_limit, logging (from config), placement
//!         (config's default CPUs)
//! engine, datadir (crates)      storage; the data directory's layout
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every top-level module of the crate and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    // The process: it starts every core and wires them together.
    (
        "server",
        &[
            "client",
            "auth",
            "net",
            "listener",
            "store",
            "peer",
            "tls",
            "watch",
            "config",
            "etcd_error",
            "status",
            "fatal",
            "metrics",
            "version",
        ],
    ),
    // The deterministic simulation: store cores over simulated disks and a
    // simulated network, used by none.
    ("sim", &["store", "peer", "auth", "config", "etcd_error", "status"]),
    // The fuzz targets' bodies: a harness over every layer, used by none.
    (
        "fuzzing",
        &[
            "client",
            "net",
            "grpc",
            "listener",
            "store",
            "peer",
            "apply",
            "auth",
            "watch",
            "snapshot_read",
            "config",
            "etcd_error",
            "status",
            "fatal",
            "metrics",
            "version",
        ],
    ),
    (
        "client",
        &[
            "net",
            "grpc",
            "listener",
            "store",
            "apply",
            "auth",
            "watch",
            "config",
            "etcd_error",
            "status",
            "fatal",
            "metrics",
            "version",
        ],
    ),
    // The client port's transport: HTTP/1.1 and HTTP/2 on one port, then gRPC.
    ("net", &["grpc", "listener", "tls", "log_limit", "status", "metrics"]),
    ("grpc", &["status", "metrics"]),
    (
        "store",
        &[
            "peer",
            "apply",
            "auth",
            "watch",
            "config",
            "etcd_error",
            "status",
            "fatal",
            "metrics",
            "version",
            "log_limit",
        ],
    ),
    // Beside the store, which uses it: it never uses the store.
    (
        "peer",
        &[
            "listener",
            "tls",
            "log_limit",
            "snapshot_read",
            "config",
            "fatal",
            "metrics",
            "version",
        ],
    ),
    // Below the transports that use it: rustls from plain settings.
    ("tls", &["config"]),
    ("apply", &["config", "etcd_error", "status"]),
    // etcd's auth state and checks: a leaf the store and client cores use.
    ("auth", &["config", "etcd_error"]),
    // Leaves: they use only leaves.
    ("watch", &["auth", "etcd_error", "status"]),
    ("snapshot_read", &["fatal"]),
    ("etcd_error", &["status"]),
    ("config", &["status", "placement"]),
    // Where the store core runs by default, from sysfs and procfs.
    ("placement", &[]),
    ("status", &[]),
    ("listener", &[]),
    ("fatal", &[]),
    ("metrics", &[]),
    ("version", &[]),
    ("log_limit", &[]),
    // The process's log subscriber, from the logging flags; used by the binary.
    ("logging", &["config"]),
];

/// This check's own file: it names every module.
const THIS_FILE: &str = "layers.rs";

/// A source file: its module path (`store/core/leases.rs` is `store::core::leases`)
/// and its text.
struct SourceFile {
    module: Vec<String>,
    path: String,
    text: String,
}

/// A use of `to` (a file's module) in `file`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    from: Vec<String>,
    to: Vec<String>,
    file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Other,
}

/// The tokens that paths are made of; comments, strings and character
/// literals are dropped (what they name is no dependency).
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    break;
                } else if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&chars, i) {
            i = end;
        } else if c == '"' || (c == 'b' && at(i + 1) == '"') {
            i += if c == 'b' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            i += usize::from(c == 'b');
            if at(i + 1) == '\\' {
                // An escaped character literal: past the escaped character, up
                // to the closing quote.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime: the quote alone; its name reads as an identifier.
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Other);
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    ',' => Token::Comma,
                    ';' => Token::Semi,
                    _ => Token::Other,
                });
            }
            i += 1;
        }
    }
    out
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `i` ends.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    loop {
        if j >= chars.len() {
            return Some(j);
        }
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
}

/// The paths a file names from `crate`, `super`, `self` or one of its own
/// submodules (`children`), use-tree groups spread out, as written (relative).
/// Each comes with the module it is written in: inline modules (`mod tests {`)
/// are followed, so their `super::` means the file's module.
fn paths(tokens: &[Token], children: &BTreeSet<String>) -> Vec<(Vec<String>, Vec<String>)> {
    let mut found = Vec::new();
    // Inline modules entered: name and the brace depth their body is at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if inline.last().is_some_and(|(_, body)| *body > depth) {
                    inline.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Open)) = (tokens.get(i + 1), tokens.get(i + 2)) {
                    inline.push((name.clone(), depth + 1));
                }
            }
            Token::Ident(word) => {
                let starts_path = tokens.get(i + 1) == Some(&Token::PathSep)
                    && (i == 0 || tokens[i - 1] != Token::PathSep)
                    && (matches!(word.as_str(), "crate" | "super" | "self")
                        || (inline.is_empty() && children.contains(word)));
                if starts_path {
                    let scope: Vec<String> = inline.iter().map(|(name, _)| name.clone()).collect();
                    let (mut trees, end) = use_tree(tokens, i);
                    found.extend(trees.drain(..).map(|path| (scope.clone(), path)));
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The paths of the use tree (or path expression) starting at `start`, and
/// where it ends.
fn use_tree(tokens: &[Token], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = start;
    while let Some(Token::Ident(word)) = tokens.get(i) {
        prefix.push(word.clone());
        i += 1;
        if tokens.get(i) != Some(&Token::PathSep) {
            break;
        }
        i += 1;
        if tokens.get(i) == Some(&Token::Open) {
            let mut paths = Vec::new();
            i += 1;
            loop {
                match tokens.get(i) {
                    Some(Token::Ident(word)) if word == "self" => {
                        paths.push(prefix.clone());
                        i += 1;
                    }
                    Some(Token::Ident(_)) => {
                        let (inner, end) = use_tree(tokens, i);
                        paths.extend(inner.into_iter().map(|tail| [prefix.clone(), tail].concat()));
                        i = end;
                    }
                    Some(Token::Close) | None => return (paths, i + 1),
                    // `*`, `as alias`, commas.
                    Some(_) => {
                        if tokens.get(i) == Some(&Token::Other) {
                            paths.push(prefix.clone());
                        }
                        i += 1;
                    }
                }
                // `as alias` after an item.
                if tokens.get(i) == Some(&Token::Ident("as".to_string())) {
                    i += 2;
                }
            }
        }
    }
    (vec![prefix], i)
}

/// `path`, written in `module`, from the crate root.
fn absolute(module: &[String], path: &[String]) -> Vec<String> {
    let mut out = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            out.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                out.pop();
                rest = &rest[1..];
            }
        }
        // A submodule of this one.
        _ => {}
    }
    out.extend(rest.iter().cloned());
    out
}

/// The submodules a file declares (`mod name;`).
fn declared_children(tokens: &[Token]) -> BTreeSet<String> {
    tokens
        .windows(3)
        .filter_map(|window| match window {
            [Token::Ident(word), Token::Ident(name), Token::Semi] if word == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Every use of one file's module in another file's, as the file it is
/// written in names it: the target is the longest module path with a file.
fn references(files: &[SourceFile]) -> Vec<Reference> {
    let modules: BTreeSet<&[String]> = files.iter().map(|file| file.module.as_slice()).collect();
    let mut found = BTreeSet::new();
    for file in files {
        let tokens = tokens(&file.text);
        let children = declared_children(&tokens);
        for (scope, path) in paths(&tokens, &children) {
            let written_in = [file.module.clone(), scope].concat();
            let target = absolute(&written_in, &path);
            let Some(to) = (0..=target.len())
                .rev()
                .map(|n| &target[..n])
                .find(|prefix| modules.contains(prefix))
            else {
                continue;
            };
            if to != file.module.as_slice() {
                found.insert(Reference {
                    from: file.module.clone(),
                    to: to.to_vec(),
                    file: file.path.clone(),
                });
            }
        }
    }
    found.into_iter().collect()
}

/// Uses between top-level modules that [`ALLOWED`] does not list.
fn forbidden(references: &[Reference]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    references
        .iter()
        .filter_map(|reference| {
            let from = reference.from.first()?;
            let to = reference.to.first()?;
            let may = allowed
                .get(from.as_str())
                .is_some_and(|uses| uses.contains(&to.as_str()));
            (from != to && !may).then(|| format!("{from} -> {to} ({})", reference.file))
        })
        .collect()
}

/// Uses from one module to another (of one directory), with the files they are in.
type Uses = BTreeMap<(String, String), BTreeSet<String>>;

/// Circles among the modules of one directory, each module counted with the
/// files under it; a child's use of its parent (`super::Type`, one module
/// spread over files) is no edge. Each circle is listed with the files whose
/// uses close it.
fn circles(references: &[Reference]) -> Vec<String> {
    // Per directory (a module path), the uses between its child modules.
    let mut levels: BTreeMap<Vec<String>, Uses> = BTreeMap::new();
    for reference in references {
        let common = reference
            .from
            .iter()
            .zip(&reference.to)
            .take_while(|(a, b)| a == b)
            .count();
        let (Some(from), Some(to)) = (reference.from.get(common), reference.to.get(common)) else {
            // One is the other's parent.
            continue;
        };
        levels
            .entry(reference.from[..common].to_vec())
            .or_default()
            .entry((from.clone(), to.clone()))
            .or_default()
            .insert(reference.file.clone());
    }
    let mut found = Vec::new();
    for (level, edges) in &levels {
        for circle in strongly_connected(edges.keys()) {
            let files: BTreeSet<&String> = edges
                .iter()
                .filter(|((a, b), _)| circle.contains(a) && circle.contains(b))
                .flat_map(|(_, files)| files)
                .collect();
            let at = if level.is_empty() {
                "crate".to_string()
            } else {
                level.join("::")
            };
            found.push(format!("in {at}: {} (through {files:?})", circle.join(" <-> ")));
        }
    }
    found
}

/// The strongly connected components of more than one node (Tarjan's).
fn strongly_connected<'a>(edges: impl Iterator<Item = &'a (String, String)>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    struct Walk<'g> {
        graph: &'g BTreeMap<&'g str, Vec<&'g str>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g str) {
            let index = self.index.len();
            self.index.insert(node, index);
            self.low.insert(node, index);
            self.stack.push(node);
            for &next in &self.graph[node] {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().position(|&n| n == node).expect("on the stack");
                let component: Vec<String> = self.stack.drain(at..).map(str::to_string).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for &node in graph.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found
}

/// The library's source files (`src/main.rs` and `src/bin/` are binaries of their own).
fn library_files() -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the source directory") {
            let path = entry.expect("a directory entry").path();
            let relative = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if relative != "bin" {
                    dirs.push(path);
                }
                continue;
            }
            if !relative.ends_with(".rs") || relative == "main.rs" || relative == THIS_FILE {
                continue;
            }
            let mut module: Vec<String> = relative
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_string)
                .collect();
            if module.last().is_some_and(|last| last == "mod" || last == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            files.push(SourceFile {
                module,
                path: relative,
                text,
            });
        }
    }
    files
}

#[test]
fn every_use_between_top_level_modules_goes_down_the_layers() {
    let files = library_files();
    let violations = forbidden(&references(&files));
    assert!(
        violations.is_empty(),
        "uses against the layers (add an edge to ALLOWED only if the layers say so):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_directory_has_modules_using_one_another_in_a_circle() {
    let files = library_files();
    let found = circles(&references(&files));
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_layers_name_every_top_level_module_and_go_one_way() {
    let files = library_files();
    let lib = files.iter().find(|file| file.module.is_empty()).expect("lib.rs");
    let declared: BTreeSet<String> = declared_children(&tokens(&lib.text))
        .into_iter()
        .filter(|name| format!("{name}.rs") != THIS_FILE)
        .collect();
    let listed: BTreeSet<String> = ALLOWED.iter().map(|(module, _)| module.to_string()).collect();
    assert_eq!(
        listed, declared,
        "ALLOWED places every module of lib.rs, and only those"
    );
    let edges: Vec<(String, String)> = ALLOWED
        .iter()
        .flat_map(|(from, uses)| uses.iter().map(move |to| (from.to_string(), to.to_string())))
        .collect();
    for (from, to) in &edges {
        assert!(listed.contains(to), "{from} -> {to}: no such module");
        assert_ne!(from, to);
    }
    assert_eq!(
        strongly_connected(edges.iter()),
        Vec::<Vec<String>>::new(),
        "ALLOWED has a circle"
    );
}

/// The check on files made up for it: it sees uses in every form Rust
/// writes them, and only those.
#[cfg(test)]
mod check_tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        let mut module: Vec<String> = path.trim_end_matches(".rs").split('/').map(str::to_string).collect();
        if module.last().is_some_and(|last| last == "mod" || last == "lib") {
            module.pop();
        }
        SourceFile {
            module,
            path: path.to_string(),
            text: text.to_string(),
        }
    }

    fn uses(files: &[SourceFile]) -> Vec<String> {
        references(files)
            .into_iter()
            .map(|reference| format!("{} -> {}", reference.from.join("::"), reference.to.join("::")))
            .collect()
    }

    #[test]
    fn every_form_of_path_is_seen_and_comments_and_strings_are_not() {
        let files = [
            file("lib.rs", "pub mod store; pub mod apply; pub mod grpc; pub mod peer;"),
            file("apply.rs", ""),
            file("grpc.rs", ""),
            file("peer.rs", ""),
            file(
                "store/mod.rs",
                r##"mod core; mod wal; use self::core::X; // crate::grpc
                /* crate::grpc /* nested */ crate::apply */
                const S: (char, &str, &str, u8) = ('\'', "q\"crate::grpc", r#"crate::grpc"#, b'x');"##,
            ),
            file(
                "store/core.rs",
                "mod leases;\nuse crate::{apply::{self, A}, peer as p};\nfn f<'a>(x: &'a u8) { let _ = 'x'; leases::go(); }",
            ),
            file("store/core/leases.rs", "use super::super::wal::Job;"),
            file("store/wal.rs", "#[cfg(test)] mod tests { use super::*; fn t() { crate::store::core::f(); } }"),
        ];
        assert_eq!(
            uses(&files),
            [
                "store -> store::core",
                "store::core -> apply",
                "store::core -> peer",
                "store::core -> store::core::leases",
                "store::core::leases -> store::wal",
                "store::wal -> store::core",
            ]
        );
    }

    #[test]
    fn an_upward_use_and_a_circle_are_found() {
        let files = [
            file("lib.rs", "pub mod apply; pub mod grpc; pub mod store;"),
            file("grpc.rs", ""),
            file("apply.rs", "use crate::grpc::Status;"),
            file("store/mod.rs", "mod core; mod wal;"),
            file("store/core.rs", "use super::wal::Job;"),
            file("store/wal.rs", "use crate::store::core::Event;"),
        ];
        let references = references(&files);
        assert_eq!(forbidden(&references), ["apply -> grpc (apply.rs)"]);
        assert_eq!(
            circles(&references),
            [r#"in store: core <-> wal (through {"store/core.rs", "store/wal.rs"})"#]
        );
    }

    #[test]
    fn a_child_using_its_parent_is_no_circle() {
        let files = [
            file("lib.rs", "pub mod store;"),
            file("store/mod.rs", "mod core; use core::Core;"),
            file("store/core.rs", "mod leases; use leases::Lease;"),
            file("store/core/leases.rs", "use super::Core;"),
        ];
        assert_eq!(circles(&references(&files)), Vec::<String>::new());
    }
}
