//! Persistence: ONE SQLite database, `prism.db` in the data directory, owned by ONE
//! store thread. Everyone else holds a [`StoreHandle`] and sends it commands over a
//! bounded channel.
//!
//! Invariants:
//! - Only the store thread touches the database after [`Store::open`] returns, so
//!   there is no lock contention and no caller ever waits on the disk unless it
//!   asks to ([`StoreHandle::write_durable`], [`StoreHandle::load_used_tickets`]).
//! - The queue holds at most [`QUEUE_CAPACITY`] commands; a full queue is an error
//!   to the sender ([`StoreError::QueueFull`]), never a blocked thread.
//! - The thread blocks for one command, then takes whatever else is queued (up to
//!   [`QUEUE_CAPACITY`]) and applies it all in ONE transaction; replies go out only
//!   after that commit. With WAL and `synchronous=FULL`, a commit is on disk when
//!   it returns, so an acknowledged write survives a crash. If the batch fails,
//!   each command is retried in its own transaction so one bad write cannot sink
//!   the others.
//! - The data directory is created with mode 0700 and the database file kept at
//!   0600: it holds moderation state. Tokens, credentials and media never enter it.
//!
//! Opened once at start-up; used by the auth layer (used join tickets), moderation
//! (bans, timeouts, locks: written durably before the admin is answered, loaded at
//! start) and the audit trail (queued without waiting, pruned by age).

mod schema;

use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rusqlite::{Connection, Transaction, params};

use crate::audit::{AuditQuery, AuditRecord, AuditRow};
use crate::auth::{CLOCK_SKEW_S, rfc3339_utc_ms};
use crate::ids::{ChannelId, UserUid};
use crate::moderation::{Ban, Lock, ModerationChange, Timeout};

/// The database file name inside the data directory.
pub const DB_FILE_NAME: &str = "prism.db";

