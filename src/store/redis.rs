//! The shared counter home: every proxy pointing at the same Redis (or
//! Valkey) shares one set of counters, with the in-memory semantics kept
//! exactly.
//!
//! Keys: `PREFIX` + `v2:` (the layout's version) + a hash of the counter's
//! definition (identity, window, scope kind) + `:` + the hex SHA-256 of the
//! scope value (session id, agent, tool, a repeat limit's identical-call
//! key, or nothing). A scope value comes from the wire, so it is never
//! part of a key in the clear: whatever it holds (`:`, `{…}`, a trailing
//! `#n`, 64 KiB), its key is 64 hex digits after the counter's base and
//! cannot name another instance's key, a derived key, another counter's or
//! a shadow policy's (`PREFIX` + `shadowN:`) keys, nor form a Redis
//! Cluster hash tag. Replicas running the same policy share counters and a
//! reload keeps those whose definition did not change. Keys of an older
//! layout (before `v2:`, with the scope value in the clear) are not read:
//! on upgrade the live windows start again from zero, once, and the old
//! keys expire with their windows.
//!
//! - Fixed windows: one hash per counter instance (`s` window start, `n`
//!   total), expiring at the window's end; a clock behind the newest window
//!   counts against it (stricter), as in memory.
//! - Sliding windows (`rate_limit` sliding, `repeat_limit`): a sorted set
//!   per instance, one member per counted call (`NONCE:ID:AMOUNT`, scored by
//!   its call time), pruned to (t − W, t] on every reservation, with its
//!   running total beside it (`KEY#n`, a suffix no instance key can end
//!   in), so a decision costs the entries that left the window, not the
//!   whole log; both expire one window after the last call. (Scripts touch
//!   these derived keys, and one call's keys are in no common slot: a
//!   standalone Redis or Valkey, not a cluster.)
//! - Circuit breakers: a hash (`o` open until, `f` recent failure times,
//!   `t` the half-open trial's start), kept while the circuit is open and a
//!   day past its cooldown. A trial unanswered for 10 minutes is taken as
//!   lost with its proxy, so a crashed replica cannot hold a circuit shut.
//!
//! All of one call's counters are reserved in one server-side script (one
//! round trip per decision; all or nothing, as
//! [`crate::policy::CounterStore::reserve`] requires); settling is a second
//! script. Time is the proxy's clock, passed in (the decision core never
//! reads a clock): replicas should run NTP. Amounts and totals stay within
//! 2^53 − 1 ([`crate::policy::state::MAX_AMOUNT`]), where Lua's numbers
//! are exact: the script refuses an amount or a stored total outside it
//! (as a limit would, never as an unavailable store), so a total another
//! writer left out of range or not a number cannot turn into an uncounted
//! call; a sliding log's running total is then rebuilt from the log.
//!
//! When the store is unreachable or slower than the timeout, a decision
//! gets a [`StoreError`]: the core refuses the call (fail closed) or allows
//! it without counting (fail open), naming
//! [`crate::policy::STORE_UNAVAILABLE_RULE`] either way. The link
//! reconnects by itself (backing off up to 2 s between attempts) and says
//! on stderr when the store goes away and when it is back.

