use super::*;

fn dep(id: usize, weight: u32, priority: u32) -> Deployment {
    Deployment {
        id,
        weight,
        priority,
    }
}

fn cfg() -> RouterConfig {
    RouterConfig {
        failure_threshold: 3,
        failure_window: Duration::from_secs(10),
        cooldown: Duration::from_secs(30),
        probe_timeout: Duration::from_secs(5),
        seed: Some(42),
        ..RouterConfig::default()
    }
}

fn four() -> Router {
    Router::new(
        vec![dep(0, 1, 1), dep(1, 1, 1), dep(2, 1, 1), dep(3, 1, 1)],
        cfg(),
    )
}

const ALL: [Strategy; 5] = [
    Strategy::Failover,
    Strategy::RoundRobin,
    Strategy::Weighted,
    Strategy::LeastLatency,
    Strategy::LeastBusy,
];

#[test]
fn parses_strategies_and_triggers() {
    assert_eq!("failover".parse(), Ok(Strategy::Failover));
    assert_eq!("priority".parse(), Ok(Strategy::Failover));
    assert_eq!("round_robin".parse(), Ok(Strategy::RoundRobin));
    assert_eq!("weighted".parse(), Ok(Strategy::Weighted));
    assert_eq!("least_latency".parse(), Ok(Strategy::LeastLatency));
    assert_eq!("least_busy".parse(), Ok(Strategy::LeastBusy));
    let err = "fastest".parse::<Strategy>().expect_err("unknown strategy");
    assert!(err.to_string().contains("`fastest`"), "{err}");

    assert_eq!("5xx".parse(), Ok(FailoverOn::ServerError));
    assert_eq!("timeout".parse(), Ok(FailoverOn::Timeout));
    assert_eq!("rate_limit".parse(), Ok(FailoverOn::RateLimit));
    assert_eq!("connect".parse(), Ok(FailoverOn::Connect));
    assert_eq!("any".parse(), Ok(FailoverOn::Any));
    let err = "4xx".parse::<FailoverOn>().expect_err("unknown trigger");
    assert!(err.to_string().contains("`4xx`"), "{err}");
}

#[test]
fn should_fail_over_matrix() {
    use ErrorClass::{Connect as C, Status, Timeout as T};
    use FailoverOn::{Any, Connect, RateLimit, ServerError, Timeout};
    let classes = [
        Status(200),
        Status(400),
        Status(401),
        Status(429),
        Status(500),
        Status(503),
        T,
        C,
    ];
    // Expected per trigger, in the order of `classes`.
    let table: [(FailoverOn, [bool; 8]); 5] = [
        (
            ServerError,
            [false, false, false, false, true, true, false, false],
        ),
        (
            Timeout,
            [false, false, false, false, false, false, true, false],
        ),
        (
            RateLimit,
            [false, false, false, true, false, false, false, false],
        ),
        (
            Connect,
            [false, false, false, false, false, false, false, true],
        ),
        (Any, [false, true, true, true, true, true, true, true]),
    ];
    for (trigger, expected) in table {
        for (class, want) in classes.iter().zip(expected) {
            assert_eq!(
                should_fail_over(&[trigger], *class),
                want,
                "{trigger:?} on {class:?}"
            );
        }
    }
    assert!(!should_fail_over(&[], Status(500)));
    let both = [ServerError, Timeout];
    assert!(should_fail_over(&both, Status(502)));
    assert!(should_fail_over(&both, T));
    assert!(!should_fail_over(&both, Status(429)));
    assert!(!should_fail_over(&both, C));
}

#[test]
fn failover_orders_by_priority_then_weight() {
    let r = Router::new(
        vec![dep(10, 1, 3), dep(11, 5, 1), dep(12, 9, 2), dep(13, 1, 1)],
        cfg(),
    );
    let now = Instant::now();
    assert_eq!(
        r.plan(Strategy::Failover, "k", &[], now),
        vec![11, 13, 12, 10]
    );
    // Whatever the strategy picks first, the rest follow failover order.
    for s in ALL {
        let plan = r.plan(s, "k", &[], now);
        assert_eq!(plan.len(), 4, "{s:?}");
        let rest: Vec<usize> = [11, 13, 12, 10]
            .into_iter()
            .filter(|id| *id != plan[0])
            .collect();
        assert_eq!(plan[1..], rest[..], "{s:?}");
    }
}

