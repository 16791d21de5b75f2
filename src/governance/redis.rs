//! The shared limiter (several nodes) with leased capacity: each node leases slices of every
//! limit of a scope from Redis in one atomic Lua script (`EVALSHA`, falling back to `EVAL` when
//! the server lost its script cache) and spends them in process, with atomics and no await,
//! until the slice runs out or expires; so N nodes together admit no more than each limit, and
//! most requests make no Redis round trip at all.
//!
//! Per scope (`wharf:rl:<scope id>`):
//! * `:ws:<n>` / `:wm:<n>` — requests admitted (or leased) in sub-window `n` of a second
//!   (100 ms buckets) and of a minute (6 s buckets). A check counts the current bucket and the
//!   ten before it, a span at least as long as the window, so any sliding second or minute
//!   holds no more than the limit;
//! * `:wt:<n>` — the same for tokens per minute (reserved, then refunded to the actual count);
//! * `:g` — the burst bucket's GCRA theoretical arrival time;
//! * `:c` — concurrency slots scored by their expiry, so a node that dies holding slots frees
//!   them after the lease TTL.
//!
//! A slice is what one lease grants a node beyond the request that asked: `spare` requests of
//! each window, burst units, tokens and concurrency slots. Its size follows the node's recent
//! rate (what it admitted since its previous lease, scaled to [`HORIZON`]) and is
//! never more than `1/`[`SHARE`] of what the limit has left, and nothing while fewer than
//! `SHARE²` (64) units are left, so near a limit, and always under a small limit, slices shrink
//! to the one request that asked (and a concurrency slot or token refund then goes back to Redis
//! as soon as the request ends). A slice expires at the end of its shortest sub-window bucket
//! and at the latest after [`HORIZON`]; what it did not spend goes back to Redis then (batched
//! with the node's next lease, or sent by its ticker after [`RETURN_WAIT`]). Only one lease per scope and
//! node asks for spare at a time: the requests that find the slice empty meanwhile wait for
//! it, and ask Redis for their own request only when it does not hold them.
//!
//! Time is Redis's own clock (`TIME`), so the nodes' clocks do not matter.

use super::limits::{Denial, Kind, RateHeaders, ScopeLimits};
use fred::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// The longest a slice lives.
pub const HORIZON: Duration = Duration::from_millis(200);
/// A slice takes at most this fraction (1/SHARE) of what a limit has left.
pub const SHARE: u64 = 8;
/// How often the node retires expired slices and sends back what they did not spend.
pub const TICK: Duration = Duration::from_millis(50);
/// How long a return waits for a lease to take it along before the ticker sends it alone
/// (returns of a limit that is near are sent at once).
pub const RETURN_WAIT: Duration = Duration::from_millis(500);
/// Sub-window buckets (ms) of the second and the minute; a window counts ten buckets + 1.
const SEC_BUCKET: i64 = 100;
const MIN_BUCKET: i64 = 6000;
/// How long a bucket key outlives its window.
const SEC_KEEP: i64 = 1000 + SEC_BUCKET + 1000;
const MIN_KEEP: i64 = 60_000 + MIN_BUCKET + 1000;

const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local nr = tonumber(ARGV[3])
local F = tonumber(ARGV[4])
local prefix = ARGV[5]
local nb = #KEYS - n
local p = 5
-- What the node gives back first: unspent window units, burst units, slots.
for r = 1, nr do
  local k, op = ARGV[p + 1], ARGV[p + 2]
  if op == 'z' then
    local m = tonumber(ARGV[p + 3])
    redis.call('ZREM', k, unpack(ARGV, p + 4, p + 3 + m))
    p = p + 3 + m
  elseif op == 'w' then
    local v, keep = tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
    local left = redis.call('DECRBY', k, v)
    if left <= 0 then redis.call('DEL', k)
    elseif left == -v then redis.call('PEXPIRE', k, keep) end
    p = p + 4
  else
    local units, iv = tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
    local tat = tonumber(redis.call('GET', k) or '0')
    if tat > now then
      tat = math.max(now, tat - units * iv)
      redis.call('SET', k, string.format('%.3f', tat), 'KEEPTTL')
    end
    p = p + 4
  end
end
local function win(pre, B)
  local cur = math.floor(now / B)
  local names = {}
  for j = 0, 10 do names[j + 1] = pre .. (cur - j) end
  local vals = redis.call('MGET', unpack(names))
  local sum = 0
  for j = 1, 11 do vals[j] = tonumber(vals[j]) or 0 sum = sum + vals[j] end
  return sum, cur, vals
end
-- When `need` fits again: the oldest buckets leave the count first.
local function retry(vals, cur, B, sum, limit, need)
  local s = sum
  for j = 11, 1, -1 do
    s = s - vals[j]
    if s + need <= limit then return math.max(0, (cur - (j - 1) + 11) * B - now) end
  end
  return 11 * B
end
local function spare(want, avail, need)
  -- No spare while fewer than F * F units are left: a small limit is checked per request, so
  -- no node holds spare that another node is then refused for.
  if avail - need < F * F then return 0 end
  return math.max(0, math.min(want, math.floor((avail - need) / F)))
