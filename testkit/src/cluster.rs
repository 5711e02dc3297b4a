//! A throw-away PostgreSQL cluster (primary and two replicas) made by the project's own
//! `postgres-replication/cluster.sh` on ports of its own: for tests that pause replay or
//! stop the primary, which the shared stack's other tests must never see.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

pub struct ScratchCluster {
    dir: PathBuf,
    ports: [u16; 3],
}

/// A node of the cluster.
#[derive(Debug, Clone, Copy)]
pub enum Node {
    Primary,
    Replica1,
    Replica2,
}

impl ScratchCluster {
    /// A cluster on `base_port` (primary), `+1` and `+2`, in a fresh private directory
    /// (0700, like a clone under /root: cluster.sh must cope). Nothing is started yet.
    pub fn new(name: &str, base_port: u16) -> ScratchCluster {
        let dir = std::env::temp_dir().join(format!("paystream-{name}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir(&dir).expect("scratch dir");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod scratch dir");
        ScratchCluster {
            dir,
            ports: [base_port, base_port + 1, base_port + 2],
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Runs `cluster.sh ARG`: whether it succeeded, and its output.
    pub fn run(&self, arg: &str) -> (bool, String) {
        let out = Command::new(super::workspace_root().join("postgres-replication/cluster.sh"))
            .arg(arg)
            .env("STACK_DIR", &self.dir)
            .env("PG_PRIMARY_PORT", self.ports[0].to_string())
            .env("PG_REPLICA1_PORT", self.ports[1].to_string())
            .env("PG_REPLICA2_PORT", self.ports[2].to_string())
            .output()
            .expect("cannot run cluster.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `run`, panicking with the script's output when it fails.
    pub fn must(&self, arg: &str) {
        let (ok, text) = self.run(arg);
        assert!(ok, "cluster.sh {arg} failed:\n{text}");
    }

    /// A URL for `role` (`paystream`, `analyst` or `postgres`) on `node`, database
    /// `paystream`, with the password cluster.sh generated.
    pub fn url(&self, role: &str, node: Node) -> String {
        let secrets: HashMap<String, String> =
            std::fs::read_to_string(self.dir.join("secrets.env"))
                .expect("secrets.env: run `up` first")
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let key = match role {
            "paystream" => "PG_APP_PASSWORD",
            "analyst" => "PG_ANALYST_PASSWORD",
            "postgres" => "PG_SUPERUSER_PASSWORD",
            other => panic!("no password for role {other}"),
        };
        let port = self.ports[node as usize];
        // cluster.sh's nodes take TLS only, from the CA it made in the cluster's directory.
        format!(
            "postgres://{role}:{}@127.0.0.1:{port}/paystream?sslmode=verify-full&sslrootcert={}",
            secrets[key],
            self.dir.join("tls/ca.crt").display()
        )
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let _ = self.run("clean");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
