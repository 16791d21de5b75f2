//! Programmable filters: Lua 5.4 scripts (vendored interpreter, built from source by cargo).
//!
//! Each worker thread keeps its own Lua state per script (Lua states are not `Sync`), built on
//! first use and rebuilt when the script changes: a call never waits for a lock. A script is
//! compiled and run once when the configuration loads (so a broken script fails `wharf check`),
//! and again whenever its file changes; a version that fails to load is reported (log and
//! `wharf_filter_script_reloads_total{result="error"}`) and the previous version keeps running.
//!
//! Sandbox: only the `string`, `table`, `math` and `utf8` libraries; no `io`, `os`, `package`,
//! `require`, `debug`, `dofile`, `loadfile`, `load`, `collectgarbage` or `string.dump`; chunks
//! are loaded as text only (bytecode is refused). Every call is bounded by an instruction
//! budget and a wall-clock deadline (checked by a count hook every 1000 instructions) and every
//! state by a memory limit. `pcall`/`xpcall` cannot swallow a tripped limit or a block.
//! See `filters/README.md` for the contract scripts are written against.

use super::{Action, Block, Filter, FilterError, Phase, PhaseSet, Request, Response, ResponsePart};
use crate::metrics;
use arc_swap::ArcSwap;
use mlua::{
    ChunkMode, Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table,
    VmState,
};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Instructions between two checks of the budget and the deadline.
const HOOK_STEP: u32 = 1000;
/// Compiled `wharf.regex_*` patterns kept per state.
const REGEX_CACHE: usize = 64;
/// Longest `wharf.regex_*` pattern.
const REGEX_MAX_PATTERN: usize = 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Per-state resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lua VM instructions per call (and for loading the script).
    pub instructions: u64,
    /// Bytes the state may allocate.
    pub memory: usize,
    /// Wall-clock bound per call.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            instructions: 1_000_000,
            memory: 16 * 1024 * 1024,
            timeout: Duration::from_millis(50),
        }
    }
}

/// One loaded version of a script.
#[derive(Debug)]
struct Version {
    id: u64,
    source: Arc<str>,
    phases: PhaseSet,
}

/// A script file, its current version, and what the watcher last saw.
#[derive(Debug)]
pub struct Script {
    uid: u64,
    /// The filter's name (logs, metrics).
    pub name: String,
    pub path: PathBuf,
    limits: Limits,
    vars: Value,
    current: ArcSwap<Version>,
    /// (modified, length) of the file when last read.
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Why the last reload failed, if it did.
    last_error: Mutex<Option<String>>,
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Script {
    /// Reads, compiles and runs the script once; `Err` says why it cannot be used.
    pub fn load(
        name: &str,
        path: &Path,
        limits: Limits,
        vars: Value,
    ) -> Result<Arc<Script>, String> {
        let stamp = file_stamp(path);
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut script = Script {
            uid: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            path: path.to_path_buf(),
            limits,
            vars,
            current: ArcSwap::from_pointee(Version {
                id: 0,
                source: Arc::from(""),
                phases: PhaseSet::default(),
            }),
            stamp: Mutex::new(stamp),
            last_error: Mutex::new(None),
        };
        let version = script.compile(source)?;
        script.current = ArcSwap::from_pointee(version);
        Ok(Arc::new(script))
    }

    /// A script from source text (tests, benches): no file, never reloaded.
    pub fn from_source(
        name: &str,
        source: &str,
        limits: Limits,
        vars: Value,
    ) -> Result<Arc<Script>, String> {
        let mut script = Script {
            uid: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            path: PathBuf::new(),
            limits,
            vars,
            current: ArcSwap::from_pointee(Version {
                id: 0,
                source: Arc::from(""),
                phases: PhaseSet::default(),
            }),
            stamp: Mutex::new(None),
            last_error: Mutex::new(None),
        };
        let version = script.compile(source.to_string())?;
        script.current = ArcSwap::from_pointee(version);
        Ok(Arc::new(script))
    }

    fn compile(&self, source: String) -> Result<Version, String> {
        let source: Arc<str> = Arc::from(source);
        let state = State::build(self, &source).map_err(|e| e.message)?;
        let mut phases = PhaseSet::default();
        for p in Phase::ALL {
            if state.fns[p as usize].is_some() {
                phases.insert(p);
            }
        }
        if phases.is_empty() {
            return Err(
                "the script defines none of pre_route, pre_upstream, post_upstream, post_response"
                    .to_string(),
            );
        }
        Ok(Version {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            source,
            phases,
        })
    }

    /// The phases the current version defines.
    pub fn phases(&self) -> PhaseSet {
        self.current.load().phases
    }

    /// The error of the last failed reload (`None` when the current file is the one running).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// Reloads the script when its file changed; a version that fails to load is reported and
    /// the running one stays.
    pub fn refresh(&self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let now = file_stamp(&self.path);
        {
            let Ok(mut g) = self.stamp.lock() else {
                return;
            };
            if now.is_none() || *g == now {
                return;
            }
            *g = now;
        }
        let result = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))
            .and_then(|src| self.compile(src));
        match result {
            Ok(v) => {
                let phases = v.phases;
                self.current.store(Arc::new(v));
                if let Ok(mut g) = self.last_error.lock() {
                    *g = None;
                }
                metrics::FILTER_SCRIPT_RELOADS
                    .with_label_values(&[&self.name, "ok"])
                    .inc();
                metrics::FILTER_SCRIPT_HEALTHY
                    .with_label_values(&[&self.name])
                    .set(1);
                tracing::info!(filter = %self.name, path = %self.path.display(), phases = ?phases.names(), "filter script reloaded");
            }
            Err(e) => {
                metrics::FILTER_SCRIPT_RELOADS
                    .with_label_values(&[&self.name, "error"])
                    .inc();
                metrics::FILTER_SCRIPT_HEALTHY
                    .with_label_values(&[&self.name])
                    .set(0);
                tracing::error!(filter = %self.name, path = %self.path.display(), error = %e, "filter script failed to load; the previous version keeps running");
                if let Ok(mut g) = self.last_error.lock() {
                    *g = Some(e);
                }
            }
        }
    }
}