end
local G = {}
for i = 1, n do
  local b = KEYS[i]
  local o = p + (i - 1) * 10
  local function a(k) return tonumber(ARGV[o + k]) end
  local rps, rpm, cap, iv, conc, tpm = a(1), a(2), a(3), a(4), a(5), a(6)
  local ntok, wreq, wtok, wconc = a(7), a(8), a(9), a(10)
  local g = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', b .. ':c', '-inf', now)
    local avail = conc - redis.call('ZCARD', b .. ':c')
    if avail < 1 then return {1, i, conc, 1000} end
    g[1], g[2] = 1 + spare(wconc, avail, 1), avail
  end
  if cap > 0 then
    local tat = tonumber(redis.call('GET', b .. ':g') or '0')
    if tat < now then tat = now end
    local avail = math.floor((now - tat) / iv + cap + 1e-9)
    if avail < 1 then return {2, i, cap, math.max(1, math.ceil(tat + iv - cap * iv - now))} end
    g[3] = 1 + spare(wreq, avail, 1)
    g.tat = tat
  end
  if rps > 0 then
    local sum, cur, vals = win(b .. ':ws:', 100)
    if sum + 1 > rps then return {3, i, rps, retry(vals, cur, 100, sum, rps, 1)} end
    g[4], g[5], g[6] = 1 + spare(wreq, rps - sum, 1), cur, rps - sum
  end
  if rpm > 0 then
    local sum, cur, vals = win(b .. ':wm:', 6000)
    if sum + 1 > rpm then return {4, i, rpm, retry(vals, cur, 6000, sum, rpm, 1)} end
    g[7], g[8], g[9] = 1 + spare(wreq, rpm - sum, 1), cur, rpm - sum
  end
  if tpm > 0 then
    local sum, cur, vals = win(b .. ':wt:', 6000)
    if sum + ntok > tpm or sum > tpm then
      local r = 60000
      if ntok <= tpm then r = retry(vals, cur, 6000, sum, tpm, ntok) end
      return {5, i, tpm, r}
    end
    g[10], g[11], g[12] = ntok + spare(wtok, tpm - sum, ntok), cur, tpm - sum
  end
  G[i] = g
end
-- Budget windows (see budget_redis): all must have room before anything is taken.
local bo = p + n * 10
for j = 1, nb do
  local k = KEYS[n + j]
  if redis.call('EXISTS', k) == 0 then return {7, j} end
  local v = redis.call('HMGET', k, 'used', 'reserved', 'rollover')
  local used, reserved = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  local amount = tonumber(ARGV[bo + 2 + (j - 1) * 3 + 1])
  local limit = tonumber(ARGV[bo + 2 + (j - 1) * 3 + 2]) + tonumber(v[3] or '0')
  if used + reserved + math.max(amount, 1) > limit then return {6, j, used, reserved, limit} end
end
local out = {0, now}
for i = 1, n do
  local b = KEYS[i]
  local o = p + (i - 1) * 10
  local cap, iv, ttl_c = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), now + ttl
  local g = G[i]
  if g[1] > 0 then
    local z = {}
    for j = 1, g[1] do z[#z + 1] = ttl_c z[#z + 1] = prefix .. '.' .. i .. '.' .. j end
    redis.call('ZADD', b .. ':c', unpack(z))
    redis.call('PEXPIRE', b .. ':c', ttl + 1000)
  end
  if g[3] > 0 then
    redis.call('SET', b .. ':g', string.format('%.3f', g.tat + g[3] * iv), 'PX', math.ceil(cap * iv) + 1000)
  end
  local function add(k, v, keep)
    if v > 0 and redis.call('INCRBY', k, v) == v then redis.call('PEXPIRE', k, keep) end
  end
  add(b .. ':ws:' .. g[5], g[4], 2100)
  add(b .. ':wm:' .. g[8], g[7], 67000)
  add(b .. ':wt:' .. g[11], g[10], 67000)
  for j = 1, 12 do out[#out + 1] = g[j] end
end
if nb > 0 then
  local bid, bexp = ARGV[bo + 1], now + tonumber(ARGV[bo + 2])
  for j = 1, nb do
    local k = KEYS[n + j]
    local amount = ARGV[bo + 2 + (j - 1) * 3 + 1]
    redis.call('HINCRBY', k, 'reserved', amount)
    redis.call('HSET', k .. ':r', bid, amount .. '|' .. string.format('%d', bexp))
    redis.call('PEXPIREAT', k .. ':r', ARGV[bo + 2 + (j - 1) * 3 + 3])
    redis.call('SADD', 'wharf:bw:index', k)
  end
end
return out
"#;

/// What a check answered.
#[derive(Debug)]
pub enum Checked {
    /// Every limit has room and every budget window took its reservation.
    Admitted(RedisGrant, RateHeaders),
    /// A limit is full (nothing was taken).
    Limited(Denial),
    /// Budget window `.0` (an index into the budget keys) is not in Redis: nothing was
    /// taken; seed it and check again.
    BudgetMissing(usize),
    /// Budget window `index` has no room for its reservation (nothing was taken).
    BudgetDenied {
        index: usize,
        used: u64,
        reserved: u64,
        limit: u64,
    },
}

/// Something a node gives back to Redis.
#[derive(Debug)]
enum Ret {
    /// `n` units of a window bucket (negative: units used beyond a reservation).
    Window { key: String, n: i64, keep_ms: i64 },
    /// Burst units (each `iv` ms of the bucket's arrival time).
    Gcra { key: String, units: i64, iv: f64 },
    /// A concurrency slot.
    Slot { key: String, member: Arc<str> },
}

/// One window of a slice: units left to spend in bucket `bucket`, and what the limit had left
/// after the lease (for the rate headers).
#[derive(Debug, Default)]
struct Window {
    left: AtomicI64,
    bucket: i64,
    after: i64,
}

/// What one lease granted a node for one scope, beyond the request that asked.
#[derive(Debug)]
struct Slice {
    limits: ScopeLimits,
    expires: Instant,
    dead: AtomicBool,
    s: Window,
    m: Window,
    t: Window,
    burst: AtomicI64,
    slots: Mutex<Vec<Arc<str>>>,
    /// The limit was near: slots and token refunds go back to Redis at once.
    scarce: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes `n` units if that many are left.
fn take_units(a: &AtomicI64, n: i64) -> bool {
    n <= 0
        || a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v >= n).then_some(v - n)
        })
        .is_ok()
}

impl Slice {
    fn live(&self, now: Instant) -> bool {
        now < self.expires && !self.dead.load(Ordering::Acquire)
    }

