//! The shared limiter (several nodes): every check is one round trip — one atomic Lua script
//! (`EVALSHA`, falling back to `EVAL` when the server lost its script cache) over all scopes of
//! the request, so that N nodes together admit no more than each limit.
//!
//! Per scope (`wharf:rl:<scope id>`):
//! * `:s` / `:m` — sorted sets of admissions scored by time: exact sliding windows of one second
//!   and one minute;
//! * `:b` — GCRA theoretical arrival time (burst);
//! * `:c` — concurrency leases scored by their expiry, so a node that dies holding leases frees
//!   them after the lease TTL;
//! * `:t` / `:th` / `:tt` — token reservations (time-scored set, tokens per reservation, running
//!   total), refunded to the actual count when the request ends.
//!
//! Time is Redis's own clock (`TIME`), so the nodes' clocks do not matter.

use super::limits::{Denial, Kind, RateHeaders, ScopeLimits};
use fred::prelude::*;
use std::sync::Arc;
use std::time::Duration;

const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
-- The last argument counts the budget windows whose keys follow the limit scopes' keys.
local nb = tonumber(ARGV[#ARGV])
local n = #KEYS - nb
local bo = 3 + 6 * n
local tats = {}
-- Window counts read by the checks: each admission then adds exactly one (fresh) member.
local cs, cm = {}, {}
local function lim(i, k) return tonumber(ARGV[3 + (i - 1) * 6 + k]) end
for i = 1, n do
  local b = KEYS[i]
  local rps, rpm, cap, iv, conc, tpm = lim(i,1), lim(i,2), lim(i,3), lim(i,4), lim(i,5), lim(i,6)
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', b .. ':c', '-inf', now)
    if redis.call('ZCARD', b .. ':c') >= conc then return {1, i, conc, 1000} end
  end
  if cap > 0 then
    local tat = tonumber(redis.call('GET', b .. ':b') or '0')
    if tat < now then tat = now end
    local new = tat + iv
    local allow_at = new - cap * iv
    if allow_at > now then return {2, i, cap, math.ceil(allow_at - now)} end
    tats[i] = new
  end
  if rps > 0 then
    redis.call('ZREMRANGEBYSCORE', b .. ':s', '-inf', now - 1000)
    local c = redis.call('ZCARD', b .. ':s')
    cs[i] = c
    if c >= rps then
      local r = redis.call('ZRANGE', b .. ':s', c - rps, c - rps, 'WITHSCORES')
      return {3, i, rps, math.max(0, tonumber(r[2]) + 1000 - now)}
    end
  end
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', b .. ':m', '-inf', now - 60000)
    local c = redis.call('ZCARD', b .. ':m')
    cm[i] = c
    if c >= rpm then
      local r = redis.call('ZRANGE', b .. ':m', c - rpm, c - rpm, 'WITHSCORES')
      return {4, i, rpm, math.max(0, tonumber(r[2]) + 60000 - now)}
    end
  end
  if tpm > 0 then
    local old = redis.call('ZRANGEBYSCORE', b .. ':t', '-inf', now - 60000, 'LIMIT', 0, 1000)
    if #old > 0 then
      local vals = redis.call('HMGET', b .. ':th', unpack(old))
      local freed = 0
      for _, v in ipairs(vals) do if v then freed = freed + tonumber(v) end end
      redis.call('HDEL', b .. ':th', unpack(old))
      redis.call('ZREM', b .. ':t', unpack(old))
      if freed > 0 then redis.call('DECRBY', b .. ':tt', freed) end
    end
    local sum = tonumber(redis.call('GET', b .. ':tt') or '0')
    if sum < 0 then sum = 0 end
    if sum + tokens > tpm then
      local retry = 60000
      if tokens <= tpm then
        local live = redis.call('ZRANGE', b .. ':t', 0, -1, 'WITHSCORES')
        local s = sum
        for j = 1, #live, 2 do
          s = s - tonumber(redis.call('HGET', b .. ':th', live[j]) or '0')
          if s + tokens <= tpm then retry = tonumber(live[j + 1]) + 60000 - now break end
        end
      end
      return {5, i, tpm, math.max(0, retry)}
    end
  end
end
-- Budget windows (see budget_redis): all must have room before anything is taken.
for j = 1, nb do
  local k = KEYS[n + j]
  if redis.call('EXISTS', k) == 0 then return {7, j} end
  local v = redis.call('HMGET', k, 'used', 'reserved', 'rollover')
  local used, reserved = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  local amount = tonumber(ARGV[bo + 2 + (j - 1) * 3 + 1])
  local limit = tonumber(ARGV[bo + 2 + (j - 1) * 3 + 2]) + tonumber(v[3] or '0')
  if used + reserved + math.max(amount, 1) > limit then return {6, j, used, reserved, limit} end
end
local rl, rr, tl, tr = -1, -1, -1, -1
local rreset = 60000
for i = 1, n do
  local b = KEYS[i]
  local rps, rpm, cap, iv, conc, tpm = lim(i,1), lim(i,2), lim(i,3), lim(i,4), lim(i,5), lim(i,6)
  if conc > 0 then
    redis.call('ZADD', b .. ':c', now + ttl, id)
    redis.call('PEXPIRE', b .. ':c', ttl + 1000)
  end
  if cap > 0 then
    redis.call('SET', b .. ':b', tostring(tats[i]), 'PX', math.ceil(cap * iv) + 1000)
  end
  if rps > 0 then
    redis.call('ZADD', b .. ':s', now, id)
    redis.call('PEXPIRE', b .. ':s', 2000)
  end
  if rpm > 0 then
    redis.call('ZADD', b .. ':m', now, id)
    redis.call('PEXPIRE', b .. ':m', 61000)
    local left = rpm - (cm[i] + 1)
    if rr < 0 or left < rr then rl, rr, rreset = rpm, left, 60000 end
  elseif rps > 0 then
    local left = rps - (cs[i] + 1)
    if rr < 0 or left < rr then rl, rr, rreset = rps, left, 1000 end
  end
  if tpm > 0 then
    redis.call('ZADD', b .. ':t', now, id)
    redis.call('HSET', b .. ':th', id, tokens)
    local sum = redis.call('INCRBY', b .. ':tt', tokens)
    redis.call('PEXPIRE', b .. ':t', 61000)
    redis.call('PEXPIRE', b .. ':th', 61000)
    redis.call('PEXPIRE', b .. ':tt', 61000)
    local left = tpm - sum
    if left < 0 then left = 0 end
    if tr < 0 or left < tr then tl, tr = tpm, left end
  end
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
return {0, rl, rr, rreset, tl, tr}
"#;

const FINISH: &str = r#"
local id = ARGV[1]
local actual = tonumber(ARGV[2])
for i = 1, #KEYS do
  local b = KEYS[i]
  local conc, tpm = tonumber(ARGV[2 + (i - 1) * 2 + 1]), tonumber(ARGV[2 + (i - 1) * 2 + 2])
  if conc > 0 then redis.call('ZREM', b .. ':c', id) end
  if tpm > 0 then
    local old = redis.call('HGET', b .. ':th', id)
    if old then
      redis.call('HSET', b .. ':th', id, actual)
      local sum = redis.call('INCRBY', b .. ':tt', actual - tonumber(old))
      if sum < 0 then redis.call('SET', b .. ':tt', 0, 'KEEPTTL') end
    end
  end
end
return {0}
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

/// Why a Redis check gave no answer.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// The Redis-backed limiter.
pub struct RedisLimiter {
    client: Client,
    timeout: Duration,
    check_sha: tokio::sync::OnceCell<String>,
    finish_sha: tokio::sync::OnceCell<String>,
    ever_connected: std::sync::atomic::AtomicBool,
    connect_at: std::sync::OnceLock<std::time::Instant>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisLimiter")
    }
}

/// What an admitted request holds in Redis: its lease id and the scopes with leases or token
/// reservations. Released explicitly by [`RedisLimiter::finish`]; dropping it unfinished
/// (a path that never reached post-flight) releases in the background.
#[derive(Debug)]
pub struct RedisGrant {
    limiter: Arc<RedisLimiter>,
    id: String,
    /// (base key, concurrency?, tpm?)
    held: Vec<(String, bool, bool)>,
    done: bool,
}

impl Drop for RedisGrant {
    fn drop(&mut self) {
        if self.done || self.held.is_empty() {
            return;
        }
        let (limiter, id, held) = (
            self.limiter.clone(),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.held),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = limiter.finish_raw(&id, &held, 0).await;
            });
        }
    }
}

