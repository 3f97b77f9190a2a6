//! Error formatting: a toml error or a semantic [`Problem`] becomes one
//! line naming file, line, column, pool and key.

use std::path::Path;

use super::error::ConfigError;
use super::spans::{key, line_col, pool_path, Seg, Tree};

pub(super) fn is_valid_pool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How a pool is called in messages: by name when it has a usable one.
fn pool_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(n) if is_valid_pool_name(n) => format!("pool {n:?}"),
        _ => format!("pool #{}", index + 1),
    }
}

/// Splits a key path into the message prefix (`pool "main": ` or empty),
/// the key relative to it (`monitor.warn_percent`), and the table-path key
/// without indices (`pool.monitor.warn_percent`).
fn describe(path: &[Seg], tree: Option<&Tree<'_>>) -> (String, String, String) {
    let dotted = |segs: &[Seg]| {
        let mut out = String::new();
        for seg in segs {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    };
    let table_key = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".");
    match path {
        [Seg::Key(p), Seg::Index(i), rest @ ..] if p == "pool" => {
            let name = tree.and_then(|t| t.str_at(&pool_path(*i, &["name"])));
            (
                format!("{}: ", pool_label(name, *i)),
                dotted(rest),
                table_key,
            )
        }
        _ => (String::new(), dotted(path), table_key),
    }
}

/// Turns a toml deserialization error into one line naming file, line,
/// column and key.
pub(super) fn toml_error(e: &toml::de::Error, text: &str, origin: &Path) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let (line, column) = line_col(text, span.start);
    let raw_msg = e.message().trim().replace('\n', "; ");
    let invalid = |key: String, message: String| ConfigError::Invalid {
        file: origin.to_path_buf(),
        location: Some((line, column)),
        key,
        message,
    };
    let Some(tree) = Tree::parse(text) else {
        // Not even TOML: name the key on that line, if there is one.
        let line_text = text.lines().nth(line - 1).unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
            .unwrap_or("");
        let at = if key.is_empty() {
            String::new()
        } else {
            format!(" at key {key:?}")
        };
        let msg = if raw_msg == "duplicate key" && !key.is_empty() {
            duplicate_key_message(text, line, key)
        } else {
            raw_msg.replace('`', "\"")
        };
        return invalid(key.to_string(), format!("invalid TOML{at}: {msg}"));
    };
    let path = tree.path_at(&span);
    let (prefix, rel, table_key) = describe(&path, Some(&tree));
    if let Some(rest) = raw_msg.strip_prefix("unknown field `") {
        // Unknown key: name it, its table, and what would have been valid.
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let table = match path.iter().rposition(|s| matches!(s, Seg::Key(_))) {
            Some(last) => {
                let parent: Vec<&str> = path[..last]
                    .iter()
                    .filter_map(|s| match s {
                        Seg::Key(k) => Some(k.as_str()),
                        Seg::Index(_) => None,
                    })
                    .collect();
                if parent.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in [{}]", parent.join("."))
                }
            }
            None => "at the top level".to_string(),
        };
        let expected = expected.trim_start_matches(',').trim().replace('`', "");
        let expected = if expected == "there are no fields" {
            "this table takes no keys".to_string()
        } else {
            expected
        };
        return invalid(
            table_key,
            format!("{prefix}unknown key {field:?} {table}, {expected}"),
        );
    }
    let mut msg = rewrite_serde_message(&raw_msg);
    // A date-time reaches serde as a map; say what the user wrote.
    let found_text = text.get(span.clone()).unwrap_or("");
    if msg.ends_with("found table") && !found_text.trim_start().starts_with(['{', '[']) {
        msg = msg.replace("found table", "found a date-time");
    }
    let at = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}: ")
    };
    invalid(table_key, format!("{prefix}{at}{msg}"))
}

