//! Usage records in Postgres (SPEC §10): batched, idempotent inserts with hourly and daily
//! rollups, and a
//! local spill file that keeps every record while the database is unreachable.
//!
//! [`PgUsageStore::write`] stores a batch with one statement: the rows go into `usage_records`
//! with `ON CONFLICT (request_id) DO NOTHING`, and only the rows that statement actually
//! inserted are added to the `HOUR` and `DAY` rows of `usage_rollups`, so writing the same record twice
//! (a retried batch, a replayed spill) never counts it twice. A single statement is atomic:
//! records and rollups commit together or not at all.
//!
//! When the database cannot take a batch (unreachable, timed out, any error) the batch is
//! appended to the spill file as JSON Lines (one serialized [`UsageRecord`] per line) and the
//! call still succeeds with [`WriteOutcome::Spilled`]. [`PgUsageStore::replay_spill`] feeds the
//! file back in chunks once the database answers again and truncates it.
//!
//! After a connection failure or timeout the store backs off (1 s, doubling up to 30 s by
//! default): batches written meanwhile go straight to the spill file instead of waiting on a
//! dead database, and replays wait too. Errors about the data itself (SQLSTATE classes 22 and
//! 23) do not start a back-off; during a replay they are isolated record by record, and records
//! the database rejects for good (and lines that are not records) are moved to
//! `<spill file>.rejected` so that one bad line can never block the rest.

use crate::types::{UsageRecord, UsageSource};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

/// How long one database write (connection included) may take before the batch is spilled.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// First back-off after a failed database write.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);

/// Longest back-off (it doubles after each consecutive failure).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Records per statement when replaying the spill file.
pub const REPLAY_CHUNK: usize = 1000;

/// `usage_records.request_id` is limited to 200 characters.
const MAX_REQUEST_ID_CHARS: usize = 200;

/// What [`PgUsageStore::write`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored in Postgres; the number of records newly inserted (records already present,
    /// by `request_id`, are skipped and not counted).
    Written(u64),
    /// Appended to the spill file; the number of records spilled (the whole batch).
    Spilled(u64),
}