    /// Takes one request's units from every limit of `l`, or nothing.
    fn take(&self, l: &ScopeLimits, tokens: u64, now: Instant) -> Option<Option<Arc<str>>> {
        if !self.live(now) || self.limits != *l {
            return None;
        }
        let tok = if l.tpm > 0 { tokens as i64 } else { 0 };
        let parts: [(&AtomicI64, i64); 4] = [
            (&self.s.left, i64::from(l.rps > 0)),
            (&self.m.left, i64::from(l.rpm > 0)),
            (&self.burst, i64::from(l.burst > 0)),
            (&self.t.left, tok),
        ];
        for (i, (a, n)) in parts.iter().enumerate() {
            if !take_units(a, *n) {
                for (a, n) in &parts[..i] {
                    if *n > 0 {
                        a.fetch_add(*n, Ordering::AcqRel);
                    }
                }
                return None;
            }
        }
        let slot = if l.concurrency > 0 {
            let s = lock(&self.slots).pop();
            if s.is_none() {
                for (a, n) in &parts {
                    if *n > 0 {
                        a.fetch_add(*n, Ordering::AcqRel);
                    }
                }
                return None;
            }
            s
        } else {
            None
        };
        Some(slot)
    }

    /// Gives back one request's units taken by [`Slice::take`] (a later scope refused).
    fn untake(
        &self,
        base: &str,
        l: &ScopeLimits,
        tokens: u64,
        slot: Option<Arc<str>>,
        out: &mut Vec<Ret>,
    ) {
        for (a, n) in [
            (&self.s.left, i64::from(l.rps > 0)),
            (&self.m.left, i64::from(l.rpm > 0)),
            (&self.burst, i64::from(l.burst > 0)),
            (&self.t.left, if l.tpm > 0 { tokens as i64 } else { 0 }),
        ] {
            if n > 0 {
                a.fetch_add(n, Ordering::AcqRel);
            }
        }
        if let Some(m) = slot {
            self.give_slot(base, m, out);
        }
    }

    /// A slot back into the slice (or to Redis once the slice is retired).
    fn give_slot(&self, base: &str, member: Arc<str>, out: &mut Vec<Ret>) {
        let mut slots = lock(&self.slots);
        if self.dead.load(Ordering::Acquire) || self.scarce {
            drop(slots);
            out.push(Ret::Slot {
                key: format!("{base}:c"),
                member,
            });
        } else {
            slots.push(member);
        }
    }

    /// Retires the slice: everything it did not spend goes to `out` (once).
    fn drain(&self, base: &str, out: &mut Vec<Ret>) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        for (w, suffix, keep_ms) in [
            (&self.s, "ws", SEC_KEEP),
            (&self.m, "wm", MIN_KEEP),
            (&self.t, "wt", MIN_KEEP),
        ] {
            let n = w.left.swap(0, Ordering::AcqRel);
            if n != 0 {
                out.push(Ret::Window {
                    key: format!("{base}:{suffix}:{}", w.bucket),
                    n,
                    keep_ms,
                });
            }
        }
        let units = self.burst.swap(0, Ordering::AcqRel);
        if units > 0 {
            out.push(Ret::Gcra {
                key: format!("{base}:g"),
                units,
                iv: self.limits.burst_interval_ms,
            });
        }
        for member in lock(&self.slots).drain(..) {
            out.push(Ret::Slot {
                key: format!("{base}:c"),
                member,
            });
        }
    }

    /// The rate headers this slice can tell: what the limit had left after the lease plus
    /// what the slice has not spent.
    fn headers(&self, h: &mut RateHeaders) {
        let l = &self.limits;
        let left = |w: &Window| (w.after + w.left.load(Ordering::Relaxed)).max(0) as u64;
        if l.rpm > 0 {
            h.merge_requests((l.rpm, left(&self.m), 60_000));
        } else if l.rps > 0 {
            h.merge_requests((l.rps, left(&self.s), 1000));
        }
        if l.tpm > 0 {
            h.merge_tokens((l.tpm, left(&self.t), 60_000));
        }
    }
}

/// A node's state for one scope: its current slice and its requests in flight.
#[derive(Debug)]
struct ScopeState {
    base: String,
    cur: Mutex<Option<Arc<Slice>>>,
    /// A lease asking for spare is in flight; the requests that find no room in the slice
    /// meanwhile wait for it ([`ScopeState::lease_done`]) rather than each asking Redis.
    leasing: AtomicBool,
    lease_done: tokio::sync::Notify,
    in_flight: AtomicI64,
    /// Requests and tokens this node admitted in this scope, and their reading at the last
    /// lease that asked for spare (when, requests, tokens): the node's recent rate.
    admitted: AtomicU64,
    tokens: AtomicU64,
    mark: Mutex<(Instant, u64, u64)>,
}

impl ScopeState {
    /// What the next slice should hold beyond its request: the requests and tokens admitted
    /// since the last such lease, scaled to [`HORIZON`], and half as many slots again as are
    /// in flight.
    fn want(&self, now: Instant) -> (u64, u64, u64) {
        let (requests, tokens) = (
            self.admitted.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
        );
        let mut mark = lock(&self.mark);
        let ms = now
            .saturating_duration_since(mark.0)
            .as_secs_f64()
            .max(0.001);
        let per = HORIZON.as_secs_f64() / ms;
        let scaled = |x: u64| ((x as f64 * per).ceil() as u64).min(1_000_000_000_000);
        let want = (
            scaled(requests.saturating_sub(mark.1)).min(1_000_000),
            scaled(tokens.saturating_sub(mark.2)),
            {
                let f = self.in_flight.load(Ordering::Relaxed).max(0) as u64;
                (f + f / 2 + 1).min(MAX_SPARE_SLOTS)
            },
        );
        *mark = (now, requests, tokens);
        want
    }
}

/// Clears a scope's `leasing` flag when the lease that set it ends, whatever the path, and
/// wakes the requests waiting for it.
struct Leader<'a>(&'a ScopeState);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.leasing.store(false, Ordering::Release);
        self.0.lease_done.notify_waiters();
    }
}

/// Why a Redis check gave no answer.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// The most returns kept for a Redis that cannot answer (slots expire on their own after
/// the lease TTL, window units with their bucket).
const MAX_RETURNS: usize = 10_000;
/// The most concurrency slots one lease asks for beyond its request.
const MAX_SPARE_SLOTS: u64 = 1000;