use crate::policy::state::Mark;
use crate::policy::state::{MAX_AMOUNT, ceiling, window_start_of};
use crate::policy::{
    CounterStore, Exhausted, Outcome, Policy, Reservation, ReserveError, StoreError, Want,
};
use crate::policy::{model::CounterDef, model::WindowMode};
use crate::store::resp::{Connection, Reply};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the store is: `redis://[USER:PASSWORD@]HOST[:PORT][/DB]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let bad = |why: &str| {
            format!("invalid state store URL {url:?}: {why} (expected redis://HOST:PORT/DB)")
        };
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("valkey://"))
            .ok_or_else(|| bad("it must start with redis://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse()
                    .map_err(|_| bad("the database must be a number"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [::1]:6379
            let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = if port.is_empty() {
            6379
        } else {
            port.parse().map_err(|_| bad("the port must be a number"))?
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some(("", p)) => (None, Some(p.to_string())),
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(RedisTarget {
            host,
            port,
            db,
            user,
            password,
        })
    }

    /// The URL without its password (for messages).
    pub fn display(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{host}:{}/{}", self.port, self.db)
    }
}

/// How the proxy uses the store.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Prepended to every key (default `flightrec:`).
    pub prefix: String,
    /// Allow calls when the store cannot answer (default: refuse them).
    pub fail_open: bool,
    /// Connect, read and write timeout of one round trip.
    pub timeout: Duration,
}

/// The server-side reservation. Every number it adds is checked first:
/// an amount outside `0..=MAX` (2^53 − 1, [`MAX_AMOUNT`]; Lua numbers are
/// doubles, exact up to there) or a stored total that is not such a number
/// refuses the call like a limit (never a script error, which would be
/// "store unavailable" and, failing open, an uncounted call). A sliding
/// log's running total that is not a valid number is rebuilt from the log.
/// Writes that could still fail are made with `pcall`, and a failure
/// undoes the call's other writes and refuses it.
// The scripts' `MAX` is the core's.
const _: () = assert!(MAX_AMOUNT == 9_007_199_254_740_991);

const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local MAX = 9007199254740991
local function str(x) return string.format('%.0f', x) end
local function amount_of(m) return tonumber(string.match(m, ':(%-?%d+)$')) end
local function valid(x) return x ~= nil and x >= 0 and x <= MAX and x == math.floor(x) end
local function ok(r) return type(r) ~= 'table' or r.err == nil end
local undo = {}
local out = {1}
local function fail(i, retry)
  for j = #undo, 1, -1 do
    local u = undo[j]
    if u[1] == 'F' then redis.pcall('HINCRBY', u[2], 'n', -u[3])
    elseif u[1] == 'S' then
      redis.call('ZREM', u[2], u[3])
      redis.pcall('DECRBY', u[2] .. '#n', u[4])
    else redis.call('HDEL', u[2], 't') end
  end
  return {0, i, retry}
end
-- The amounts in a log, or nil when one is not a valid amount.
local function log_total(key)
  local t = 0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local a = amount_of(m)
    if not valid(a) then return nil end
    t = t + a
  end
  return t
end
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 6
  local kind = ARGV[b + 1]
  local len = tonumber(ARGV[b + 2])
  local amount = tonumber(ARGV[b + 3])
  local max = math.min(tonumber(ARGV[b + 4]), MAX)
  local key = KEYS[i]
  local mark = 0
  if not valid(amount) then return fail(i, -1) end
  if kind == 'F' then
    local cur = tonumber(ARGV[b + 5])
    local h = redis.call('HMGET', key, 's', 'n')
    local s = tonumber(h[1])
    local n = 0
    if h[2] then n = tonumber(h[2]) end
    if s == nil or cur > s then
      s = cur
      n = 0
      redis.call('HSET', key, 's', ARGV[b + 5], 'n', 0)
      redis.call('PEXPIREAT', key, str(math.floor((s + len) / 1000) + 1000))
    end
    if not valid(n) or n > max or amount > max - n then
      return fail(i, math.max(s + len - now, 1))
    end
    if not ok(redis.pcall('HINCRBY', key, 'n', amount)) then return fail(i, -1) end
    redis.call('PEXPIREAT', key, str(math.floor((s + len) / 1000) + 1000))
    undo[#undo + 1] = {'F', key, amount}
    mark = s
  elseif kind == 'S' then
    local tkey = key .. '#n'
    local horizon = str(now - len)
    local total = tonumber(redis.call('GET', tkey) or '0')
    local old = redis.call('ZRANGEBYSCORE', key, '-inf', horizon)
    local dirty = #old > 0
    if dirty then
      for j = 1, #old do
        local a = amount_of(old[j])
        if total and valid(a) then total = total - a else total = nil end
      end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', horizon)
    end
    if not valid(total) then
      total = log_total(key)
      dirty = true
      if not valid(total) then return fail(i, -1) end
    end
    if dirty then redis.call('SET', tkey, str(total), 'KEEPTTL') end
    if total > max or amount > max - total then
      local retry = -1
      if amount <= max then
        local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
        local remaining = total
        for j = 1, #entries, 2 do
          remaining = remaining - amount_of(entries[j])
          if remaining <= max and amount <= max - remaining then
            retry = math.max(tonumber(entries[j + 1]) + len - now, 1)
            break
          end
        end
      end
      return fail(i, retry)
    end
    redis.call('ZADD', key, ARGV[1], ARGV[b + 5])
    if not ok(redis.pcall('INCRBY', tkey, amount)) then
      redis.call('ZREM', key, ARGV[b + 5])
      return fail(i, -1)
    end
    local ttl = str(math.ceil(len / 1000) + 1000)
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', tkey, ttl)
    undo[#undo + 1] = {'S', key, ARGV[b + 5], amount}
  else
    local h = redis.call('HMGET', key, 'o', 't')
    local o = tonumber(h[1])
    local t = tonumber(h[2])
    local stale = tonumber(ARGV[b + 6])
    if o then
      if now < o then return fail(i, o - now) end
      if t and now - t < stale then return fail(i, -1) end
      redis.call('HSET', key, 't', ARGV[1])
      undo[#undo + 1] = {'B', key}
      mark = 1
    end
  end
  out[#out + 1] = str(mark)
end
return out
"#;

/// Settles a call: feeds breakers their outcome, rolls amounts back.
/// Rollbacks use `pcall`, so a total another writer broke cannot stop the
/// call's other keys from settling.
const SETTLE: &str = r#"
local class = ARGV[1]
local rollback = ARGV[2] == '1'
local now = tonumber(ARGV[3])
local function str(x) return string.format('%.0f', x) end
for i = 1, #KEYS do
  local b = 3 + (i - 1) * 6
  local kind = ARGV[b + 1]
  local key = KEYS[i]
  if kind == 'B' then
    local at = tonumber(ARGV[b + 2])
    local trial = ARGV[b + 3] == '1'
    local errors = tonumber(ARGV[b + 4])
    local within = tonumber(ARGV[b + 5])
    local cooldown = tonumber(ARGV[b + 6])
    local h = redis.call('HMGET', key, 'o', 'f')
    local o = tonumber(h[1])
    local f = {}
    if h[2] then for x in string.gmatch(h[2], '[^,]+') do f[#f + 1] = tonumber(x) end end
    if trial then
      redis.call('HDEL', key, 't')
      if class == 'F' then o = at + cooldown; f = {}
      elseif class == 'S' then o = nil; f = {} end
    elseif class == 'F' then
      local pos = #f + 1
      for j = 1, #f do if f[j] > at then pos = j; break end end
      table.insert(f, pos, at)
      local newest = f[#f]
      while #f > 0 and f[1] <= newest - within do table.remove(f, 1) end
      if #f >= errors and o == nil then o = newest + cooldown; f = {} end
    elseif class == 'S' then
      f = {}
    end
    if o then redis.call('HSET', key, 'o', str(o)) else redis.call('HDEL', key, 'o') end
    if #f > 0 then
      local fs = {}
      for j = 1, #f do fs[j] = str(f[j]) end
      redis.call('HSET', key, 'f', table.concat(fs, ','))
    else
      redis.call('HDEL', key, 'f')
    end
    if o then
      redis.call('PEXPIRE', key, str(math.max(math.ceil((o - now) / 1000), 0) + 86400000))
    elseif #f > 0 then
      redis.call('PEXPIRE', key, str(math.ceil(within / 1000) + 1000))
    end
  elseif rollback then
    if kind == 'F' then
      if redis.call('HGET', key, 's') == ARGV[b + 2] then
        redis.pcall('HINCRBY', key, 'n', -tonumber(ARGV[b + 3]))
      end
    elseif redis.call('ZREM', key, ARGV[b + 2]) == 1 then
      redis.pcall('DECRBY', key .. '#n', tonumber(string.match(ARGV[b + 2], ':(%-?%d+)$')))
    end
  end
end
return 1
"#;

/// A server-side script and its SHA-1 once the server told it (`SCRIPT
/// LOAD` answers with it; `EVALSHA` then names the script by it).
struct Script {
    text: &'static str,
    sha: Option<String>,
}

