//! Where a key path sits in the YAML text: `services.web.deploy.replicas` -> line 12, column 17.
//!
//! serde_norway reports positions for syntax errors only; a parsed `Value` has none. So the
//! block-style YAML that compose files are written in is scanned once here: indentation, `key:`
//! and `- ` items give each node its path. Flow collections (`[a, b]`, `{a: 1}`) are located by
//! the key that holds them, block scalars (`|`, `>`) are skipped, and a path that came in through
//! a merge key (`<<: *base`) is looked up under the anchor it came from. A path that cannot be
//! found falls back to its nearest located ancestor, so an error always points somewhere useful.

use std::collections::HashMap;
use std::fmt;

/// One step of a path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn key(&self, key: &str) -> Path {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Path(segs)
    }

    pub fn index(&self, i: usize) -> Path {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        Path(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

/// The positions of the nodes of one YAML text.
#[derive(Debug, Default)]
pub struct Index {
    nodes: HashMap<Vec<Seg>, Loc>,
    /// Where the keys of mapping entries are (for errors about the key itself).
    keys: HashMap<Vec<Seg>, Loc>,
    /// Anchor name -> the path of the node that carries it.
    anchors: HashMap<String, Vec<Seg>>,
    /// Mapping path -> the anchors its merge keys (`<<`) name.
    merges: HashMap<Vec<Seg>, Vec<String>>,
}

struct Open {
    column: usize,
    path: Vec<Seg>,
    is_item: bool,
    /// Items seen so far in the sequence this node holds.
    items: usize,
}

/// Splits `key: rest` at the first `:` outside quotes that ends the line or is followed by a
/// space. Returns the unquoted key and the text after the colon.
fn split_key(text: &str) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') if i == 0 => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'#') if i > 0 && bytes[i - 1] == b' ' => return None,
            (None, b'[' | b'{') if i == 0 => return None,
            (None, b':') if i + 1 == bytes.len() || bytes[i + 1] == b' ' => {
                let key = text[..i].trim();
                let key = key
                    .strip_prefix('"')
                    .and_then(|k| k.strip_suffix('"'))
                    .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
                    .unwrap_or(key);
                return Some((key.to_string(), i + 1));
            }
            _ => {}
        }
    }
    None
}

/// The value text with a trailing comment removed.
fn strip_comment(text: &str) -> &str {
    let mut quote = None;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'#') if i == 0 || bytes[i - 1] == b' ' => return text[..i].trim_end(),
            _ => {}
        }
    }
    text.trim_end()
}

