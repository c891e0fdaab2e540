//! Maps a byte offset or a path into the file (`providers[1].base_url`) to a 1-based line number.
//! Only reads the text; knows nothing of what the keys mean.

use super::Seg;
use toml_edit::{Document, Item, Table, Value};

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

pub(super) fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
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
}

/// The line of the deepest element of `path` that exists in the document.
pub(super) fn line_of_path(text: &str, path: &[Seg]) -> Option<usize> {
    let doc = Document::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for seg in path {
        let next = match (node, seg) {
            (Node::Table(t), Seg::Key(k)) => t.get(k).map(Node::Item),
            (Node::Item(Item::Table(t)), Seg::Key(k)) => t.get(k).map(Node::Item),
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => a.get(*i).map(Node::Table),
            (Node::Item(Item::Value(v)) | Node::Value(v), seg) => match (v, seg) {
                (Value::InlineTable(t), Seg::Key(k)) => t.get(k).map(Node::Value),
                (Value::Array(a), Seg::Index(i)) => a.get(*i).map(Node::Value),
                _ => None,
            },
            _ => None,
        };
        let Some(next) = next else { break };
        if let Some(span) = next.span() {
            best = Some(line_of(text, span.start));
        }
        node = next;
    }
    best
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl Node<'_> {
    fn span(&self) -> Option<std::ops::Range<usize>> {
        match self {
            Node::Item(Item::Table(t)) => t.span(),
            Node::Table(t) => t.span(),
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
        }
    }
}