impl Script {
    fn new(text: &'static str) -> Script {
        Script { text, sha: None }
    }
}

/// The connection every generation of one proxy shares, with reconnects.
struct Link {
    config: RedisConfig,
    conn: Option<Connection>,
    /// While the store is away: the error, and when to try again.
    down: Option<(String, Instant, Duration)>,
    reserve: Script,
    settle: Script,
}

impl Link {
    fn connect(&self) -> Result<Connection, String> {
        let t = &self.config.target;
        let mut c = Connection::connect(&t.host, t.port, self.config.timeout)
            .map_err(|e| format!("cannot connect: {e}"))?;
        let check = |r: Reply, what: &str| match r {
            Reply::Error(e) => Err(format!("{what}: {e}")),
            _ => Ok(()),
        };
        if let Some(p) = &t.password {
            let r = match &t.user {
                Some(u) => c.call(&["AUTH", u.as_str(), p.as_str()]),
                None => c.call(&["AUTH", p.as_str()]),
            }
            .map_err(|e| e.to_string())?;
            check(r, "AUTH")?;
        }
        if t.db != 0 {
            let r = c
                .call(&["SELECT", &t.db.to_string()])
                .map_err(|e| e.to_string())?;
            check(r, "SELECT")?;
        }
        Ok(c)
    }