fn base(id: &str) -> String {
    format!("wharf:rl:{id}")
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
            finish_sha: tokio::sync::OnceCell::new(),
            ever_connected: std::sync::atomic::AtomicBool::new(false),
            connect_at: std::sync::OnceLock::new(),
        }))
    }

    /// Starts the connection task (once, from inside the runtime that serves requests).
    pub fn connect(&self) {
        self.connect_at.get_or_init(std::time::Instant::now);
        drop(self.client.connect());
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
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

    /// The atomic check-and-commit over `scopes` and the budget windows of `budget` (window
    /// keys and their arguments, laid out by [`super::budget_redis`]): one round trip.
    pub async fn check(
        self: &Arc<Self>,
        scopes: &[ScopeLimits],
        tokens: u64,
        lease_ttl: Duration,
        budget: Option<(&[String], &[String])>,
    ) -> Result<Checked, Unavailable> {
        // A lease id only has to be unique: 128 random bits from the thread's generator (no
        // system call per request), in the 32 hex digits a v4 UUID's simple form has.
        let id = format!("{:032x}", rand::random::<u128>());
        let limit_keys: Vec<String> = scopes.iter().map(|s| base(&s.id)).collect();
        let mut keys = limit_keys.clone();
        let mut args = vec![
            id.clone(),
            tokens.to_string(),
            lease_ttl.as_millis().to_string(),
        ];
        for s in scopes {
            args.extend([
                s.rps.to_string(),
                s.rpm.to_string(),
                s.burst.to_string(),
                format!("{:.3}", s.burst_interval_ms),
                s.concurrency.to_string(),
                s.tpm.to_string(),
            ]);
        }
        let (budget_keys, budget_args) = budget.unwrap_or_default();
        keys.extend_from_slice(budget_keys);
        args.extend_from_slice(budget_args);
        args.push(budget_keys.len().to_string());
        let keys_for_release = limit_keys;
        let v: Vec<i64> = match self.run(CHECK, &self.check_sha, keys, args).await {
            Ok(v) => v,
            Err(e) => {
                // The script may have run after all (a timeout): give back whatever it may
                // have taken, in the background; the caller decides open or closed.
                let held: Vec<(String, bool, bool)> = keys_for_release
                    .iter()
                    .zip(scopes)
                    .filter(|(_, s)| s.concurrency > 0 || s.tpm > 0)
                    .map(|(k, s)| (k.clone(), s.concurrency > 0, s.tpm > 0))
                    .collect();
                if !held.is_empty() && self.client.is_connected() {
                    let me = self.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let _ = me.finish_raw(&id, &held, 0).await;
                    });
                }
                return Err(e);
            }
        };
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let window = || usize::try_from(at(1) - 1).unwrap_or(usize::MAX);
        match at(0) {
            6 => {
                return Ok(Checked::BudgetDenied {
                    index: window(),
                    used: at(2).max(0) as u64,
                    reserved: at(3).max(0) as u64,
                    limit: at(4).max(0) as u64,
                })
            }
            7 => return Ok(Checked::BudgetMissing(window())),
            _ => {}
        }
        if at(0) != 0 {
            let kind = Kind::from_index(at(0))
                .ok_or_else(|| Unavailable(format!("unexpected script answer {v:?}")))?;
            let scope = usize::try_from(at(1) - 1)
                .ok()
                .and_then(|i| scopes.get(i))
                .map(|s| s.scope)
                .unwrap_or("global");
            return Ok(Checked::Limited(Denial {
                kind,
                scope,
                limit: at(2).max(0) as u64,
                retry_after_ms: at(3).max(0) as u64,
            }));
        }
        let mut h = RateHeaders::default();
        if at(1) >= 0 {
            h.requests = Some((at(1) as u64, at(2).max(0) as u64, at(3).max(0) as u64));
        }
        if at(4) >= 0 {
            h.tokens = Some((at(4) as u64, at(5).max(0) as u64, 60_000));
        }
        let held = keys_for_release
            .into_iter()
            .zip(scopes)
            .filter(|(_, s)| s.concurrency > 0 || s.tpm > 0)
            .map(|(k, s)| (k, s.concurrency > 0, s.tpm > 0))
            .collect();
        Ok(Checked::Admitted(
            RedisGrant {
                limiter: self.clone(),
                id,
                held,
                done: false,
            },
            h,
        ))
    }

    async fn finish_raw(
        &self,
        id: &str,
        held: &[(String, bool, bool)],
        actual: u64,
    ) -> Result<(), Unavailable> {
        let keys: Vec<String> = held.iter().map(|h| h.0.clone()).collect();
        let mut args = vec![id.to_string(), actual.to_string()];
        for (_, c, t) in held {
            args.push(u8::from(*c).to_string());
            args.push(u8::from(*t).to_string());
        }
        self.run::<Vec<i64>>(FINISH, &self.finish_sha, keys, args)
            .await
            .map(|_| ())
    }

    /// Releases the leases and refunds the token reservation to `actual` (one round trip; none
    /// when the request held nothing).
    ///
    /// Once the release script is loaded and the connection is up, the release is sent on the
    /// limiter's connection before this returns, and its answer is awaited in the background:
    /// every later check of this node reaches Redis after it (one connection, in order), while
    /// the client's connection is not held for the round trip.
    pub async fn finish(grant: &mut RedisGrant, actual: u64) {
        if grant.done {
            return;
        }
        grant.done = true;
        if grant.held.is_empty() {
            return;
        }
        let limiter = grant.limiter.clone();
        if !(limiter.finish_sha.initialized() && limiter.client.is_connected()) {
            // First release (the script is loaded then) or Redis away: wait for the answer.
            if let Err(e) = limiter.finish_raw(&grant.id, &grant.held, actual).await {
                // The leases expire on their own after their TTL.
                tracing::warn!(error = %e.0, "rate limit: cannot release in redis");
            }
            return;
        }
        let (id, held) = (
            std::mem::take(&mut grant.id),
            std::mem::take(&mut grant.held),
        );
        let release = Box::pin(async move {
            if let Err(e) = limiter.finish_raw(&id, &held, actual).await {
                tracing::warn!(error = %e.0, "rate limit: cannot release in redis");
            }
        });
        send_then_detach(release).await;
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
