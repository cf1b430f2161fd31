//! Reading YAML and JSON text into documents that remember where each field came from.
//!
//! Every finding the mesh reports names a file and line, as `istioctl analyze` does. To do
//! that, text is parsed once into a marked YAML tree (YAML 1.2 is a superset of JSON, so one
//! parser serves both), then turned into a [`serde_json::Value`] for typed deserialization,
//! keeping a [`LineIndex`] from each field path (`spec.http[0].route[0].weight`) to its line.
//!
//! Hostile input is bounded: nesting deeper than [`MAX_DEPTH`] is refused before the tree is
//! built, alias expansion is capped by the parser (no "billion laughs"), and duplicate keys are
//! an error, as the YAML specification and the Kubernetes API server require.

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

/// The deepest nesting of mappings and sequences accepted in one document.
pub const MAX_DEPTH: usize = 64;

/// Where a document came from: a file (if any) and the line its first field is on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The file the document was read from; `None` for standard input or in-memory text.
    pub file: Option<Arc<Path>>,
    /// The 1-based line of the document's first field.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}", file.display(), self.line),
            None => write!(f, "<stdin>:{}", self.line),
        }
    }
}

/// Maps a field path, as [`FieldPath`] prints it, to the 1-based line it starts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineIndex(HashMap<String, usize>);

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.0.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// A path to a field, printed the way Kubernetes prints them: `spec.http[0].match[1].uri`,
/// with map keys that are not plain identifiers in brackets: `metadata.labels["app.kubernetes.io/name"]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(String);

impl FieldPath {
    /// The empty (root) path.
    pub const fn root() -> Self {
        Self(String::new())
    }

    /// This path with a field or map key appended.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        let mut s = self.0.clone();
        push_key(&mut s, key);
        Self(s)
    }

    /// This path with a sequence index appended.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the root path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for FieldPath {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

fn is_ident(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn push_key(s: &mut String, key: &str) {
    if is_ident(key) {
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(key);
    } else {
        s.push('[');
        s.push_str(&serde_json::to_string(key).unwrap_or_default());
        s.push(']');
    }
}

/// One parsed document: its value, where it came from, and the line of each field.
#[derive(Clone, Debug)]
pub struct Document {
    /// The document as JSON data.
    pub value: Value,
    /// File and first line.
    pub origin: Origin,
    /// Field path → line.
    pub lines: Arc<LineIndex>,
}

/// The text is not valid YAML or JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SyntaxError {
    /// File, line and column.
    pub location: Location,
    /// What is wrong.
    pub message: String,
}

/// A file position: file, 1-based line, 1-based column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, if the text came from one.
    pub file: Option<Arc<Path>>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}:{}", file.display(), self.line, self.column),
            None => write!(f, "<stdin>:{}:{}", self.line, self.column),
        }
    }
}

/// Parses every document in `text` (YAML, several documents separated by `---`, or JSON).
///
/// Empty documents (only comments, or a trailing `---`) are skipped. A Kubernetes `List`
/// (`kind: List` with `items`) is expanded into its items, so the output of
/// `kubectl get -o yaml` loads as it is.
///
/// # Errors
/// [`SyntaxError`] with file, line and column for malformed text, nesting deeper than
/// [`MAX_DEPTH`], an alias bomb, or a duplicate key.
///
/// # Examples
/// ```
/// let docs = mesh_core::source::parse_documents("a: 1\n---\nb: [x, y]\n", None)?;
/// assert_eq!(docs.len(), 2);
/// assert_eq!(docs[1].lines.line_of("b[1]"), Some(3));
/// # Ok::<_, mesh_core::source::SyntaxError>(())
/// ```
pub fn parse_documents(text: &str, file: Option<&Path>) -> Result<Vec<Document>, SyntaxError> {
    let file: Option<Arc<Path>> = file.map(Arc::from);
    let syntax = |line: usize, col: usize, message: String| SyntaxError {
        location: Location {
            file: file.clone(),
            line,
            column: col + 1,
        },
        message,
    };
    // Pass 1: bound the nesting before any tree is built (building and dropping a tree is
    // recursive in the parser crate and in serde_json; a flow sequence `[[[[…` is one byte a
    // level).
    let mut depth = 0usize;
    for event in saphyr_parser::Parser::new_from_str(text) {
        let (event, span) =
            event.map_err(|e| syntax(e.marker().line(), e.marker().col(), e.info().to_owned()))?;
        match event {
            saphyr_parser::Event::SequenceStart(..) | saphyr_parser::Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(syntax(
                        span.start.line(),
                        span.start.col(),
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                    ));
                }
            }
            saphyr_parser::Event::SequenceEnd | saphyr_parser::Event::MappingEnd => depth -= 1,
            _ => {}
        }
    }
    // Pass 2: the marked tree.
    let docs = MarkedYaml::load_from_str(text)
        .map_err(|e| syntax(e.marker().line(), e.marker().col(), e.info().to_owned()))?;
    let mut out = Vec::with_capacity(docs.len());
    for doc in &docs {
        if matches!(doc.data, YamlData::Value(Scalar::Null) | YamlData::BadValue) {
            continue;
        }
        let mut lines = HashMap::new();
        let value = convert(doc, &mut String::new(), &mut lines)
            .map_err(|(span, msg)| syntax(span.start.line(), span.start.col(), msg))?;
        let origin = Origin {
            file: file.clone(),
            line: doc.span.start.line().max(1),
        };
        // Expand `kind: List`.
        if value.get("kind").and_then(Value::as_str) == Some("List")
            && let Some(Value::Array(items)) = value.get("items")
        {
            let lines = Arc::new(LineIndex(lines));
            for (i, item) in items.iter().enumerate() {
                let prefix = format!("items[{i}]");
                let sub: HashMap<String, usize> = lines
                    .0
                    .iter()
                    .filter_map(|(k, v)| {
                        let rest = k.strip_prefix(&prefix)?;
                        let rest = match rest.strip_prefix('.') {
                            Some(field) => field,
                            None if rest.is_empty() || rest.starts_with('[') => rest,
                            None => return None,
                        };
                        Some((rest.to_owned(), *v))
                    })
                    .collect();
                let line = lines.0.get(&prefix).copied().unwrap_or(origin.line);
                out.push(Document {
                    value: item.clone(),
                    origin: Origin {
                        file: file.clone(),
                        line,
                    },
                    lines: Arc::new(LineIndex(sub)),
                });
            }
            continue;
        }
        out.push(Document {
            value,
            origin,
            lines: Arc::new(LineIndex(lines)),
        });
    }
    Ok(out)
}