/// Per-call bookkeeping shared with the hook and the `wharf` helpers.
struct Host {
    count: Cell<u64>,
    limit: Cell<u64>,
    deadline: Cell<Instant>,
    /// Which limit tripped during the current call.
    tripped: Cell<Option<&'static str>>,
    block: RefCell<Option<Block>>,
    regexes: RefCell<HashMap<String, regex::Regex>>,
}

impl Host {
    fn begin(&self, limits: &Limits) {
        self.count.set(0);
        self.limit.set(limits.instructions);
        self.deadline.set(Instant::now() + limits.timeout);
        self.tripped.set(None);
        self.block.borrow_mut().take();
    }

    fn regex(&self, pattern: &str) -> mlua::Result<regex::Regex> {
        if let Some(r) = self.regexes.borrow().get(pattern) {
            return Ok(r.clone());
        }
        if pattern.len() > REGEX_MAX_PATTERN {
            return Err(mlua::Error::runtime("wharf.regex: pattern too long"));
        }
        let r = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .dfa_size_limit(1 << 20)
            .build()
            .map_err(|e| mlua::Error::runtime(format!("wharf.regex: {e}")))?;
        let mut cache = self.regexes.borrow_mut();
        if cache.len() >= REGEX_CACHE {
            cache.clear();
        }
        cache.insert(pattern.to_string(), r.clone());
        Ok(r)
    }
}

/// A script's Lua state on one thread.
struct State {
    version: u64,
    lua: Lua,
    fns: [Option<Function>; 4],
    host: Rc<Host>,
    owner: Weak<Script>,
}

fn lua_err(kind: &'static str, e: impl std::fmt::Display) -> FilterError {
    FilterError::new(kind, e.to_string())
}