/// The Redis-backed limiter.
pub struct RedisLimiter {
    client: Client,
    timeout: Duration,
    check_sha: tokio::sync::OnceCell<String>,
    ever_connected: AtomicBool,
    connect_at: std::sync::OnceLock<Instant>,
    /// This node's id in slot names.
    node: String,
    seq: AtomicU64,
    scopes: Mutex<HashMap<String, Arc<ScopeState>>>,
    /// What goes back to Redis with the next lease (or the ticker's flush).
    returns: Mutex<Vec<Ret>>,
    /// Since when the oldest queued return waits (the ticker sends them after [`RETURN_WAIT`]).
    returns_since: Mutex<Option<Instant>>,
    ticker: std::sync::Once,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisLimiter")
    }
}

/// What an admitted request holds of one scope: a concurrency slot and a token reservation,
/// from a slice of this node or straight from Redis.
#[derive(Debug)]
struct Held {
    scope: Arc<ScopeState>,
    slice: Option<Arc<Slice>>,
    tpm: bool,
    tokens: u64,
    t_bucket: i64,
    slot: Option<Arc<str>>,
    scarce: bool,
}

/// What an admitted request holds: its concurrency slots and token reservations. Released by
/// [`RedisLimiter::finish`]; dropping it unfinished (a path that never reached post-flight)
/// releases it too.
#[derive(Debug)]
pub struct RedisGrant {
    limiter: Arc<RedisLimiter>,
    held: Vec<Held>,
    done: bool,
}

impl Drop for RedisGrant {
    fn drop(&mut self) {
        if self.done || self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        if self.limiter.release(held, 0) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let me = self.limiter.clone();
                rt.spawn(async move { me.flush().await });
            }
        }
    }
}

fn base(id: &str) -> String {
    format!("wharf:rl:{id}")
}

/// The per-scope arguments of the lease script (10 numbers).
fn scope_args(l: &ScopeLimits, tokens: u64, want: (u64, u64, u64), args: &mut Vec<String>) {
    args.extend([
        l.rps.to_string(),
        l.rpm.to_string(),
        l.burst.to_string(),
        format!("{:.3}", l.burst_interval_ms),
        l.concurrency.to_string(),
        l.tpm.to_string(),
        if l.tpm > 0 { tokens } else { 0 }.to_string(),
        want.0.to_string(),
        want.1.to_string(),
        want.2.to_string(),
    ]);
}

/// Appends the returns to the script's arguments; how many entries.
fn encode_returns(rets: &[Ret], args: &mut Vec<String>) -> usize {
    let mut n = 0;
    let mut slots: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in rets {
        match r {
            Ret::Window { key, n: v, keep_ms } => {
                args.extend([key.clone(), "w".into(), v.to_string(), keep_ms.to_string()]);
                n += 1;
            }
            Ret::Gcra { key, units, iv } => {
                args.extend([
                    key.clone(),
                    "g".into(),
                    units.to_string(),
                    format!("{iv:.3}"),
                ]);
                n += 1;
            }
            Ret::Slot { key, member } => match slots.iter_mut().find(|(k, _)| k == key) {
                Some((_, ms)) => ms.push(member),
                None => slots.push((key, vec![member])),
            },
        }
    }
    for (key, members) in slots {
        for chunk in members.chunks(1000) {
            args.extend([key.to_string(), "z".into(), chunk.len().to_string()]);
            args.extend(chunk.iter().map(|m| m.to_string()));
            n += 1;
        }
    }
    n
}

/// One scope's grant in the script's answer.
struct Granted {
    slots: i64,
    slots_avail: i64,
    burst: i64,
    s: (i64, i64, i64),
    m: (i64, i64, i64),
    t: (i64, i64, i64),
}

impl Granted {
    fn parse(v: &[i64]) -> Granted {
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Granted {
            slots: at(0),
            slots_avail: at(1),
            burst: at(2),
            s: (at(3), at(4), at(5)),
            m: (at(6), at(7), at(8)),
            t: (at(9), at(10), at(11)),
        }
    }

    /// Near the limit: nothing spare could be granted for slots or tokens.
    fn scarce(&self, l: &ScopeLimits, tokens: u64) -> bool {
        let share = SHARE as i64;
        (l.concurrency > 0 && (self.slots_avail - 1) / share == 0)
            || (l.tpm > 0 && (self.t.2 - tokens as i64) / share == 0)
    }

    fn headers(&self, l: &ScopeLimits, h: &mut RateHeaders) {
        let left = |w: (i64, i64, i64)| (w.2 - w.0).max(0) as u64;
        if l.rpm > 0 {
            h.merge_requests((l.rpm, left(self.m), 60_000));
        } else if l.rps > 0 {
            h.merge_requests((l.rps, left(self.s), 1000));
        }
        if l.tpm > 0 {
            h.merge_tokens((l.tpm, left(self.t), 60_000));
        }
    }
}

/// What a request took from a slice of this node: the slice, and a slot when it has a
/// concurrency limit.
type Taken = Option<(Arc<Slice>, Option<Arc<str>>)>;
/// What a lease granted a request of one scope: the slice it installed (when it asked for
/// spare), the request's slot, its token bucket and whether the limit is near.
type Direct = (Option<Arc<Slice>>, Option<Arc<str>>, i64, bool);
/// One admitted scope of a request: its state and limits, the slice it took from, its slot,
/// and (when the units came from a lease) its token bucket and whether the limit is near.
type Got<'a> = (
    Arc<ScopeState>,
    &'a ScopeLimits,
    Option<Arc<Slice>>,
    Option<Arc<str>>,
    Option<(i64, bool)>,
);

/// Slot `j` (from 1) of scope `i` (from 1) of the lease named `prefix`.
fn slot_name(prefix: &str, i: usize, j: i64) -> Arc<str> {
    Arc::from(format!("{prefix}.{i}.{j}"))
}

