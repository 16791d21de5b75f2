//! Budgets and quotas in database mode with Redis configured: Redis is the fast path, Postgres
//! the durable store (SPEC §7).
//!
//! Each periodic meter's current window is a Redis hash `wharf:bw:{b|q}:{meter}:{start}` with
//! `used`, `reserved`, `rollover` and one `w<threshold>` field per warning already sent; the
//! reservations in flight are the hash `…:r` (`id → amount|expiry_ms`). A reserve is part of
//! the request's one rate-limit script ([`super::redis`]), over every meter of the request
//! (all or none: `used + reserved + est <= limit + rollover`, checked with the limits before
//! anything is taken), so the hot path makes one Redis round trip; a settle or release is one
//! script that takes
//! the reservation out (idempotent by reservation id) and adds the actual amount to `used`.
//! Postgres is not on the request path: settled amounts are added to the windows' `used`
//! columns by a background flush every [`FLUSH_EVERY`], batched per window, so
//! `budget_windows.used_nanos` equals the sum of the usage records' cost moments after the
//! last settle, as in the Postgres-only mode.
//!
//! A window missing from Redis (first use, or a Redis restart) is seeded from its Postgres
//! row (created with its rollover as the Postgres path creates it), then the reserve runs
//! again. The seed keeps the row's `used_version` (`pgv`, bumped by a trigger on every change
//! of `used`) and a fresh incarnation id (`inc`). Every amount a node writes to Postgres —
//! a flushed settle, a settle of the Postgres ledger while Redis could not answer, a settle
//! that could not reach Redis — is then squared with the Redis window (one batched script,
//! idempotent by item id): it is added there unless it was counted in that very incarnation or
//! the seed read a row that already held it (`pgv >= its version`); a window missing from
//! Redis gets a floor, so its next seed reads a row that holds the amount. So after any
//! outage — a restart that lost the windows, or a pause whose scripts ran late — Redis,
//! Postgres and the usage records agree exactly: nothing counted twice, nothing left out. A
//! settle remembers its reservation id for [`DONE_KEEP_MS`] (`:d`), so a retry of a settle
//! whose answer was lost changes nothing. When Redis cannot answer, the request falls back to
//! the Postgres ledger ([`super::budget_pg`]); a reservation its check may have taken in Redis
//! all the same is taken out once Redis answers. Prepaid balances always use the Postgres
//! ledger: a top-up must count the moment it commits.
//!
//! Stale reservations (a node that died between reserve and settle) expire after
//! [`super::budget_pg::RESERVATION_TTL_SECONDS`]: a sweep on every node, every
//! `governance.stale_reservation_sweep_ms` ([`SWEEP_EVERY`] by default), settles those whose request wrote its usage record (leaving a tombstone so
//! a late settle from the original node is not counted twice) and releases the others.

use super::budget::{Estimate, Meter, Metric};
use super::budget_pg::{self, PgBudgets};
use super::redis::RedisLimiter;
use crate::error::GatewayError;
use crate::types::UsageRecord;
use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How often settled amounts are written to Postgres.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often expired reservations are looked for, by default.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// The set of window keys the sweep visits.
const INDEX: &str = "wharf:bw:index";
/// How long a window's hash outlives its window.
const KEEP_AFTER_END_MS: i64 = 86_400_000;

/// How long a settle (or a reconciled amount) is remembered in the window's `:d` set, so a
/// retry of a script that ran although its answer was lost (a timeout) changes nothing.
const DONE_KEEP_MS: i64 = 120_000;
/// How long a missing window's floor (`:f`) outlives the last amount that set it.
const FLOOR_KEEP_MS: i64 = 60_000;
/// Most reconcile items per script call.
const RECONCILE_BATCH: usize = 256;

/// Seeds a window from its Postgres row: `used`, `rollover`, the row's `used_version` (`pgv`)
/// and a fresh incarnation id (`inc`). -1: the row read is older than an amount already
/// written to Postgres and counted as "in the next seed" (the floor `:f`): read it again.
const SEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local floor = tonumber(redis.call('GET', KEYS[1] .. ':f') or '0')
if floor > tonumber(ARGV[5]) then return -1 end
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'reserved', 0, 'rollover', ARGV[2], 'pgv', ARGV[5], 'inc', ARGV[6])
for th in string.gmatch(ARGV[4], '%d+') do redis.call('HSET', KEYS[1], 'w' .. th, 1) end
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[1] .. ':f')
return 1
"#;