impl State {
    fn build(script: &Script, source: &str) -> Result<State, FilterError> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
            LuaOptions::new(),
        )
        .map_err(|e| lua_err("load", e))?;
        let host = Rc::new(Host {
            count: Cell::new(0),
            limit: Cell::new(script.limits.instructions),
            deadline: Cell::new(Instant::now() + script.limits.timeout),
            tripped: Cell::new(None),
            block: RefCell::new(None),
            regexes: RefCell::new(HashMap::new()),
        });
        install(&lua, script, &host).map_err(|e| lua_err("load", e))?;
        lua.set_memory_limit(script.limits.memory)
            .map_err(|e| lua_err("load", e))?;
        let h = host.clone();
        lua.set_hook(
            HookTriggers {
                every_nth_instruction: Some(HOOK_STEP),
                ..Default::default()
            },
            move |_, _| {
                let n = h.count.get() + u64::from(HOOK_STEP);
                h.count.set(n);
                if n > h.limit.get() {
                    h.tripped.set(Some("instructions"));
                    return Err(mlua::Error::runtime("instruction limit exceeded"));
                }
                if Instant::now() > h.deadline.get() {
                    h.tripped.set(Some("timeout"));
                    return Err(mlua::Error::runtime("time limit exceeded"));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(|e| lua_err("load", e))?;
        host.begin(&script.limits);
        let chunk_name = if script.path.as_os_str().is_empty() {
            format!("={}", script.name)
        } else {
            format!("@{}", script.path.display())
        };
        let r = lua
            .load(source)
            .set_name(chunk_name)
            .set_mode(ChunkMode::Text)
            .exec();
        if let Err(e) = r {
            return Err(classify(&host, &e, "load"));
        }
        let g = lua.globals();
        let mut fns: [Option<Function>; 4] = [None, None, None, None];
        for p in Phase::ALL {
            fns[p as usize] = g.get::<Option<Function>>(p.as_str()).map_err(|_| {
                FilterError::new("load", format!("`{}` must be a function", p.as_str()))
            })?;
        }
        Ok(State {
            version: 0,
            lua,
            fns,
            host,
            owner: Weak::new(),
        })
    }
}

/// The kind of a failed call: a tripped limit, a memory error, or a script error.
fn classify(host: &Host, e: &mlua::Error, default: &'static str) -> FilterError {
    if let Some(kind) = host.tripped.get() {
        return FilterError::new(kind, format!("{kind} limit exceeded"));
    }
    if is_memory(e) {
        return FilterError::new("memory", "memory limit exceeded");
    }
    let msg = e.to_string();
    let first = msg.lines().next().unwrap_or("").to_string();
    FilterError::new(if default == "load" { "load" } else { "runtime" }, first)
}

fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        _ => e.to_string().contains("not enough memory"),
    }
}

/// Removes what a sandboxed script must not reach and installs the `wharf` helpers.
fn install(lua: &Lua, script: &Script, host: &Rc<Host>) -> mlua::Result<()> {
    let g = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "collectgarbage",
        "require",
        "module",
    ] {
        g.set(name, mlua::Nil)?;
    }
    let string: Table = g.get("string")?;
    string.set("dump", mlua::Nil)?;

    let w = lua.create_table()?;
    let name = script.name.clone();
    w.set(
        "log",
        lua.create_function(move |_, args: MultiValue| {
            let parts: Vec<String> = args
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| "?".to_string()))
                .collect();
            let (level, msg) = match parts.as_slice() {
                [l, rest @ ..]
                    if !rest.is_empty()
                        && ["debug", "info", "warn", "error"].contains(&l.as_str()) =>
                {
                    (l.clone(), rest.join(" "))
                }
                _ => ("info".to_string(), parts.join(" ")),
            };
            let msg: String = msg.chars().take(2000).collect();
            match level.as_str() {
                "debug" => tracing::debug!(filter = %name, "{msg}"),
                "warn" => tracing::warn!(filter = %name, "{msg}"),
                "error" => tracing::error!(filter = %name, "{msg}"),
                _ => tracing::info!(filter = %name, "{msg}"),
            }
            Ok(())
        })?,
    )?;
    let h = host.clone();
    w.set(
        "block",
        lua.create_function(
            move |_, (status, code, message): (Option<u16>, Option<String>, Option<String>)| {
                *h.block.borrow_mut() =
                    Some(Block::new(status, code.as_deref(), message.as_deref()));
                Err::<(), _>(mlua::Error::runtime("blocked by wharf.block"))
            },
        )?,
    )?;
    w.set(
        "json_encode",
        lua.create_function(|lua, v: mlua::Value| {
            let j: Value = lua.from_value(v)?;
            Ok(j.to_string())
        })?,
    )?;
    w.set(
        "json_decode",
        lua.create_function(|lua, s: mlua::String| {
            let j: Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("wharf.json_decode: {e}")))?;
            lua.to_value(&j)
        })?,
    )?;
    let h = host.clone();
    w.set(
        "regex_match",
        lua.create_function(move |_, (p, s): (String, mlua::String)| {
            let r = h.regex(&p)?;
            Ok(r.is_match(&s.to_str()?))
        })?,
    )?;
    let h = host.clone();
    w.set(
        "regex_find",
        lua.create_function(move |_, (p, s): (String, mlua::String)| {
            let r = h.regex(&p)?;
            let s = s.to_str()?;
            Ok(r.find(&s).map(|m| m.as_str().to_string()))
        })?,
    )?;
    let h = host.clone();
    w.set(
        "regex_replace",
        lua.create_function(move |_, (p, s, rep): (String, mlua::String, String)| {
            let r = h.regex(&p)?;
            let s = s.to_str()?;
            Ok(r.replace_all(&s, rep.as_str()).into_owned())
        })?,
    )?;
    w.set("vars", lua.to_value(&script.vars)?)?;
    w.set("null", lua.null())?;
    g.set("wharf", w)?;
    g.set(
        "print",
        lua.load("return function(...) wharf.log(...) end")
            .eval::<Function>()?,
    )?;

    // pcall/xpcall must not swallow a tripped limit or a block.
    let h = host.clone();
    let check = lua.create_function(move |_, args: MultiValue| {
        if let Some(kind) = h.tripped.get() {
            return Err(mlua::Error::runtime(format!("{kind} limit exceeded")));
        }
        if h.block.borrow().is_some() {
            return Err(mlua::Error::runtime("blocked by wharf.block"));
        }
        Ok(args)
    })?;
    let wrap: Function = lua
        .load(
            "local chk = ...
             local p, xp = pcall, xpcall
             pcall = function(...) return chk(p(...)) end
             xpcall = function(...) return chk(xp(...)) end",
        )
        .set_mode(ChunkMode::Text)
        .into_function()?;
    wrap.call::<()>(check)?;
    Ok(())
}