    /// One command, connecting first if needed. Transport errors drop the
    /// connection and mark the store down (reported once); while it is down
    /// and the backoff has not passed, fails at once.
    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        if self.conn.is_none() {
            if let Some((e, retry_at, _)) = &self.down
                && Instant::now() < *retry_at
            {
                return Err(e.clone());
            }
            match self.connect() {
                Ok(c) => self.conn = Some(c),
                Err(e) => return Err(self.went_down(e)),
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        match conn.call(args) {
            Ok(r) => {
                if self.down.take().is_some() {
                    eprintln!(
                        "flightrec: state store {} is reachable again",
                        self.config.target.display()
                    );
                }
                Ok(r)
            }
            Err(e) => {
                self.conn = None;
                Err(self.went_down(e.to_string()))
            }
        }
    }

    fn went_down(&mut self, error: String) -> String {
        let backoff = match &self.down {
            None => {
                eprintln!(
                    "flightrec: state store {} unavailable ({error}); calls are {} until it is back",
                    self.config.target.display(),
                    if self.config.fail_open {
                        "allowed without counting (fail open)"
                    } else {
                        "refused (fail closed)"
                    }
                );
                Duration::from_millis(100)
            }
            Some((_, _, b)) => (*b * 2).min(Duration::from_secs(2)),
        };
        self.down = Some((error.clone(), Instant::now() + backoff, backoff));
        error
    }

    /// Runs a script by its SHA-1, loading it first when the server does
    /// not have it (first use, or a restarted server).
    fn eval(&mut self, settle: bool, keys: &[Vec<u8>], args: &[Vec<u8>]) -> Result<Reply, String> {
        for attempt in 0..2 {
            let script = if settle { &self.settle } else { &self.reserve };
            let (sha, text) = (script.sha.clone(), script.text);
            let sha = match sha {
                Some(sha) => sha,
                None => {
                    let sha = match self.call(&[b"SCRIPT", b"LOAD", text.as_bytes()])? {
                        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                        Reply::Error(e) => return Err(format!("SCRIPT LOAD: {e}")),
                        other => return Err(format!("SCRIPT LOAD answered {other:?}")),
                    };
                    let script = if settle {
                        &mut self.settle
                    } else {
                        &mut self.reserve
                    };
                    script.sha = Some(sha.clone());
                    sha
                }
            };
            let nkeys = keys.len().to_string();
            let mut argv: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), nkeys.as_bytes()];
            argv.extend(keys.iter().map(Vec::as_slice));
            argv.extend(args.iter().map(Vec::as_slice));
            match self.call(&argv)? {
                Reply::Error(e) if e.starts_with("NOSCRIPT") && attempt == 0 => {
                    let script = if settle {
                        &mut self.settle
                    } else {
                        &mut self.reserve
                    };
                    script.sha = None;
                }
                Reply::Error(e) => return Err(format!("script error: {e}")),
                r => return Ok(r),
            }
        }
        Err("the server keeps forgetting the script (NOSCRIPT)".into())
    }
}

/// A half-open circuit's trial call unanswered for this long is taken as
/// lost (the proxy that let it through died) and another trial may go
/// through. Longer than the default `--upstream-timeout` (5 min), after
/// which a live proxy settles the trial itself as `timeout`.
const STALE_TRIAL_US: i64 = 10 * 60 * 1_000_000;

/// The key layout's version, right after the prefix: keys of another
/// layout (an older flightrec's scope values in the clear) are never read
/// as this one's. A change of layout changes it.
const KEY_LAYOUT: &str = "v2:";

/// What the store needs to know of one counter of the policy.
#[derive(Debug, Clone)]
struct Def {
    /// `PREFIX` + [`KEY_LAYOUT`] + hash of the definition + `:`.
    base: String,
    len_us: i64,
    mode: WindowMode,
}