/// Per window: `{state, used, crossed, inc}`; state 1 took the reservation out (and, for a
/// settle, added the actual amount in incarnation `inc`), 2 the sweep had settled it already
/// (nothing to do), 3 the reservation is not there (expired and given back by the sweep, or
/// lost with a Redis restart: the amount is not counted here; the flush reconciles it), 4 the
/// window is not in Redis (Postgres only), 5 an earlier try of this settle counted it already
/// (its answer was lost) in incarnation `inc`.
const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local settle = ARGV[2] == '1'
local keep = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local b = 3 + (i - 1) * 3
  local actual = ARGV[b + 1]
  local state, used, mask, inc = 4, 0, 0, ''
  if redis.call('EXISTS', k) == 1 then
    local v = redis.call('HGET', k .. ':r', id)
    if v then
      redis.call('HDEL', k .. ':r', id)
      local amount = tonumber(string.match(v, '^(%d+)'))
      if redis.call('HINCRBY', k, 'reserved', -amount) < 0 then redis.call('HSET', k, 'reserved', 0) end
      state = 1
    elseif redis.call('ZSCORE', k .. ':d', id) then
      state = 5
    elseif redis.call('HEXISTS', k .. ':s', id) == 1 then
      state = 2
    else
      state = 3
    end
    if settle and state == 1 then
      inc = redis.call('HGET', k, 'inc') or ''
      used = redis.call('HINCRBY', k, 'used', actual)
      local limit = tonumber(ARGV[b + 2])
      local before = used - tonumber(actual)
      local bit = 1
      for th in string.gmatch(ARGV[b + 3], '%d+') do
        local at = math.floor(limit * tonumber(th) / 100)
        if before < at and used >= at and redis.call('HSETNX', k, 'w' .. th, 1) == 1 then
          mask = mask + bit
        end
        bit = bit * 2
      end
      redis.call('ZREMRANGEBYSCORE', k .. ':d', '-inf', now - keep)
      redis.call('ZADD', k .. ':d', now, id)
      redis.call('PEXPIRE', k .. ':d', keep)
    elseif state == 5 then
      inc = redis.call('HGET', k, 'inc') or ''
    end
  end
  out[#out + 1] = tostring(state)
  out[#out + 1] = tostring(used)
  out[#out + 1] = tostring(mask)
  out[#out + 1] = inc
end
return out
"#;

/// Reconciles amounts written to Postgres with the Redis windows, per item `{mode, tag, item
/// id, version, amount}`: mode `c` was counted in incarnation `tag`, `n` was not counted in
/// Redis, `d` is a settle that could not reach Redis (reservation `tag` may still be held),
/// `r` a release that could not (nothing to add). An amount not counted in the window is
/// added when the window's seed read an older row (`pgv < version`); a missing window gets
/// the floor `:f`, so its next seed reads a row that holds the amount. Idempotent by item id.
const RECONCILE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep, floor_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local b = 2 + (i - 1) * 5
  local mode, tag, item, v, amount = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4]), ARGV[b + 5]
  local r = 0
  if redis.call('EXISTS', k) == 0 then
    if v > 0 then
      local f = tonumber(redis.call('GET', k .. ':f') or '0')
      if f < v then f = v end
      redis.call('SET', k .. ':f', tostring(f), 'PX', floor_ms)
    end
  else
    local counted = redis.call('ZSCORE', k .. ':d', item) ~= false
    if mode == 'c' then
      counted = counted or (redis.call('HGET', k, 'inc') or '') == tag
    elseif mode == 'd' or mode == 'r' then
      local res = redis.call('HGET', k .. ':r', tag)
      if res then
        redis.call('HDEL', k .. ':r', tag)
        local a = tonumber(string.match(res, '^(%d+)'))
        if redis.call('HINCRBY', k, 'reserved', -a) < 0 then redis.call('HSET', k, 'reserved', 0) end
      elseif redis.call('ZSCORE', k .. ':d', tag) or redis.call('HEXISTS', k .. ':s', tag) == 1 then
        counted = true
      end
    end
    if mode ~= 'r' and not counted and tonumber(redis.call('HGET', k, 'pgv') or '0') < v then
      redis.call('HINCRBY', k, 'used', amount)
      redis.call('ZREMRANGEBYSCORE', k .. ':d', '-inf', now - keep)
      redis.call('ZADD', k .. ':d', now, item)
      redis.call('PEXPIRE', k .. ':d', keep)
      r = 1
    end
  end
  out[#out + 1] = r
end
return out
"#;

const SWEEP_LIST: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', 'wharf:bw:index', KEYS[1])
  return {}
end
local all = redis.call('HGETALL', KEYS[1] .. ':r')
local out = {}
for j = 1, #all, 2 do
  local exp = tonumber(string.match(all[j + 1], '|(%d+)$'))
  if exp and exp < now then out[#out + 1] = all[j] end
end
return out
"#;

/// `{done, inc}`: whether the reservation was there, and the incarnation it was settled in.
const SWEEP_ONE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0', ''} end
local v = redis.call('HGET', KEYS[1] .. ':r', ARGV[1])
if not v then return {'0', ''} end
redis.call('HDEL', KEYS[1] .. ':r', ARGV[1])
local amount = tonumber(string.match(v, '^(%d+)'))
if redis.call('HINCRBY', KEYS[1], 'reserved', -amount) < 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'used', ARGV[3])
  redis.call('HSET', KEYS[1] .. ':s', ARGV[1], 1)
  redis.call('PEXPIREAT', KEYS[1] .. ':s', ARGV[4])
end
return {'1', redis.call('HGET', KEYS[1], 'inc') or ''}
"#;

const LIVE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local v = redis.call('HMGET', KEYS[1], 'used', 'reserved', 'rollover')
local out = {v[1] or '0', v[2] or '0', v[3] or '0', tostring(redis.call('HLEN', KEYS[1] .. ':r'))}
local all = redis.call('HGETALL', KEYS[1] .. ':r')
for j = 1, math.min(#all, 2 * tonumber(ARGV[1])), 2 do
  out[#out + 1] = all[j]
  out[#out + 1] = all[j + 1]
end
return out
"#;

const MEMBERS: &str = "return redis.call('SMEMBERS', KEYS[1])";

/// One meter window, as Postgres keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowRef {
    quota: bool,
    meter: Uuid,
    start: i64,
}

/// How an amount bound for Postgres stands with the Redis window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Tag {
    /// Counted in the Redis window of incarnation `.0` (its `inc`).
    Counted(String),
    /// Not counted in Redis (the window or the reservation was not there).
    NotCounted,
    /// The settle could not reach Redis: reservation `.0` may still be held there.
    Deferred(String),
}

/// Amounts to add to a window's `used` column, by how each stands with Redis.
#[derive(Debug, Default)]
struct Delta {
    end: i64,
    amount: i64,
    parts: HashMap<Tag, i64>,
}

/// An amount written to Postgres (or a release) still to be squared with its Redis window.
#[derive(Debug, Clone)]
struct Item {
    key: String,
    tag: Tag,
    /// A release that could not reach Redis: reservation `.0` to take out.
    release: Option<String>,
    /// Unique: a retried item is not added twice.
    id: String,
    /// The window row's `used_version` once the amount was in (0: a release).
    version: i64,
    amount: i64,
}

impl Item {
    fn args(&self) -> [String; 5] {
        let (mode, tag) = match (&self.release, &self.tag) {
            (Some(r), _) => ("r", r.as_str()),
            (None, Tag::Counted(inc)) => ("c", inc.as_str()),
            (None, Tag::NotCounted) => ("n", ""),
            (None, Tag::Deferred(id)) => ("d", id.as_str()),
        };
        [
            mode.to_string(),
            tag.to_string(),
            self.id.clone(),
            self.version.to_string(),
            self.amount.to_string(),
        ]
    }
}

#[derive(Default)]
struct Scripts {
    seed: OnceCell<String>,
    settle: OnceCell<String>,
    sweep_list: OnceCell<String>,
    sweep_one: OnceCell<String>,
    reconcile: OnceCell<String>,
    members: OnceCell<String>,
    live: OnceCell<String>,
}

/// A window as Redis has it now (for the admin API).
#[derive(Debug, Default)]
pub struct LiveWindow {
    pub used: i64,
    pub reserved: i64,
    pub rollover: i64,
    pub in_flight: i64,
    /// (request id, amount, expiry in ms since the epoch), at most the number asked for.
    pub reservations: Vec<(String, i64, i64)>,
}

/// The Redis fast path over the database's budgets and quotas.
pub struct RedisBudgets {
    redis: Arc<RedisLimiter>,
    pg: Arc<PgBudgets>,
    scripts: Scripts,
    /// Settled amounts not yet in Postgres.
    pending: Mutex<HashMap<WindowRef, Delta>>,
    /// Amounts written to Postgres (and releases) still to be squared with Redis.
    reconcile: Mutex<Vec<Item>>,
    started: std::sync::Once,
    sweep_every: Duration,
}

impl std::fmt::Debug for RedisBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisBudgets")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Redis key of `m`'s window starting at `start`.
pub fn window_key(m: &Meter, start: Timestamp) -> String {
    key_of(m.quota, &m.id, start)
}

/// The Redis key of the window starting at `start` of budget (or quota) `meter_id`.
fn key_of(quota: bool, meter_id: &str, start: Timestamp) -> String {
    format!(
        "wharf:bw:{}:{meter_id}:{}",
        if quota { "q" } else { "b" },
        start.as_second()
    )
}

fn expire_at_ms(end: Timestamp) -> i64 {
    end.as_millisecond().saturating_add(KEEP_AFTER_END_MS)
}

fn thresholds(m: &Meter) -> String {
    m.warnings
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Item {
    /// A release of reservation `id` in window `key` that could not reach Redis.
    fn release(key: String, id: &str) -> Item {
        Item {
            key,
            tag: Tag::NotCounted,
            release: Some(id.to_string()),
            id: Uuid::new_v4().simple().to_string(),
            version: 0,
            amount: 0,
        }
    }
}

/// A request's budget reservation, ready for the check.
#[derive(Debug)]
pub struct Prepared {
    id: String,
    held: Vec<(Arc<Meter>, (Timestamp, Timestamp))>,
    keys: Vec<String>,
    args: Vec<String>,
    now: Timestamp,
}

impl Prepared {
    /// The window keys and arguments of the check's budget part.
    pub fn check_part(&self) -> (&[String], &[String]) {
        (&self.keys, &self.args)
    }

    /// The refusal of window `index`, which has no room.
    pub fn refusal(&self, index: usize, used: u64, reserved: u64, limit: u64) -> GatewayError {
        match self.held.get(index) {
            Some((m, (_, end))) => super::budget::denial(m, limit, used, reserved, *end, self.now),
            None => budget_pg::unavailable("unexpected budget window index"),
        }
    }

    /// The meters (for the Postgres ledger, when Redis cannot answer).
    pub fn into_meters(self) -> Vec<Arc<Meter>> {
        self.held.into_iter().map(|(m, _)| m).collect()
    }
}

/// A request's reservations in Redis; released in the background when dropped unsettled.
#[derive(Debug)]
pub struct RedisBudgetGrant {
    store: Arc<RedisBudgets>,
    id: String,
    /// Each meter with the window its reservation is in.
    held: Vec<(Arc<Meter>, (Timestamp, Timestamp))>,
    done: bool,
}

impl Drop for RedisBudgetGrant {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, id, held) = (
            self.store.clone(),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.held),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { store.finish(&id, &held, None).await });
        }
    }
}

impl RedisBudgets {
    pub fn new(
        redis: Arc<RedisLimiter>,
        pg: Arc<PgBudgets>,
        sweep_every: Duration,
    ) -> Arc<RedisBudgets> {
        Arc::new(RedisBudgets {
            redis,
            pg,
            scripts: Scripts::default(),
            pending: Mutex::new(HashMap::new()),
            reconcile: Mutex::new(Vec::new()),
            started: std::sync::Once::new(),
            sweep_every,
        })
    }

    /// Starts the flush and sweep task (once, from inside the serving runtime).
    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            let me = Arc::downgrade(self);
            tokio::spawn(background(me));
        });
    }

    /// The budget part of a request's Redis check (see [`super::redis::RedisLimiter::check`]):
    /// a reservation of `est` on every meter of `applying` (periodic meters), all or none.
    pub fn prepare(
        self: &Arc<Self>,
        applying: Vec<Arc<Meter>>,
        est: &Estimate,
        request_id: &str,
        now: Timestamp,
    ) -> Prepared {
        self.start();
        let id = format!(
            "{}/{}",
            request_id.chars().take(160).collect::<String>(),
            Uuid::new_v4().simple()
        );
        let held: Vec<(Arc<Meter>, (Timestamp, Timestamp))> = applying
            .into_iter()
            .map(|m| {
                let w = m.window(now);
                (m, w)
            })
            .collect();
        let keys = held.iter().map(|(m, w)| window_key(m, w.0)).collect();
        // The script's layout: reservation id, its lifetime, then per window the amount, the
        // meter's limit (the window's rollover is added in Redis) and when the key expires.
        let mut args = vec![
            id.clone(),
            (budget_pg::RESERVATION_TTL_SECONDS * 1000).to_string(),
        ];
        for (m, (_, end)) in &held {
            args.push(m.metric.estimate(est).to_string());
            args.push(m.limit.to_string());
            args.push(expire_at_ms(*end).to_string());
        }
        Prepared {
            id,
            held,
            keys,
            args,
            now,
        }
    }

    /// The reservation the check took.
    pub fn grant(self: &Arc<Self>, p: Prepared) -> RedisBudgetGrant {
        RedisBudgetGrant {
            store: self.clone(),
            id: p.id,
            held: p.held,
            done: false,
        }
    }

    /// Seeds window `index` of `p`, which the check found missing.
    pub async fn seed_missing(&self, p: &Prepared, index: usize) -> Result<(), GatewayError> {
        match (p.held.get(index), p.keys.get(index)) {
            (Some((m, w)), Some(key)) => self.seed(m, *w, key).await,
            _ => Err(budget_pg::unavailable("unexpected budget window index")),
        }
    }

    /// Puts a window into Redis from its Postgres row (created when missing), with the row's
    /// `used_version` and a new incarnation id. Amounts not in that row yet (another node's, or
    /// this node's, on their way to Postgres) are added by their reconcile once they are in.
    async fn seed(
        &self,
        m: &Meter,
        (start, end): (Timestamp, Timestamp),
        key: &str,
    ) -> Result<(), GatewayError> {
        let pool = self
            .pg
            .pool()
            .ok_or_else(|| budget_pg::unavailable("not connected"))?;
        let t = budget_pg::tables(m);
        let mid = Uuid::parse_str(&m.id).map_err(budget_pg::unavailable)?;
        sqlx::query(&budget_pg::open_window_sql(t))
            .bind(mid)
            .bind(budget_pg::to_odt(start))
            .bind(budget_pg::to_odt(end))
            .bind(m.limit as i64)
            .bind(m.rollover)
            .execute(&*pool)
            .await
            .map_err(budget_pg::unavailable)?;
        // A row read before an amount that a reconcile already left to this seed: read again.
        for _ in 0..5 {
            let (used, rollover, warned, version): (i64, i64, Vec<i32>, i64) =
                sqlx::query_as(&format!(
                    "SELECT {u}, {ro}, warned_thresholds, used_version FROM {w}
                      WHERE {fk} = $1 AND window_start = $2",
                    u = t.used,
                    ro = t.rollover,
                    w = t.windows,
                    fk = t.fk
                ))
                .bind(mid)
                .bind(budget_pg::to_odt(start))
                .fetch_one(&*pool)
                .await
                .map_err(budget_pg::unavailable)?;
            let warned = warned
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let seeded = self
                .redis
                .run::<i64>(
                    SEED,
                    &self.scripts.seed,
                    vec![key.to_string()],
                    vec![
                        used.max(0).to_string(),
                        rollover.max(0).to_string(),
                        expire_at_ms(end).to_string(),
                        warned,
                        version.to_string(),
                        Uuid::new_v4().simple().to_string(),
                    ],
                )
                .await
                .map_err(|e| budget_pg::unavailable(e.0))?;
            if seeded >= 0 {
                return Ok(());
            }
        }
        Err(budget_pg::unavailable(
            "budget window seed kept reading an older row",
        ))
    }

    /// Post-flight: settles to the record (or releases when nothing reached the provider).
    pub async fn settle(&self, mut g: RedisBudgetGrant, rec: &UsageRecord, reached: bool) {
        g.done = true;
        self.finish(&g.id, &g.held, reached.then_some(rec)).await;
    }

    /// Settles (`Some(record)`) or releases (`None`) the reservations of `id`. Retried a few
    /// times in the background while Redis does not answer; a reservation that could not be
    /// settled is left to the sweep, which settles it from the usage record.
    async fn finish(
        &self,
        id: &str,
        held: &[(Arc<Meter>, (Timestamp, Timestamp))],
        rec: Option<&UsageRecord>,
    ) {
        let keys: Vec<String> = held.iter().map(|(m, w)| window_key(m, w.0)).collect();
        let mut args = vec![
            id.to_string(),
            u8::from(rec.is_some()).to_string(),
            DONE_KEEP_MS.to_string(),
        ];
        for (m, _) in held {
            args.push(rec.map_or(0, |r| m.metric.actual(r)).to_string());
            args.push(m.limit.to_string());
            args.push(thresholds(m));
        }
        let mut tries = 0;
        let v: Vec<String> = loop {
            match self
                .redis
                .run(SETTLE, &self.scripts.settle, keys.clone(), args.clone())
                .await
            {
                Ok(v) => break v,
                Err(e) if tries >= 3 => {
                    // Postgres gets the amount now (the fallback ledger checks against it);
                    // Redis once it answers again (the reservation is then taken out, and the
                    // amount added unless that window's seed already holds it).
                    tracing::warn!(error = %e.0, request_id = %id, "budgets: settle failed in Redis; it is reconciled when Redis answers");
                    for ((m, window), key) in held.iter().zip(keys) {
                        let actual = rec.map_or(0, |r| m.metric.actual(r));
                        if actual > 0 {
                            self.add_pending(m, *window, actual, Tag::Deferred(id.to_string()));
                        } else {
                            lock(&self.reconcile).push(Item::release(key, id));
                        }
                    }
                    return;
                }
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250 * tries)).await;
                }
            }
        };
        let Some(rec) = rec else { return };
        for (i, (m, window)) in held.iter().enumerate() {
            let at = |j: usize| {
                v.get(i * 4 + j)
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            let tag = match at(0) {
                2 => continue,
                1 | 5 => Tag::Counted(v.get(i * 4 + 3).cloned().unwrap_or_default()),
                _ => Tag::NotCounted,
            };
            let actual = m.metric.actual(rec);
            self.add_pending(m, *window, actual, tag);
            let (used, crossed) = (at(1).max(0) as u64, at(2));
            for (bit, th) in m.warnings.iter().enumerate() {
                if crossed & (1 << bit) != 0 {
                    super::budget::warned(self.pg.notifier(), m, *th, used, m.limit, *window);
                    self.pg.mark_warned(m, window.0, *th);
                }
            }
        }
    }

    /// The window of meter `meter_id` starting at `start`, as Redis has it (`None` when Redis
    /// does not hold it or cannot answer: Postgres is then current).
    pub async fn live_window(
        &self,
        quota: bool,
        meter_id: &str,
        start: Timestamp,
        max_reservations: usize,
    ) -> Option<LiveWindow> {
        let key = key_of(quota, meter_id, start);
        let v: Vec<String> = self
            .redis
            .run(
                LIVE,
                &self.scripts.live,
                vec![key],
                vec![max_reservations.to_string()],
            )
            .await
            .ok()?;
        let num = |i: usize| v.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        if v.len() < 4 {
            return None;
        }
        let reservations = v[4..]
            .chunks(2)
            .filter_map(|c| {
                let (id, val) = (c.first()?, c.get(1)?);
                let (amount, exp) = val.split_once('|')?;
                let request = id.rsplit_once('/').map_or(id.as_str(), |(r, _)| r);
                Some((request.to_string(), amount.parse().ok()?, exp.parse().ok()?))
            })
            .collect();
        Some(LiveWindow {
            used: num(0),
            reserved: num(1),
            rollover: num(2),
            in_flight: num(3),
            reservations,
        })
    }

    fn add_pending(&self, m: &Meter, (start, end): (Timestamp, Timestamp), amount: u64, tag: Tag) {
        let Ok(meter) = Uuid::parse_str(&m.id) else {
            return;
        };
        if amount == 0 {
            return;
        }
        let mut p = lock(&self.pending);
        let d = p
            .entry(WindowRef {
                quota: m.quota,
                meter,
                start: start.as_second(),
            })
            .or_default();
        d.end = end.as_second();
        d.amount = d.amount.saturating_add(amount as i64);
        let part = d.parts.entry(tag).or_default();
        *part = part.saturating_add(amount as i64);
    }

    /// What the Postgres ledger settled for a request admitted while Redis could not answer:
    /// squared with the Redis windows once Redis answers again (added to each window whose
    /// seed read an older row; a window not in Redis gets it from its next seed).
    pub fn settled_in_postgres(&self, settled: &[budget_pg::Settled]) {
        let mut c = lock(&self.reconcile);
        for s in settled.iter().filter(|s| !s.meter.is_balance()) {
            c.push(Item {
                key: window_key(&s.meter, s.start),
                tag: Tag::NotCounted,
                release: None,
                id: Uuid::new_v4().simple().to_string(),
                version: s.version,
                amount: s.amount as i64,
            });
        }
    }

    /// The check of `p` could not get an answer from Redis, so its request reserves in
    /// Postgres: should the check have run in Redis after all, its reservation is taken out
    /// there once Redis answers again.
    pub fn release_later(&self, p: &Prepared) {
        let mut c = lock(&self.reconcile);
        for key in &p.keys {
            c.push(Item::release(key.clone(), &p.id));
        }
    }

    /// Writes the pending amounts to Postgres (one statement per table); on failure they are
    /// kept for the next flush.
    async fn flush(&self) {
        let batch = std::mem::take(&mut *lock(&self.pending));
        if batch.is_empty() {
            return;
        }
        let Some(pool) = self.pg.pool() else {
            self.restore(batch);
            return;
        };
        let (quotas, budgets): (HashMap<_, _>, HashMap<_, _>) =
            batch.into_iter().partition(|(w, _)| w.quota);
        for part in [budgets, quotas] {
            let Some(quota) = part.keys().next().map(|w| w.quota) else {
                continue;
            };
            let t = budget_pg::tables_for(quota);
            let at = |s: i64| budget_pg::to_odt(Timestamp::from_second(s).unwrap_or_default());
            let ids: Vec<Uuid> = part.keys().map(|w| w.meter).collect();
            let starts: Vec<time::OffsetDateTime> = part.keys().map(|w| at(w.start)).collect();
            let ends: Vec<time::OffsetDateTime> = part.values().map(|d| at(d.end)).collect();
            let amounts: Vec<i64> = part.values().map(|d| d.amount).collect();
            let r: Result<Vec<(Uuid, time::OffsetDateTime, i64)>, _> = sqlx::query_as(&format!(
                // A meter deleted meanwhile has no windows left to add to (and must not
                // hold the batch back).
                "INSERT INTO {w} ({fk}, window_start, window_end, {u})
                 SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bigint[])
                   AS d(id, s, e, a)
                  WHERE EXISTS (SELECT 1 FROM {m} WHERE {m}.id = d.id)
                 ON CONFLICT ({fk}, window_start) DO UPDATE SET {u} = {w}.{u} + EXCLUDED.{u}
                 RETURNING {w}.{fk}, {w}.window_start, {w}.used_version",
                w = t.windows,
                fk = t.fk,
                u = t.used,
                m = t.meters
            ))
            .bind(&ids)
            .bind(&starts)
            .bind(&ends)
            .bind(&amounts)
            .fetch_all(&*pool)
            .await;
            match r {
                Ok(rows) => {
                    let versions: HashMap<(Uuid, i64), i64> = rows
                        .into_iter()
                        .map(|(id, s, v)| ((id, s.unix_timestamp()), v))
                        .collect();
                    let mut c = lock(&self.reconcile);
                    for (w, d) in part {
                        // A window of a deleted meter: nothing to square.
                        let Some(version) = versions.get(&(w.meter, w.start)) else {
                            continue;
                        };
                        let Ok(start) = Timestamp::from_second(w.start) else {
                            continue;
                        };
                        let key = key_of(w.quota, &w.meter.to_string(), start);
                        for (tag, amount) in d.parts {
                            c.push(Item {
                                key: key.clone(),
                                tag,
                                release: None,
                                id: Uuid::new_v4().simple().to_string(),
                                version: *version,
                                amount,
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "budgets: cannot write settled amounts to Postgres yet");
                    self.restore(part);
                }
            }
        }
    }

    fn restore(&self, batch: HashMap<WindowRef, Delta>) {
        let mut p = lock(&self.pending);
        for (w, d) in batch {
            let e = p.entry(w).or_default();
            e.end = d.end;
            e.amount = e.amount.saturating_add(d.amount);
            for (tag, amount) in d.parts {
                let part = e.parts.entry(tag).or_default();
                *part = part.saturating_add(amount);
            }
        }
    }

    /// Squares the amounts written to Postgres (and the releases that could not reach Redis)
    /// with the Redis windows, in batches; what Redis cannot take now waits for the next pass.
    async fn reconcile(&self) {
        loop {
            let batch: Vec<Item> = {
                let mut q = lock(&self.reconcile);
                let n = q.len().min(RECONCILE_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let keys = batch.iter().map(|i| i.key.clone()).collect();
            let mut args = vec![DONE_KEEP_MS.to_string(), FLOOR_KEEP_MS.to_string()];
            for i in &batch {
                args.extend(i.args());
            }
            let r = self
                .redis
                .run::<Vec<i64>>(RECONCILE, &self.scripts.reconcile, keys, args)
                .await;
            match r {
                Ok(added) => {
                    let n = added.iter().filter(|a| **a == 1).count();
                    if n > 0 {
                        tracing::info!(
                            amounts = n,
                            "budgets: amounts settled in Postgres added to re-seeded or outdated Redis windows"
                        );
                    }
                }
                Err(_) => {
                    // Retried (idempotently) on the next pass, before anything newer.
                    let mut q = lock(&self.reconcile);
                    let newer = std::mem::take(&mut *q);
                    q.extend(batch);
                    q.extend(newer);
                    return;
                }
            }
        }
    }

    /// Settles or releases the reservations past their expiry (see the module docs).
    async fn sweep(&self) -> Result<u64, String> {
        let keys: Vec<String> = self
            .redis
            .run(
                MEMBERS,
                &self.scripts.members,
                vec![INDEX.to_string()],
                vec![],
            )
            .await
            .map_err(|e| e.0)?;
        let meters = self.pg.cached_meters();
        let mut n = 0;
        for key in keys {
            let expired: Vec<String> = self
                .redis
                .run(
                    SWEEP_LIST,
                    &self.scripts.sweep_list,
                    vec![key.clone()],
                    vec![],
                )
                .await
                .map_err(|e| e.0)?;
            if expired.is_empty() {
                continue;
            }
            // wharf:bw:{b|q}:{meter}:{start}
            let mut parts = key.rsplitn(3, ':');
            let start = parts.next().and_then(|s| s.parse::<i64>().ok());
            let meter_id = parts.next().unwrap_or_default();
            let quota = parts.next().is_some_and(|p| p.ends_with(":q"));
            let meter = meters
                .iter()
                .find(|m| m.id == meter_id && m.quota == quota)
                .cloned();
            let found = self.records(&expired).await?;
            for id in expired {
                let request = id.rsplit_once('/').map_or(id.as_str(), |(r, _)| r);
                let actual = match (&meter, found.get(request)) {
                    (Some(m), Some(row)) if row.reached => Some(row.actual(m.metric)),
                    _ => None,
                };
                let keep_until = start
                    .and_then(|s| Timestamp::from_second(s).ok())
                    .zip(meter.as_ref())
                    .map_or(i64::MAX / 2, |(s, m)| expire_at_ms(m.window(s).1));
                let done: Vec<String> = self
                    .redis
                    .run(
                        SWEEP_ONE,
                        &self.scripts.sweep_one,
                        vec![key.clone()],
                        vec![
                            id.clone(),
                            u8::from(actual.is_some()).to_string(),
                            actual.unwrap_or(0).to_string(),
                            keep_until.to_string(),
                        ],
                    )
                    .await
                    .map_err(|e| e.0)?;
                let swept = done.first().is_some_and(|d| d == "1");
                if let (true, Some(m), Some(actual), Some(s)) = (swept, &meter, actual, start) {
                    if let Ok(s) = Timestamp::from_second(s) {
                        let inc = done.get(1).cloned().unwrap_or_default();
                        self.add_pending(m, m.window(s), actual, Tag::Counted(inc));
                    }
                }
                n += u64::from(swept);
            }
        }
        Ok(n)
    }

    /// The usage records of the expired reservations' requests.
    async fn records(&self, ids: &[String]) -> Result<HashMap<String, RecordRow>, String> {
        let Some(pool) = self.pg.pool() else {
            return Err("not connected".into());
        };
        let requests: Vec<&str> = ids
            .iter()
            .map(|id| id.rsplit_once('/').map_or(id.as_str(), |(r, _)| r))
            .collect();
        let rows: Vec<RecordRow> = sqlx::query_as(
            "SELECT request_id, cost_nanos, input_tokens, output_tokens, status::int AS status,
                    outcome, latency_ms, jsonb_array_length(attempts) > 0 AS reached
               FROM usage_records WHERE request_id = ANY($1)",
        )
        .bind(&requests)
        .fetch_all(&*pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|r| (r.request_id.clone(), r))
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    request_id: String,
    cost_nanos: i64,
    input_tokens: i64,
    output_tokens: i64,
    status: i32,
    outcome: String,
    latency_ms: f64,
    reached: bool,
}

impl RecordRow {
    /// What [`Metric::actual`] gives for the record.
    fn actual(&self, metric: Metric) -> u64 {
        metric.of(&super::budget::Actual {
            cost_nanos: self.cost_nanos.max(0) as u64,
            input: self.input_tokens.max(0) as u64,
            output: self.output_tokens.max(0) as u64,
            error: self.status >= 400 || self.outcome != "success",
            latency_ms: self.latency_ms,
        })
    }
}

/// Flushes every [`FLUSH_EVERY`], applies catch-ups and sweeps every `sweep_every`, for as
/// long as the store lives.
async fn background(me: Weak<RedisBudgets>) {
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(store) = me.upgrade() else { return };
        store.flush().await;
        if !lock(&store.reconcile).is_empty() && store.redis.is_connected() {
            store.reconcile().await;
        }
        if last_sweep.elapsed() >= store.sweep_every {
            last_sweep = tokio::time::Instant::now();
            match store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    reservations = n,
                    "budgets: stale Redis reservations settled or released"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "budgets: cannot sweep stale Redis reservations")
                }
            }
        }
    }
}
