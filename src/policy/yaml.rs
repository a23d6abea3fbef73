//! A small YAML document tree that remembers where every node came from.
//!
//! Policy errors must name a line and column, including semantic errors found
//! long after parsing ("unknown operator", "duplicate rule name"). Serde-based
//! YAML crates lose positions once a value is deserialized, so the policy loader
//! builds this tree from `saphyr-parser` events and validates it by hand.
//!
//! Scalars are resolved with the YAML 1.2 core schema (the same one Go's
//! `yaml.v3`, and so PolicyLayer Intercept, uses): quoted scalars are strings;
//! plain `null`/`~`/empty, `true`/`false`, integers and floats get their types.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;
use std::fmt;

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// A resolved scalar value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// The resolved value and the text exactly as written (for string fields
    /// that received an unquoted number, as `version: 1`).
    Scalar(Scalar, String),
    Seq(Vec<Node>),
    /// Keys keep their own positions; order is the file's order.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

impl Node {
    /// A short description of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(Scalar::Null, _) => "null",
            NodeKind::Scalar(Scalar::Bool(_), _) => "a boolean",
            NodeKind::Scalar(Scalar::Int(_), _) => "an integer",
            NodeKind::Scalar(Scalar::Float(_), _) => "a number",
            NodeKind::Scalar(Scalar::Str(_), _) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, NodeKind::Scalar(Scalar::Null, _))
    }

    /// Converts the node to JSON (mapping keys become their text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Scalar(s, _) => match s {
                Scalar::Null => Value::Null,
                Scalar::Bool(b) => Value::Bool(*b),
                Scalar::Int(i) => Value::from(*i),
                Scalar::Float(f) => serde_json::Number::from_f64(*f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Scalar::Str(s) => Value::String(s.clone()),
            },
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default().to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The source text of a scalar node (`None` for lists and mappings).
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(_, text) => Some(text),
            _ => None,
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// The value under `key` in a mapping's entries (the helper every loader
/// of a positioned YAML file uses).
pub fn get<'n>(entries: &'n [(Node, Node)], key: &str) -> Option<&'n Node> {
    entries
        .iter()
        .find(|(k, _)| k.scalar_text() == Some(key))
        .map(|(_, v)| v)
}

/// Parses one YAML document. An empty document yields a null node.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        builder.on_event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Scalar(Scalar::Null, String::new()),
        pos: Pos { line: 1, col: 1 },
    }))
}

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let pos = Pos::from_span(&span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a policy file holds one YAML document; found a second `---`"
                            .into(),
                    });
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                let tagged_str = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let scalar = if style != ScalarStyle::Plain || tagged_str {
                    Scalar::Str(value.to_string())
                } else {
                    resolve_plain(&value)
                };
                let node = Node {
                    kind: NodeKind::Scalar(scalar, value.to_string()),
                    pos,
                };
                self.push(node, anchor)?;
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), pos, anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, pos, anchor))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, pos, anchor)) = self.stack.pop() {
                    self.push(
                        Node {
                            kind: NodeKind::Seq(items),
                            pos,
                        },
                        anchor,
                    )?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, pos, anchor)) = self.stack.pop() {
                    self.push(
                        Node {
                            kind: NodeKind::Map(entries),
                            pos,
                        },
                        anchor,
                    )?;
                }
            }
            Event::Alias(id) => {
                let mut node = self.anchors.get(&id).cloned().ok_or(SyntaxError {
                    pos,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                node.pos = pos;
                self.push(node, 0)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, pending_key, _, _)) => match pending_key.take() {
                None => {
                    if !matches!(node.kind, NodeKind::Scalar(..)) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: "mapping keys must be plain values, not lists or mappings"
                                .into(),
                        });
                    }
                    let text = node.scalar_text().unwrap_or_default();
                    if let Some((first, _)) =
                        entries.iter().find(|(k, _)| k.scalar_text() == Some(text))
                    {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{text}` (first defined at line {})",
                                first.pos.line
                            ),
                        });
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

/// YAML 1.2 core schema resolution for plain scalars.
fn resolve_plain(text: &str) -> Scalar {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let bytes = text.as_bytes();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Scalar::Int(i);
        }
        if let Ok(f) = text.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Scalar::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Scalar::Int(i);
    }
    let looks_numeric = bytes
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && bytes.iter().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(f) = text.parse::<f64>() {
        return Scalar::Float(f);
    }
    Scalar::Str(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_core_schema_scalars() {
        let node = parse("a: 1\nb: \"1\"\nc: true\nd: 1.5\ne: ~\nf: hello\ng: -3\n").unwrap();
        let NodeKind::Map(entries) = node.kind else {
            panic!("expected a mapping")
        };
        let values: Vec<Scalar> = entries
            .into_iter()
            .map(|(_, v)| match v.kind {
                NodeKind::Scalar(s, _) => s,
                _ => panic!("expected scalars"),
            })
            .collect();
        assert_eq!(
            values,
            vec![
                Scalar::Int(1),
                Scalar::Str("1".into()),
                Scalar::Bool(true),
                Scalar::Float(1.5),
                Scalar::Null,
                Scalar::Str("hello".into()),
                Scalar::Int(-3),
            ]
        );
    }

    #[test]
    fn positions_are_one_based() {
        let node = parse("top:\n  inner: 5\n").unwrap();
        let NodeKind::Map(entries) = &node.kind else {
            panic!()
        };
        let NodeKind::Map(inner) = &entries[0].1.kind else {
            panic!()
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
        assert_eq!(inner[0].1.pos, Pos { line: 2, col: 10 });
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
    }

    #[test]
    fn aliases_resolve() {
        let node = parse("x: &v [1, 2]\ny: *v\n").unwrap();
        let NodeKind::Map(entries) = node.kind else {
            panic!()
        };
        assert_eq!(entries[0].1.to_json(), entries[1].1.to_json());
    }
}
