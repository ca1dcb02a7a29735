//! The database schema as an ordered list of migrations, applied by version
//! (`PRAGMA user_version` = how many have been applied).
//!
//! Invariants: a migration is never edited once released — a schema change is one
//! more entry at the end of [`MIGRATIONS`]; each migration runs in its own
//! transaction together with the version bump, so a crash leaves the database at
//! a whole version; a database newer than this binary is refused rather than
//! guessed at. Called once by `Store::open` before the store thread starts.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` (0-based) takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: single-use join tickets, kept until `exp` + skew; the index serves pruning.
    "CREATE TABLE used_tickets (
         jti TEXT PRIMARY KEY,
         exp INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX used_tickets_by_exp ON used_tickets (exp);",
    // 2: moderation state and the audit trail. Times are Unix milliseconds; a
    // server-wide ban has channel_id '' (NULL cannot be part of a primary key).
    "CREATE TABLE bans (
         user_uid TEXT NOT NULL,
         channel_id TEXT NOT NULL,
         reason TEXT NOT NULL,
         expires_at_ms INTEGER,
         actor TEXT NOT NULL,
         created_at_ms INTEGER NOT NULL,
         PRIMARY KEY (user_uid, channel_id)
     ) WITHOUT ROWID;
     CREATE TABLE timeouts (
         channel_id TEXT NOT NULL,
         user_uid TEXT NOT NULL,
         until_ms INTEGER NOT NULL,
         listen_only INTEGER NOT NULL,
         reason TEXT NOT NULL,
         actor TEXT NOT NULL,
         created_at_ms INTEGER NOT NULL,
         PRIMARY KEY (channel_id, user_uid)
     ) WITHOUT ROWID;
     CREATE TABLE channel_locks (
         channel_id TEXT PRIMARY KEY,
         exempt_roles TEXT NOT NULL,
         reason TEXT NOT NULL,
         actor TEXT NOT NULL,
         created_at_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE audit (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         at_ms INTEGER NOT NULL,
         kind TEXT NOT NULL,
         channel_id TEXT,
         user_uid TEXT,
         device_id TEXT,
         session_id TEXT,
         actor TEXT,
         reason TEXT,
         qos TEXT
     );
     CREATE INDEX audit_by_at ON audit (at_ms);
     CREATE INDEX audit_by_channel ON audit (channel_id, id);",
];

/// The schema version of `conn`.
pub(super) fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Applies the migrations of `list` that `conn` has not had yet; returns the
/// resulting version.
pub(super) fn migrate(conn: &mut Connection, list: &[&str]) -> Result<i64, StoreError> {
    let known = list.len();
    let found = version(conn)?;
    let start = usize::try_from(found)
        .ok()
        .filter(|v| *v <= known)
        .ok_or(StoreError::SchemaTooNew { found, known })?;
    for (i, sql) in list.iter().enumerate().skip(start) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        log::info!("store: schema migrated to version {}", i + 1);
    }
    version(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_in_order_and_only_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(version(&conn).unwrap(), 0);
        let n = MIGRATIONS.len() as i64;
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), n);
        // Re-running is a no-op (the CREATE TABLE would fail if it ran again).
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), n);

        // A later migration is one more entry; only it runs.
        let mut next = MIGRATIONS.to_vec();
        next.push("CREATE TABLE later (user_uid TEXT NOT NULL);");
        assert_eq!(migrate(&mut conn, &next).unwrap(), n + 1);
        conn.execute("INSERT INTO later (user_uid) VALUES ('u1')", [])
            .unwrap();
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let list = [MIGRATIONS[0], "CREATE TABLE t (a); THIS IS NOT SQL;"];
        assert!(migrate(&mut conn, &list).is_err());
        assert_eq!(version(&conn).unwrap(), 1);
        // The table created before the error in the same migration was rolled back.
        assert!(conn.execute("INSERT INTO t (a) VALUES (1)", []).is_err());
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
        assert!(matches!(
            migrate(&mut conn, MIGRATIONS),
            Err(StoreError::SchemaTooNew { found: 7, known: 2 })
        ));
    }
}