/// Why a replay (or an internal database write) did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UsageStoreError {
    /// Reading or rewriting the spill file failed.
    #[error("usage spill file: {0}")]
    Io(#[from] io::Error),
    /// The database refused or failed the write.
    #[error("usage database write failed: {0}")]
    Db(#[from] sqlx::Error),
    /// The database did not answer in time.
    #[error("usage database write timed out after {0:?}")]
    Timeout(Duration),
}

impl UsageStoreError {
    /// Whether the database rejected the data itself (SQLSTATE class 22, data exception, or
    /// 23, integrity constraint violation): the same rows would fail again, so this is no
    /// sign of an outage.
    fn is_data_error(&self) -> bool {
        match self {
            UsageStoreError::Db(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
            UsageStoreError::Db(sqlx::Error::Encode(_)) => true,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Backoff {
    retry_at: Option<Instant>,
    next: Duration,
}

/// Writes usage records to Postgres, spilling to a local file when it cannot.
///
/// One store per spill file: the store serializes its own access to the file, not other
/// processes'.
pub struct PgUsageStore {
    pool: PgPool,
    spill_path: PathBuf,
    timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    backoff: Mutex<Backoff>,
    /// Held while the spill file is appended to or replayed.
    spill_lock: tokio::sync::Mutex<()>,
    /// False once a replay found the file absent or emptied it; set by every spill. Starts
    /// true so that a file left by an earlier run is replayed.
    spill_pending: AtomicBool,
}

impl PgUsageStore {
    /// A store writing through `pool` and spilling to `spill_path` (created on first spill,
    /// parent directories included), with [`DEFAULT_TIMEOUT`] and the default back-off.
    pub fn new(pool: PgPool, spill_path: PathBuf) -> Self {
        PgUsageStore {
            pool,
            spill_path,
            timeout: DEFAULT_TIMEOUT,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            backoff: Mutex::new(Backoff {
                retry_at: None,
                next: DEFAULT_MIN_BACKOFF,
            }),
            spill_lock: tokio::sync::Mutex::new(()),
            spill_pending: AtomicBool::new(true),
        }
    }

    /// Sets how long one database write may take (acquiring a connection included) before
    /// the batch is spilled. A write that times out may still have committed; the replay
    /// then skips its records by `request_id`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the back-off after a failed write: `min` first, doubling up to `max`.
    /// `Duration::ZERO` for both disables it (every write tries the database).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self.backoff = Mutex::new(Backoff {
            retry_at: None,
            next: min,
        });
        self
    }

    /// The spill file.
    pub fn spill_path(&self) -> &Path {
        &self.spill_path
    }

    /// Where lines that can never be stored are moved: the spill path plus `.rejected`.
    pub fn rejected_path(&self) -> PathBuf {
        let mut p = self.spill_path.as_os_str().to_owned();
        p.push(".rejected");
        PathBuf::from(p)
    }

    /// Writes a batch: into Postgres when it takes it, otherwise into the spill file.
    ///
    /// Returns an error only when the batch could be stored neither way (the spill file
    /// cannot be written): those records are lost and the caller should count them.
    pub async fn write(&self, batch: &[UsageRecord]) -> Result<WriteOutcome, io::Error> {
        if batch.is_empty() {
            return Ok(WriteOutcome::Written(0));
        }
        if !self.backing_off() {
            let rows: Vec<Row<'_>> = batch.iter().map(Row::from_record).collect();
            match self.insert(&rows).await {
                Ok(n) => {
                    self.db_ok();
                    if batch.iter().any(|r| !r.mcp_calls.is_empty()) {
                        // The per-call MCP records (their HTTP requests' records are in).
                        let calls = crate::db::mcp_calls::insert_calls(&self.pool, batch);
                        match tokio::time::timeout(self.timeout, calls).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "MCP usage records not written")
                            }
                            Err(_) => tracing::warn!("MCP usage records not written: timeout"),
                        }
                    }
                    return Ok(WriteOutcome::Written(n));
                }
                Err(e) => {
                    if !e.is_data_error() {
                        self.db_failed();
                    }
                    tracing::warn!(
                        error = %e,
                        records = batch.len(),
                        "usage batch not written to Postgres; spilling it to disk"
                    );
                }
            }
        }
        self.spill(batch).await?;
        Ok(WriteOutcome::Spilled(batch.len() as u64))
    }

    /// Replays the spill file into Postgres, [`REPLAY_CHUNK`] records per statement, and
    /// truncates it. Returns how many records left the file for the database (inserted, or
    /// skipped because their `request_id` was already there).
    ///
    /// Cheap when nothing is pending (no file access at all after a replay emptied the file)
    /// and while the store backs off after a failure (returns `Ok(0)` without trying). When
    /// the database fails part-way, the records already stored are removed from the file,
    /// the rest stay, and the error is returned. Lines that are not records, and records the
    /// database rejects for good, are moved to [`rejected_path`](Self::rejected_path).
    pub async fn replay_spill(&self) -> Result<u64, UsageStoreError> {
        if !self.spill_pending.load(Ordering::Acquire) || self.backing_off() {
            return Ok(0);
        }
        let _guard = self.spill_lock.lock().await;
        let file = match tokio::fs::File::open(&self.spill_path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.spill_pending.store(false, Ordering::Release);
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let mut reader = tokio::io::BufReader::new(file);
        // Bytes at the start of the file already dealt with (stored, or moved to rejected).
        let mut done = 0u64;
        let mut replayed = 0u64;
        let mut rejected: Vec<u8> = Vec::new();
        let mut failure: Option<UsageStoreError> = None;
        loop {
            let mut lines: Vec<Line> = Vec::new();
            let mut pos = done;
            while lines.len() < REPLAY_CHUNK {
                let mut bytes = Vec::new();
                let n = reader.read_until(b'\n', &mut bytes).await?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                lines.push(Line { end: pos, bytes });
            }
            let Some(last) = lines.last() else {
                break;
            };
            let chunk_end = last.end;
            let progress = self.replay_chunk(&lines, done).await;
            replayed += progress.stored;
            done = progress.done;
            rejected.extend_from_slice(&progress.rejected);
            if let Some(e) = progress.error {
                failure = Some(e);
                break;
            }
            debug_assert_eq!(done, chunk_end);
        }
        drop(reader);

        if !rejected.is_empty() {
            let path = self.rejected_path();
            let lines = rejected.iter().filter(|b| **b == b'\n').count();
            tracing::error!(
                path = %path.display(),
                lines,
                "usage spill lines that cannot be stored were moved aside"
            );
            blocking(move || append_lines(&path, &rejected)).await?;
        }
        match failure {
            None => {
                let f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.spill_path)
                    .await?;
                f.set_len(0).await?;
                f.sync_all().await?;
                self.spill_pending.store(false, Ordering::Release);
                self.db_ok();
                if replayed > 0 {
                    tracing::info!(
                        records = replayed,
                        "usage spill file replayed into Postgres"
                    );
                }
                Ok(replayed)
            }
            Some(e) => {
                self.db_failed();
                if done > 0 {
                    self.keep_from(done).await?;
                }
                tracing::warn!(
                    error = %e,
                    replayed,
                    "usage spill replay stopped; the remaining records stay in the spill file"
                );
                Err(e)
            }
        }
    }

    /// Stores one chunk of spill lines. On a data error the chunk is retried record by
    /// record, and the records that still fail are rejected; any other error stops.
    async fn replay_chunk(&self, lines: &[Line], start: u64) -> ChunkProgress {
        let mut records: Vec<(usize, SpilledRecord)> = Vec::with_capacity(lines.len());
        let mut bad: Vec<usize> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let text = line.bytes.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<SpilledRecord>(text) {
                Ok(r) => records.push((i, r)),
                Err(_) => bad.push(i),
            }
        }
        let rows: Vec<Row<'_>> = records.iter().map(|(_, r)| Row::from_spilled(r)).collect();
        let mut progress = ChunkProgress {
            done: start,
            stored: 0,
            rejected: Vec::new(),
            error: None,
        };
        let all_end = lines.last().map_or(start, |l| l.end);
        if rows.is_empty() {
            progress.done = all_end;
            progress.reject(lines, &bad);
            return progress;
        }
        match self.insert(&rows).await {
            Ok(_) => {
                let calls: Vec<_> = records.iter().flat_map(|(_, r)| r.mcp_rows()).collect();
                if let Err(e) = crate::db::mcp_calls::insert_rows(&self.pool, &calls).await {
                    tracing::warn!(error = %e, "replayed MCP usage records not written");
                }
                progress.done = all_end;
                progress.stored = rows.len() as u64;
                progress.reject(lines, &bad);
                return progress;
            }
            Err(e) if !e.is_data_error() => {
                progress.error = Some(e);
                return progress;
            }
            Err(_) => {}
        }
        // A record in this chunk cannot be stored: find it, one record at a time.
        for (k, row) in rows.iter().enumerate() {
            let index = records[k].0;
            match self.insert(std::slice::from_ref(row)).await {
                Ok(_) => progress.stored += 1,
                Err(e) if e.is_data_error() => {
                    tracing::error!(error = %e, request_id = row.request_id, "usage record rejected by the database");
                    bad.push(index);
                }
                Err(e) => {
                    // Everything before this record is dealt with.
                    progress.done = if index == 0 {
                        start
                    } else {
                        lines[index - 1].end
                    };
                    bad.retain(|&b| b < index);
                    bad.sort_unstable();
                    progress.reject(lines, &bad);
                    progress.error = Some(e);
                    return progress;
                }
            }
        }
        bad.sort_unstable();
        progress.done = all_end;
        progress.reject(lines, &bad);
        progress
    }

    /// Rewrites the spill file keeping only the bytes from `offset` on.
    async fn keep_from(&self, offset: u64) -> io::Result<()> {
        let mut tmp_path = self.spill_path.as_os_str().to_owned();
        tmp_path.push(".tmp");
        let tmp_path = PathBuf::from(tmp_path);
        let mut src = tokio::fs::File::open(&self.spill_path).await?;
        src.seek(io::SeekFrom::Start(offset)).await?;
        let mut tmp = tokio::fs::File::create(&tmp_path).await?;
        tokio::io::copy(&mut src, &mut tmp).await?;
        tmp.flush().await?;
        tmp.sync_all().await?;
        drop(tmp);
        tokio::fs::rename(&tmp_path, &self.spill_path).await
    }

    /// Appends a batch to the spill file.
    async fn spill(&self, batch: &[UsageRecord]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for rec in batch {
            serde_json::to_writer(&mut buf, rec)?;
            buf.push(b'\n');
        }
        let _guard = self.spill_lock.lock().await;
        let path = self.spill_path.clone();
        let result = blocking(move || append_lines(&path, &buf)).await;
        if let Err(e) = &result {
            tracing::error!(
                error = %e,
                path = %self.spill_path.display(),
                records = batch.len(),
                "usage spill file cannot be written; records lost"
            );
        }
        result?;
        self.spill_pending.store(true, Ordering::Release);
        Ok(())
    }

    /// One statement: insert the rows, add the inserted ones to the daily rollups.
    async fn insert(&self, rows: &[Row<'_>]) -> Result<u64, UsageStoreError> {
        let mut cols = Columns::with_capacity(rows.len());
        for r in rows {
            cols.push(r);
        }
        let query = cols.bind(sqlx::query_scalar::<_, i64>(INSERT_SQL));
        match tokio::time::timeout(self.timeout, query.fetch_one(&self.pool)).await {
            Ok(Ok(n)) => Ok(u64::try_from(n).unwrap_or(0)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(UsageStoreError::Timeout(self.timeout)),
        }
    }

    fn backoff_state(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backing_off(&self) -> bool {
        self.backoff_state()
            .retry_at
            .is_some_and(|t| Instant::now() < t)
    }

    fn db_failed(&self) {
        let mut b = self.backoff_state();
        let wait = b.next;
        b.retry_at = Some(Instant::now() + wait);
        b.next = (wait * 2).clamp(self.min_backoff, self.max_backoff);
    }

    fn db_ok(&self) {
        let mut b = self.backoff_state();
        b.retry_at = None;
        b.next = self.min_backoff;
    }
}

/// One line of the spill file and the file offset just after it.
struct Line {
    end: u64,
    bytes: Vec<u8>,
}

struct ChunkProgress {
    /// File offset up to which every line is stored or rejected.
    done: u64,
    stored: u64,
    rejected: Vec<u8>,
    error: Option<UsageStoreError>,
}

impl ChunkProgress {
    fn reject(&mut self, lines: &[Line], indexes: &[usize]) {
        for &i in indexes {
            let bytes = &lines[i].bytes;
            self.rejected.extend_from_slice(bytes);
            if bytes.last() != Some(&b'\n') {
                self.rejected.push(b'\n');
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Appends `buf` (whole lines) to `path`, starting a new line first if the file ends in a torn
/// one, and syncs.
fn append_lines(path: &Path, buf: &[u8]) -> io::Result<()> {
    use std::io::{Read, Seek, Write};
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).read(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    let len = f.metadata()?.len();
    if len > 0 {
        f.seek(io::SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    f.write_all(buf)?;
    f.sync_data()
}

/// A spill-file line: [`UsageRecord`] as it serializes, read back leniently (missing fields
/// take their defaults; `latency_ms` may be null, which is how JSON writes a non-finite
/// number).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct SpilledRecord {
    request_id: String,
    timestamp: String,
    organisation_id: Option<String>,
    team_id: Option<String>,
    user_id: Option<String>,
    api_key_id: Option<String>,
    method: String,
    endpoint: String,
    model: Option<String>,
    provider: Option<String>,
    provider_type: Option<String>,
    upstream_model: Option<String>,
    stream: bool,
    status: u16,
    outcome: String,
    error_code: Option<String>,
    denied_by: Option<String>,
    latency_ms: Option<f64>,
    ttfb_ms: Option<f64>,
    gateway_overhead_us: u64,
    tokens: SpilledTokens,
    usage_source: String,
    cost_nanos: u64,
    pricing: Option<Value>,
    attempts: Vec<Value>,
    provider_request_id: Option<String>,
    stream_cut: bool,
    client_disconnected: bool,
    request_bytes: u64,
    response_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_server: Option<String>,
    /// MCP calls, stored into `mcp_usage_records` once the record is replayed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mcp_calls: Vec<Value>,
}

impl SpilledRecord {
    fn mcp_rows(&self) -> Vec<crate::db::mcp_calls::CallRow> {
        let o = crate::db::mcp_calls::Owners {
            organisation_id: self.organisation_id.as_deref(),
            team_id: self.team_id.as_deref(),
            user_id: self.user_id.as_deref(),
            api_key_id: self.api_key_id.as_deref(),
        };
        self.mcp_calls
            .iter()
            .filter_map(|c| crate::db::mcp_calls::CallRow::from_json(&o, c))
            .collect()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct SpilledTokens {
    input: u64,
    output: u64,
    cached_input: u64,
    reasoning: u64,
    total: u64,
    images: u64,
}

/// One record, borrowed from a [`UsageRecord`] or a [`SpilledRecord`], before cleaning.
#[derive(Debug, PartialEq)]
struct Row<'a> {
    request_id: &'a str,
    timestamp: &'a str,
    organisation_id: Option<&'a str>,
    team_id: Option<&'a str>,
    user_id: Option<&'a str>,
    api_key_id: Option<&'a str>,
    method: &'a str,
    endpoint: &'a str,
    model: Option<&'a str>,
    provider: Option<&'a str>,
    provider_type: Option<&'a str>,
    upstream_model: Option<&'a str>,
    stream: bool,
    status: u16,
    outcome: &'a str,
    error_code: Option<&'a str>,
    denied_by: Option<&'a str>,
    latency_ms: f64,
    ttfb_ms: Option<f64>,
    overhead_us: u64,
    input: u64,
    output: u64,
    cached_input: u64,
    reasoning: u64,
    total: u64,
    images: u64,
    usage_source: &'a str,
    cost_nanos: u64,
    pricing: Option<Value>,
    attempts: Value,
    provider_request_id: Option<&'a str>,
    stream_cut: bool,
    client_disconnected: bool,
    request_bytes: u64,
    response_bytes: u64,
    client_request_id: Option<&'a str>,
    /// MCP tool calls of the request and their cost (for the rollups).
    mcp_calls: u64,
    mcp_cost_nanos: u64,
}

fn source_name(s: UsageSource) -> &'static str {
    match s {
        UsageSource::None => "none",
        UsageSource::Provider => "provider",
        UsageSource::Estimated => "estimated",
    }
}

impl<'a> Row<'a> {
    fn from_record(r: &'a UsageRecord) -> Row<'a> {
        Row {
            request_id: &r.request_id,
            timestamp: &r.timestamp,
            organisation_id: r.organisation_id.as_deref(),
            team_id: r.team_id.as_deref(),
            user_id: r.user_id.as_deref(),
            api_key_id: r.api_key_id.as_deref(),
            method: &r.method,
            endpoint: &r.endpoint,
            model: r.model.as_deref(),
            provider: r.provider.as_deref(),
            provider_type: r.provider_type,
            upstream_model: r.upstream_model.as_deref(),
            stream: r.stream,
            status: r.status,
            outcome: r.outcome,
            error_code: r.error_code.as_deref(),
            denied_by: r.denied_by,
            latency_ms: r.latency_ms,
            ttfb_ms: r.ttfb_ms,
            overhead_us: r.gateway_overhead_us,
            input: r.tokens.input,
            output: r.tokens.output,
            cached_input: r.tokens.cached_input,
            reasoning: r.tokens.reasoning,
            total: r.tokens.total,
            images: r.tokens.images,
            usage_source: source_name(r.usage_source),
            cost_nanos: r.cost_nanos,
            pricing: r.pricing.and_then(|p| serde_json::to_value(p).ok()),
            attempts: serde_json::to_value(&r.attempts).unwrap_or_else(|_| Value::Array(vec![])),
            provider_request_id: r.provider_request_id.as_deref(),
            stream_cut: r.stream_cut,
            client_disconnected: r.client_disconnected,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            client_request_id: r.client_request_id.as_deref(),
            mcp_calls: r.mcp_calls.len() as u64,
            mcp_cost_nanos: r.mcp_calls.iter().map(|c| c.cost_nanos).sum(),
        }
    }

    fn from_spilled(r: &'a SpilledRecord) -> Row<'a> {
        Row {
            request_id: &r.request_id,
            timestamp: &r.timestamp,
            organisation_id: r.organisation_id.as_deref(),
            team_id: r.team_id.as_deref(),
            user_id: r.user_id.as_deref(),
            api_key_id: r.api_key_id.as_deref(),
            method: &r.method,
            endpoint: &r.endpoint,
            model: r.model.as_deref(),
            provider: r.provider.as_deref(),
            provider_type: r.provider_type.as_deref(),
            upstream_model: r.upstream_model.as_deref(),
            stream: r.stream,
            status: r.status,
            outcome: &r.outcome,
            error_code: r.error_code.as_deref(),
            denied_by: r.denied_by.as_deref(),
            latency_ms: r.latency_ms.unwrap_or(0.0),
            ttfb_ms: r.ttfb_ms,
            overhead_us: r.gateway_overhead_us,
            input: r.tokens.input,
            output: r.tokens.output,
            cached_input: r.tokens.cached_input,
            reasoning: r.tokens.reasoning,
            total: r.tokens.total,
            images: r.tokens.images,
            usage_source: &r.usage_source,
            cost_nanos: r.cost_nanos,
            pricing: r.pricing.clone().filter(|p| !p.is_null()),
            attempts: Value::Array(r.attempts.clone()),
            provider_request_id: r.provider_request_id.as_deref(),
            stream_cut: r.stream_cut,
            client_disconnected: r.client_disconnected,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            client_request_id: r.client_request_id.as_deref(),
            mcp_calls: r.mcp_calls.len() as u64,
            mcp_cost_nanos: r
                .mcp_calls
                .iter()
                .filter_map(|c| c["cost_nanos"].as_u64())
                .sum(),
        }
    }
}

/// Postgres text cannot hold NUL characters.
fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_owned()
    }
}

fn opt_text(s: Option<&str>) -> Option<String> {
    s.map(text)
}

/// The id as stored: NULs removed, at most 200 characters; an empty one is replaced by a
/// digest of the record, so that the same record always gets the same id.
fn request_id(r: &Row<'_>) -> String {
    let id = text(r.request_id);
    let id = id.trim();
    if id.is_empty() {
        let mut h = Sha256::new();
        for part in [
            r.timestamp,
            r.api_key_id.unwrap_or(""),
            r.method,
            r.endpoint,
            r.model.unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.update(r.status.to_le_bytes());
        h.update(r.latency_ms.to_bits().to_le_bytes());
        h.update(r.request_bytes.to_le_bytes());
        h.update(r.response_bytes.to_le_bytes());
        return format!("anon-{}", hex::encode(&h.finalize()[..16]));
    }
    id.chars().take(MAX_REQUEST_ID_CHARS).collect()
}

/// Ids that are uuids (database mode) go into the uuid columns; others (configuration-file
/// ids such as `org_demo`) become NULL.
fn uuid(s: Option<&str>) -> Option<Uuid> {
    s.and_then(|s| Uuid::parse_str(s.trim()).ok())
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Durations are non-negative and finite.
fn ms(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// jsonb cannot hold NUL characters either.
fn json(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(text(s)),
        Value::Array(a) => Value::Array(a.iter().map(json).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (text(k), json(v))).collect()),
        other => other.clone(),
    }
}

fn created_at(ts: &str) -> OffsetDateTime {
    OffsetDateTime::parse(ts.trim(), &Rfc3339).unwrap_or_else(|_| OffsetDateTime::now_utc())
}

/// The statement's parameters, one array per column.
#[derive(Default)]
struct Columns {
    request_id: Vec<String>,
    created_at: Vec<OffsetDateTime>,
    organisation_id: Vec<Option<Uuid>>,
    team_id: Vec<Option<Uuid>>,
    user_id: Vec<Option<Uuid>>,
    api_key_id: Vec<Option<Uuid>>,
    method: Vec<String>,
    endpoint: Vec<String>,
    provider: Vec<Option<String>>,
    provider_type: Vec<Option<String>>,
    model: Vec<Option<String>>,
    upstream_model: Vec<Option<String>>,
    stream: Vec<bool>,
    status: Vec<i16>,
    outcome: Vec<String>,
    error_code: Vec<Option<String>>,
    denied_by: Vec<Option<String>>,
    latency_ms: Vec<f64>,
    ttfb_ms: Vec<Option<f64>>,
    overhead_us: Vec<i64>,
    input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    reasoning_tokens: Vec<i64>,
    total_tokens: Vec<i64>,
    embedding_tokens: Vec<i64>,
    image_count: Vec<i32>,
    usage_source: Vec<String>,
    cost_nanos: Vec<i64>,
    pricing: Vec<Option<Value>>,
    attempts: Vec<Value>,
    provider_request_id: Vec<Option<String>>,
    stream_cut: Vec<bool>,
    client_disconnected: Vec<bool>,
    request_bytes: Vec<i64>,
    response_bytes: Vec<i64>,
    client_request_id: Vec<Option<String>>,
    mcp_calls: Vec<i64>,
    mcp_cost_nanos: Vec<i64>,
}

impl Columns {
    fn with_capacity(n: usize) -> Columns {
        let mut c = Columns::default();
        c.request_id.reserve(n);
        c
    }

    fn push(&mut self, r: &Row<'_>) {
        self.request_id.push(request_id(r));
        self.created_at.push(created_at(r.timestamp));
        self.organisation_id.push(uuid(r.organisation_id));
        self.team_id.push(uuid(r.team_id));
        self.user_id.push(uuid(r.user_id));
        self.api_key_id.push(uuid(r.api_key_id));
        self.method.push(text(r.method));
        self.endpoint.push(text(r.endpoint));
        self.provider.push(opt_text(r.provider));
        self.provider_type.push(opt_text(r.provider_type));
        self.model.push(opt_text(r.model));
        self.upstream_model.push(opt_text(r.upstream_model));
        self.stream.push(r.stream);
        self.status
            .push(i16::try_from(r.status).unwrap_or(i16::MAX));
        self.outcome.push(text(r.outcome));
        self.error_code.push(opt_text(r.error_code));
        self.denied_by.push(opt_text(r.denied_by));
        self.latency_ms.push(ms(r.latency_ms));
        self.ttfb_ms.push(r.ttfb_ms.map(ms));
        self.overhead_us.push(big(r.overhead_us));
        self.input_tokens.push(big(r.input));
        self.output_tokens.push(big(r.output));
        self.cached_input_tokens.push(big(r.cached_input));
        self.reasoning_tokens.push(big(r.reasoning));
        self.total_tokens.push(big(r.total));
        // Embedding requests count their input in the embeddings bucket as well.
        self.embedding_tokens
            .push(if r.endpoint.ends_with("/embeddings") {
                big(r.input)
            } else {
                0
            });
        self.image_count
            .push(i32::try_from(r.images).unwrap_or(i32::MAX));
        self.usage_source.push(
            match r.usage_source {
                "provider" | "estimated" => r.usage_source,
                _ => "none",
            }
            .to_owned(),
        );
        self.cost_nanos.push(big(r.cost_nanos));
        self.pricing
            .push(r.pricing.as_ref().filter(|p| !p.is_null()).map(json));
        self.attempts.push(if r.attempts.is_array() {
            json(&r.attempts)
        } else {
            Value::Array(vec![])
        });
        self.provider_request_id
            .push(opt_text(r.provider_request_id));
        self.stream_cut.push(r.stream_cut);
        self.client_disconnected.push(r.client_disconnected);
        self.request_bytes.push(big(r.request_bytes));
        self.response_bytes.push(big(r.response_bytes));
        self.client_request_id.push(
            r.client_request_id
                .map(|c| text(c).chars().take(200).collect()),
        );
        self.mcp_calls.push(big(r.mcp_calls));
        self.mcp_cost_nanos.push(big(r.mcp_cost_nanos));
    }

    fn bind<'q>(
        self,
        q: sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments> {
        q.bind(self.request_id)
            .bind(self.created_at)
            .bind(self.organisation_id)
            .bind(self.team_id)
            .bind(self.user_id)
            .bind(self.api_key_id)
            .bind(self.method)
            .bind(self.endpoint)
            .bind(self.provider)
            .bind(self.provider_type)
            .bind(self.model)
            .bind(self.upstream_model)
            .bind(self.stream)
            .bind(self.status)
            .bind(self.outcome)
            .bind(self.error_code)
            .bind(self.denied_by)
            .bind(self.latency_ms)
            .bind(self.ttfb_ms)
            .bind(self.overhead_us)
            .bind(self.input_tokens)
            .bind(self.output_tokens)
            .bind(self.cached_input_tokens)
            .bind(self.reasoning_tokens)
            .bind(self.total_tokens)
            .bind(self.embedding_tokens)
            .bind(self.image_count)
            .bind(self.usage_source)
            .bind(self.cost_nanos)
            .bind(self.pricing)
            .bind(self.attempts)
            .bind(self.provider_request_id)
            .bind(self.stream_cut)
            .bind(self.client_disconnected)
            .bind(self.request_bytes)
            .bind(self.response_bytes)
            .bind(self.mcp_calls)
            .bind(self.mcp_cost_nanos)
            .bind(self.client_request_id)
    }
}

/// Inserts the batch (rows ordered by request_id, rollups by dimensions, so that concurrent
/// writers lock in the same order) and adds exactly the inserted rows to the `HOUR` and `DAY`
/// rollups. Rollup dimensions: UTC hour or day, organisation, team, user, key, model, provider. Requests whose
/// outcome is not `success` count as errors. Returns the number of rows inserted.
///
/// Rows are grouped by the same text the table's `dims_key` is made of (model and provider
/// joined by `|`, NULL and '' alike), so that one statement never updates a rollup row twice.
const INSERT_SQL: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST(
        $1::text[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::boolean[], $14::smallint[], $15::text[], $16::text[], $17::text[],
        $18::float8[], $19::float8[], $20::bigint[],
        $21::bigint[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[],
        $26::bigint[], $27::integer[], $28::text[], $29::bigint[], $30::jsonb[], $31::jsonb[],
        $32::text[], $33::boolean[], $34::boolean[], $35::bigint[], $36::bigint[],
        $37::bigint[], $38::bigint[], $39::text[]
    ) AS t(request_id, created_at, organisation_id, team_id, user_id, api_key_id,
           method, endpoint, provider, provider_type, model, upstream_model,
           stream, status, outcome, error_code, denied_by,
           latency_ms, ttfb_ms, overhead_us,
           input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, total_tokens,
           embedding_tokens, image_count, usage_source, cost_nanos, pricing, attempts,
           provider_request_id, stream_cut, client_disconnected, request_bytes, response_bytes,
           mcp_calls, mcp_cost_nanos, client_request_id)
),
inserted AS (
    INSERT INTO usage_records (
        request_id, created_at, organisation_id, team_id, user_id, api_key_id,
        method, endpoint, provider, provider_type, model, upstream_model,
        stream, status, outcome, error_code, denied_by,
        latency_ms, ttfb_ms, overhead_us,
        input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, total_tokens,
        embedding_tokens, image_count, usage_source, cost_nanos, pricing, attempts,
        provider_request_id, stream_cut, client_disconnected, request_bytes, response_bytes,
        client_request_id)
    SELECT
        request_id, created_at, organisation_id, team_id, user_id, api_key_id,
        method, endpoint, provider, provider_type, model, upstream_model,
        stream, status, outcome, error_code, denied_by,
        latency_ms, ttfb_ms, overhead_us,
        input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, total_tokens,
        embedding_tokens, image_count, usage_source, cost_nanos, pricing, attempts,
        provider_request_id, stream_cut, client_disconnected, request_bytes, response_bytes,
        client_request_id
    FROM input
    ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, created_at, organisation_id, team_id, user_id, api_key_id, model, provider,
              outcome, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens,
              cost_nanos, latency_ms, ttfb_ms
),
buckets AS (
    SELECT
        g.granularity,
        CASE g.granularity WHEN 'HOUR' THEN date_trunc('hour', created_at, 'UTC')
                           ELSE date_trunc('day', created_at, 'UTC') END AS bucket_start,
        i.*, m.mcp_calls, m.mcp_cost_nanos
    FROM inserted i
    JOIN (SELECT DISTINCT ON (request_id) request_id, mcp_calls, mcp_cost_nanos FROM input
           ORDER BY request_id) m ON m.request_id = i.request_id
    CROSS JOIN (VALUES ('HOUR'::usage_granularity), ('DAY'::usage_granularity)) AS g(granularity)
),
daily AS (
    SELECT
        granularity, bucket_start,
        organisation_id, team_id, user_id, api_key_id,
        coalesce(model, '') || '|' || coalesce(provider, '') AS names,
        (array_agg(model ORDER BY model, provider))[1] AS model,
        (array_agg(provider ORDER BY model, provider))[1] AS provider,
        count(*) AS requests,
        count(*) FILTER (WHERE outcome <> 'success') AS errors,
        sum(input_tokens)::bigint AS input_tokens,
        sum(output_tokens)::bigint AS output_tokens,
        sum(cached_input_tokens)::bigint AS cached_input_tokens,
        sum(reasoning_tokens)::bigint AS reasoning_tokens,
        sum(cost_nanos)::bigint AS cost_nanos,
        sum(latency_ms) AS latency_ms_sum,
        coalesce(sum(ttfb_ms), 0) AS ttfb_ms_sum,
        sum(mcp_calls)::bigint AS mcp_calls,
        sum(mcp_cost_nanos)::bigint AS mcp_cost_nanos
    FROM buckets
    GROUP BY 1, 2, 3, 4, 5, 6, 7
),
rolled AS (
    INSERT INTO usage_rollups (
        granularity, bucket_start, organisation_id, team_id, user_id, api_key_id, model,
        provider, requests, errors, input_tokens, output_tokens, cached_input_tokens,
        reasoning_tokens, cost_nanos, latency_ms_sum, ttfb_ms_sum, mcp_calls, mcp_cost_nanos)
    SELECT
        granularity, bucket_start, organisation_id, team_id, user_id, api_key_id,
        nullif(model, ''), nullif(provider, ''), requests, errors, input_tokens, output_tokens,
        cached_input_tokens, reasoning_tokens, cost_nanos, latency_ms_sum, ttfb_ms_sum,
        mcp_calls, mcp_cost_nanos
    FROM daily
    ORDER BY granularity, bucket_start, organisation_id, team_id, user_id, api_key_id, names
    ON CONFLICT (granularity, bucket_start, dims_key) DO UPDATE SET
        requests = usage_rollups.requests + EXCLUDED.requests,
        errors = usage_rollups.errors + EXCLUDED.errors,
        input_tokens = usage_rollups.input_tokens + EXCLUDED.input_tokens,
        output_tokens = usage_rollups.output_tokens + EXCLUDED.output_tokens,
        cached_input_tokens = usage_rollups.cached_input_tokens + EXCLUDED.cached_input_tokens,
        reasoning_tokens = usage_rollups.reasoning_tokens + EXCLUDED.reasoning_tokens,
        cost_nanos = usage_rollups.cost_nanos + EXCLUDED.cost_nanos,
        latency_ms_sum = usage_rollups.latency_ms_sum + EXCLUDED.latency_ms_sum,
        ttfb_ms_sum = usage_rollups.ttfb_ms_sum + EXCLUDED.ttfb_ms_sum,
        mcp_calls = usage_rollups.mcp_calls + EXCLUDED.mcp_calls,
        mcp_cost_nanos = usage_rollups.mcp_cost_nanos + EXCLUDED.mcp_cost_nanos
    RETURNING 1
)
SELECT count(*) FROM inserted
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pricing;
    use crate::types::{Attempt, Tokens};

    fn full_record() -> UsageRecord {
        UsageRecord {
            request_id: "req-1".into(),
            timestamp: "2025-03-04T05:06:07Z".into(),
            organisation_id: Some("6f1c1f4e-0000-4000-8000-000000000001".into()),
            team_id: Some("team_1".into()),
            user_id: Some("user_1".into()),
            api_key_id: Some("key_1".into()),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            model: Some("chat-a".into()),
            provider: Some("mock".into()),
            provider_type: Some("OPENAI"),
            upstream_model: Some("up-chat-a".into()),
            stream: true,
            status: 200,
            outcome: "success",
            error_code: Some("e".into()),
            denied_by: Some("auth"),
            latency_ms: 12.5,
            ttfb_ms: Some(3.25),
            gateway_overhead_us: 77,
            tokens: Tokens {
                input: 10,
                output: 5,
                cached_input: 4,
                reasoning: 2,
                total: 15,
                images: 1,
            },
            usage_source: UsageSource::Estimated,
            cost_nanos: 450_000,
            pricing: Some(Pricing {
                input: 1,
                output: 2,
                cached: 3,
                reasoning: 4,
                image: 5,
            }),
            attempts: vec![Attempt {
                provider: "dead".into(),
                model: "up-dead".into(),
                outcome: "error",
                error_class: Some("connect"),
                status: None,
                latency_ms: 1.5,
            }],
            provider_request_id: Some("chatcmpl-1".into()),
            client_request_id: Some("client-1".into()),
            stream_cut: true,
            client_disconnected: true,
            request_bytes: 100,
            response_bytes: 200,
            trace_id: None,
            filters: None,
            mcp_server: None,
            mcp_calls: Vec::new(),
        }
    }

    /// The spill-file reader knows every field a record serializes, and reads back exactly
    /// what the direct path would store. Adding a field to `UsageRecord` fails this test
    /// until the store maps it.
    #[test]
    fn spilled_lines_read_back_as_the_record() {
        let rec = full_record();
        let line = serde_json::to_value(&rec).expect("serialize record");
        let spilled: SpilledRecord = serde_json::from_value(line.clone()).expect("read back");
        assert_eq!(Row::from_record(&rec), Row::from_spilled(&spilled));
        let mirror = serde_json::to_value(&spilled).expect("serialize mirror");
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        assert_eq!(keys(&line), keys(&mirror));
        assert_eq!(keys(&line["tokens"]), keys(&mirror["tokens"]));
    }

    #[test]
    fn non_finite_latency_survives_the_spill_file() {
        let rec = UsageRecord {
            request_id: "r".into(),
            latency_ms: f64::NAN,
            ..Default::default()
        };
        let text = serde_json::to_string(&rec).expect("serialize");
        let spilled: SpilledRecord = serde_json::from_str(&text).expect("read back");
        assert_eq!(ms(Row::from_spilled(&spilled).latency_ms), 0.0);
        assert_eq!(ms(Row::from_record(&rec).latency_ms), 0.0);
    }

    #[test]
    fn cleaning() {
        let long = "x".repeat(300);
        let rec = UsageRecord {
            request_id: format!("a\0{long}"),
            ..Default::default()
        };
        let id = request_id(&Row::from_record(&rec));
        assert_eq!(id.chars().count(), MAX_REQUEST_ID_CHARS);
        assert!(id.starts_with("axx"));
        let anon = UsageRecord {
            timestamp: "2025-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        let a = request_id(&Row::from_record(&anon));
        assert!(a.starts_with("anon-"), "{a}");
        assert_eq!(a, request_id(&Row::from_record(&anon.clone())));
        assert_eq!(uuid(Some("org_demo")), None);
        assert!(uuid(Some("6f1c1f4e-0000-4000-8000-000000000001")).is_some());
        assert_eq!(text("a\0b"), "ab");
        assert_eq!(
            json(&serde_json::json!({"k\0": ["v\0", 1]})),
            serde_json::json!({"k": ["v", 1]})
        );
        assert_eq!(big(u64::MAX), i64::MAX);
        assert_eq!(ms(-1.0), 0.0);
        assert_eq!(
            created_at("2025-03-04T05:06:07Z"),
            time::macros::datetime!(2025-03-04 05:06:07 UTC)
        );
    }
}