thread_local! {
    static STATES: RefCell<HashMap<u64, State>> = RefCell::new(HashMap::new());
}

/// A configured Lua filter.
#[derive(Debug)]
pub struct LuaFilter {
    pub script: Arc<Script>,
    phases: PhaseSet,
}

impl LuaFilter {
    pub fn new(script: Arc<Script>, phases: PhaseSet) -> LuaFilter {
        LuaFilter { script, phases }
    }

    /// Runs `f` with this thread's state for the script (built or rebuilt as needed). A state
    /// whose call tripped a limit or ran out of memory is dropped.
    fn with_state<R>(
        &self,
        f: impl FnOnce(&State) -> Result<R, FilterError>,
    ) -> Result<R, FilterError> {
        let version = self.script.current.load_full();
        let uid = self.script.uid;
        let taken = STATES.with(|s| s.borrow_mut().remove(&uid));
        let state = match taken {
            Some(st) if st.version == version.id => st,
            _ => {
                let mut st = State::build(&self.script, &version.source)?;
                st.version = version.id;
                st.owner = Arc::downgrade(&self.script);
                st
            }
        };
        let r = f(&state);
        let poisoned =
            state.host.tripped.get().is_some() || matches!(&r, Err(e) if e.kind == "memory");
        if !poisoned {
            STATES.with(|s| {
                let mut m = s.borrow_mut();
                // States of scripts no longer configured are dropped here.
                m.retain(|_, st| st.owner.strong_count() > 0);
                m.insert(uid, state);
            });
        }
        r
    }

    fn call(
        &self,
        state: &State,
        phase: Phase,
        args: impl mlua::IntoLuaMulti,
    ) -> Result<(), FilterError> {
        let Some(f) = &state.fns[phase as usize] else {
            return Ok(());
        };
        state.host.begin(&self.script.limits);
        let r = f.call::<()>(args);
        if state.host.block.borrow().is_some() {
            return Ok(());
        }
        r.map_err(|e| classify(&state.host, &e, "runtime"))
    }
}

impl LuaFilter {
    /// Calls the script's request function on a view of `req`: `Ok(table)` to read changes
    /// back from, or `Err(action)` when there is nothing more to do (no such function, or a
    /// block).
    fn call_request(
        &self,
        st: &State,
        phase: Phase,
        req: &Request,
    ) -> Result<Result<mlua::Table, Action>, FilterError> {
        if st.fns[phase as usize].is_none() {
            return Ok(Err(Action::Continue));
        }
        let t = to_lua(&st.lua, req)?;
        let tbl = match &t {
            mlua::Value::Table(t) => t.clone(),
            _ => return Err(FilterError::new("runtime", "request view is not a table")),
        };
        self.call(st, phase, t)?;
        if let Some(b) = block_of(st) {
            return Ok(Err(Action::Block(b)));
        }
        Ok(Ok(tbl))
    }
}

