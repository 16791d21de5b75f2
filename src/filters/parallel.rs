//! Parallel execution of read-only filter groups (SPEC §9 "parallel (read-only)").
//!
//! Consecutive `read_only = true` filters of a request phase see the same request and cannot
//! change it, so they are independent: the first runs on the calling thread, the others on a
//! small pool of long-lived worker threads, and the results are then applied in chain order
//! (the first block by order wins, exactly as if they had run one after another). Workers live
//! for the process so that each keeps its Lua states warm (they are per thread).

use super::{Action, Entry, FilterError, Phase, Request};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    jobs: mpsc::Sender<Job>,
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("wharf-filter-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking filter loses its own result only (the caller sees a
                        // closed channel); the worker keeps serving.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(Pool { jobs: tx })
    })
    .as_ref()
}

/// Runs the read-only `group` on `req` at `phase`; one result per entry, in order.
pub fn run_group(
    group: &[Arc<Entry>],
    phase: Phase,
    req: &Request,
) -> Vec<Result<Action, FilterError>> {
    let (Some((first, rest)), Some(pool)) = (group.split_first(), pool()) else {
        return group
            .iter()
            .map(|e| e.filter.inspect_request(phase, req))
            .collect();
    };
    let shared = Arc::new(req.clone());
    let mut pending = Vec::with_capacity(rest.len());
    for e in rest {
        let (tx, rx) = mpsc::sync_channel(1);
        let (e, r) = (e.clone(), shared.clone());
        let job: Job = Box::new(move || {
            let _ = tx.send(e.filter.inspect_request(phase, &r));
        });
        match pool.jobs.send(job) {
            Ok(()) => pending.push(Ok(rx)),
            Err(_) => pending.push(Err(())),
        }
    }
    let mut out = Vec::with_capacity(group.len());
    out.push(first.filter.inspect_request(phase, req));
    for (e, p) in rest.iter().zip(pending) {
        out.push(match p {
            Ok(rx) => rx
                .recv()
                .unwrap_or_else(|_| Err(FilterError::new("runtime", "filter worker failed"))),
            Err(()) => e.filter.inspect_request(phase, req),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{run_request, Block, Filter, FilterReport, OnError, PhaseSet, Scope};
    use super::*;
    use std::sync::Mutex;
    use std::thread::ThreadId;

    type Threads = Arc<Mutex<Vec<(String, ThreadId)>>>;

    /// Records the thread it ran on; blocks when `block` is set.
    #[derive(Debug)]
    struct Probe {
        threads: Threads,
        name: String,
        block: bool,
    }

    impl Filter for Probe {
        fn kind(&self) -> &'static str {
            "probe"
        }
        fn phases(&self) -> PhaseSet {
            PhaseSet::of(&[Phase::PreUpstream])
        }
        fn on_request(&self, _: Phase, req: &mut Request, _: bool) -> Result<Action, FilterError> {
            // Give the other members time to start, so they overlap.
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.threads
                .lock()
                .unwrap()
                .push((self.name.clone(), std::thread::current().id()));
            req.model = format!("changed-by-{}", self.name);
            Ok(if self.block {
                Action::Block(Block::new(Some(403), Some(&self.name), None))
            } else {
                Action::Mutated
            })
        }
    }

    fn chain(spec: &[(&str, bool, bool)]) -> (Vec<Arc<Entry>>, Threads) {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let entries = spec
            .iter()
            .enumerate()
            .map(|(i, (name, read_only, block))| {
                Arc::new(Entry {
                    name: name.to_string(),
                    filter: Arc::new(Probe {
                        threads: threads.clone(),
                        name: name.to_string(),
                        block: *block,
                    }),
                    scope: Scope::default(),
                    on_error: OnError::Open,
                    read_only: *read_only,
                    phases: PhaseSet::of(&[Phase::PreUpstream]),
                    order: i as i64,
                })
            })
            .collect();
        (entries, threads)
    }

    #[test]
    fn read_only_runs_in_parallel_and_changes_nothing() {
        let (c, threads) = chain(&[("a", true, false), ("b", true, false), ("c", true, false)]);
        let mut req = Request {
            model: "m".into(),
            ..Request::default()
        };
        let mut report = FilterReport::default();
        assert_eq!(
            run_request(&c, Phase::PreUpstream, &mut req, &mut report),
            Ok(false)
        );
        assert_eq!(req.model, "m");
        let t = threads.lock().unwrap();
        assert_eq!(t.len(), 3);
        // The first member runs on the caller's thread, the others on workers.
        let me = std::thread::current().id();
        for (name, id) in t.iter() {
            assert_eq!(*id == me, name == "a", "{t:?}");
        }
    }

    #[test]
    fn the_first_block_by_order_wins_and_writers_stay_sequential() {
        let (c, _) = chain(&[("a", true, false), ("b", true, true), ("c", true, true)]);
        let mut req = Request::default();
        let mut report = FilterReport::default();
        let b = run_request(&c, Phase::PreUpstream, &mut req, &mut report).unwrap_err();
        assert_eq!(b.code, "b");
        // A writer between read-only filters runs alone, on the caller's thread, and its
        // change is kept.
        let (c, threads) = chain(&[
            ("w", false, false),
            ("r1", true, false),
            ("r2", true, false),
        ]);
        let mut req = Request::default();
        let mut report = FilterReport::default();
        assert_eq!(
            run_request(&c, Phase::PreUpstream, &mut req, &mut report),
            Ok(true)
        );
        assert_eq!(req.model, "changed-by-w");
        let t = threads.lock().unwrap();
        assert_eq!(t[0], ("w".to_string(), std::thread::current().id()));
    }
}
