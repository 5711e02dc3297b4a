//! The Avro specification's schema fingerprint: CRC-64-AVRO (Rabin) of the schema's
//! Parsing Canonical Form. Written here, not taken from apache-avro, whose 0.21 canonical
//! form keeps `{"type":"string"}` for logical-typed fields where the specification
//! reduces them to `"string"`: a Java, Python or Flink reader resolving schemas by
//! fingerprint would not find ours.

use serde_json::{Map, Value};

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The attributes Parsing Canonical Form keeps, in the order it writes them.
const KEPT: [&str; 7] = [
    "name", "type", "fields", "symbols", "items", "values", "size",
];

#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an Avro schema: {0}")]
    Schema(String),
}

/// The specification's Parsing Canonical Form of a schema given as JSON.
pub fn canonical_form(schema_json: &str) -> Result<String, CanonicalError> {
    let schema: Value = serde_json::from_str(schema_json)?;
    canonical(&schema, None)
}

/// CRC-64-AVRO of the bytes, as the specification defines it.
pub fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        fp
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[usize::from((fp as u8) ^ b)]
    })
}

/// The 8 bytes the single-object encoding's header carries (little-endian).
pub fn fingerprint(schema_json: &str) -> Result<[u8; 8], CanonicalError> {
    Ok(rabin(canonical_form(schema_json)?.as_bytes()).to_le_bytes())
}

/// The canonical JSON text. Written by hand: [ORDER] fixes the order of attributes,
/// which a JSON map does not keep.
fn canonical(schema: &Value, namespace: Option<&str>) -> Result<String, CanonicalError> {
    match schema {
        Value::String(name) => Ok(quote(&full_name(name, namespace))),
        Value::Array(branches) => Ok(format!(
            "[{}]",
            branches
                .iter()
                .map(|b| canonical(b, namespace))
                .collect::<Result<Vec<_>, _>>()?
                .join(",")
        )),
        Value::Object(o) => object(o, namespace),
        other => Err(CanonicalError::Schema(format!("unexpected {other}"))),
    }
}

fn object(o: &Map<String, Value>, namespace: Option<&str>) -> Result<String, CanonicalError> {
    let kind = o
        .get("type")
        .ok_or_else(|| CanonicalError::Schema("an object without \"type\"".into()))?;
    let Value::String(kind) = kind else {
        // `{"type": {...}}` or `{"type": [...]}`: the inner schema is what counts.
        return canonical(kind, namespace);
    };
    if PRIMITIVES.contains(&kind.as_str()) {
        // [PRIMITIVES], [STRIP]: a logical type is an attribute, and attributes go.
        return Ok(quote(kind));
    }
    let named = matches!(kind.as_str(), "record" | "enum" | "fixed");
    if !named && !matches!(kind.as_str(), "array" | "map") {
        // `{"type": "SomeNamedType"}`: a reference.
        return Ok(quote(&full_name(kind, namespace)));
    }
    let mut name = None;
    let mut inner_ns = namespace.map(str::to_owned);
    if named {
        let short = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CanonicalError::Schema(format!("a {kind} without a name")))?;
        let ns = o.get("namespace").and_then(Value::as_str).or(namespace);
        let full = full_name(short, ns);
        inner_ns = full.rsplit_once('.').map(|(n, _)| n.to_owned());
        name = Some(full);
    }
    let inner_ns = inner_ns.as_deref();
    let mut parts = Vec::new();
    for key in KEPT {
        let value = match key {
            "name" => name.as_deref().map(quote),
            "type" => Some(quote(kind)),
            "fields" => o.get(key).map(|f| fields(f, inner_ns)).transpose()?,
            "items" | "values" => o.get(key).map(|s| canonical(s, inner_ns)).transpose()?,
            _ => o.get(key).map(Value::to_string),
        };
        if let Some(v) = value {
            parts.push(format!("{}:{v}", quote(key)));
        }
    }
    Ok(format!("{{{}}}", parts.join(",")))
}

fn fields(fields: &Value, namespace: Option<&str>) -> Result<String, CanonicalError> {
    let Value::Array(fields) = fields else {
        return Err(CanonicalError::Schema("\"fields\" is not an array".into()));
    };
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CanonicalError::Schema("a field without a name".into()))?;
        let kind = f
            .get("type")
            .ok_or_else(|| CanonicalError::Schema("a field without a type".into()))?;
        out.push(format!(
            "{{\"name\":{},\"type\":{}}}",
            quote(name),
            canonical(kind, namespace)?
        ));
    }
    Ok(format!("[{}]", out.join(",")))
}

fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// [FULLNAMES]: a primitive stays as it is; a dotted name is already full.
fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        _ if PRIMITIVES.contains(&name) || name.contains('.') => name.to_owned(),
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of the Avro specification's own test suite (`share/test/data/
    /// schema-tests.txt`), as signed 64-bit integers there.
    #[test]
    fn rabin_matches_the_specifications_vectors() {
        assert_eq!(rabin(b"\"null\"") as i64, 7_195_948_357_588_979_594);
        assert_eq!(
            fingerprint("\"int\"").unwrap(),
            0x7275_d51a_3f39_5c8f_u64.to_le_bytes()
        );
        assert_eq!(
            fingerprint(r#"{"type": "fixed", "name": "foo", "size": 15}"#).unwrap(),
            0x1860_2ec3_ed31_a504_u64.to_le_bytes()
        );
    }

    #[test]
    fn canonical_form_follows_the_specification() {
        let cases = [
            (r#"{"type": "int"}"#, r#""int""#),
            (
                r#"{"type": "string", "logicalType": "uuid"}"#,
                r#""string""#,
            ),
            (
                r#"{"type": "record", "name": "R", "namespace": "a.b", "doc": "x",
                   "fields": [{"name": "f", "type": {"type": "enum", "name": "E", "symbols": ["x"]}, "default": "x"},
                              {"name": "g", "type": "E"},
                              {"name": "h", "type": {"type": "array", "items": "long"}}]}"#,
                r#"{"name":"a.b.R","type":"record","fields":[{"name":"f","type":{"name":"a.b.E","type":"enum","symbols":["x"]}},{"name":"g","type":"a.b.E"},{"name":"h","type":{"type":"array","items":"long"}}]}"#,
            ),
        ];
        for (schema, want) in cases {
            assert_eq!(canonical_form(schema).unwrap(), want, "{schema}");
        }
    }

    /// What Java's `SchemaNormalization` and fastavro compute for our schema.
    #[test]
    fn our_schemas_fingerprint_is_the_one_other_readers_compute() {
        let schema = crate::output::SCHEMA_JSON;
        assert_eq!(
            canonical_form(schema).unwrap(),
            r#"{"name":"io.paystream.PaymentStatusUpdate","type":"record","fields":[{"name":"payment_id","type":"string"},{"name":"status","type":{"name":"io.paystream.FinalStatus","type":"enum","symbols":["succeeded","failed","canceled"]}},{"name":"amount","type":"long"},{"name":"currency","type":"string"},{"name":"stripe_payment_intent_id","type":["null","string"]},{"name":"resolution_source","type":["null","string"]},{"name":"version","type":"long"},{"name":"source_lsn","type":"long"},{"name":"committed_at","type":"long"}]}"#
        );
        assert_eq!(
            fingerprint(schema).unwrap(),
            [0xaa, 0xce, 0xd2, 0xf9, 0x68, 0xdc, 0x17, 0x33]
        );
    }
}
