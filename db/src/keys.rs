//! API keys: random, shown once, stored as SHA-256 only.

use paystream_core::ClientId;
use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{DbError, Primary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Operator,
    /// Reads analytics only.
    Analyst,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Analyst => "analyst",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "operator" => Some(Role::Operator),
            "analyst" => Some(Role::Analyst),
            _ => None,
        }
    }
}

/// Who a request comes from, once its key checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub client_id: ClientId,
    pub role: Role,
}

/// `psk_<role>_` and 32 alphanumerics (~190 bits).
pub fn generate(role: Role) -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("psk_{}_{tail}", role.as_str())
}

pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn prefix(key: &str) -> String {
    key.chars().take(16).collect()
}

/// Registers `key` for the client `name` (created with `role` if new). Idempotent: a key
/// already registered to that client is left as it is. Refused, changing nothing, when
/// `name` exists with another role (the key would silently get that role's rights) or
/// the key belongs to another client.
pub async fn register(
    db: &Primary,
    name: &str,
    role: Role,
    key: &str,
) -> Result<ClientId, DbError> {
    let mut tx = db.pool().begin().await?;
    let (client_id, existing_role): (Uuid, String) = sqlx::query_as(
        "INSERT INTO api_clients (id, name, role) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id, role",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let client_id = ClientId::from_uuid(client_id);
    if existing_role != role.as_str() {
        return Err(DbError::Refused(format!(
            "client {name} exists with role {existing_role}, not {}: use another name",
            role.as_str()
        )));
    }
    let owner: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (id, client_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key_hash) DO UPDATE SET key_hash = excluded.key_hash RETURNING client_id",
    )
    .bind(Uuid::now_v7())
    .bind(client_id.as_uuid())
    .bind(hash(key))
    .bind(prefix(key))
    .fetch_one(&mut *tx)
    .await?;
    if owner != client_id.as_uuid() {
        return Err(DbError::Refused(
            "this key is already registered to another client".into(),
        ));
    }
    tx.commit().await?;
    Ok(client_id)
}

/// A new key for client `name`; the only time the key exists in clear.
pub async fn create(db: &Primary, name: &str, role: Role) -> Result<(ClientId, String), DbError> {
    let key = generate(role);
    let client_id = register(db, name, role, &key).await?;
    Ok((client_id, key))
}

/// Revokes the one active key whose stored prefix starts with `prefix` (or which `prefix`,
/// a whole key, is). A prefix that names several keys revokes none: a short or mistyped
/// prefix must not take many clients offline. Returns the revoked key's client.
pub async fn revoke(db: &Primary, prefix: &str) -> Result<ClientId, DbError> {
    let mut tx = db.pool().begin().await?;
    let matches: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, client_id FROM api_keys
         WHERE revoked_at IS NULL AND (key_hash = $2 OR starts_with(key_prefix, left($1, 16)))
           AND (key_hash = $2 OR length($1) <= 16)
         FOR UPDATE",
    )
    .bind(prefix)
    .bind(hash(prefix))
    .fetch_all(&mut *tx)
    .await?;
    let (key_id, client_id) = match matches.as_slice() {
        [] => {
            return Err(DbError::Refused(format!(
                "no active key starts with {prefix:?}"
            )));
        }
        [one] => *one,
        many => {
            return Err(DbError::Refused(format!(
                "{} active keys start with {prefix:?}: give more of the key (or the whole key)",
                many.len()
            )));
        }
    };
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ClientId::from_uuid(client_id))
}

/// The lookup behind every key check, `$1` being the key's hash: on the primary here, on
/// a replica in `replica::authenticate`.
pub(crate) const AUTHENTICATE_SQL: &str =
    "SELECT c.id, c.role FROM api_keys k JOIN api_clients c ON c.id = k.client_id
     WHERE k.key_hash = $1 AND k.revoked_at IS NULL";

/// The principal of a row `AUTHENTICATE_SQL` returned.
pub(crate) fn principal(client_id: ClientId, role: &str) -> Result<Principal, DbError> {
    Role::parse(role)
        .map(|role| Principal { client_id, role })
        .ok_or_else(|| DbError::Corrupt(format!("unknown role {role}")))
}

pub async fn authenticate(db: &Primary, key: &str) -> Result<Option<Principal>, DbError> {
    let row: Option<(Uuid, String)> = sqlx::query_as(AUTHENTICATE_SQL)
        .bind(hash(key))
        .fetch_optional(db.pool())
        .await?;
    row.map(|(client_id, role)| principal(ClientId::from_uuid(client_id), &role))
        .transpose()
}

/// Hashes of the newest `limit` keys not revoked, oldest first. The API's key gate loads
/// them at start so the clients of the day are not queued as strangers behind a restart.
pub async fn active_hashes(db: &Primary, limit: usize) -> Result<Vec<Vec<u8>>, DbError> {
    let mut newest_first: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT key_hash FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db.pool())
    .await?;
    newest_first.reverse();
    Ok(newest_first)
}

/// What the database announced of the keys (migration 0015).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// This key (by its hash) was revoked, changed or deleted.
    Key(Vec<u8>),
    /// A client changed, or keys went in bulk: no key checked before may be trusted.
    All,
    /// This key (by its hash) was added: nothing checked before changes, and its first
    /// lookup need not queue with strangers' keys.
    Added(Vec<u8>),
}

impl KeyChange {
    fn parse(payload: &str) -> KeyChange {
        if let Some(hash) = payload.strip_prefix("added:").and_then(decode_hex)
            && !hash.is_empty()
        {
            return KeyChange::Added(hash);
        }
        match decode_hex(payload) {
            Some(hash) if !hash.is_empty() => KeyChange::Key(hash),
            _ => KeyChange::All,
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A subscription to the key changes the database announces as they commit.
pub struct KeyChanges(sqlx::postgres::PgListener);

impl KeyChanges {
    /// Subscribed when this returns: every change committed from now on is heard. The
    /// subscription has a connection of its own, outside `db`'s pool, which it would hold
    /// for good.
    pub async fn subscribe(db: &Primary) -> Result<KeyChanges, DbError> {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*db.pool().connect_options()).clone());
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        listener.listen("api_keys_changed").await?;
        Ok(KeyChanges(listener))
    }

    /// The next change, or `None` once the subscription is lost (changes may have been
    /// missed since; subscribe again).
    pub async fn next(&mut self) -> Result<Option<KeyChange>, DbError> {
        Ok(self
            .0
            .try_recv()
            .await?
            .map(|n| KeyChange::parse(n.payload())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_say_their_role() {
        let a = generate(Role::Client);
        let b = generate(Role::Client);
        assert_ne!(a, b);
        assert!(a.starts_with("psk_client_") && a.len() == "psk_client_".len() + 32);
        assert!(generate(Role::Operator).starts_with("psk_operator_"));
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn a_change_names_its_key_or_every_key() {
        let h = hash("psk_client_x");
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(KeyChange::parse(&hex), KeyChange::Key(h.clone()));
        assert_eq!(
            KeyChange::parse(&format!("added:{hex}")),
            KeyChange::Added(h)
        );
        // Anything else is read as the safe side: forget every key.
        for all in ["", "abc", "zz", "0g", "added:", "added:zz", "removed:00"] {
            assert_eq!(KeyChange::parse(all), KeyChange::All, "{all:?}");
        }
    }
}