#[test]
fn round_robin_is_even_per_key() {
    let r = four();
    let now = Instant::now();
    let mut a = [0usize; 4];
    let mut b = [0usize; 4];
    for i in 0..1000 {
        a[r.plan(Strategy::RoundRobin, "a", &[], now)[0]] += 1;
        if i % 2 == 0 {
            b[r.plan(Strategy::RoundRobin, "b", &[], now)[0]] += 1;
        }
    }
    for n in a {
        assert!((249..=251).contains(&n), "{a:?}");
    }
    for n in b {
        assert!((124..=126).contains(&n), "{b:?}");
    }
}

#[test]
fn weighted_follows_weights() {
    let r = Router::new(vec![dep(0, 1, 1), dep(1, 3, 1)], cfg());
    let now = Instant::now();
    let mut counts = [0usize; 2];
    for _ in 0..1000 {
        counts[r.plan(Strategy::Weighted, "k", &[], now)[0]] += 1;
    }
    assert!((200..=300).contains(&counts[0]), "{counts:?}");
    assert!((700..=800).contains(&counts[1]), "{counts:?}");

    let zero = Router::new(vec![dep(0, 0, 1), dep(1, 5, 1)], cfg());
    for _ in 0..100 {
        assert_eq!(zero.plan(Strategy::Weighted, "k", &[], now)[0], 1);
    }
}

#[test]
fn least_latency_measures_then_prefers_fastest() {
    let r = Router::new(vec![dep(0, 1, 1), dep(1, 1, 1), dep(2, 1, 1)], cfg());
    let now = Instant::now();
    assert_eq!(r.plan(Strategy::LeastLatency, "k", &[], now)[0], 0);
    r.record_success(0, Duration::from_millis(300), now);
    // Untried deployments come first so each gets measured.
    assert_eq!(r.plan(Strategy::LeastLatency, "k", &[], now)[0], 1);
    r.record_success(1, Duration::from_millis(100), now);
    assert_eq!(r.plan(Strategy::LeastLatency, "k", &[], now)[0], 2);
    r.record_success(2, Duration::from_millis(200), now);
    assert_eq!(r.plan(Strategy::LeastLatency, "k", &[], now)[0], 1);
    // 1 slows down: 0.3 * 500 + 0.7 * 100 = 220 ms > 200 ms.
    r.record_success(1, Duration::from_millis(500), now);
    assert_eq!(r.ewma_ttfb(1), Some(Duration::from_millis(220)));
    assert_eq!(r.plan(Strategy::LeastLatency, "k", &[], now)[0], 2);
}

#[test]
fn least_busy_avoids_loaded_deployment() {
    let r = four();
    let now = Instant::now();
    let guards: Vec<InFlightGuard> = (0..50).map(|_| r.start(2)).collect();
    assert_eq!(r.in_flight(2), 50);
    let _one = r.start(0);
    let mut counts = [0usize; 4];
    for _ in 0..1000 {
        counts[r.plan(Strategy::LeastBusy, "k", &[], now)[0]] += 1;
    }
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[1] > 0 && counts[3] > 0, "{counts:?}");
    drop(guards);
    assert_eq!(r.in_flight(2), 0);

    let pair = Router::new(vec![dep(0, 1, 1), dep(1, 1, 1)], cfg());
    let _g = pair.start(0);
    for _ in 0..100 {
        assert_eq!(pair.plan(Strategy::LeastBusy, "k", &[], now)[0], 1);
    }
}

#[test]
fn ejects_after_threshold_within_window_then_probes() {
    let r = four();
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    // Failures spread wider than the window do not eject.
    r.record_failure(1, None, s(0));
    r.record_failure(1, None, s(6));
    r.record_failure(1, None, s(12));
    assert!(!r.is_ejected(1, s(12)));
    // A third failure within 10 s of the other two does.
    r.record_failure(1, None, s(13));
    assert!(r.is_ejected(1, s(13)));
    for t in [13, 20, 42] {
        for st in ALL {
            assert!(!r.plan(st, "k", &[], s(t)).contains(&1), "{st:?} at {t}");
        }
    }
    // Cooldown over (13 + 30): exactly one probe is let through.
    assert!(!r.is_ejected(1, s(43)));
    assert!(r.plan(Strategy::Failover, "k", &[], s(43)).contains(&1));
    assert!(r.is_ejected(1, s(43)));
    assert!(!r.plan(Strategy::Failover, "k", &[], s(44)).contains(&1));
    // The probe fails: ejected again for a full cooldown.
    r.record_failure(1, None, s(44));
    assert!(r.is_ejected(1, s(73)));
    assert!(!r.plan(Strategy::Failover, "k", &[], s(73)).contains(&1));
    // Next probe succeeds: the circuit closes and traffic flows freely.
    assert!(r.plan(Strategy::Failover, "k", &[], s(74)).contains(&1));
    r.record_success(1, Duration::from_millis(50), s(74));
    assert!(!r.is_ejected(1, s(74)));
    for _ in 0..3 {
        assert!(r.plan(Strategy::Failover, "k", &[], s(75)).contains(&1));
    }
    // The failure count starts afresh after recovery.
    r.record_failure(1, None, s(76));
    r.record_failure(1, None, s(77));
    assert!(!r.is_ejected(1, s(77)));
}