/// A policy's counters in Redis.
pub struct RedisStore {
    link: Arc<Mutex<Link>>,
    defs: Vec<Def>,
    /// Distinguishes this process's sliding-log members from other
    /// replicas'.
    nonce: Arc<str>,
    next_id: Arc<AtomicU64>,
}

impl RedisStore {
    /// The store for `policy`; connects lazily (a store that is down at
    /// start is reported by the first decision, not fatal).
    pub fn new(config: RedisConfig, policy: &Policy) -> RedisStore {
        let nonce: String = {
            let mut h = Sha256::new();
            h.update(std::process::id().to_le_bytes());
            h.update(crate::time::now_us().to_le_bytes());
            h.update(uuid::Uuid::now_v7().as_bytes());
            hex(&h.finalize()[..6])
        };
        let link = Link {
            conn: None,
            down: None,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            config,
        };
        let link = Arc::new(Mutex::new(link));
        RedisStore::with_link(link, policy, Arc::from(nonce), Arc::new(AtomicU64::new(0)))
    }

    fn with_link(
        link: Arc<Mutex<Link>>,
        policy: &Policy,
        nonce: Arc<str>,
        next_id: Arc<AtomicU64>,
    ) -> RedisStore {
        let prefix = lock(&link).config.prefix.clone();
        let defs = policy
            .counters()
            .iter()
            .map(|d| Def {
                base: format!("{prefix}{KEY_LAYOUT}{}:", def_hash(d)),
                len_us: d.window.len_us,
                mode: d.window.mode,
            })
            .collect();
        RedisStore {
            link,
            defs,
            nonce,
            next_id,
        }
    }

