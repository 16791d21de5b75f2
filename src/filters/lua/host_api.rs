//! The `wharf` helpers a script may call (and the globals the sandbox removes first).

use super::sandbox::Host;
use super::script::Script;
use crate::filters::Block;
use mlua::{ChunkMode, Function, Lua, LuaSerdeExt, MultiValue, Table};
use serde_json::Value;
use std::rc::Rc;

/// Compiled `wharf.regex_*` patterns kept per state.
pub(super) const REGEX_CACHE: usize = 64;
/// Longest `wharf.regex_*` pattern.
pub(super) const REGEX_MAX_PATTERN: usize = 1024;

impl Host {
    pub(super) fn regex(&self, pattern: &str) -> mlua::Result<regex::Regex> {
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

/// Removes what a sandboxed script must not reach and installs the `wharf` helpers.
pub(super) fn install(lua: &Lua, script: &Script, host: &Rc<Host>) -> mlua::Result<()> {
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
