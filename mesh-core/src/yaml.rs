//! Writing JSON values as YAML (what `meshctl get -o yaml` prints and the file store writes).

use std::borrow::Cow;

use saphyr::{Scalar, Yaml, YamlEmitter};
use serde_json::Value;

/// Renders `value` as one YAML document, without a leading `---`.
pub fn to_yaml(value: &Value) -> String {
    let yaml = to_node(value);
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline(true);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&yaml);
    let body = out
        .strip_prefix("---")
        .unwrap_or(&out)
        .trim_start_matches('\n');
    let mut body = body.to_owned();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    body
}

fn to_node(value: &Value) -> Yaml<'static> {
    match value {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or_default().into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(Cow::Owned(s.clone()))),
        Value::Array(items) => Yaml::Sequence(items.iter().map(to_node).collect()),
        Value::Object(map) => Yaml::Mapping(
            map.iter()
                .map(|(k, v)| {
                    (
                        Yaml::Value(Scalar::String(Cow::Owned(k.clone()))),
                        to_node(v),
                    )
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_loader() {
        let value = serde_json::json!({
            "a": "80", "b": 80, "c": 0.5, "d": true, "e": "true", "f": null,
            "g": ["x", "y: z", "#not a comment", ""], "h": {"k.l/m": "multi\nline"},
            "i": "", "j": {}, "k": [], "l": "  padded ", "m": "1e3"
        });
        let text = to_yaml(&value);
        let docs = crate::source::parse_documents(&text, None).unwrap();
        assert_eq!(docs[0].value, value, "{text}");
    }
}
