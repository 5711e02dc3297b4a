//! The OpenAPI document is exact: schemathesis (PyPI), driven by `/openapi.json` with
//! every check, finds nothing against a running API instance. Generated clients and
//! contract tools can trust it: every status code, format and constraint the API enforces
//! is stated. A missing schemathesis is a failed test, never a skipped one
//! (`scripts/install.sh` installs it).

use std::process::Command;

use paystream_testkit::Stack;

#[test]
fn schemathesis_finds_no_contract_failure() {
    let stack = Stack::get();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let out = Command::new("schemathesis")
        .args(["--config-file", config, "run"])
        .arg(format!("{}/openapi.json", stack.var("API_1_URL")))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
        ])
        .arg("--header")
        .arg(format!(
            "Authorization: Bearer {}",
            stack.var("PAYSTREAM_CLIENT_KEY")
        ))
        .output()
        .unwrap_or_else(|e| {
            panic!("schemathesis could not run ({e}): scripts/install.sh installs it")
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found contract failures ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Tested: 14"),
        "every operation was tested:\n{report}"
    );
}
