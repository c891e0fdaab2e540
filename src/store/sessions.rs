//! Sign-in sessions: one row per browser session, found by the SHA-256 of its cookie value,
//! holding the user, role and the (encrypted) refresh token of the identity provider.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

pub(super) const MIGRATION: &str = "
    CREATE TABLE sessions (
        id_hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, provider TEXT NOT NULL, role TEXT NOT NULL,
        created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, tokens_expire_at INTEGER NOT NULL,
        refresh_token BLOB);
    CREATE INDEX sessions_user ON sessions (user_id);
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hash: Vec<u8>,
    pub user_id: String,
    pub provider: String,
    pub role: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// When the provider's tokens run out: past it, the session refreshes before it is used.
    pub tokens_expire_at: i64,
    /// Encrypted (nonce ‖ AES-256-GCM ciphertext); `None` when the provider gave none.
    pub refresh_token: Option<Vec<u8>>,
}

impl Store {
    pub fn put_session(&mut self, s: &Session) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sessions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id_hash) DO UPDATE SET
             role = ?4, expires_at = ?6, tokens_expire_at = ?7, refresh_token = ?8",
            params![
                s.id_hash,
                s.user_id,
                s.provider,
                s.role,
                s.created_at,
                s.expires_at,
                s.tokens_expire_at,
                s.refresh_token
            ],
        )?;
        Ok(())
    }

    /// The session, unless it has expired (expired ones are removed as they are met).
    pub fn session(&mut self, id_hash: &[u8], now: i64) -> Result<Option<Session>, StoreError> {
        self.conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
        Ok(self
            .conn
            .query_row(
                "SELECT id_hash, user_id, provider, role, created_at, expires_at, tokens_expire_at, refresh_token
                 FROM sessions WHERE id_hash = ?1",
                [id_hash],
                |r| {
                    Ok(Session {
                        id_hash: r.get(0)?,
                        user_id: r.get(1)?,
                        provider: r.get(2)?,
                        role: r.get(3)?,
                        created_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        tokens_expire_at: r.get(6)?,
                        refresh_token: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn delete_session(&mut self, id_hash: &[u8]) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])? > 0)
    }
}