fn to_lua<T: serde::Serialize + ?Sized>(lua: &Lua, v: &T) -> Result<mlua::Value, FilterError> {
    lua.to_value_with(
        v,
        mlua::SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(true),
    )
    .map_err(|e| lua_err("runtime", e))
}

fn from_lua<T: serde::de::DeserializeOwned>(
    lua: &Lua,
    v: mlua::Value,
    what: &str,
) -> Result<T, FilterError> {
    lua.from_value(v)
        .map_err(|e| FilterError::new("runtime", format!("{what}: {e}")))
}

fn block_of(state: &State) -> Option<Block> {
    state.host.block.borrow_mut().take()
}

impl Filter for LuaFilter {
    fn kind(&self) -> &'static str {
        "lua"
    }

    fn phases(&self) -> PhaseSet {
        self.phases
    }

    fn inspect_request(&self, phase: Phase, req: &Request) -> Result<Action, FilterError> {
        self.with_state(|st| {
            Ok(match self.call_request(st, phase, req)? {
                Ok(_) => Action::Continue,
                Err(a) => a,
            })
        })
    }

    fn on_request(
        &self,
        phase: Phase,
        req: &mut Request,
        write: bool,
    ) -> Result<Action, FilterError> {
        self.with_state(|st| {
            let tbl = match self.call_request(st, phase, req)? {
                Ok(t) => t,
                Err(a) => return Ok(a),
            };
            if !write {
                return Ok(Action::Continue);
            }
            let lua = &st.lua;
            let get = |k: &str| tbl.get::<mlua::Value>(k).map_err(|e| lua_err("runtime", e));
            let mut changed = false;
            let body = get("body")?;
            if !body.is_nil() {
                let b: Value = from_lua(lua, body, "req.body")?;
                if req.body.as_ref() != Some(&b) {
                    req.body = Some(b);
                    changed = true;
                }
            }
            let headers = get("headers")?;
            if !headers.is_nil() {
                let h: std::collections::BTreeMap<String, String> = from_lua(
                    lua,
                    headers,
                    "req.headers (names and values must be strings)",
                )?;
                let h: std::collections::BTreeMap<String, String> = h
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                if h != req.headers {
                    req.headers = h;
                    changed = true;
                }
            }
            let meta = get("metadata")?;
            if !meta.is_nil() {
                let m: Value = from_lua(lua, meta, "req.metadata")?;
                let m = match m {
                    Value::Object(m) => m,
                    // An empty Lua table reads back as an empty array.
                    Value::Array(a) if a.is_empty() => serde_json::Map::new(),
                    _ => return Err(FilterError::new("runtime", "req.metadata must be a table")),
                };
                if m != req.metadata {
                    req.metadata = m;
                    changed = true;
                }
            }
            if phase == Phase::PreRoute {
                if let mlua::Value::String(s) = get("model")? {
                    let s = s.to_str().map_err(|e| lua_err("runtime", e))?.to_string();
                    if s != req.model && !s.is_empty() {
                        req.model = s;
                        changed = true;
                    }
                }
            }
            Ok(if changed {
                Action::Mutated
            } else {
                Action::Continue
            })
        })
    }

    fn on_response(
        &self,
        req: &Request,
        resp: &mut Response,
        write: bool,
    ) -> Result<Action, FilterError> {
        self.with_state(|st| {
            if st.fns[Phase::PostUpstream as usize].is_none() {
                return Ok(Action::Continue);
            }
            let lua = &st.lua;
            let r = lua.create_table().map_err(|e| lua_err("runtime", e))?;
            let set = |k: &str, v: mlua::Value| r.set(k, v).map_err(|e| lua_err("runtime", e));
            set("status", mlua::Value::Integer(i64::from(resp.status)))?;
            let decoded = match &resp.part {
                ResponsePart::Json(v) => {
                    set("body", to_lua(lua, v)?)?;
                    None
                }
                ResponsePart::Event { name, data } => {
                    if let Some(n) = name {
                        set("event", to_lua(lua, n)?)?;
                    }
                    set("data", to_lua(lua, data)?)?;
                    let j = if data.starts_with('{') || data.starts_with('[') {
                        serde_json::from_str::<Value>(data).ok()
                    } else {
                        None
                    };
                    if let Some(j) = &j {
                        set("json", to_lua(lua, j)?)?;
                    }
                    j
                }
            };
            let rq = to_lua(lua, req)?;
            self.call(st, Phase::PostUpstream, (rq, r.clone()))?;
            if let Some(b) = block_of(st) {
                return Ok(Action::Block(b));
            }
            if !write {
                return Ok(Action::Continue);
            }
            let get = |k: &str| r.get::<mlua::Value>(k).map_err(|e| lua_err("runtime", e));
            match &mut resp.part {
                ResponsePart::Json(v) => {
                    let b = get("body")?;
                    if b.is_nil() {
                        return Ok(Action::Continue);
                    }
                    let b: Value = from_lua(lua, b, "resp.body")?;
                    if &b != v {
                        *v = b;
                        return Ok(Action::Mutated);
                    }
                }
                ResponsePart::Event { data, .. } => {
                    let j = get("json")?;
                    if !j.is_nil() {
                        let j: Value = from_lua(lua, j, "resp.json")?;
                        if decoded.as_ref() != Some(&j) {
                            *data = j.to_string();
                            return Ok(Action::Mutated);
                        }
                    }
                    if let mlua::Value::String(s) = get("data")? {
                        let s = s.to_str().map_err(|e| lua_err("runtime", e))?.to_string();
                        if &s != data {
                            *data = s;
                            return Ok(Action::Mutated);
                        }
                    }
                }
            }
            Ok(Action::Continue)
        })
    }

    fn post_response(&self, req: &Request, record: &Value) -> Result<(), FilterError> {
        self.with_state(|st| {
            let lua = &st.lua;
            let rq = to_lua(lua, req)?;
            let rec = to_lua(lua, record)?;
            self.call(st, Phase::PostResponse, (rq, rec))?;
            // A block after the answer has nothing left to stop.
            block_of(st);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn filter(src: &str) -> LuaFilter {
        filter_with(src, Limits::default())
    }

    fn filter_with(src: &str, limits: Limits) -> LuaFilter {
        let s = Script::from_source("t", src, limits, json!({"tenant": "acme"})).unwrap();
        let phases = s.phases();
        LuaFilter::new(s, phases)
    }

    fn req() -> Request {
        Request {
            route: "/v1/chat/completions",
            model: "chat-a".into(),
            team_id: Some("team_1".into()),
            body: Some(json!({"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]})),
            ..Default::default()
        }
    }

    fn run(f: &LuaFilter, r: &mut Request) -> Result<Action, FilterError> {
        f.on_request(Phase::PreRoute, r, true)
    }

    #[test]
    fn continue_mutate_block() {
        let f = filter("function pre_route(req) end");
        assert_eq!(run(&f, &mut req()).unwrap(), Action::Continue);
        let f = filter(
            "function pre_route(req) req.model = 'chat-b'; req.headers['x-a'] = wharf.vars.tenant; req.metadata.tag = 1; req.body.temperature = 0.5 end",
        );
        let mut r = req();
        assert_eq!(run(&f, &mut r).unwrap(), Action::Mutated);
        assert_eq!(r.model, "chat-b");
        assert_eq!(r.headers["x-a"], "acme");
        assert_eq!(r.metadata["tag"], 1);
        assert_eq!(r.body.as_ref().unwrap()["temperature"], 0.5);
        let f = filter("function pre_route(req) wharf.block(451, 'nope', 'no way') end");
        assert_eq!(
            run(&f, &mut req()).unwrap(),
            Action::Block(Block {
                status: 451,
                code: "nope".into(),
                message: "no way".into()
            })
        );
        // Defaults, and pcall cannot swallow a block.
        let f = filter("function pre_route(req) pcall(wharf.block) end");
        match run(&f, &mut req()).unwrap() {
            Action::Block(b) => assert_eq!((b.status, b.code.as_str()), (403, "plugin_blocked")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read_only_changes_are_not_kept() {
        let f = filter("function pre_route(req) req.model = 'x' end");
        let mut r = req();
        assert_eq!(
            f.on_request(Phase::PreRoute, &mut r, false).unwrap(),
            Action::Continue
        );
        assert_eq!(r.model, "chat-a");
    }

    #[test]
    fn helpers() {
        let f = filter(
            r##"function pre_route(req)
                 local s = wharf.json_encode({a = 1})
                 local t = wharf.json_decode('{"b":[1,2]}')
                 req.metadata.enc = s
                 req.metadata.dec = t.b[2]
                 req.metadata.m = wharf.regex_match("^h\\w+$", "hello")
                 req.metadata.f = wharf.regex_find("[0-9]+", "ab123c")
                 req.metadata.r = wharf.regex_replace("[0-9]", "a1b2", "#")
                 req.metadata.lp = string.match("key=val", "=(%w+)")
                 print("hello from a script")
               end"##,
        );
        let mut r = req();
        run(&f, &mut r).unwrap();
        assert_eq!(r.metadata["enc"], r#"{"a":1}"#);
        assert_eq!(r.metadata["dec"], 2);
        assert_eq!(r.metadata["m"], true);
        assert_eq!(r.metadata["f"], "123");
        assert_eq!(r.metadata["r"], "a#b#");
        assert_eq!(r.metadata["lp"], "val");
        let f = filter("function pre_route(req) wharf.regex_match('(', 'x') end");
        assert_eq!(run(&f, &mut req()).unwrap_err().kind, "runtime");
    }

    #[test]
    fn sandbox_escapes_are_contained() {
        for (src, what) in [
            ("os.execute('touch /tmp/wharf-pwned')", "os"),
            ("io.open('/etc/passwd')", "io"),
            ("require('os')", "require"),
            ("load(string.dump(function() end))", "load"),
            ("string.dump(function() end)", "string.dump"),
            ("dofile('/etc/passwd')", "dofile"),
            ("loadfile('/etc/passwd')", "loadfile"),
            ("debug.getinfo(1)", "debug"),
            ("package.loadlib('x', 'y')", "package"),
            ("collectgarbage('stop')", "collectgarbage"),
        ] {
            let f = filter(&format!("function pre_route(req) {src} end"));
            let e = run(&f, &mut req()).unwrap_err();
            assert_eq!(e.kind, "runtime", "{what}: {e}");
        }
        // Bytecode is refused as a script.
        assert!(Script::from_source("b", "\x1bLua", Limits::default(), Value::Null).is_err());
        // A broken script or one with no phase is refused at load.
        assert!(
            Script::from_source("b", "function pre_route(", Limits::default(), Value::Null)
                .is_err()
        );
        assert!(Script::from_source("b", "x = 1", Limits::default(), Value::Null).is_err());
    }

    #[test]
    fn limits_are_enforced_and_the_state_recovers() {
        let f =
            filter("function pre_route(req) if req.model == 'loop' then while true do end end end");
        let mut r = req();
        r.model = "loop".into();
        assert_eq!(run(&f, &mut r).unwrap_err().kind, "instructions");
        // pcall cannot swallow the limit.
        let f = filter(
            "function pre_route(req) while true do pcall(function() while true do end end) end end",
        );
        assert_eq!(run(&f, &mut req()).unwrap_err().kind, "instructions");
        // Wall clock: a generous instruction budget, a short deadline.
        let f = filter_with(
            "function pre_route(req) while true do end end",
            Limits {
                instructions: u64::MAX,
                timeout: Duration::from_millis(20),
                ..Limits::default()
            },
        );
        let t = Instant::now();
        assert_eq!(run(&f, &mut req()).unwrap_err().kind, "timeout");
        assert!(t.elapsed() < Duration::from_secs(2));
        let f = filter_with(
            "function pre_route(req) if req.model == 'bomb' then local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 1024) .. i end end req.metadata.ok = true end",
            Limits {
                memory: 4 * 1024 * 1024,
                instructions: u64::MAX,
                timeout: Duration::from_secs(5),
            },
        );
        let mut r = req();
        r.model = "bomb".into();
        assert_eq!(run(&f, &mut r).unwrap_err().kind, "memory");
        // The next call gets a fresh state and works.
        let mut r = req();
        assert_eq!(run(&f, &mut r).unwrap(), Action::Mutated);
        assert_eq!(r.metadata["ok"], true);
    }

    #[test]
    fn response_events_and_bodies() {
        let f = filter(
            r#"function post_upstream(req, resp)
                 if resp.json and resp.json.choices then
                   resp.json.choices[1].delta.content = string.upper(resp.json.choices[1].delta.content)
                 end
                 if resp.body then resp.body.tagged = true end
               end"#,
        );
        let mut resp = Response {
            status: 200,
            part: ResponsePart::Event {
                name: None,
                data: r#"{"choices":[{"delta":{"content":"hi"}}]}"#.into(),
            },
            before: Vec::new(),
        };
        assert_eq!(
            f.on_response(&req(), &mut resp, true).unwrap(),
            Action::Mutated
        );
        let ResponsePart::Event { data, .. } = &resp.part else {
            panic!()
        };
        assert!(data.contains("\"HI\""), "{data}");
        let mut resp = Response {
            status: 200,
            part: ResponsePart::Json(json!({"id": "x"})),
            before: Vec::new(),
        };
        assert_eq!(
            f.on_response(&req(), &mut resp, true).unwrap(),
            Action::Mutated
        );
        assert_eq!(
            resp.part,
            ResponsePart::Json(json!({"id": "x", "tagged": true}))
        );
    }

    #[test]
    fn example_scripts() {
        let load = |name: &str, vars: Value| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("filters/examples")
                .join(name);
            let s = Script::load(name, &path, Limits::default(), vars).unwrap();
            let p = s.phases();
            LuaFilter::new(s, p)
        };
        let f = load("header_inject.lua", json!({"tenant": "t1"}));
        let mut r = req();
        assert_eq!(
            f.on_request(Phase::PreUpstream, &mut r, true).unwrap(),
            Action::Mutated
        );
        assert_eq!(r.headers["x-wharf-team"], "team_1");
        assert_eq!(r.headers["x-tenant"], "t1");

        let f = load(
            "model_alias.lua",
            json!({"team_1": {"fast": "chat-b"}, "default": {"fast": "chat-a"}}),
        );
        let mut r = req();
        r.model = "fast".into();
        run(&f, &mut r).unwrap();
        assert_eq!(r.model, "chat-b");
        let mut r = req();
        r.team_id = Some("other".into());
        r.model = "fast".into();
        run(&f, &mut r).unwrap();
        assert_eq!(r.model, "chat-a");
        let mut r = req();
        assert_eq!(run(&f, &mut r).unwrap(), Action::Continue);

        let f = load("keyword_block.lua", json!({"words": ["Project-X"]}));
        assert_eq!(run(&f, &mut req()).unwrap(), Action::Continue);
        let mut r = req();
        r.body = Some(
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "tell me about project-x"}]}]}),
        );
        match run(&f, &mut r).unwrap() {
            Action::Block(b) => assert_eq!((b.status, b.code.as_str()), (403, "keyword_blocked")),
            other => panic!("{other:?}"),
        }

        let f = load("request_tag.lua", Value::Null);
        let mut r = req();
        r.stream = true;
        run(&f, &mut r).unwrap();
        assert_eq!(r.metadata["team"], "team_1");
        assert_eq!(r.metadata["size"], "short");
        assert_eq!(r.metadata["streaming"], true);
    }
}

#[cfg(test)]
mod timing {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// A rough per-call timing of the example filters (the Criterion bench is the reference);
    /// `cargo test --lib filters::lua::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn example_filter_calls() {
        let req = Request {
            route: "/v1/chat/completions",
            team_id: Some("team_1".into()),
            model: "fast".into(),
            body: Some(json!({"model": "fast", "temperature": 0.7, "messages": [
                {"role": "system", "content": "You are a helpful assistant that answers briefly."},
                {"role": "user", "content": "Summarise the plot of Hamlet in three sentences, please."}]})),
            headers: [
                ("content-type", "application/json"),
                ("user-agent", "openai-python/1.40.0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        };
        for (name, phase, vars) in [
            (
                "header_inject.lua",
                Phase::PreUpstream,
                json!({"tenant": "acme"}),
            ),
            (
                "model_alias.lua",
                Phase::PreRoute,
                json!({"team_1": {"fast": "chat-b"}}),
            ),
            (
                "keyword_block.lua",
                Phase::PreRoute,
                json!({"words": ["project-x"]}),
            ),
            ("request_tag.lua", Phase::PreRoute, Value::Null),
        ] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("filters/examples")
                .join(name);
            let s = Script::load(name, &path, Limits::default(), vars).unwrap();
            let p = s.phases();
            let f = LuaFilter::new(s, p);
            let n = 20_000;
            let mut reqs: Vec<Request> = (0..n).map(|_| req.clone()).collect();
            f.on_request(phase, &mut req.clone(), true).unwrap();
            let t = Instant::now();
            for r in &mut reqs {
                f.on_request(phase, r, true).unwrap();
            }
            println!(
                "{name}: {:.2} µs/call",
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
