//! Another language reads our status updates: fastavro (Python) finds the writer schema
//! by the header's fingerprint, the way a schema-resolving consumer does, and decodes the
//! datum. A missing python3 or fastavro is a failed test, never a skipped one
//! (`scripts/install.sh` installs fastavro).

use std::process::Command;

use paystream_core::PaymentStatus;
use paystream_reconciler::output::{self, StatusUpdate};
use serde_json::Value;
use uuid::Uuid;

const READER: &str = r#"
import io, json, sys
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

schema = parse_schema(json.load(open(sys.argv[1])))
by_fingerprint = {fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"): schema}
out = []
for hexed in sys.argv[2:]:
    msg = bytes.fromhex(hexed)
    assert msg[:2] == b"\xc3\x01", "single-object magic"
    writer = by_fingerprint[msg[2:10].hex()]
    out.append(schemaless_reader(io.BytesIO(msg[10:]), writer))
print(json.dumps(out, default=str))
"#;

#[test]
fn fastavro_finds_our_schema_by_its_fingerprint_and_decodes_every_field() {
    let updates: Vec<StatusUpdate> = [
        PaymentStatus::Succeeded,
        PaymentStatus::Failed,
        PaymentStatus::Canceled,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, status)| StatusUpdate {
        payment_id: Uuid::now_v7(),
        status,
        amount: 1250 + i as i64,
        currency: "usd".into(),
        stripe_payment_intent_id: (i != 1).then(|| format!("pi_{i}")),
        resolution_source: Some("webhook".into()),
        version: 2,
        source_lsn: 123_456_789,
        committed_at_ms: 1_800_000_000_123,
    })
    .collect();
    let hexed: Vec<String> = updates
        .iter()
        .map(|u| {
            output::encode(u)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/payment_status_update.avsc"
    );
    let out = Command::new("python3")
        .args(["-c", READER, schema])
        .args(&hexed)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "fastavro could not read our messages (is it installed? scripts/install.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read.len(), updates.len());
    for (u, r) in updates.iter().zip(&read) {
        assert_eq!(r["payment_id"], u.payment_id.to_string(), "{r}");
        assert_eq!(r["status"], u.status.as_str(), "{r}");
        assert_eq!(r["amount"], u.amount, "{r}");
        assert_eq!(r["currency"], u.currency, "{r}");
        assert_eq!(
            r["stripe_payment_intent_id"].as_str(),
            u.stripe_payment_intent_id.as_deref(),
            "{r}"
        );
        assert_eq!(r["resolution_source"], "webhook", "{r}");
        assert_eq!(r["version"], u.version, "{r}");
        assert_eq!(r["source_lsn"], u.source_lsn, "{r}");
        // fastavro turns timestamp-millis into a datetime: the instant must be ours.
        let at = r["committed_at"].as_str().unwrap();
        let parsed = chrono::DateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.f%:z")
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(parsed.timestamp_millis(), u.committed_at_ms, "{r}");
    }
}