impl RedisLimiter {
    /// A client for `url` that connects (and reconnects) in the background.
    pub fn new(url: &str, timeout: Duration) -> Result<Arc<RedisLimiter>, String> {
        let cfg = Config::from_url(url).map_err(|e| e.to_string())?;
        let client = Builder::from_config(cfg)
            .with_connection_config(|cc| {
                cc.connection_timeout = Duration::from_secs(1);
                cc.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 200))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(RedisLimiter {
            client,
            timeout,
            check_sha: tokio::sync::OnceCell::new(),
            ever_connected: AtomicBool::new(false),
            connect_at: std::sync::OnceLock::new(),
            node: format!("{:016x}", rand::random::<u64>()),
            seq: AtomicU64::new(0),
            scopes: Mutex::new(HashMap::new()),
            returns: Mutex::new(Vec::new()),
            returns_since: Mutex::new(None),
            ticker: std::sync::Once::new(),
        }))
    }

    /// Starts the connection task and the slice ticker (once, from inside the runtime that
    /// serves requests).
    pub fn connect(self: &Arc<Self>) {
        self.connect_at.get_or_init(Instant::now);
        drop(self.client.connect());
        self.ticker.call_once(|| {
            let weak: Weak<RedisLimiter> = Arc::downgrade(self);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut every = tokio::time::interval(TICK);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        let Some(me) = weak.upgrade() else { break };
                        if me.tick() {
                            me.flush().await;
                        }
                    }
                });
            }
        });
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Retires the slices past their expiry (what they did not spend is queued for Redis)
    /// and forgets scopes nobody uses.
    /// Whether the queued returns should go now (their oldest has waited [`RETURN_WAIT`]:
    /// no lease took them along meanwhile).
    fn tick(&self) -> bool {
        let now = Instant::now();
        let mut out = Vec::new();
        lock(&self.scopes).retain(|_, st| {
            let mut cur = lock(&st.cur);
            if let Some(s) = cur.as_ref() {
                if !s.live(now) {
                    s.drain(&st.base, &mut out);
                    *cur = None;
                }
            }
            // Only the map holds a scope nobody is using.
            cur.is_some() || Arc::strong_count(st) > 1
        });
        self.queue(out);
        lock(&self.returns_since).is_some_and(|t| t.elapsed() >= RETURN_WAIT)
    }

    /// Every slice of this node goes back to Redis now (the node stops).
    pub async fn give_back(&self) {
        let mut out = Vec::new();
        for st in lock(&self.scopes).values() {
            if let Some(s) = lock(&st.cur).take() {
                s.drain(&st.base, &mut out);
            }
        }
        self.queue(out);
        self.flush().await;
    }

    fn queue(&self, out: Vec<Ret>) {
        if out.is_empty() {
            return;
        }
        let mut q = lock(&self.returns);
        if q.is_empty() {
            lock(&self.returns_since).get_or_insert_with(Instant::now);
        }
        q.extend(out);
        let over = q.len().saturating_sub(MAX_RETURNS);
        q.drain(..over);
    }

    /// Takes every queued return (to send now).
    fn take_returns(&self) -> Vec<Ret> {
        let mut q = lock(&self.returns);
        *lock(&self.returns_since) = None;
        std::mem::take(&mut *q)
    }

    /// Sends the queued returns (one script; none when nothing is queued).
    async fn flush(&self) {
        let rets = self.take_returns();
        if rets.is_empty() || !self.client.is_connected() {
            self.queue(rets);
            return;
        }
        let mut args = vec![
            "0".into(),
            "0".into(),
            String::new(),
            SHARE.to_string(),
            "-".into(),
        ];
        args[2] = encode_returns(&rets, &mut args).to_string();
        crate::metrics::RATE_LIMIT_LEASES.inc();
        if let Err(e) = self
            .run::<Vec<i64>>(LEASE, &self.check_sha, Vec::new(), args)
            .await
        {
            tracing::debug!(error = %e.0, "rate limits: cannot give slices back yet");
            self.requeue_slots(rets);
        }
    }

    /// A script that may not have run: its slot returns are sent again (a slot removed twice
    /// is removed once); window and burst units are not (the bucket counts them as spent
    /// until it ends, which refuses early, never admits twice).
    fn requeue_slots(&self, rets: Vec<Ret>) {
        self.queue(
            rets.into_iter()
                .filter(|r| matches!(r, Ret::Slot { .. }))
                .collect(),
        );
    }

    fn state(&self, l: &ScopeLimits) -> Arc<ScopeState> {
        let mut map = lock(&self.scopes);
        if let Some(s) = map.get(&l.id) {
            return s.clone();
        }
        let s = Arc::new(ScopeState {
            base: base(&l.id),
            cur: Mutex::new(None),
            leasing: AtomicBool::new(false),
            lease_done: tokio::sync::Notify::new(),
            in_flight: AtomicI64::new(0),
            admitted: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            mark: Mutex::new((Instant::now(), 0, 0)),
        });
        map.insert(l.id.clone(), s.clone());
        s
    }

    /// Gives back what a request held; `true` when it should reach Redis now (the limit is
    /// near), else it goes with the next lease or tick.
    fn release(&self, held: Vec<Held>, actual: u64) -> bool {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut urgent = false;
        for h in held {
            if h.slot.is_some() {
                h.scope.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            let live = h.slice.as_ref().filter(|s| !h.scarce && s.live(now));
            let refund = h.tokens as i64 - actual as i64;
            if h.tpm && refund != 0 {
                match live {
                    Some(s) if s.t.bucket == h.t_bucket => {
                        s.t.left.fetch_add(refund, Ordering::AcqRel);
                    }
                    _ => {
                        out.push(Ret::Window {
                            key: format!("{}:wt:{}", h.scope.base, h.t_bucket),
                            n: refund,
                            keep_ms: MIN_KEEP,
                        });
                        urgent |= h.scarce;
                    }
                }
            }
            if let Some(member) = h.slot {
                match live {
                    Some(s) => s.give_slot(&h.scope.base, member, &mut out),
                    None => {
                        out.push(Ret::Slot {
                            key: format!("{}:c", h.scope.base),
                            member,
                        });
                        urgent |= h.scarce;
                    }
                }
            }
        }
        self.queue(out);
        urgent
    }

    /// Waits up to `grace` for the first connection. fred's `wait_for_connect` reads the state
    /// and then subscribes to the connect notification, so a connection made between the two
    /// is missed and the waiter sleeps out its timeout (and its request would be counted on
    /// this node alone): the state is polled as well.
    async fn await_first_connection(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self.client.is_connected() {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(20));
            if let Ok(Err(_)) = tokio::time::timeout(step, self.client.wait_for_connect()).await {
                // A failed attempt (or a closed channel): the reconnect policy retries.
                tokio::time::sleep(step).await;
            }
        }
    }
    /// Runs `script` by its SHA (loaded once into `sha`), within the configured timeout.
    pub(crate) async fn run<R: FromValue>(
        &self,
        script: &'static str,
        sha: &tokio::sync::OnceCell<String>,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, Unavailable> {
        if !self.client.is_connected() {
            // Until the first connection is up (a short grace after start) checks wait for
            // it; afterwards they fail fast while Redis is away, so fail-open costs no latency.
            let since = self
                .connect_at
                .get()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            let grace = Duration::from_secs(2).saturating_sub(since);
            let up = !self
                .ever_connected
                .load(std::sync::atomic::Ordering::Relaxed)
                && !grace.is_zero()
                && self.await_first_connection(grace).await;
            if !up {
                return Err(Unavailable("not connected".into()));
            }
        }
        self.ever_connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let fut = async {
            if let Some(h) = sha.get() {
                let r: Result<R, Error> = self
                    .client
                    .evalsha(h.as_str(), keys.clone(), args.clone())
                    .await;
                match r {
                    Err(e) if e.details().starts_with("NOSCRIPT") => {}
                    other => return other,
                }
            } else {
                // Load once, off the critical path of later requests.
                let c = self.client.clone();
                let cell_ready = sha.initialized();
                if !cell_ready {
                    if let Ok(h) = c.script_load::<String, _>(script).await {
                        let _ = sha.set(h);
                    }
                }
            }
            self.client.eval(script, keys, args).await
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unavailable(e.to_string())),
            Err(_) => Err(Unavailable("timed out".into())),
        }
    }

    /// One request's check over `scopes` and, when given, the reservation on the budget
    /// windows of `budget` (window keys and their arguments, laid out by
    /// [`super::budget_redis`]). Taken from this node's slices when they all have room and
    /// there is no budget part (no Redis round trip); otherwise one lease script for the
    /// scopes whose slice ran out, with the budget part and the queued returns.
    pub async fn check(
        self: &Arc<Self>,
        scopes: &[ScopeLimits],
        tokens: u64,
        lease_ttl: Duration,
        budget: Option<(&[String], &[String])>,
    ) -> Result<Checked, Unavailable> {
        let now = Instant::now();
        let states: Vec<Arc<ScopeState>> = scopes.iter().map(|l| self.state(l)).collect();
        let mut taken: Vec<Taken> = states
            .iter()
            .zip(scopes)
            .map(|(st, l)| {
                let cur = lock(&st.cur).clone()?;
                let slot = cur.take(l, tokens, now)?;
                Some((cur, slot))
            })
            .collect();
        let mut missing: Vec<usize> = (0..scopes.len()).filter(|i| taken[*i].is_none()).collect();
        // A lease of this node for a scope that ran out is on its way: its slice most likely
        // holds this request too, so wait for it (a few times at most) rather than ask Redis.
        let mut rounds = 0;
        while budget.is_none() && !missing.is_empty() && rounds < 4 {
            let mut waited = false;
            for &i in &missing {
                let st = &states[i];
                if !st.leasing.load(Ordering::Acquire) {
                    continue;
                }
                let done = st.lease_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if st.leasing.load(Ordering::Acquire) {
                    let _ = tokio::time::timeout(self.timeout, done).await;
                    waited = true;
                }
            }
            if !waited {
                break;
            }
            rounds += 1;
            let now = Instant::now();
            for &i in &missing {
                taken[i] = lock(&states[i].cur).clone().and_then(|cur| {
                    let slot = cur.take(&scopes[i], tokens, now)?;
                    Some((cur, slot))
                });
            }
            missing.retain(|i| taken[*i].is_none());
        }
        if missing.is_empty() && budget.is_none() {
            crate::metrics::RATE_LIMIT_SLICE_CHECKS.inc();
            let mut h = RateHeaders::default();
            let mut got = Vec::new();
            for ((st, l), t) in states.iter().zip(scopes).zip(taken) {
                if let Some((slice, slot)) = t {
                    slice.headers(&mut h);
                    got.push((st.clone(), l, Some(slice), slot, None));
                }
            }
            return Ok(Checked::Admitted(self.grant(got, tokens), h));
        }

        let sent_at = Instant::now();
        let prefix = format!("{}.{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed));
        let mut rets = Vec::new();
        let mut leaders: Vec<Option<Leader<'_>>> = Vec::new();
        let mut keys = Vec::with_capacity(missing.len());
        let mut scope_part = Vec::with_capacity(missing.len() * 10);
        let mut wants = Vec::with_capacity(missing.len());
        for &i in &missing {
            let (st, l) = (&states[i], &scopes[i]);
            let lead = st
                .leasing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            let want = if lead {
                // The leader retires the slice it replaces: what is left goes back first.
                if let Some(o) = lock(&st.cur).take() {
                    o.drain(&st.base, &mut rets);
                }
                st.want(sent_at)
            } else {
                (0, 0, 0)
            };
            leaders.push(lead.then_some(Leader(st)));
            wants.push(want);
            keys.push(st.base.clone());
            scope_args(l, tokens, want, &mut scope_part);
        }
        rets.extend(self.take_returns());
        let mut args = vec![
            lease_ttl.as_millis().to_string(),
            missing.len().to_string(),
            String::new(),
            SHARE.to_string(),
            prefix.clone(),
        ];
        args[2] = encode_returns(&rets, &mut args).to_string();
        args.extend(scope_part);
        let (budget_keys, budget_args) = budget.unwrap_or_default();
        keys.extend_from_slice(budget_keys);
        args.extend_from_slice(budget_args);
        crate::metrics::RATE_LIMIT_LEASES.inc();
        let answer = self
            .run::<Vec<i64>>(LEASE, &self.check_sha, keys, args)
            .await;
        let undo = |taken: &mut Vec<Taken>| {
            let mut out = Vec::new();
            for ((st, l), t) in states.iter().zip(scopes).zip(taken.iter_mut()) {
                if let Some((slice, slot)) = t.take() {
                    slice.untake(&st.base, l, tokens, slot, &mut out);
                }
            }
            self.queue(out);
        };
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                undo(&mut taken);
                // The script may have run after all (a timeout): its slots are taken out
                // once Redis answers; the caller decides open or closed.
                let mut out: Vec<Ret> = rets;
                if e.0 != "not connected" {
                    for (k, &i) in missing.iter().enumerate() {
                        if scopes[i].concurrency > 0 {
                            for j in 1..=1 + wants[k].2 as i64 {
                                out.push(Ret::Slot {
                                    key: format!("{}:c", states[i].base),
                                    member: slot_name(&prefix, k + 1, j),
                                });
                            }
                        }
                    }
                }
                self.requeue_slots(out);
                return Err(e);
            }
        };
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let window = || usize::try_from(at(1) - 1).unwrap_or(usize::MAX);
        match at(0) {
            0 => {}
            6 => {
                undo(&mut taken);
                return Ok(Checked::BudgetDenied {
                    index: window(),
                    used: at(2).max(0) as u64,
                    reserved: at(3).max(0) as u64,
                    limit: at(4).max(0) as u64,
                });
            }
            7 => {
                undo(&mut taken);
                return Ok(Checked::BudgetMissing(window()));
            }
            code => {
                let kind = Kind::from_index(code)
                    .ok_or_else(|| Unavailable(format!("unexpected script answer {v:?}")));
                let scope = missing.get(window()).map(|&i| &scopes[i]);
                drop(leaders);
                // A lease of this node may have brought a slice meanwhile: what is in it was
                // taken from the limit already, so it is spent before refusing.
                if budget.is_none() {
                    let now = Instant::now();
                    let mut all = true;
                    for &i in &missing {
                        let t = lock(&states[i].cur).clone().and_then(|cur| {
                            let slot = cur.take(&scopes[i], tokens, now)?;
                            Some((cur, slot))
                        });
                        all &= t.is_some();
                        taken[i] = t;
                    }
                    if all {
                        let mut h = RateHeaders::default();
                        let mut got = Vec::new();
                        for ((st, l), t) in states.iter().zip(scopes).zip(taken) {
                            if let Some((slice, slot)) = t {
                                slice.headers(&mut h);
                                got.push((st.clone(), l, Some(slice), slot, None));
                            }
                        }
                        return Ok(Checked::Admitted(self.grant(got, tokens), h));
                    }
                }
                undo(&mut taken);
                let kind = kind?;
                return Ok(Checked::Limited(Denial {
                    kind,
                    scope: scope.map(|s| s.scope).unwrap_or("global"),
                    limit: at(2).max(0) as u64,
                    retry_after_ms: at(3).max(0) as u64,
                }));
            }
        }
        let redis_now = at(1);
        let mut h = RateHeaders::default();
        let mut got = Vec::new();
        let mut replaced = Vec::new();
        let mut granted: Vec<Option<Direct>> = (0..scopes.len()).map(|_| None).collect();
        for (k, &i) in missing.iter().enumerate() {
            let (st, l) = (&states[i], &scopes[i]);
            let g = Granted::parse(v.get(2 + k * 12..2 + (k + 1) * 12).unwrap_or(&[]));
            let scarce = g.scarce(l, tokens);
            let slot = (g.slots > 0).then(|| slot_name(&prefix, k + 1, 1));
            let slice = if leaders[k].is_some() {
                let mut life = HORIZON;
                let mut bucket_end = |on: bool, bucket: i64, size: i64| {
                    if on {
                        let ms = ((bucket + 1) * size - redis_now).max(0) as u64;
                        life = life.min(Duration::from_millis(ms));
                    }
                };
                bucket_end(l.rps > 0, g.s.1, SEC_BUCKET);
                bucket_end(l.rpm > 0, g.m.1, MIN_BUCKET);
                bucket_end(l.tpm > 0, g.t.1, MIN_BUCKET);
                let window = |w: (i64, i64, i64), need: i64| Window {
                    left: AtomicI64::new((w.0 - need).max(0)),
                    bucket: w.1,
                    after: w.2 - w.0,
                };
                let slice = Arc::new(Slice {
                    limits: l.clone(),
                    expires: sent_at + life,
                    dead: AtomicBool::new(false),
                    s: window(g.s, 1),
                    m: window(g.m, 1),
                    t: window(g.t, if l.tpm > 0 { tokens as i64 } else { 0 }),
                    burst: AtomicI64::new((g.burst - 1).max(0)),
                    slots: Mutex::new(
                        (2..=g.slots)
                            .map(|j| slot_name(&prefix, k + 1, j))
                            .collect(),
                    ),
                    scarce,
                });
                slice.headers(&mut h);
                if let Some(old) = lock(&st.cur).replace(slice.clone()) {
                    replaced.push((st.clone(), old));
                }
                Some(slice)
            } else {
                g.headers(l, &mut h);
                None
            };
            granted[i] = Some((slice, slot, g.t.1, scarce));
        }
        drop(leaders);
        let mut out = Vec::new();
        for (st, old) in replaced {
            old.drain(&st.base, &mut out);
        }
        self.queue(out);
        for (i, ((st, l), t)) in states.iter().zip(scopes).zip(taken).enumerate() {
            if let Some((slice, slot)) = t {
                slice.headers(&mut h);
                got.push((st.clone(), l, Some(slice), slot, None));
            } else if let Some((slice, slot, t_bucket, scarce)) = granted[i].take() {
                got.push((st.clone(), l, slice, slot, Some((t_bucket, scarce))));
            }
        }
        Ok(Checked::Admitted(self.grant(got, tokens), h))
    }

    /// The grant of an admitted request: what it holds of every scope with slots or tokens.
    fn grant(self: &Arc<Self>, got: Vec<Got<'_>>, tokens: u64) -> RedisGrant {
        let mut held = Vec::new();
        for (scope, l, slice, slot, direct) in got {
            scope.admitted.fetch_add(1, Ordering::Relaxed);
            scope.tokens.fetch_add(tokens, Ordering::Relaxed);
            if l.concurrency == 0 && l.tpm == 0 {
                continue;
            }
            let (t_bucket, scarce) = match (&slice, direct) {
                (_, Some(d)) => d,
                (Some(s), None) => (s.t.bucket, s.scarce),
                (None, None) => (0, true),
            };
            if slot.is_some() {
                scope.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            held.push(Held {
                scope,
                slice,
                tpm: l.tpm > 0,
                tokens: if l.tpm > 0 { tokens } else { 0 },
                t_bucket,
                slot,
                scarce,
            });
        }
        RedisGrant {
            limiter: self.clone(),
            held,
            done: false,
        }
    }

    /// Releases the request's slots and refunds its token reservation to `actual`: into this
    /// node's slice while it lives, else to Redis (at once when the limit is near: the
    /// release is then sent on the limiter's connection before this returns, and its answer
    /// awaited in the background, so every later check of this node reaches Redis after it).
    pub async fn finish(grant: &mut RedisGrant, actual: u64) {
        if grant.done {
            return;
        }
        grant.done = true;
        let held = std::mem::take(&mut grant.held);
        if held.is_empty() || !grant.limiter.release(held, actual) {
            return;
        }
        let limiter = grant.limiter.clone();
        if !(limiter.check_sha.initialized() && limiter.client.is_connected()) {
            limiter.flush().await;
            return;
        }
        send_then_detach(Box::pin(async move { limiter.flush().await })).await;
    }
}

