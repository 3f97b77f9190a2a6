//! Positions: key paths, the spanned document they are looked up in, and
//! byte offsets as line:column.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// `pool[i].<rest…>`
pub(super) fn pool_path(i: usize, rest: &[&str]) -> Vec<Seg> {
    let mut p = vec![key("pool"), Seg::Index(i)];
    p.extend(rest.iter().map(|k| key(k)));
    p
}

/// The TOML document as the toml crate's own parser reads it, with the span
/// of every key and value: turns an error span into a key path and a key
/// path into a line. (A table made implicitly by a dotted key or a header
/// has its key's span.)
pub(super) struct Tree<'i>(Spanned<DeValue<'i>>);

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

impl<'i> Tree<'i> {
    /// `None` when `text` is not TOML.
    pub(super) fn parse(text: &'i str) -> Option<Tree<'i>> {
        let root = DeTable::parse(text).ok()?;
        let span = root.span();
        Some(Tree(Spanned::new(span, DeValue::Table(root.into_inner()))))
    }

    /// The deepest key path whose key or value span contains `span`.
    pub(super) fn path_at(&self, span: &Range<usize>) -> Vec<Seg> {
        fn walk(v: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<Seg>, best: &mut Vec<Seg>) {
            let mut visit = |seg: Seg,
                             key_span: Option<Range<usize>>,
                             v: &Spanned<DeValue<'_>>,
                             path: &mut Vec<Seg>| {
                path.push(seg);
                if (key_span.is_some_and(|k| contains(&k, span)) || contains(&v.span(), span))
                    && path.len() > best.len()
                {
                    *best = path.clone();
                }
                walk(v.get_ref(), span, path, best);
                path.pop();
            };
            match v {
                DeValue::Table(entries) => {
                    for (k, v) in entries.iter() {
                        visit(Seg::Key(k.get_ref().to_string()), Some(k.span()), v, path);
                    }
                }
                DeValue::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        visit(Seg::Index(i), None, v, path);
                    }
                }
                _ => {}
            }
        }
        let mut best = Vec::new();
        walk(self.0.get_ref(), span, &mut Vec::new(), &mut best);
        best
    }

    /// The value at `path`, and its span.
    pub(super) fn get(&self, path: &[Seg]) -> Option<&Spanned<DeValue<'i>>> {
        let mut node = &self.0;
        for seg in path {
            node = match (node.get_ref(), seg) {
                (DeValue::Table(entries), Seg::Key(k)) => entries
                    .iter()
                    .find(|(ek, _)| ek.get_ref() == k)
                    .map(|(_, v)| v),
                (DeValue::Array(items), Seg::Index(i)) => items.get(*i),
                _ => None,
            }?;
        }
        Some(node)
    }

    /// The string at `path`, if that is a string.
    pub(super) fn str_at(&self, path: &[Seg]) -> Option<&str> {
        match self.get(path)?.get_ref() {
            DeValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// 1-based (line, column in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