#[test]
fn unused_probe_times_out() {
    let r = four();
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    for _ in 0..3 {
        r.record_failure(0, None, s(0));
    }
    assert!(r.plan(Strategy::Failover, "k", &[], s(30)).contains(&0));
    assert!(!r.plan(Strategy::Failover, "k", &[], s(34)).contains(&0));
    // No outcome within probe_timeout (5 s): another probe is allowed.
    assert!(r.plan(Strategy::Failover, "k", &[], s(35)).contains(&0));
}

#[test]
fn retry_after_sets_the_cooldown() {
    let r = four();
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    r.record_failure(3, Some(Duration::from_secs(5)), s(0));
    assert!(r.is_ejected(3, s(4)));
    assert!(!r.plan(Strategy::RoundRobin, "k", &[], s(4)).contains(&3));
    assert!(!r.is_ejected(3, s(5)));
    // Retry-After also replaces the cooldown after a threshold trip and a failed probe.
    assert!(r.plan(Strategy::Failover, "k", &[], s(5)).contains(&3));
    r.record_failure(3, Some(Duration::from_secs(100)), s(6));
    assert!(r.is_ejected(3, s(105)));
    assert!(!r.is_ejected(3, s(106)));
    for _ in 0..2 {
        r.record_failure(2, None, s(0));
    }
    r.record_failure(2, Some(Duration::from_secs(2)), s(1));
    assert!(r.is_ejected(2, s(2)));
    assert!(!r.is_ejected(2, s(3)));
}

#[test]
fn never_zero_candidates() {
    let r = Router::new(vec![dep(0, 1, 1), dep(1, 1, 2), dep(2, 1, 3)], cfg());
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    r.record_failure(0, Some(Duration::from_secs(50)), s(0));
    r.record_failure(1, Some(Duration::from_secs(20)), s(0));
    r.record_failure(2, Some(Duration::from_secs(40)), s(0));
    for st in ALL {
        assert_eq!(r.plan(st, "k", &[], s(1)), vec![1], "{st:?}");
    }
    // With the soonest one excluded, the next soonest.
    assert_eq!(r.plan(Strategy::Failover, "k", &[1], s(1)), vec![2]);
    // Everything already tried: nothing left.
    assert!(r.plan(Strategy::Failover, "k", &[0, 1, 2], s(1)).is_empty());
}

#[test]
fn exclude_is_honoured() {
    let r = four();
    let now = Instant::now();
    for st in ALL {
        for _ in 0..50 {
            let plan = r.plan(st, "k", &[0, 2], now);
            assert_eq!(plan.len(), 2, "{st:?}");
            assert!(plan.contains(&1) && plan.contains(&3), "{st:?}");
        }
    }
    assert_eq!(r.plan(Strategy::Failover, "k", &[0], now), vec![1, 2, 3]);
}

#[test]
fn unknown_ids_are_ignored() {
    let r = four();
    let now = Instant::now();
    let g = r.start(99);
    drop(g);
    r.record_success(99, Duration::from_millis(1), now);
    r.record_failure(99, None, now);
    assert!(!r.is_ejected(99, now));
    assert_eq!(r.in_flight(99), 0);
    assert_eq!(r.plan(Strategy::Failover, "k", &[], now).len(), 4);
    let empty = Router::new(Vec::new(), cfg());
    assert!(empty.plan(Strategy::LeastBusy, "k", &[], now).is_empty());
}

#[test]
fn concurrent_use_is_consistent() {
    let r = Arc::new(four());
    let now = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for i in 0..1000 {
                    let plan = r.plan(ALL[i % ALL.len()], "k", &[], now);
                    let _g = r.start(plan[0]);
                    r.record_success(plan[0], Duration::from_millis(10), now);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    for id in 0..4 {
        assert_eq!(r.in_flight(id), 0);
    }
}
