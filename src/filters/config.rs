//! `[[filters]]` in the TOML: parsed strictly, built and checked at load.
//!
//! ```toml
//! [[filters]]
//! name = "team-aliases"
//! kind = "lua"                      # lua | audit_log | request_transform | pii_mask
//! script = "filters/examples/model_alias.lua"
//! order = 10                        # lower runs first; ties keep file order
//! on_error = "open"                 # or "closed"
//! read_only = false                 # true: may not change the request (parallel group)
//! phases = ["pre_route"]            # lua: restrict to these (default: what the script defines)
//! scope = { organisations = ["org_1"], keys = [], models = [] }   # absent: global
//! settings = { vars = { team_1 = { fast = "chat-b" } } }
//! ```
//!
//! In database mode the `filters` table adds chains beside the file's ([`from_db_rows`]): the
//! same kinds and settings, checked the same way when the catalog loads; a row that does not
//! build rejects that refresh and the running chains stay.

use super::builtin::{AuditLog, PiiMask, RequestTransform};
use super::lua::{Limits, LuaFilter, Script};
use super::{Entry, Filter, FilterSet, OnError, Phase, PhaseSet, Scope};
pub use crate::config::filters::{RawFilter, RawScope};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Lua settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LuaSettings {
    instruction_limit: Option<u64>,
    memory_limit_kb: Option<u64>,
    timeout_ms: Option<u64>,
    /// Free-form values the script reads as `wharf.vars`.
    #[serde(default)]
    vars: toml::Table,
}

fn settings<T: serde::de::DeserializeOwned>(t: &toml::Table) -> Result<T, String> {
    toml::Value::Table(t.clone())
        .try_into::<T>()
        .map_err(|e| format!("settings: {}", e.message()))
}

fn lua_filter(
    at: &str,
    f: &RawFilter,
    errs: &mut Vec<String>,
) -> Option<(Arc<dyn Filter>, Arc<Script>)> {
    let Some(script) = f.script.as_deref().filter(|s| !s.is_empty()) else {
        errs.push(format!("{at}.script: a lua filter needs a script path"));
        return None;
    };
    let s: LuaSettings = match settings(&f.settings) {
        Ok(s) => s,
        Err(e) => {
            errs.push(format!("{at}.{e}"));
            return None;
        }
    };
    let d = Limits::default();
    let limits = Limits {
        instructions: s.instruction_limit.unwrap_or(d.instructions),
        memory: s
            .memory_limit_kb
            .map(|k| (k as usize).saturating_mul(1024))
            .unwrap_or(d.memory),
        timeout: s.timeout_ms.map(Duration::from_millis).unwrap_or(d.timeout),
    };
    if limits.instructions < 1000 || limits.memory < 256 * 1024 || limits.timeout.is_zero() {
        errs.push(format!(
            "{at}.settings: instruction_limit must be ≥ 1000, memory_limit_kb ≥ 256, timeout_ms ≥ 1"
        ));
        return None;
    }
    let vars = match serde_json::to_value(toml::Value::Table(s.vars)) {
        Ok(v) => v,
        Err(e) => {
            errs.push(format!("{at}.settings.vars: {e}"));
            return None;
        }
    };
    let script = match Script::load(&f.name, Path::new(script), limits, vars) {
        Ok(s) => s,
        Err(e) => {
            errs.push(format!("{at}.script: {e}"));
            return None;
        }
    };
    let defined = script.phases();
    let phases = match &f.phases {
        None => defined,
        Some(list) => {
            let mut set = PhaseSet::default();
            for p in list {
                match Phase::parse(p) {
                    Some(p) if defined.contains(p) => set.insert(p),
                    Some(p) => errs.push(format!(
                        "{at}.phases: the script does not define `{}`",
                        p.as_str()
                    )),
                    None => errs.push(format!("{at}.phases: unknown phase `{p}`")),
                }
            }
            set
        }
    };
    let filter: Arc<dyn Filter> = Arc::new(LuaFilter::new(script.clone(), phases));
    Some((filter, script))
}

