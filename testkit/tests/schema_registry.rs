//! The tests' schema registry is real: `start_schema_registry()` brings up Karapace on a
//! broker of its own, and it answers the Confluent Schema Registry API as Paystream uses
//! it (register, look up by id, same schema same id, BACKWARD compatibility enforced).

use paystream_testkit::registry::start_schema_registry;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

async fn register(http: &reqwest::Client, url: &str, schema: &Value) -> (StatusCode, Value) {
    let res = http
        .post(format!("{url}/subjects/t-value/versions"))
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(json!({ "schema": schema.to_string() }).to_string())
        .send()
        .await
        .expect("POST /subjects/t-value/versions");
    let status = res.status();
    (status, res.json().await.expect("a JSON answer"))
}

#[tokio::test]
async fn registers_looks_up_and_checks_compatibility() {
    let registry = start_schema_registry().await;
    assert!(
        registry.url.starts_with("http://127.0.0.1:"),
        "{}",
        registry.url
    );
    assert!(
        registry.brokers.starts_with("127.0.0.1:"),
        "{}",
        registry.brokers
    );
    let http = reqwest::Client::new();

    let v1 = json!({
        "type": "record",
        "name": "T",
        "namespace": "paystream.test",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "amount", "type": "long"}
        ]
    });
    let (status, body) = register(&http, &registry.url, &v1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {body}"));

    let res = http
        .get(format!("{}/schemas/ids/{id}", registry.url))
        .send()
        .await
        .expect("GET /schemas/ids/{id}");
    assert_eq!(res.status(), StatusCode::OK);
    let found: Value = res.json().await.expect("a JSON answer");
    let schema: Value = serde_json::from_str(found["schema"].as_str().expect("schema text"))
        .expect("the schema is JSON");
    assert_eq!(schema, v1, "the registry gives back what was registered");

    let (status, body) = register(&http, &registry.url, &v1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["id"].as_i64(),
        Some(id),
        "the same schema keeps its id"
    );

    // A new required field without a default: v1 data cannot be read with it (BACKWARD).
    let incompatible = json!({
        "type": "record",
        "name": "T",
        "namespace": "paystream.test",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "amount", "type": "long"},
            {"name": "currency", "type": "string"}
        ]
    });
    let (status, body) = register(&http, &registry.url, &incompatible).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error_code"], 409, "{body}");

    let res = http
        .get(format!("{}/subjects/t-value/versions", registry.url))
        .send()
        .await
        .expect("GET /subjects/t-value/versions");
    let versions: Value = res.json().await.expect("a JSON answer");
    assert_eq!(versions, json!([1]), "the incompatible schema was not kept");

    // Dropped, it stops both processes: nothing listens on their ports any more.
    let (url, brokers) = (registry.url.clone(), registry.brokers.clone());
    drop(registry);
    assert!(
        tokio::net::TcpStream::connect(&brokers).await.is_err(),
        "the broker still listens on {brokers}"
    );
    assert!(
        http.get(format!("{url}/_health")).send().await.is_err(),
        "the registry still answers on {url}"
    );
}