    /// Checks the store answers (`PING`), for a clear message at start.
    pub fn ping(&self) -> Result<(), String> {
        match lock(&self.link).call(&[b"PING"])? {
            Reply::Error(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn unavailable(&self, error: &str) -> StoreError {
        let link = lock(&self.link);
        StoreError {
            message: Arc::from(format!(
                "The rate-limit state store {} is unavailable ({error}): {}",
                link.config.target.display(),
                if link.config.fail_open {
                    "call allowed without counting (fail open)"
                } else {
                    "call refused (fail closed)"
                }
            )),
            fail_open: link.config.fail_open,
        }
    }

    /// The key of one counter instance: the counter's base and the hex
    /// SHA-256 of the scope value, never the value itself, so no value
    /// (from the wire: a session id, an agent's name) can name another
    /// key, reach a derived key (`#n`), or carry a hash tag.
    fn key(&self, counter: usize, scope: &str) -> Vec<u8> {
        let base = self.defs[counter].base.as_bytes();
        let mut k = Vec::with_capacity(base.len() + 64);
        k.extend_from_slice(base);
        push_hex(&mut k, &Sha256::digest(scope.as_bytes()));
        k
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// A short, stable name for a counter definition: what reloads and
/// replicas compare (as [`crate::policy::PolicyState::migrate`] does).
fn def_hash(d: &CounterDef) -> String {
    let mut h = Sha256::new();
    h.update(d.identity.as_bytes());
    h.update([0x1f]);
    h.update(d.window.len_us.to_le_bytes());
    h.update(format!("{:?}", d.window.mode).as_bytes());
    h.update([0x1f]);
    h.update(d.scope.as_str().as_bytes());
    hex(&h.finalize()[..8])
}

impl CounterStore for RedisStore {
    fn read(&mut self, counter: usize, scope: &str, now_us: i64) -> Result<i64, StoreError> {
        let def = self.defs[counter].clone();
        let key = self.key(counter, scope);
        let reply = match def.mode {
            WindowMode::Breaker { .. } => return Ok(0),
            WindowMode::Fixed => lock(&self.link).call(&[b"HMGET", &key, b"s", b"n"]),
            WindowMode::Sliding => {
                let horizon = format!("({}", now_us - def.len_us);
                lock(&self.link).call(&[b"ZRANGEBYSCORE", &key, horizon.as_bytes(), b"+inf"])
            }
        };
        let reply = reply.map_err(|e| self.unavailable(&e))?;
        let items = match reply {
            Reply::Array(Some(items)) => items,
            Reply::Error(e) => return Err(self.unavailable(&e)),
            _ => return Ok(0),
        };
        Ok(match def.mode {
            WindowMode::Fixed => {
                let start = items.first().and_then(Reply::as_int);
                let total = items.get(1).and_then(Reply::as_int).unwrap_or(0);
                match start {
                    Some(s) if s >= window_start_of(now_us, def.len_us) => total,
                    _ => 0,
                }
            }
            // Members come from the store: added without overflowing.
            _ => items
                .iter()
                .filter_map(|m| match m {
                    Reply::Bulk(Some(b)) => member_amount(b),
                    _ => None,
                })
                .fold(0i64, i64::saturating_add),
        })
    }

    fn reserve(&mut self, wants: &[Want<'_>], now_us: i64) -> Result<Reservation, ReserveError> {
        if wants.is_empty() {
            return Ok(Reservation::default());
        }
        let mut keys = Vec::with_capacity(wants.len());
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(1 + wants.len() * 6);
        args.push(now_us.to_string().into_bytes());
        let mut ids = Vec::with_capacity(wants.len());
        for w in wants {
            let def = &self.defs[w.counter];
            keys.push(self.key(w.counter, w.scope));
            let (kind, extra1, extra2, id) = match def.mode {
                WindowMode::Fixed => (
                    "F",
                    window_start_of(now_us, def.len_us).to_string(),
                    String::new(),
                    0,
                ),
                WindowMode::Sliding => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    (
                        "S",
                        format!("{}:{id}:{}", self.nonce, w.amount),
                        String::new(),
                        id,
                    )
                }
                WindowMode::Breaker { .. } => ("B", String::new(), STALE_TRIAL_US.to_string(), 0),
            };
            ids.push(id);
            args.push(kind.into());
            args.push(def.len_us.to_string().into_bytes());
            args.push(w.amount.to_string().into_bytes());
            args.push(ceiling(w.max).to_string().into_bytes());
            args.push(extra1.into_bytes());
            args.push(extra2.into_bytes());
        }
        let reply = lock(&self.link).eval(false, &keys, &args);
        let items = match reply {
            Ok(Reply::Array(Some(items))) => items,
            Ok(other) => {
                return Err(ReserveError::Unavailable(
                    self.unavailable(&format!("unexpected reply {other:?}")),
                ));
            }
            Err(e) => return Err(ReserveError::Unavailable(self.unavailable(&e))),
        };
        let ints: Vec<i64> = items.iter().map(|r| r.as_int().unwrap_or(0)).collect();
        if ints.first() != Some(&1) {
            let index = ints.get(1).copied().unwrap_or(1).max(1) as usize - 1;
            let retry = ints.get(2).copied().unwrap_or(-1);
            return Err(ReserveError::Exhausted(Exhausted {
                index,
                retry_after_us: (retry >= 0).then_some(retry),
            }));
        }
        let mut reservation = Reservation::default();
        for (i, w) in wants.iter().enumerate() {
            let mark_value = ints.get(i + 1).copied().unwrap_or(0);
            let mark = match self.defs[w.counter].mode {
                WindowMode::Fixed => Mark::Window(mark_value),
                WindowMode::Sliding => Mark::Entry(ids[i]),
                WindowMode::Breaker { .. } => Mark::Breaker {
                    at: now_us,
                    trial: mark_value == 1,
                },
            };
            reservation.push(w.counter, Arc::from(w.scope), w.amount, mark);
        }
        Ok(reservation)
    }

    fn settle(&mut self, reservation: Reservation, outcome: Outcome) {
        let rollback = outcome.rolls_back();
        if !rollback && !reservation.has_breaker() {
            return; // kept counts: nothing to tell the store
        }
        let class = if outcome.is_failure() {
            "F"
        } else if outcome == Outcome::Ok {
            "S"
        } else {
            "N"
        };
        let mut keys = Vec::new();
        let mut args: Vec<Vec<u8>> = vec![
            class.into(),
            if rollback { "1" } else { "0" }.into(),
            crate::time::now_us().to_string().into_bytes(),
        ];
        for (counter, scope, amount, mark) in reservation.items() {
            let Some(def) = self.defs.get(counter) else {
                continue;
            };
            let fields: [String; 6] = match (mark, def.mode) {
                (
                    Mark::Breaker { at, trial },
                    WindowMode::Breaker {
                        errors,
                        cooldown_us,
                    },
                ) => [
                    "B".into(),
                    at.to_string(),
                    if trial { "1" } else { "0" }.into(),
                    errors.to_string(),
                    def.len_us.to_string(),
                    cooldown_us.to_string(),
                ],
                (Mark::Window(start), _) if rollback => [
                    "F".into(),
                    start.to_string(),
                    amount.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                (Mark::Entry(id), _) if rollback => [
                    "S".into(),
                    format!("{}:{id}:{amount}", self.nonce),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                _ => continue,
            };
            keys.push(self.key(counter, scope));
            args.extend(fields.map(String::into_bytes));
        }
        if keys.is_empty() {
            return;
        }
        if let Err(e) = lock(&self.link).eval(true, &keys, &args) {
            // The counts stay as reserved (stricter); a breaker misses this
            // outcome. Said, never silent.
            eprintln!(
                "flightrec: state store: the outcome `{}` of a call could not be settled ({e}); its counts stay",
                outcome.as_str()
            );
        }
    }

    fn sweep(&mut self, _now_us: i64) {
        // Keys expire with their windows in the store.
    }

    fn successor(&mut self, _old: &Policy, new: &Policy) -> Box<dyn CounterStore + Send> {
        // Keys are named by the counter's definition: unchanged counters
        // are the same keys under the new policy.
        Box::new(RedisStore::with_link(
            self.link.clone(),
            new,
            self.nonce.clone(),
            self.next_id.clone(),
        ))
    }
}

/// Locks the link, ignoring poisoning (a panic elsewhere must not stop
/// decisions).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The amount of a sliding-log member `NONCE:ID:AMOUNT`.
fn member_amount(m: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(m).ok()?;
    s.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_auth_and_ipv6() {
        let t = RedisTarget::parse("redis://127.0.0.1:6390/2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("127.0.0.1", 6390, 2));
        let t = RedisTarget::parse("redis://localhost").unwrap();
        assert_eq!((t.port, t.db), (6379, 0));
        let t = RedisTarget::parse("redis://:secret@[::1]:7000/0").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.password.as_deref(), Some("secret"));
        assert_eq!(t.display(), "redis://[::1]:7000/0");
        let t = RedisTarget::parse("redis://me:pw@h:1/3").unwrap();
        assert_eq!(t.user.as_deref(), Some("me"));
        for bad in ["http://x", "redis://", "redis://h:port", "redis://h:1/db"] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    /// Every scope value, however hostile, gets a key of its own of one
    /// length, which no other value's key, derived key (`#n`) or shadow
    /// policy's key equals or contains.
    #[test]
    fn scope_values_never_reach_keys_in_the_clear() {
        let policy = Policy::from_yaml(
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        rate_limit: {max: 3, window: 10m, per: session, mode: sliding}\n",
            "p.yaml",
        )
        .unwrap()
        .0;
        let store = |prefix: &str| {
            RedisStore::new(
                RedisConfig {
                    target: RedisTarget::parse("redis://127.0.0.1:1").unwrap(),
                    prefix: prefix.into(),
                    fail_open: false,
                    timeout: Duration::from_millis(10),
                },
                &policy,
            )
        };
        let (enforced, shadow) = (store("p:"), store("p:shadow0:"));
        let victim = enforced.key(0, "v");
        let long = "x".repeat(64 * 1024);
        let hostile = ["v#n", "v#n#n", "v:", ":v", "{v}", "a{b}c", "}{", "", &long];
        let mut keys = vec![victim.clone(), shadow.key(0, "v")];
        for value in hostile {
            keys.push(enforced.key(0, value));
            keys.push(shadow.key(0, value));
        }
        let derived: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| [k.as_slice(), b"#n"].concat())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(k.starts_with(b"p:v2:") || k.starts_with(b"p:shadow0:v2:"));
            assert!(!k.contains(&b'{') && !k.contains(&b'#'), "{i}");
            assert!(!derived.contains(k), "{i}");
            for (j, other) in keys.iter().enumerate() {
                assert!(i == j || k != other, "{i} and {j}");
            }
        }
        assert_eq!(
            std::str::from_utf8(&victim).unwrap(),
            format!(
                "p:v2:{}:{}",
                def_hash(&policy.counters()[0]),
                hex(&Sha256::digest(b"v"))
            )
        );
    }

    #[test]
    fn member_amounts() {
        assert_eq!(member_amount(b"ab12:7:3"), Some(3));
        assert_eq!(member_amount(b"ab12:7:-2"), Some(-2));
        assert_eq!(member_amount(b"junk"), None);
    }
}
