//! Typed configuration: an optional TOML file, then `APP_` environment variables
//! (`APP_DATABASE__URL` sets `database.url`), later sources winning.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is invalid: {0}")]
    Invalid(#[from] config::ConfigError),
}

/// Loads `T` from `path` (if it exists) overlaid with `APP_*` variables.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(p) = path {
        builder = builder.add_source(config::File::from(p).required(false));
    }
    let cfg = builder
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__"),
        )
        .build()?;
    Ok(cfg.try_deserialize()?)
}

/// Loads `T` from the `APP_*` variables of `vars` alone, as a service started with
/// exactly that environment would (the compose check runs every service's config this
/// way).
pub fn load_from_vars<T: DeserializeOwned>(
    vars: std::collections::HashMap<String, String>,
) -> Result<T, ConfigError> {
    let cfg = config::Config::builder()
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        )
        .build()?;
    Ok(cfg.try_deserialize()?)
}

/// Settings every service has.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    pub listen_addr: SocketAddr,
    /// Tells instances of one service apart in logs, metrics and the `x-served-by` header.
    pub instance: String,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Clone, Deserialize)]
pub struct DatabaseConfig {
    /// Holds a password: never logged (see the Debug impl).
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    16
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_never_reaches_debug_output() {
        let db = DatabaseConfig {
            url: "postgres://u:hunter2@h/db".into(),
            max_connections: 4,
        };
        let shown = format!("{db:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("max_connections: 4"), "{shown}");
    }

    #[test]
    fn file_values_load_into_typed_config() {
        let dir = std::env::temp_dir().join(format!("paystream-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.toml");
        std::fs::write(
            &file,
            "listen_addr = \"127.0.0.1:9000\"\ninstance = \"api-1\"\nlog_format = \"json\"\n[database]\nurl = \"postgres://x\"\n",
        )
        .unwrap();
        let cfg: ServiceConfig = load(Some(&file)).unwrap();
        assert_eq!(cfg.listen_addr.port(), 9000);
        assert_eq!(cfg.instance, "api-1");
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.database.max_connections, 16);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_setting_is_a_clear_error() {
        let err = load::<ServiceConfig>(Some(Path::new("/nonexistent.toml"))).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}
