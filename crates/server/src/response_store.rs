//! `ResponseStore`: the Responses API's stored responses (`store: true`), in an embedded
//! SQLite database (by default `$SLM_HOME/responses.sqlite`), so `previous_response_id`
//! continues a conversation without the client resending it, `GET`/`DELETE
//! /v1/responses/{id}` work, and a restart keeps them. Bounded by count and age: the oldest
//! go first. Each response belongs to the tenant (API key) that made it; another tenant sees
//! a 404. Called by routes/responses.rs; the calls are short and run on the blocking pool.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::auth::Tenant;
use crate::error::ApiError;

/// Most responses a conversation chain is followed through (`previous_response_id`).
pub const MAX_CHAIN: usize = 1024;

/// One stored response: the input items of its own turn and the response object.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: String,
    pub created_at: u64,
    pub previous_response_id: Option<String>,
    pub input_items: Vec<Value>,
    pub response: Value,
}

pub struct ResponseStore {
    conn: Mutex<Connection>,
    max_count: usize,
    max_age_s: u64,
}

/// The owner tag of a tenant's responses: a hash of its key (the key itself is not written
/// to disk); empty when the server has no keys.
pub fn owner(tenant: Option<&Tenant>) -> String {
    match tenant {
        None => String::new(),
        // FNV-1a: stable across runs and builds, unlike std's hasher.
        Some(t) => format!(
            "{:016x}",
            t.0.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
        ),
    }
}

fn db_error(e: rusqlite::Error) -> ApiError {
    ApiError::internal(format!("the response store failed: {e}"))
}

fn now() -> u64 {
    crate::routes::unix_now()
}

