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
//!
//! `script.rs`: the script file and its versions; `sandbox.rs`: the Lua state, its limits and
//! errors; `host_api.rs`: the `wharf` helpers. This file is the [`Filter`] over them.

mod host_api;
mod sandbox;
mod script;

use super::{Action, Block, Filter, FilterError, Phase, PhaseSet, Request, Response, ResponsePart};
use mlua::{Lua, LuaSerdeExt};
use sandbox::{classify, lua_err, State, STATES};
pub use script::{Limits, Script};
use serde_json::Value;
use std::sync::Arc;

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
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

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
    use std::path::PathBuf;
    use std::time::Instant;

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
