//! The sandbox: a Lua state per script and thread with only the safe libraries, an
//! instruction budget and deadline checked by a count hook, a memory limit, and the
//! classification of a failed call.

use super::host_api::install;
use super::script::{Limits, Script};
use crate::filters::{Block, FilterError, Phase};
use mlua::{ChunkMode, Function, HookTriggers, Lua, LuaOptions, StdLib, VmState};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Weak;
use std::time::Instant;

/// Instructions between two checks of the budget and the deadline.
pub(super) const HOOK_STEP: u32 = 1000;

/// Per-call bookkeeping shared with the hook and the `wharf` helpers.
pub(super) struct Host {
    pub(super) count: Cell<u64>,
    pub(super) limit: Cell<u64>,
    pub(super) deadline: Cell<Instant>,
    /// Which limit tripped during the current call.
    pub(super) tripped: Cell<Option<&'static str>>,
    pub(super) block: RefCell<Option<Block>>,
    pub(super) regexes: RefCell<HashMap<String, regex::Regex>>,
}

impl Host {
    pub(super) fn begin(&self, limits: &Limits) {
        self.count.set(0);
        self.limit.set(limits.instructions);
        self.deadline.set(Instant::now() + limits.timeout);
        self.tripped.set(None);
        self.block.borrow_mut().take();
    }
}

/// A script's Lua state on one thread.
pub(super) struct State {
    pub(super) version: u64,
    pub(super) lua: Lua,
    pub(super) fns: [Option<Function>; 4],
    pub(super) host: Rc<Host>,
    pub(super) owner: Weak<Script>,
}

pub(super) fn lua_err(kind: &'static str, e: impl std::fmt::Display) -> FilterError {
    FilterError::new(kind, e.to_string())
}

impl State {
    pub(super) fn build(script: &Script, source: &str) -> Result<State, FilterError> {
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
pub(super) fn classify(host: &Host, e: &mlua::Error, default: &'static str) -> FilterError {
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

pub(super) fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        _ => e.to_string().contains("not enough memory"),
    }
}

thread_local! {
    pub(super) static STATES: RefCell<HashMap<u64, State>> = RefCell::new(HashMap::new());
}
