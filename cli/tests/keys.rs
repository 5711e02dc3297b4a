//! `paystream keys` on the real primary: a key never gets rights its command line did not
//! ask for, and a revoke never takes more than one key.

use std::process::Output;

use paystream_testkit::Stack;
use uuid::Uuid;

fn keys(stack: &Stack, args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.arg("keys")
        .args(args)
        .env("DATABASE_URL", stack.var("DATABASE_URL"));
    if let Some(k) = key {
        cmd.env("PAYSTREAM_KEY", k);
    }
    cmd.output().expect("run paystream keys")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_role_is_never_silently_another() {
    let stack = Stack::get();
    let name = format!("ops-{}", Uuid::now_v7());
    let made = keys(
        stack,
        &["create", "--name", &name, "--role", "operator"],
        None,
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let operator_key = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(operator_key.starts_with("psk_operator_"));

    // The road: the same name with another role used to mint an operator key
    // while saying "role client".
    let as_client = keys(
        stack,
        &["create", "--name", &name, "--role", "client"],
        None,
    );
    assert!(!as_client.status.success());
    assert!(
        stderr(&as_client).contains("exists with role operator"),
        "{}",
        stderr(&as_client)
    );
    assert!(as_client.stdout.is_empty(), "no key printed");
    let registered = keys(
        stack,
        &["register", "--name", &name, "--role", "client"],
        Some("psk_client_chosen_by_hand_0123456789"),
    );
    assert!(!registered.status.success(), "{}", stderr(&registered));

    // An existing key cannot be moved to another client either.
    let other = format!("other-{}", Uuid::now_v7());
    let moved = keys(
        stack,
        &["register", "--name", &other, "--role", "operator"],
        Some(&operator_key),
    );
    assert!(!moved.status.success());
    assert!(
        stderr(&moved).contains("another client"),
        "{}",
        stderr(&moved)
    );

    // Registering the same key again for its own client is a no-op, as before.
    let again = keys(
        stack,
        &["register", "--name", &name, "--role", "operator"],
        Some(&operator_key),
    );
    assert!(again.status.success(), "{}", stderr(&again));

    // A revoke names exactly one key: its first 16 characters, or the whole key.
    let prefix: String = operator_key.chars().take(16).collect();
    let revoked = keys(stack, &["revoke", &prefix], None);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(
        stderr(&revoked).contains("revoked 1 key"),
        "{}",
        stderr(&revoked)
    );
    let twice = keys(stack, &["revoke", &operator_key], None);
    assert!(
        !twice.status.success(),
        "already revoked: {}",
        stderr(&twice)
    );
}