/// toml 1.x says only "duplicate key"; name the key and its table as
/// toml 0.8 did (`duplicate key "driver" in table "pool"`), the table
/// being the last header above `line` (1-based) plus the key's dotted prefix.
fn duplicate_key_message(text: &str, line: usize, key: &str) -> String {
    let header = text
        .lines()
        .take(line.saturating_sub(1))
        .filter_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix('[')?;
            let inner = inner.split(']').next()?;
            Some(inner.trim_start_matches('[').trim().to_string())
        })
        .last();
    let (prefix, name) = match key.rsplit_once('.') {
        Some((prefix, name)) => (Some(prefix.trim()), name.trim()),
        None => (None, key),
    };
    let table: Vec<&str> = header
        .as_deref()
        .into_iter()
        .chain(prefix)
        .filter(|t| !t.is_empty())
        .collect();
    if table.is_empty() {
        format!("duplicate key {name:?} in document root")
    } else {
        format!("duplicate key {name:?} in table {:?}", table.join("."))
    }
}

/// serde's "invalid type: X, expected Y" reads better as "expected Y,
/// found X"; backquotes become plain or double quotes.
fn rewrite_serde_message(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.split_once(", expected ") {
                // Our private struct names and serde's jargon mean nothing
                // to whoever edits the file.
                let expected = if expected.starts_with("struct ") {
                    "a table"
                } else {
                    match expected {
                        "a sequence" => "an array",
                        "path string" => "a string (a path)",
                        e => e,
                    }
                };
                let found = found
                    .replace('`', "")
                    .replace("sequence", "array")
                    .replace("found map", "found table");
                let found = if found == "map" {
                    "table".to_string()
                } else {
                    found
                };
                return format!("expected {expected}, found {found}");
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return format!("missing required key {field:?}");
    }
    msg.replace('`', "")
}

/// A semantic error before it is given a location: the key paths to point
/// at, best first (a defaulted key is absent from the file, so its table is
/// the fallback), and the message.
pub(super) struct Problem {
    pub(super) at: Vec<Vec<Seg>>,
    /// Message prefix naming the pool (`pool "main": `) or empty.
    pub(super) prefix: String,
    /// Key shown in the message, relative to the prefix.
    pub(super) shown_key: String,
    /// Dotted table path for `ConfigError::Invalid::key`.
    pub(super) table_key: String,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn daemon(k: &str, message: String) -> Problem {
        Problem::section("daemon", k, message)
    }

    /// A problem with key `k` of the top-level table `section`.
    pub(super) fn section(section: &str, k: &str, message: String) -> Problem {
        Problem {
            at: vec![vec![key(section), key(k)], vec![key(section)]],
            prefix: String::new(),
            shown_key: format!("{section}.{k}"),
            table_key: format!("{section}.{k}"),
            message,
        }
    }

    /// A problem with `pool[i]`'s key `rest` (e.g. `["monitor",
    /// "warn_percent"]`); `fallbacks` are other keys of that pool to
    /// point at when `rest` is not in the file.
    pub(super) fn pool(
        i: usize,
        name: &str,
        rest: &[&str],
        fallbacks: &[&[&str]],
        message: String,
    ) -> Problem {
        let mut at = vec![pool_path(i, rest)];
        at.extend(fallbacks.iter().map(|f| pool_path(i, f)));
        // Tables of a pool, then the pool itself.
        for n in (0..rest.len()).rev() {
            at.push(pool_path(i, &rest[..n]));
        }
        Problem {
            at,
            prefix: format!("{}: ", pool_label(Some(name), i)),
            shown_key: rest.join("."),
            table_key: std::iter::once("pool")
                .chain(rest.iter().copied())
                .collect::<Vec<_>>()
                .join("."),
            message,
        }
    }

    pub(super) fn into_error(
        self,
        origin: &Path,
        source: Option<(&str, Option<&Tree<'_>>)>,
    ) -> ConfigError {
        let location = source.map(|(text, tree)| {
            let offset = tree
                .and_then(|t| self.at.iter().find_map(|p| t.get(p).map(|v| v.span())))
                .map_or(0, |span| span.start);
            line_col(text, offset)
        });
        let at = if self.shown_key.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.shown_key)
        };
        ConfigError::Invalid {
            file: origin.to_path_buf(),
            location,
            key: self.table_key,
            message: format!("{}{at}{}", self.prefix, self.message),
        }
    }
}
