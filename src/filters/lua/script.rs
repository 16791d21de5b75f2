//! A script file and its versions: loading, compiling once to check it, and reloading when
//! the file changes.

use super::sandbox::State;
use crate::filters::{Phase, PhaseSet};
use crate::metrics;
use arc_swap::ArcSwap;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub(super) static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
pub(super) struct Version {
    pub(super) id: u64,
    pub(super) source: Arc<str>,
    pub(super) phases: PhaseSet,
}

/// A script file, its current version, and what the watcher last saw.
#[derive(Debug)]
pub struct Script {
    pub(super) uid: u64,
    /// The filter's name (logs, metrics).
    pub name: String,
    pub path: PathBuf,
    pub(super) limits: Limits,
    pub(super) vars: Value,
    pub(super) current: ArcSwap<Version>,
    /// (modified, length) of the file when last read.
    pub(super) stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Why the last reload failed, if it did.
    pub(super) last_error: Mutex<Option<String>>,
}

pub(super) fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
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

    pub(super) fn compile(&self, source: String) -> Result<Version, String> {
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