/// The bracket depth a flow value leaves open at the end of its line.
fn open_brackets(text: &str) -> i32 {
    let mut depth = 0;
    let mut quote = None;
    for b in text.bytes() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'[' | b'{') => depth += 1,
            (None, b']' | b'}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

impl Index {
    /// Scans `text`.
    pub fn new(text: &str) -> Index {
        let mut index = Index::default();
        let mut open: Vec<Open> = Vec::new();
        // Lines more indented than this belong to a block scalar (or continue a flow value).
        let mut skip_deeper: Option<usize> = None;
        let mut flow_depth = 0;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let trimmed = raw.trim_start();
            let indent = raw.len() - trimmed.len();
            if flow_depth > 0 {
                flow_depth += open_brackets(strip_comment(trimmed));
                continue;
            }
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(limit) = skip_deeper {
                if indent > limit {
                    continue;
                }
                skip_deeper = None;
            }
            if trimmed.starts_with("---") || trimmed.starts_with("...") {
                open.clear();
                continue;
            }
            let mut column = indent;
            let mut rest = trimmed;
            // Sequence items, possibly followed by a key on the same line.
            if rest == "-" || rest.starts_with("- ") {
                while open
                    .last()
                    .is_some_and(|o| o.column > column || (o.column == column && o.is_item))
                {
                    open.pop();
                }
                let (parent, items) = match open.last_mut() {
                    Some(o) => {
                        o.items += 1;
                        (o.path.clone(), o.items - 1)
                    }
                    None => (Vec::new(), 0),
                };
                let mut path = parent;
                path.push(Seg::Index(items));
                let after = rest[1..].trim_start();
                let item_column = column + (rest.len() - after.len());
                index.nodes.entry(path.clone()).or_insert(Loc {
                    line,
                    column: item_column + 1,
                });
                open.push(Open {
                    column,
                    path: path.clone(),
                    is_item: true,
                    items: 0,
                });
                if after.is_empty() {
                    continue;
                }
                column = item_column;
                rest = after;
                if split_key(rest).is_none() {
                    let value = strip_comment(rest);
                    index.flow(value, item_column, &path, line);
                    if value.starts_with('|') || value.starts_with('>') {
                        skip_deeper = Some(indent);
                    }
                    flow_depth = open_brackets(value).max(0);
                    continue;
                }
            }
            let Some((key, colon)) = split_key(rest) else {
                continue;
            };
            while open.last().is_some_and(|o| o.column >= column) {
                open.pop();
            }
            let parent = open.last().map(|o| o.path.clone()).unwrap_or_default();
            let mut path = parent.clone();
            path.push(Seg::Key(key.clone()));
            let value_text = rest[colon..].trim_start();
            let value_column = column + (rest.len() - value_text.len());
            let value = strip_comment(value_text);
            let loc = if value.is_empty() {
                Loc {
                    line,
                    column: column + 1,
                }
            } else {
                Loc {
                    line,
                    column: value_column + 1,
                }
            };
            index.nodes.entry(path.clone()).or_insert(loc);
            index.keys.entry(path.clone()).or_insert(Loc {
                line,
                column: column + 1,
            });
            index.flow(value, value_column, &path, line);
            let mut value = value;
            if let Some(anchor) = value.strip_prefix('&') {
                let name: String = anchor.chars().take_while(|c| !c.is_whitespace()).collect();
                value = anchor[name.len()..].trim_start();
                index.anchors.insert(name, path.clone());
            }
            if key == "<<" {
                let names = value.trim_start_matches('[').trim_end_matches(']');
                for name in names.split(',') {
                    if let Some(name) = name.trim().strip_prefix('*') {
                        index
                            .merges
                            .entry(parent.clone())
                            .or_default()
                            .push(name.to_string());
                    }
                }
            }
            if value.starts_with('|') || value.starts_with('>') {
                skip_deeper = Some(column);
            }
            flow_depth = open_brackets(value).max(0);
            open.push(Open {
                column,
                path,
                is_item: false,
                items: 0,
            });
        }
        index
    }

    /// Records the nodes of a flow collection (`[a, {b: c}]`) that starts `text`, at `column`
    /// (0-based) of `line`; what continues on later lines is not followed.
    fn flow(&mut self, text: &str, column: usize, path: &[Seg], line: usize) {
        let bytes = text.as_bytes();
        let (open, close) = match bytes.first() {
            Some(b'[') => (b'[', b']'),
            Some(b'{') => (b'{', b'}'),
            _ => return,
        };
        let mut i = 1;
        let mut item = 0;
        loop {
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == close {
                return;
            }
            // The extent of this entry: up to a comma or the closing bracket at depth 0.
            let start = i;
            let mut depth = 0;
            let mut quote = None;
            while i < bytes.len() {
                match (quote, bytes[i]) {
                    (None, b'"' | b'\'') => quote = Some(bytes[i]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'[' | b'{') => depth += 1,
                    (None, b']' | b'}') if depth == 0 => break,
                    (None, b']' | b'}') => depth -= 1,
                    (None, b',') if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            let entry = &text[start..i];
            let mut child = path.to_vec();
            let mut value_start = start;
            if open == b'{' {
                let Some((key, colon)) = split_key(entry) else {
                    return;
                };
                child.push(Seg::Key(key));
                self.keys.entry(child.clone()).or_insert(Loc {
                    line,
                    column: column + start + 1,
                });
                let after = &entry[colon..];
                value_start = start + colon + (after.len() - after.trim_start().len());
            } else {
                child.push(Seg::Index(item));
                item += 1;
            }
            self.nodes.entry(child.clone()).or_insert(Loc {
                line,
                column: column + value_start + 1,
            });
            self.flow(&text[value_start..i], column + value_start, &child, line);
            if i < bytes.len() && bytes[i] == b',' {
                i += 1;
            }
        }
    }

    /// The position of the key of mapping entry `path` (or of the node when it has none).
    pub fn key(&self, path: &[Seg]) -> Option<Loc> {
        self.keys.get(path).copied().or_else(|| self.exact(path))
    }

    /// The position of `path`, through merge keys; `None` when neither it nor any of its
    /// ancestors was found.
    pub fn exact(&self, path: &[Seg]) -> Option<Loc> {
        self.exact_depth(path, 0)
    }

    fn exact_depth(&self, path: &[Seg], depth: usize) -> Option<Loc> {
        if let Some(loc) = self.nodes.get(path) {
            return Some(*loc);
        }
        if depth > 8 {
            return None;
        }
        // Through a merge key of an ancestor mapping: the same rest under the anchor's node.
        for split in (0..path.len()).rev() {
            if let Some(names) = self.merges.get(&path[..split]) {
                for name in names.iter().rev() {
                    if let Some(anchor) = self.anchors.get(name) {
                        let mut target = anchor.clone();
                        target.extend_from_slice(&path[split..]);
                        if let Some(loc) = self.exact_depth(&target, depth + 1) {
                            return Some(loc);
                        }
                    }
                }
            }
        }
        None
    }

    /// The position of `path`, or of its nearest located ancestor, with how many of its segments
    /// were matched.
    pub fn nearest(&self, path: &[Seg]) -> Option<(Loc, usize)> {
        (1..=path.len())
            .rev()
            .find_map(|len| self.exact(&path[..len]).map(|loc| (loc, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<Seg> {
        text.split('.')
            .map(|s| match s.parse::<usize>() {
                Ok(n) => Seg::Index(n),
                Err(_) => Seg::Key(s.to_string()),
            })
            .collect()
    }

    const TEXT: &str = "\
version: '3.8'
x-base: &base
  image: busybox
  deploy:
    replicas: 2
services:
  web:
    <<: *base
    command: |
      sh -c 'a: b'
    ports:
    - 8080:80   # comment
    - target: 81
      published: 8081
  \"db\":
    image: [a,
      b]
    environment:
      A: 1
";

    #[test]
    fn finds_keys_items_and_values() {
        let index = Index::new(TEXT);
        let at = |path: &str| index.exact(&p(path)).map(|l| (l.line, l.column));
        assert_eq!(at("version"), Some((1, 10)));
        assert_eq!(at("services.web"), Some((7, 3)));
        assert_eq!(at("services.web.ports.0"), Some((12, 7)));
        assert_eq!(at("services.web.ports.1.target"), Some((13, 15)));
        assert_eq!(at("services.web.ports.1.published"), Some((14, 18)));
        assert_eq!(at("services.db.environment.A"), Some((19, 10)));
        // Through the merge key: where the anchor defines it.
        assert_eq!(at("services.web.deploy.replicas"), Some((5, 15)));
        assert_eq!(at("services.web.image"), Some((3, 10)));
        // The block scalar's text is not a key.
        assert_eq!(at("services.web.sh -c 'a"), None);
        assert_eq!(
            index
                .nearest(&p("services.db.image.1"))
                .map(|(l, n)| (l.line, n)),
            Some((16, 3))
        );
    }

    #[test]
    fn path_display() {
        let path = Path::default()
            .key("services")
            .key("web")
            .key("ports")
            .index(2);
        assert_eq!(path.to_string(), "services.web.ports[2]");
    }
}