impl ResponseStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, max_count: usize, max_age_s: u64) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL").context("cannot set the journal mode")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::with(conn, max_count, max_age_s).with_context(|| format!("cannot use {}", path.display()))
    }

    /// A store that lives as long as the process (tests, `--responses-db :memory:`).
    pub fn in_memory(max_count: usize, max_age_s: u64) -> Self {
        let conn = Connection::open_in_memory().expect("an in-memory database opens");
        Self::with(conn, max_count, max_age_s).expect("the schema applies")
    }

    fn with(conn: Connection, max_count: usize, max_age_s: u64) -> anyhow::Result<Self> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS responses (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 owner TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 previous_response_id TEXT,
                 input_items TEXT NOT NULL,
                 response TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS responses_created ON responses(created_at);",
        )?;
        Ok(Self { conn: Mutex::new(conn), max_count: max_count.max(1), max_age_s })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores (or replaces) a response, then drops what is past the bounds.
    pub fn put(&self, owner: &str, r: &Stored) -> Result<(), ApiError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR REPLACE INTO responses (id, owner, created_at, previous_response_id, input_items, response)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.id,
                owner,
                r.created_at as i64,
                r.previous_response_id,
                Value::Array(r.input_items.clone()).to_string(),
                r.response.to_string()
            ],
        )
        .map_err(db_error)?;
        let oldest = now().saturating_sub(self.max_age_s) as i64;
        conn.execute("DELETE FROM responses WHERE created_at < ?1", params![oldest]).map_err(db_error)?;
        conn.execute(
            "DELETE FROM responses WHERE seq NOT IN (SELECT seq FROM responses ORDER BY seq DESC LIMIT ?1)",
            params![self.max_count as i64],
        )
        .map_err(db_error)?;
        Ok(())
    }

    /// The response `id` of `owner`, if it is stored (and not past the age bound).
    pub fn get(&self, owner: &str, id: &str) -> Result<Option<Stored>, ApiError> {
        let oldest = now().saturating_sub(self.max_age_s) as i64;
        let row = self
            .conn()
            .query_row(
                "SELECT created_at, previous_response_id, input_items, response FROM responses
                 WHERE id = ?1 AND owner = ?2 AND created_at >= ?3",
                params![id, owner, oldest],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(db_error)?;
        let Some((created_at, previous_response_id, items, response)) = row else { return Ok(None) };
        let parse = |s: &str| {
            serde_json::from_str::<Value>(s)
                .map_err(|e| ApiError::internal(format!("a stored response is corrupt: {e}")))
        };
        let input_items = match parse(&items)? {
            Value::Array(v) => v,
            _ => return Err(ApiError::internal("a stored response is corrupt: input items are not a list")),
        };
        Ok(Some(Stored {
            id: id.to_string(),
            created_at: created_at as u64,
            previous_response_id,
            input_items,
            response: parse(&response)?,
        }))
    }

    /// Deletes `id`; false when `owner` has no such response.
    pub fn delete(&self, owner: &str, id: &str) -> Result<bool, ApiError> {
        let n = self
            .conn()
            .execute("DELETE FROM responses WHERE id = ?1 AND owner = ?2", params![id, owner])
            .map_err(db_error)?;
        Ok(n > 0)
    }

    /// The stored responses from the first of the conversation to `id`, oldest first; a 404
    /// naming `previous_response_id` when `id` (or one before it) is not stored.
    pub fn chain(&self, owner: &str, id: &str) -> Result<Vec<Stored>, ApiError> {
        let mut chain = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(id) = next {
            if chain.len() >= MAX_CHAIN {
                return Err(ApiError::invalid(
                    "previous_response_id",
                    format!("the conversation is longer than {MAX_CHAIN} responses"),
                ));
            }
            let r = self.get(owner, &id)?.ok_or_else(|| ApiError {
                param: Some("previous_response_id".into()),
                ..ApiError::not_found(format!("Previous response with id '{id}' not found."))
            })?;
            next = r.previous_response_id.clone();
            chain.push(r);
        }
        chain.reverse();
        Ok(chain)
    }

    pub fn num_stored(&self) -> usize {
        self.conn().query_row("SELECT COUNT(*) FROM responses", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(id: &str, prev: Option<&str>) -> Stored {
        Stored {
            id: id.into(),
            created_at: now(),
            previous_response_id: prev.map(String::from),
            input_items: vec![json!({"type": "message", "role": "user", "content": id})],
            response: json!({"id": id, "output": []}),
        }
    }

    #[test]
    fn responses_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("slm-store-{}", rand::random::<u64>()));
        let path = dir.join("responses.sqlite");
        {
            let s = ResponseStore::open(&path, 100, 3600).unwrap();
            s.put("", &stored("resp_a", None)).unwrap();
            s.put("", &stored("resp_b", Some("resp_a"))).unwrap();
        }
        let s = ResponseStore::open(&path, 100, 3600).unwrap();
        assert_eq!(s.get("", "resp_b").unwrap(), Some(stored("resp_b", Some("resp_a"))));
        let chain: Vec<String> = s.chain("", "resp_b").unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(chain, ["resp_a", "resp_b"]);
        assert!(s.delete("", "resp_a").unwrap());
        assert!(!s.delete("", "resp_a").unwrap());
        // The chain is broken now: a 404 naming the field.
        let e = s.chain("", "resp_b").unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (404, Some("previous_response_id")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tenants_see_only_their_own_and_the_bounds_hold() {
        let s = ResponseStore::in_memory(3, 3600);
        let (a, b) = (owner(Some(&Tenant("key-a".into()))), owner(Some(&Tenant("key-b".into()))));
        assert_ne!(a, b);
        s.put(&a, &stored("resp_1", None)).unwrap();
        assert!(s.get(&b, "resp_1").unwrap().is_none());
        assert!(!s.delete(&b, "resp_1").unwrap());
        assert!(s.get(&a, "resp_1").unwrap().is_some());
        for i in 2..=5 {
            s.put(&a, &stored(&format!("resp_{i}"), None)).unwrap();
        }
        assert_eq!(s.num_stored(), 3);
        assert!(s.get(&a, "resp_2").unwrap().is_none(), "the oldest go first");
        // An age bound of zero keeps nothing older than this second.
        let old = ResponseStore::in_memory(10, 0);
        old.put("", &Stored { created_at: now() - 5, ..stored("resp_old", None) }).unwrap();
        assert!(old.get("", "resp_old").unwrap().is_none());
    }
}
