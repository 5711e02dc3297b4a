//! The Prometheus alert rules (monitoring/prometheus/rules) are valid and behave as their
//! promtool unit tests (monitoring/prometheus/tests) say: each alert fires on what it
//! guards and stays quiet on a near miss. Needs promtool (Debian package `prometheus`,
//! installed by `make deps`); a missing one is a failed test, not a skipped one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// The `.yml` files of a directory under the workspace, sorted (the shell's `dir/*.yml`).
fn yml_files(dir: &str) -> Vec<PathBuf> {
    let dir = root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .yml files in {}", dir.display());
    files
}

/// `promtool <args> <files>` from the workspace root, asserted successful.
fn promtool(args: &[&str], files: &[PathBuf]) -> Output {
    let out = Command::new("promtool")
        .args(args)
        .args(files)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): run `make deps` (scripts/install.sh installs the \
                 Debian package prometheus, which provides promtool)"
            )
        });
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn rules_are_valid() {
    promtool(
        &["check", "rules"],
        &yml_files("monitoring/prometheus/rules"),
    );
}

#[test]
fn rules_pass_their_unit_tests() {
    promtool(
        &["test", "rules"],
        &yml_files("monitoring/prometheus/tests"),
    );
}

/// Every alert has a test case that fires it (`exp_alerts:` with alerts) and one that
/// keeps it quiet (`exp_alerts: []`): a new alert without both fails here.
#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    let rules: String = yml_files("monitoring/prometheus/rules")
        .iter()
        .map(read)
        .collect();
    let tests: Vec<String> = yml_files("monitoring/prometheus/tests")
        .iter()
        .map(read)
        .collect();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(!alerts.is_empty(), "no alert in the rules");
    let mut missing = Vec::new();
    for alert in &alerts {
        let (mut fires, mut quiet) = (false, false);
        for text in &tests {
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            for pair in lines.windows(2) {
                if pair[0] == format!("alertname: {alert}") {
                    match pair[1] {
                        "exp_alerts: []" => quiet = true,
                        "exp_alerts:" => fires = true,
                        _ => {}
                    }
                }
            }
        }
        if !fires {
            missing.push(format!("{alert}: no test case fires it"));
        }
        if !quiet {
            missing.push(format!("{alert}: no test case keeps it quiet"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Prometheus's config (the one file both stacks use) is valid with its rules and the
/// compose targets, assembled as docker-compose.yml mounts them; the local stack's are
/// written by monitoring.sh in the same shape.
#[test]
fn prometheus_config_is_valid() {
    let dir = std::env::temp_dir().join(format!("paystream-promcfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root().join("monitoring/prometheus/prometheus.yml"),
        dir.join("prometheus.yml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        root().join("monitoring/prometheus/rules"),
        dir.join("rules"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        root().join("monitoring/prometheus/compose-targets"),
        dir.join("targets"),
    )
    .unwrap();
    let out = promtool(&["check", "config"], &[dir.join("prometheus.yml")]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("rules found"), "no rules loaded: {said}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn alertmanager_config_is_valid() {
    let out = Command::new("amtool")
        .arg("check-config")
        .arg(root().join("monitoring/alertmanager/alertmanager.yml"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run amtool ({e}): run `make deps` (scripts/install.sh installs the \
                 Debian package prometheus-alertmanager, which provides amtool)"
            )
        });
    assert!(
        out.status.success(),
        "amtool check-config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