/// Builds the filter set; errors are appended to `errs` with their position.
pub fn build(raw: &[RawFilter], errs: &mut Vec<String>) -> FilterSet {
    build_labelled(raw, |i, _| format!("filters[{i}]"), errs)
}

/// Rows of the `filters` table as `[[filters]]` entries: an organisation's row is scoped to
/// that organisation and named `<organisation slug>/<name>`; a global row keeps its name.
pub fn from_db_rows(rows: &[crate::db::load::FilterRow]) -> Result<Vec<RawFilter>, Vec<String>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut errs = Vec::new();
    for r in rows {
        let name = match &r.organisation_slug {
            Some(slug) => format!("{slug}/{}", r.name),
            None => r.name.clone(),
        };
        let on_error = match r.on_error.as_str() {
            "closed" => OnError::Closed,
            _ => OnError::Open,
        };
        let settings = match serde_json::from_value::<toml::Table>(r.settings.clone()) {
            Ok(t) => t,
            Err(e) => {
                errs.push(format!("filters row `{name}`.settings: {e}"));
                continue;
            }
        };
        out.push(RawFilter {
            name,
            kind: r.kind.clone(),
            script: r.script.clone(),
            order: Some(i64::from(r.position)),
            on_error,
            read_only: r.read_only,
            enabled: true,
            phases: r.phases.clone(),
            scope: RawScope {
                organisations: r
                    .organisation_id
                    .map(|o| o.to_string())
                    .into_iter()
                    .collect(),
                keys: r.scope_keys.clone(),
                models: r.scope_models.clone(),
            },
            settings,
        });
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// The file's filters and the database's in one set (ordered by `order`, file first on ties).
/// A database filter may not reuse a file filter's name.
pub fn merge_db(file: &FilterSet, db: &[RawFilter]) -> Result<FilterSet, Vec<String>> {
    let mut errs = Vec::new();
    let names: HashSet<&str> = file.entries().iter().map(|e| e.name.as_str()).collect();
    for f in db {
        if names.contains(f.name.as_str()) {
            errs.push(format!(
                "filters row `{}`: a filter of that name is configured in the file",
                f.name
            ));
        }
    }
    let extra = build_labelled(db, |_, f| format!("filters row `{}`", f.name), &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut entries = file.entries().to_vec();
    entries.extend(extra.entries().iter().cloned());
    let mut scripts = file.scripts().to_vec();
    scripts.extend(extra.scripts().iter().cloned());
    Ok(FilterSet::new(entries, scripts))
}

fn build_labelled(
    raw: &[RawFilter],
    label: impl Fn(usize, &RawFilter) -> String,
    errs: &mut Vec<String>,
) -> FilterSet {
    let mut entries = Vec::new();
    let mut scripts = Vec::new();
    let mut names = HashSet::new();
    for (i, f) in raw.iter().enumerate() {
        let at = label(i, f);
        if f.name.is_empty() {
            errs.push(format!("{at}.name: must not be empty"));
            continue;
        }
        if !names.insert(f.name.clone()) {
            errs.push(format!("{at}.name: duplicate filter name `{}`", f.name));
            continue;
        }
        if f.script.is_some() && f.kind != "lua" {
            errs.push(format!("{at}.script: only lua filters take a script"));
            continue;
        }
        if f.phases.is_some() && f.kind != "lua" {
            errs.push(format!(
                "{at}.phases: only lua filters take phases (built-ins: settings.phase)"
            ));
            continue;
        }
        let built: Result<Arc<dyn Filter>, String> = match f.kind.as_str() {
            "lua" => match lua_filter(&at, f, errs) {
                Some((filter, script)) => {
                    if f.enabled {
                        scripts.push(script);
                    }
                    Ok(filter)
                }
                None => continue,
            },
            "audit_log" => settings(&f.settings)
                .and_then(AuditLog::new)
                .map(|x| Arc::new(x) as Arc<dyn Filter>),
            "request_transform" => settings(&f.settings)
                .and_then(RequestTransform::new)
                .map(|x| Arc::new(x) as Arc<dyn Filter>),
            "pii_mask" => settings(&f.settings)
                .and_then(PiiMask::new)
                .map(|x| Arc::new(x) as Arc<dyn Filter>),
            "safetysec" => settings(&f.settings)
                .and_then(super::safety::SafetyFilter::new)
                .map(|x| Arc::new(x) as Arc<dyn Filter>),
            other => Err(format!(
                "kind: unknown filter kind `{other}` (lua, audit_log, request_transform, pii_mask, safetysec)"
            )),
        };
        let filter = match built {
            Ok(x) => x,
            Err(e) => {
                errs.push(format!("{at}.{e}"));
                continue;
            }
        };
        if f.read_only && filter.kind() != "lua" && filter.kind() != "audit_log" {
            errs.push(format!(
                "{at}.read_only: a {} filter changes the request and cannot be read-only",
                filter.kind()
            ));
            continue;
        }
        if !f.enabled {
            continue;
        }
        let phases = filter.phases();
        entries.push(Arc::new(Entry {
            name: f.name.clone(),
            scope: Scope {
                organisations: f.scope.organisations.clone(),
                keys: f.scope.keys.clone(),
                models: f.scope.models.clone(),
            },
            on_error: f.on_error,
            read_only: f.read_only,
            phases,
            order: f.order.unwrap_or(0),
            filter,
        }));
    }
    FilterSet::new(entries, scripts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<FilterSet, Vec<String>> {
        #[derive(Deserialize)]
        struct F {
            filters: Vec<RawFilter>,
        }
        let f: F = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut errs = Vec::new();
        let set = build(&f.filters, &mut errs);
        if errs.is_empty() {
            Ok(set)
        } else {
            Err(errs)
        }
    }

    #[test]
    fn unknown_kind_and_settings_fail() {
        let e = parse("[[filters]]\nname = \"a\"\nkind = \"nope\"").unwrap_err();
        assert!(e[0].contains("unknown filter kind"), "{e:?}");
        let e = parse("[[filters]]\nname = \"a\"\nkind = \"pii_mask\"\nsettings = { bogus = 1 }")
            .unwrap_err();
        assert!(e[0].contains("bogus"), "{e:?}");
        let e = parse("[[filters]]\nname = \"a\"\nkind = \"lua\"\nscript = \"/nonexistent.lua\"")
            .unwrap_err();
        assert!(e[0].contains("cannot read"), "{e:?}");
        let e = parse("[[filters]]\nname = \"a\"\nkind = \"audit_log\"\nsettings = { path = \"/nonexistent-dir/x.jsonl\" }")
            .unwrap_err();
        assert!(e[0].contains("does not exist"), "{e:?}");
        assert!(parse("[[filters]]\nname = \"a\"\nkind = \"pii_mask\"\nbogus = 1").is_err());
    }

    #[test]
    fn order_and_scope() {
        let set = parse(
            r#"
[[filters]]
name = "late"
kind = "pii_mask"
order = 20
[[filters]]
name = "early"
kind = "request_transform"
order = 10
settings = { set = { a = 1 } }
[[filters]]
name = "org2"
kind = "request_transform"
scope = { organisations = ["org_2"] }
settings = { set = { b = 1 } }
"#,
        )
        .unwrap();
        let who = super::super::Who {
            organisation_id: "org_1",
            key_id: "k",
            model: "m",
        };
        let names: Vec<_> = set
            .select(Phase::PreUpstream, &who)
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names, ["early", "late"]);
        let who2 = super::super::Who {
            organisation_id: "org_2",
            ..who
        };
        let names: Vec<_> = set
            .select(Phase::PreUpstream, &who2)
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names, ["org2", "early", "late"]);
        assert!(set.select(Phase::PreRoute, &who).is_empty());
    }
}