/// Polls `fut` once in the calling task (which queues its command on the connection) and
/// leaves the rest (waiting for the answer) to a background task.
async fn send_then_detach(
    mut fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    if first.is_pending() {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(fut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ScopeLimits {
        ScopeLimits {
            scope: "key",
            id: "key:k".into(),
            rps: 0,
            rpm: 100,
            burst: 0,
            burst_interval_ms: 0.0,
            concurrency: 10,
            tpm: 1000,
        }
    }

    fn slice(requests: i64, tokens: i64, slots: usize) -> Slice {
        let now = Instant::now();
        Slice {
            limits: limits(),
            expires: now + HORIZON,
            dead: AtomicBool::new(false),
            s: Window::default(),
            m: Window {
                left: AtomicI64::new(requests),
                bucket: 7,
                after: 50,
            },
            t: Window {
                left: AtomicI64::new(tokens),
                bucket: 7,
                after: 500,
            },
            burst: AtomicI64::new(0),
            slots: Mutex::new((0..slots).map(|i| Arc::from(format!("n.1.{i}"))).collect()),
            scarce: false,
        }
    }

    #[test]
    fn a_slice_admits_what_it_holds_and_no_more() {
        let s = slice(3, 1000, 2);
        let l = limits();
        let now = Instant::now();
        assert!(s.take(&l, 100, now).is_some());
        assert!(s.take(&l, 100, now).is_some());
        // Requests left, but no slot: nothing is taken at all.
        assert!(s.take(&l, 100, now).is_none());
        assert_eq!(s.m.left.load(Ordering::Relaxed), 1);
        assert_eq!(s.t.left.load(Ordering::Relaxed), 800);
        // Another policy, or an expired slice, admits nothing.
        let mut other = limits();
        other.rpm = 50;
        assert!(s.take(&other, 1, now).is_none());
        assert!(s.take(&l, 1, now + HORIZON).is_none());
    }

    #[test]
    fn a_drained_slice_returns_what_it_did_not_spend_once() {
        let s = slice(5, 300, 1);
        let l = limits();
        let slot = s.take(&l, 100, Instant::now()).and_then(|x| x);
        assert!(slot.is_some());
        let mut out = Vec::new();
        s.drain("wharf:rl:key:k", &mut out);
        s.drain("wharf:rl:key:k", &mut out);
        let windows: Vec<(String, i64)> = out
            .iter()
            .filter_map(|r| match r {
                Ret::Window { key, n, .. } => Some((key.clone(), *n)),
                _ => None,
            })
            .collect();
        assert_eq!(
            windows,
            vec![
                ("wharf:rl:key:k:wm:7".to_string(), 4),
                ("wharf:rl:key:k:wt:7".to_string(), 200)
            ]
        );
        // A slot given back to a retired slice goes to Redis.
        let mut later = Vec::new();
        if let Some(m) = slot {
            s.give_slot("wharf:rl:key:k", m, &mut later);
        }
        assert!(matches!(&later[..], [Ret::Slot { key, .. }] if key == "wharf:rl:key:k:c"));
        assert!(s.take(&l, 1, Instant::now()).is_none());
    }

    #[test]
    fn returns_group_slots_by_key() {
        let rets = vec![
            Ret::Slot {
                key: "a:c".into(),
                member: Arc::from("m1"),
            },
            Ret::Window {
                key: "a:wm:3".into(),
                n: -2,
                keep_ms: MIN_KEEP,
            },
            Ret::Slot {
                key: "a:c".into(),
                member: Arc::from("m2"),
            },
        ];
        let mut args = Vec::new();
        assert_eq!(encode_returns(&rets, &mut args), 2);
        assert_eq!(
            args,
            [
                "a:wm:3",
                "w",
                "-2",
                &MIN_KEEP.to_string(),
                "a:c",
                "z",
                "2",
                "m1",
                "m2"
            ]
        );
    }
}