/// Commands the queue holds before senders are refused.
pub const QUEUE_CAPACITY: usize = 4096;

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// Creating or securing the data directory or database file failed.
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// SQLite refused an operation.
    Sqlite(rusqlite::Error),
    /// SQLite would not switch to WAL journaling (it reported this mode instead).
    NoWal(String),
    /// The database was written by a newer Prism: its schema version, and the
    /// newest version this binary knows.
    SchemaTooNew {
        /// `PRAGMA user_version` of the database.
        found: i64,
        /// The number of migrations this binary has.
        known: usize,
    },
    /// The command queue is full; nothing was queued.
    QueueFull,
    /// The store thread has stopped (shut down, or failed).
    Closed,
    /// The store thread could not be started.
    Spawn(io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
            StoreError::NoWal(mode) => {
                write!(f, "the database refused WAL journaling (mode is {mode:?})")
            }
            StoreError::SchemaTooNew { found, known } => write!(
                f,
                "the database schema is version {found} but this Prism knows only up to {known}; \
                 run a newer Prism or restore a backup"
            ),
            StoreError::QueueFull => write!(f, "the store queue is full"),
            StoreError::Closed => write!(f, "the store has stopped"),
            StoreError::Spawn(e) => write!(f, "cannot start the store thread: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } | StoreError::Spawn(source) => Some(source),
            StoreError::Sqlite(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// A change to persist.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreWrite {
    /// A join ticket id that has been used, refused until `exp` + skew.
    UsedTicket {
        /// The ticket's `jti`.
        jti: String,
        /// The ticket's `exp`, Unix seconds.
        exp: u64,
    },
    /// A moderation change and its audit record, in one transaction.
    Moderation {
        /// The change.
        change: ModerationChange,
        /// Its audit record.
        audit: AuditRecord,
    },
    /// An audit record.
    Audit(AuditRecord),
}

/// The moderation state as stored (loaded at start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModerationSnapshot {
    /// Every ban.
    pub bans: Vec<Ban>,
    /// Every timeout.
    pub timeouts: Vec<Timeout>,
    /// Every lock.
    pub locks: Vec<Lock>,
}

/// What the store thread is asked to do.
enum StoreCommand {
    /// Apply a write; answer on `ack` (if any) once committed.
    Write {
        write: Box<StoreWrite>,
        ack: Option<Sender<Result<(), StoreError>>>,
    },
    /// Delete used tickets that are no longer live at `now_unix`.
    PruneUsedTickets { now_unix: u64 },
    /// Read the used tickets still live at `now_unix`.
    LoadUsedTickets {
        now_unix: u64,
        reply: Sender<Result<Vec<(String, u64)>, StoreError>>,
    },
    /// Read every ban, timeout and lock.
    LoadModeration {
        reply: Sender<Result<ModerationSnapshot, StoreError>>,
    },
    /// Read audit records, newest first.
    QueryAudit {
        query: AuditQuery,
        reply: Sender<Result<Vec<AuditRow>, StoreError>>,
    },
    /// Delete audit records older than `before_ms`.
    PruneAudit { before_ms: u64 },
    /// Finish the current batch and stop.
    Shutdown,
    /// Tests only: tell `entered` the thread is inside a batch, then wait on
    /// `release`, so a test can fill the queue deterministically.
    #[cfg(test)]
    Pause {
        entered: Sender<()>,
        release: Receiver<()>,
    },
}

/// The result of one command inside a batch, held until the commit.
enum Outcome {
    Done,
    UsedTickets(Vec<(String, u64)>),
    Moderation(ModerationSnapshot),
    Audit(Vec<AuditRow>),
}

/// Opens the store.
pub struct Store;

impl Store {
    /// Creates `dir` (mode 0700) if missing, opens or creates `prism.db` in it
    /// (mode 0600), switches it to WAL with `synchronous=FULL`, applies pending
    /// migrations, and starts the store thread.
    pub fn open(dir: &Path) -> Result<StoreHandle, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let path = dir.join(DB_FILE_NAME);
        // Create the file ourselves so it is never world-readable, not even for
        // the moment before a chmod; SQLite gives its -wal/-shm files the same mode.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).map_err(io_err(&path))?;

        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        let version = schema::migrate(&mut conn, schema::MIGRATIONS)?;
        log::info!(
            "store: opened {} (schema version {version})",
            path.display()
        );

        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let transactions = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&transactions);
        let thread = std::thread::Builder::new()
            .name("prism-store".into())
            .spawn(move || run(conn, rx, &counter))
            .map_err(StoreError::Spawn)?;
        Ok(StoreHandle {
            tx,
            shared: Arc::new(Shared {
                path,
                transactions,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

/// WAL so readers never block the writer, `synchronous=FULL` so a commit is on
/// disk when it returns (the durability promise of `write_durable`).
fn configure(conn: &Connection) -> Result<(), StoreError> {
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal(mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

struct Shared {
    path: PathBuf,
    /// Transactions the thread has committed (batches and single-command retries).
    transactions: Arc<AtomicU64>,
    /// Taken by the first `shutdown`, which joins it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A cheap, cloneable handle to the store thread.
///
/// Dropping every handle also stops the thread once the queue is drained, but
/// without waiting for it; call [`StoreHandle::shutdown`] at exit to be sure the
/// last writes are on disk.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<StoreCommand>,
    shared: Arc<Shared>,
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreHandle")
            .field("path", &self.shared.path)
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl StoreHandle {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Transactions committed so far (for tests and metrics).
    pub fn transactions_committed(&self) -> u64 {
        self.shared.transactions.load(Ordering::Relaxed)
    }

    /// Queues `cmd` without waiting; it is committed with the next batch.
    pub fn try_write(&self, cmd: StoreWrite) -> Result<(), StoreError> {
        self.enqueue(StoreCommand::Write {
            write: Box::new(cmd),
            ack: None,
        })
    }

    /// Queues `cmd` (refused at once if the queue is full) and waits until it is
    /// committed to disk. For acknowledged writes (moderation), never from a
    /// media worker.
    pub fn write_durable(&self, cmd: StoreWrite) -> Result<(), StoreError> {
        let (ack, done) = crossbeam_channel::bounded(1);
        self.enqueue(StoreCommand::Write {
            write: Box::new(cmd),
            ack: Some(ack),
        })?;
        done.recv().map_err(|_| StoreError::Closed)?
    }

    /// The used ticket ids still live at `now_unix` (`exp` + skew not yet
    /// passed), with their `exp`. Waits for the store thread.
    pub fn load_used_tickets(&self, now_unix: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.enqueue(StoreCommand::LoadUsedTickets { now_unix, reply })?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Every ban, timeout and lock stored. Waits for the store thread (start-up).
    pub fn load_moderation(&self) -> Result<ModerationSnapshot, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.enqueue(StoreCommand::LoadModeration { reply })?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Audit records matching `query`, newest first. Waits for the store thread.
    pub fn query_audit(&self, query: AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.enqueue(StoreCommand::QueryAudit { query, reply })?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Queues the deletion of audit records older than `before_ms`, without waiting
    /// (shed when the queue is full: the next prune deletes the same rows).
    pub fn prune_audit(&self, before_ms: u64) {
        if let Err(e) = self.enqueue(StoreCommand::PruneAudit { before_ms }) {
            log::debug!("store: prune of audit records skipped: {e}");
        }
    }

    /// Queues the deletion of used tickets no longer live at `now_unix`, without
    /// waiting. A prune shed because the queue is full is harmless: the next one
    /// deletes the same rows.
    pub fn prune_used_tickets(&self, now_unix: u64) {
        if let Err(e) = self.enqueue(StoreCommand::PruneUsedTickets { now_unix }) {
            log::debug!("store: prune of used tickets skipped: {e}");
        }
    }

    /// Commits everything queued before it, stops the thread and waits for it.
    /// Idempotent; a concurrent caller waits for the first one to finish.
    pub fn shutdown(&self) {
        let mut thread = match self.shared.thread.lock() {
            Ok(guard) => guard,
            // A panic while holding this lock cannot leave the Option half-done.
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(handle) = thread.take() else {
            return;
        };
        // Blocking send: at shutdown, waiting for queue space is right. It fails
        // only when the thread is already gone.
        let _ = self.tx.send(StoreCommand::Shutdown);
        if handle.join().is_err() {
            log::error!("store: the store thread panicked");
        }
    }

    fn enqueue(&self, cmd: StoreCommand) -> Result<(), StoreError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::QueueFull,
            TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }

    /// Tests only: holds the store thread inside a batch until the returned
    /// sender is dropped or sent to. When this returns, nothing else is being
    /// taken off the queue.
    #[cfg(test)]
    pub(crate) fn pause(&self) -> Sender<()> {
        let (entered_tx, entered) = crossbeam_channel::bounded(1);
        let (release, release_rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(StoreCommand::Pause {
                entered: entered_tx,
                release: release_rx,
            })
            .unwrap();
        entered.recv().unwrap();
        release
    }
}

/// The store thread: one batch per wake-up, until `Shutdown` or every handle is
/// dropped.
fn run(mut conn: Connection, rx: Receiver<StoreCommand>, transactions: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < QUEUE_CAPACITY {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let stop = batch.iter().any(|c| matches!(c, StoreCommand::Shutdown));
        commit_batch(&mut conn, batch, transactions);
        if stop {
            break;
        }
    }
    log::info!("store: stopped");
}

fn commit_batch(conn: &mut Connection, batch: Vec<StoreCommand>, transactions: &AtomicU64) {
    match apply_in_transaction(conn, &batch) {
        Ok(outcomes) => {
            transactions.fetch_add(1, Ordering::Relaxed);
            for (cmd, outcome) in batch.into_iter().zip(outcomes) {
                answer(cmd, Ok(outcome));
            }
        }
        Err(e) => {
            log::warn!(
                "store: a batch of {} commands failed ({e}); retrying them one by one",
                batch.len()
            );
            for cmd in batch {
                let result = apply_in_transaction(conn, std::slice::from_ref(&cmd));
                if result.is_ok() {
                    transactions.fetch_add(1, Ordering::Relaxed);
                }
                let result = result.map(|mut o| o.pop().unwrap_or(Outcome::Done));
                answer(cmd, result);
            }
        }
    }
}

fn apply_in_transaction(
    conn: &mut Connection,
    cmds: &[StoreCommand],
) -> Result<Vec<Outcome>, StoreError> {
    let tx = conn.transaction()?;
    let outcomes = cmds
        .iter()
        .map(|cmd| apply(&tx, cmd))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit()?;
    Ok(outcomes)
}

/// SQLite integers are signed; Unix times beyond `i64::MAX` mean "never", so clamp.
fn sql_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Used tickets with `exp` above this are live at `now_unix` (live while
/// `now < exp + skew`, the same rule as ticket verification).
fn used_ticket_cutoff(now_unix: u64) -> i64 {
    sql_time(now_unix).saturating_sub(sql_time(CLOCK_SKEW_S))
}

fn apply(tx: &Transaction<'_>, cmd: &StoreCommand) -> Result<Outcome, StoreError> {
    match cmd {
        StoreCommand::Write { write, .. } => {
            match write.as_ref() {
                StoreWrite::UsedTicket { jti, exp } => {
                    tx.prepare_cached(
                        "INSERT INTO used_tickets (jti, exp) VALUES (?1, ?2)
                         ON CONFLICT (jti) DO UPDATE SET exp = max(exp, excluded.exp)",
                    )?
                    .execute(params![jti, sql_time(*exp)])?;
                }
                StoreWrite::Moderation { change, audit } => {
                    apply_moderation(tx, change)?;
                    insert_audit(tx, audit)?;
                }
                StoreWrite::Audit(audit) => insert_audit(tx, audit)?,
            }
            Ok(Outcome::Done)
        }
        StoreCommand::PruneUsedTickets { now_unix } => {
            tx.prepare_cached("DELETE FROM used_tickets WHERE exp <= ?1")?
                .execute(params![used_ticket_cutoff(*now_unix)])?;
            Ok(Outcome::Done)
        }
        StoreCommand::LoadUsedTickets { now_unix, .. } => {
            let mut stmt = tx.prepare_cached("SELECT jti, exp FROM used_tickets WHERE exp > ?1")?;
            let rows = stmt.query_map(params![used_ticket_cutoff(*now_unix)], |row| {
                let exp: i64 = row.get(1)?;
                // Only non-negative values are ever written.
                Ok((row.get(0)?, u64::try_from(exp).unwrap_or(0)))
            })?;
            Ok(Outcome::UsedTickets(rows.collect::<Result<_, _>>()?))
        }
        StoreCommand::LoadModeration { .. } => Ok(Outcome::Moderation(load_moderation(tx)?)),
        StoreCommand::QueryAudit { query, .. } => Ok(Outcome::Audit(query_audit(tx, query)?)),
        StoreCommand::PruneAudit { before_ms } => {
            tx.prepare_cached("DELETE FROM audit WHERE at_ms < ?1")?
                .execute(params![sql_time(*before_ms)])?;
            Ok(Outcome::Done)
        }
        StoreCommand::Shutdown => Ok(Outcome::Done),
        #[cfg(test)]
        StoreCommand::Pause { entered, release } => {
            let _ = entered.send(());
            let _ = release.recv();
            Ok(Outcome::Done)
        }
    }
}

fn apply_moderation(tx: &Transaction<'_>, change: &ModerationChange) -> Result<(), StoreError> {
    let ch = |c: &Option<ChannelId>| {
        c.as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default()
    };
    match change {
        ModerationChange::PutBan(b) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO bans
                 (user_uid, channel_id, reason, expires_at_ms, actor, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                b.user.as_str(),
                ch(&b.channel),
                b.reason,
                b.expires_at_ms.map(sql_time),
                b.actor,
                sql_time(b.created_at_ms)
            ])?;
        }
        ModerationChange::DeleteBan { user, channel } => {
            tx.prepare_cached("DELETE FROM bans WHERE user_uid = ?1 AND channel_id = ?2")?
                .execute(params![user.as_str(), ch(channel)])?;
        }
        ModerationChange::PutTimeout(t) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO timeouts
                 (channel_id, user_uid, until_ms, listen_only, reason, actor, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                t.channel.as_str(),
                t.user.as_str(),
                sql_time(t.until_ms),
                t.listen_only,
                t.reason,
                t.actor,
                sql_time(t.created_at_ms)
            ])?;
        }
        ModerationChange::DeleteTimeout { channel, user } => {
            tx.prepare_cached("DELETE FROM timeouts WHERE channel_id = ?1 AND user_uid = ?2")?
                .execute(params![channel.as_str(), user.as_str()])?;
        }
        ModerationChange::PutLock(l) => {
            let roles = serde_json::to_string(&l.exempt_roles).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached(
                "INSERT OR REPLACE INTO channel_locks
                 (channel_id, exempt_roles, reason, actor, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                l.channel.as_str(),
                roles,
                l.reason,
                l.actor,
                sql_time(l.created_at_ms)
            ])?;
        }
        ModerationChange::DeleteLock { channel } => {
            tx.prepare_cached("DELETE FROM channel_locks WHERE channel_id = ?1")?
                .execute(params![channel.as_str()])?;
        }
    }
    Ok(())
}

fn insert_audit(tx: &Transaction<'_>, r: &AuditRecord) -> Result<(), StoreError> {
    let qos = r.qos.as_ref().and_then(|q| serde_json::to_string(q).ok());
    tx.prepare_cached(
        "INSERT INTO audit
         (at_ms, kind, channel_id, user_uid, device_id, session_id, actor, reason, qos)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        sql_time(r.at_ms),
        r.kind.as_str(),
        r.channel.as_ref().map(|c| c.as_str()),
        r.user.as_ref().map(|u| u.as_str()),
        r.device.as_ref().map(|d| d.as_str()),
        r.session.as_ref().map(|s| s.as_str()),
        r.actor,
        r.reason,
        qos
    ])?;
    Ok(())
}

/// A stored time back as Unix ms (only non-negative values are written).
fn stored_time(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

/// Rows written by this code always parse; one that does not (edited by hand) is
/// skipped with a warning rather than failing the whole load.
fn load_moderation(tx: &Transaction<'_>) -> Result<ModerationSnapshot, StoreError> {
    let mut snap = ModerationSnapshot::default();
    let mut stmt = tx.prepare_cached(
        "SELECT user_uid, channel_id, reason, expires_at_ms, actor, created_at_ms FROM bans",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (user, channel, reason, expires, actor, created) = row?;
        let channel = match channel.as_str() {
            "" => Ok(None),
            c => ChannelId::parse(c).map(Some),
        };
        match (UserUid::parse(&user), channel) {
            (Ok(user), Ok(channel)) => snap.bans.push(Ban {
                user,
                channel,
                reason,
                expires_at_ms: expires.map(stored_time),
                actor,
                created_at_ms: stored_time(created),
            }),
            _ => log::warn!("store: skipping a malformed ban row"),
        }
    }
    let mut stmt = tx.prepare_cached(
        "SELECT channel_id, user_uid, until_ms, listen_only, reason, actor, created_at_ms
         FROM timeouts",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, bool>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    for row in rows {
        let (channel, user, until, listen_only, reason, actor, created) = row?;
        match (ChannelId::parse(&channel), UserUid::parse(&user)) {
            (Ok(channel), Ok(user)) => snap.timeouts.push(Timeout {
                channel,
                user,
                until_ms: stored_time(until),
                listen_only,
                reason,
                actor,
                created_at_ms: stored_time(created),
            }),
            _ => log::warn!("store: skipping a malformed timeout row"),
        }
    }
    let mut stmt = tx.prepare_cached(
        "SELECT channel_id, exempt_roles, reason, actor, created_at_ms FROM channel_locks",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (channel, roles, reason, actor, created) = row?;
        match (
            ChannelId::parse(&channel),
            serde_json::from_str::<Vec<String>>(&roles),
        ) {
            (Ok(channel), Ok(exempt_roles)) => snap.locks.push(Lock {
                channel,
                exempt_roles,
                reason,
                actor,
                created_at_ms: stored_time(created),
            }),
            _ => log::warn!("store: skipping a malformed channel lock row"),
        }
    }
    Ok(snap)
}

fn query_audit(tx: &Transaction<'_>, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, at_ms, kind, channel_id, user_uid, device_id, session_id, actor, reason, qos
         FROM audit
         WHERE (?1 IS NULL OR channel_id = ?1) AND at_ms >= ?2 AND id < ?3
         ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            q.channel.as_ref().map(|c| c.as_str()),
            sql_time(q.since_ms.unwrap_or(0)),
            q.before_id.unwrap_or(i64::MAX),
            i64::try_from(q.limit).unwrap_or(i64::MAX)
        ],
        |r| {
            let qos: Option<String> = r.get(9)?;
            Ok(AuditRow {
                id: r.get(0)?,
                at: rfc3339_utc_ms(stored_time(r.get(1)?)),
                kind: r.get(2)?,
                channel_id: r.get(3)?,
                user_uid: r.get(4)?,
                device_id: r.get(5)?,
                session_id: r.get(6)?,
                actor: r.get(7)?,
                reason: r.get(8)?,
                qos: qos.and_then(|q| serde_json::from_str(&q).ok()),
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sends the result of `cmd` to whoever waits for it. A waiter that has gone away
/// is not an error; a failed fire-and-forget write is logged (without its data).
fn answer(cmd: StoreCommand, result: Result<Outcome, StoreError>) {
    match cmd {
        StoreCommand::Write { ack: Some(ack), .. } => {
            let _ = ack.send(result.map(|_| ()));
        }
        StoreCommand::Write { ack: None, write } => {
            if let Err(e) = result {
                let kind = match *write {
                    StoreWrite::UsedTicket { .. } => "used ticket",
                    StoreWrite::Moderation { .. } => "moderation",
                    StoreWrite::Audit(_) => "audit",
                };
                log::error!("store: a {kind} write was lost: {e}");
            }
        }
        StoreCommand::LoadUsedTickets { reply, .. } => {
            let _ = reply.send(result.map(|o| match o {
                Outcome::UsedTickets(rows) => rows,
                _ => Vec::new(),
            }));
        }
        StoreCommand::PruneUsedTickets { .. } => {
            if let Err(e) = result {
                log::warn!("store: pruning used tickets failed: {e}");
            }
        }
        StoreCommand::PruneAudit { .. } => {
            if let Err(e) = result {
                log::warn!("store: pruning audit records failed: {e}");
            }
        }
        StoreCommand::LoadModeration { reply } => {
            let _ = reply.send(result.map(|o| match o {
                Outcome::Moderation(m) => m,
                _ => ModerationSnapshot::default(),
            }));
        }
        StoreCommand::QueryAudit { reply, .. } => {
            let _ = reply.send(result.map(|o| match o {
                Outcome::Audit(rows) => rows,
                _ => Vec::new(),
            }));
        }
        StoreCommand::Shutdown => {}
        #[cfg(test)]
        StoreCommand::Pause { .. } => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh, not yet existing directory under the system temp dir; removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            let dir = std::env::temp_dir()
                .join(format!("prism-store-test-{}", crate::secret::random_hex(8)));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Retries `f` while the queue is full: right after a test releases a paused
    /// store, the thread may not have drained the queue yet.
    pub(crate) fn when_queue_has_room<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> T {
        loop {
            match f() {
                Err(StoreError::QueueFull) => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => return other.unwrap(),
            }
        }
    }

    fn used(jti: &str, exp: u64) -> StoreWrite {
        StoreWrite::UsedTicket {
            jti: jti.into(),
            exp,
        }
    }

    #[test]
    fn open_creates_a_private_directory_and_file_in_wal_mode() {
        let tmp = TempDir::new();
        let dir = tmp.0.join("nested");
        let store = Store::open(&dir).unwrap();
        store.shutdown();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE_NAME)), 0o600);
        let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(
            schema::version(&conn).unwrap(),
            schema::MIGRATIONS.len() as i64
        );
    }

    #[test]
    fn connections_are_configured_for_durability() {
        let tmp = TempDir::new();
        std::fs::create_dir_all(&tmp.0).unwrap();
        let conn = Connection::open(tmp.0.join("t.db")).unwrap();
        configure(&conn).unwrap();
        let get =
            |name: &str| -> i64 { conn.pragma_query_value(None, name, |r| r.get(0)).unwrap() };
        assert_eq!(get("synchronous"), 2, "FULL");
        assert_eq!(get("foreign_keys"), 1);
        // An in-memory database cannot do WAL: that is reported, not ignored.
        let mem = Connection::open_in_memory().unwrap();
        assert!(matches!(configure(&mem), Err(StoreError::NoWal(m)) if m == "memory"));
    }

    #[test]
    fn handles_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<StoreHandle>();
    }

    #[test]
    fn reopening_keeps_the_schema_and_the_data() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        store.write_durable(used("a", 1000)).unwrap();
        store.try_write(used("b", 2000)).unwrap();
        store.shutdown();
        store.shutdown(); // idempotent
        assert!(matches!(
            store.try_write(used("c", 1)),
            Err(StoreError::Closed)
        ));

        // Migration 1 would fail if it ran again (no IF NOT EXISTS).
        let store = Store::open(&tmp.0).unwrap();
        let mut rows = store.load_used_tickets(0).unwrap();
        rows.sort();
        assert_eq!(rows, vec![("a".into(), 1000), ("b".into(), 2000)]);
        store.shutdown();
    }

    #[test]
    fn load_and_prune_follow_the_skew() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        store.try_write(used("old", 1000)).unwrap();
        store.try_write(used("edge", 1000 + CLOCK_SKEW_S)).unwrap();
        store.try_write(used("new", 5000)).unwrap();
        store.try_write(used("never", u64::MAX)).unwrap();
        let now = 1000 + CLOCK_SKEW_S; // "old" is no longer live, "edge" still is
        let mut live = store.load_used_tickets(now).unwrap();
        live.sort();
        assert_eq!(
            live,
            vec![
                ("edge".into(), 1000 + CLOCK_SKEW_S),
                ("never".into(), i64::MAX as u64),
                ("new".into(), 5000),
            ]
        );
        store.prune_used_tickets(now);
        // Read back at time 0 so the filter keeps everything still in the table.
        let mut left: Vec<String> = store
            .load_used_tickets(0)
            .unwrap()
            .into_iter()
            .map(|(j, _)| j)
            .collect();
        left.sort();
        assert_eq!(left, vec!["edge", "never", "new"]);
        store.shutdown();
    }

    #[test]
    fn queued_writes_are_committed_in_one_transaction() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let before = store.transactions_committed();
        let release = store.pause();
        for i in 0..1000 {
            store.try_write(used(&format!("j{i}"), 9999)).unwrap();
        }
        // Queue the acknowledged write before releasing, so it joins the batch.
        let (ack, done) = crossbeam_channel::bounded(1);
        store
            .enqueue(StoreCommand::Write {
                write: Box::new(used("last", 9999)),
                ack: Some(ack),
            })
            .unwrap();
        drop(release);
        done.recv().unwrap().unwrap();
        // The paused batch, then one batch with the 1001 queued writes.
        assert_eq!(store.transactions_committed() - before, 2);
        assert_eq!(store.load_used_tickets(0).unwrap().len(), 1001);
        store.shutdown();
    }

    #[test]
    fn a_full_queue_refuses_without_blocking() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let release = store.pause();
        for i in 0..QUEUE_CAPACITY {
            store.try_write(used(&format!("j{i}"), 9999)).unwrap();
        }
        assert!(matches!(
            store.try_write(used("x", 1)),
            Err(StoreError::QueueFull)
        ));
        assert!(matches!(
            store.write_durable(used("x", 1)),
            Err(StoreError::QueueFull)
        ));
        assert!(matches!(
            store.load_used_tickets(0),
            Err(StoreError::QueueFull)
        ));
        store.prune_used_tickets(0); // shed silently
        drop(release);
        when_queue_has_room(|| store.write_durable(used("after", 9999)));
        assert_eq!(
            store.load_used_tickets(0).unwrap().len(),
            QUEUE_CAPACITY + 1
        );
        store.shutdown();
    }

    #[test]
    fn moderation_and_audit_round_trip_through_a_reopen() {
        use crate::audit::{AuditKind, SessionQos};
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let u = |s: &str| UserUid::parse(s).unwrap();
        let c = |s: &str| ChannelId::parse(s).unwrap();
        let ban = Ban {
            user: u("alice"),
            channel: None,
            reason: "spam".into(),
            expires_at_ms: Some(9_000),
            actor: "ops".into(),
            created_at_ms: 1_000,
        };
        let lock = Lock {
            channel: c("x"),
            exempt_roles: vec!["moderator".into()],
            reason: String::new(),
            actor: "ops".into(),
            created_at_ms: 2_000,
        };
        let timeout = Timeout {
            channel: c("x"),
            user: u("bob"),
            until_ms: 5_000,
            listen_only: true,
            reason: "calm down".into(),
            actor: "ops".into(),
            created_at_ms: 3_000,
        };
        for (change, kind) in [
            (ModerationChange::PutBan(ban.clone()), AuditKind::Ban),
            (
                ModerationChange::PutBan(Ban {
                    channel: Some(c("y")),
                    ..ban.clone()
                }),
                AuditKind::Ban,
            ),
            (
                ModerationChange::DeleteBan {
                    user: u("alice"),
                    channel: Some(c("y")),
                },
                AuditKind::Unban,
            ),
            (ModerationChange::PutLock(lock.clone()), AuditKind::Lock),
            (
                ModerationChange::PutTimeout(timeout.clone()),
                AuditKind::Timeout,
            ),
        ] {
            let audit = AuditRecord::new(kind).actor("ops").at(4_000);
            store
                .write_durable(StoreWrite::Moderation { change, audit })
                .unwrap();
        }
        let leave = AuditRecord::new(AuditKind::Leave)
            .channel(&c("x"))
            .user(&u("bob"))
            .reason("left")
            .qos(SessionQos {
                packets_in: 7,
                ..Default::default()
            })
            .at(6_000);
        store.try_write(StoreWrite::Audit(leave)).unwrap();
        store.shutdown();

        let store = Store::open(&tmp.0).unwrap();
        let snap = store.load_moderation().unwrap();
        assert_eq!(snap.bans, vec![ban]);
        assert_eq!(snap.locks, vec![lock]);
        assert_eq!(snap.timeouts, vec![timeout]);
        let all = store
            .query_audit(AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].kind, "leave", "newest first");
        assert_eq!(all[0].qos.as_ref().unwrap()["packets_in"], 7);
        let in_x = store
            .query_audit(AuditQuery {
                channel: Some(c("x")),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(in_x.len(), 1);
        let page = store
            .query_audit(AuditQuery {
                limit: 2,
                before_id: Some(all[1].id),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![all[2].id, all[3].id]
        );
        let since = store
            .query_audit(AuditQuery {
                since_ms: Some(5_000),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(since.len(), 1);
        store.prune_audit(5_000);
        let left = store
            .query_audit(AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(left.len(), 1);
        store.shutdown();
    }

    #[test]
    fn a_newer_database_is_refused_at_open() {
        let tmp = TempDir::new();
        Store::open(&tmp.0).unwrap().shutdown();
        let conn = Connection::open(tmp.0.join(DB_FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&tmp.0).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("99"));
    }

    #[test]
    fn an_unusable_directory_is_a_clear_error() {
        let tmp = TempDir::new();
        std::fs::create_dir_all(&tmp.0).unwrap();
        let file = tmp.0.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }));
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