type ConvertError = (saphyr_parser::Span, String);

fn convert(
    node: &MarkedYaml<'_>,
    path: &mut String,
    lines: &mut HashMap<String, usize>,
) -> Result<Value, ConvertError> {
    lines.entry(path.clone()).or_insert(node.span.start.line());
    Ok(match &node.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(s, ..) => Value::String(s.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(convert(item, path, lines)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        YamlData::Mapping(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    YamlData::Value(Scalar::FloatingPoint(f)) => f.to_string(),
                    YamlData::Value(Scalar::Null) => "null".to_owned(),
                    YamlData::Representation(s, ..) => s.to_string(),
                    _ => {
                        return Err((k.span, "mapping keys must be scalars".to_owned()));
                    }
                };
                let len = path.len();
                push_key(path, &key);
                // A key's line is where the key is written (the value may start below it).
                lines.insert(path.clone(), k.span.start.line());
                let value = convert(v, path, lines)?;
                path.truncate(len);
                out.insert(key, value);
            }
            Value::Object(out)
        }
        YamlData::Tagged(_, inner) => convert(inner, path, lines)?,
        YamlData::Alias(_) => {
            return Err((node.span, "unresolved YAML alias".to_owned()));
        }
        YamlData::BadValue => {
            return Err((node.span, "invalid YAML value".to_owned()));
        }
    })
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Number::from_f64(f.0).map_or_else(
            // NaN and infinities have no JSON form; keep the text so the schema rejects it.
            || Value::String(f.0.to_string()),
            Value::Number,
        ),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lines() {
        let text = "# c\napiVersion: v1\nkind: A\nspec:\n  http:\n  - name: x\n    route:\n    - weight: 80\n---\n---\nkind: B\n";
        let docs = parse_documents(text, Some(Path::new("f.yaml"))).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].origin.line, 2);
        assert_eq!(
            docs[0].lines.line_of("spec.http[0].route[0].weight"),
            Some(8)
        );
        assert_eq!(docs[0].lines.line_of("spec.http[0].name"), Some(6));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(docs[0].lines.line_of("spec.http[0].route[0].nope"), Some(8));
        assert_eq!(docs[1].origin.to_string(), "f.yaml:11");
    }

    #[test]
    fn json_is_yaml() {
        let docs = parse_documents(r#"{"kind":"A","spec":{"x":[1,2.5,true,null]}}"#, None).unwrap();
        assert_eq!(docs[0].value["spec"]["x"][1], 2.5);
    }

    #[test]
    fn quoted_keys_are_bracketed() {
        let docs = parse_documents(
            "metadata:\n  labels:\n    app.kubernetes.io/name: x\n",
            None,
        )
        .unwrap();
        assert_eq!(
            docs[0]
                .lines
                .line_of(r#"metadata.labels["app.kubernetes.io/name"]"#),
            Some(3)
        );
        assert_eq!(
            FieldPath::root()
                .key("metadata")
                .key("labels")
                .key("a.b")
                .to_string(),
            r#"metadata.labels["a.b"]"#
        );
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = parse_documents("a: 1\nb: [1, 2\n", Some(Path::new("x.yaml"))).unwrap_err();
        assert_eq!(err.location.file.as_deref(), Some(Path::new("x.yaml")));
        assert!(err.location.line >= 2, "{err}");
        let err = parse_documents("a: 1\na: 2\n", None).unwrap_err();
        assert!(err.message.contains("duplicate"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(100_000);
        let err = parse_documents(&text, None).unwrap_err();
        assert!(
            err.message.contains("nesting") || err.location.line == 1,
            "{err}"
        );
        let text = "- ".repeat(10_000) + "x";
        let err = parse_documents(&text, None).unwrap_err();
        assert!(err.message.contains("nesting"), "{err}");
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text += &format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            );
        }
        assert!(parse_documents(&text, None).is_err());
    }

    #[test]
    fn list_kind_is_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- kind: A\n  spec: {x: 1}\n- kind: B\n";
        let docs = parse_documents(text, None).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value["kind"], "B");
        assert_eq!(docs[1].origin.line, 6);
        assert_eq!(docs[0].lines.line_of("spec.x"), Some(5));
    }
}
