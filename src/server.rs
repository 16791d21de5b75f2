//! Assembles the Pingora server: proxy listener (optionally TLS with HTTP/2 by ALPN), admin
//! listener, background services; then runs until SIGTERM (graceful drain) or SIGQUIT (upgrade).

use crate::admin::AdminApp;
use crate::config::{self, Config};
use crate::control::state::{resolve_providers, State};
use crate::proxy::Gateway;
use crate::services::{ConfigWatcher, ProviderMonitor, UsageWriter};
use crate::usage::UsageSink;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Options of `wharf serve`.
pub struct ServeOpts {
    pub config_path: String,
    pub upgrade: bool,
    pub daemon: bool,
}

/// Forwards Pingora's `log` records into the structured log: message, level and the emitting
/// module only (no source file paths).
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let source = r.target();
        let msg = r.args();
        match r.level() {
            log::Level::Error => tracing::error!(source, "{msg}"),
            log::Level::Warn => tracing::warn!(source, "{msg}"),
            log::Level::Info => tracing::info!(source, "{msg}"),
            log::Level::Debug => tracing::debug!(source, "{msg}"),
            log::Level::Trace => tracing::trace!(source, "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Installs the JSON (or text) log subscriber.
pub fn init_logging(cfg: &Config) {
    if log::set_boxed_logger(Box::new(LogBridge)).is_ok() {
        log::set_max_level(match cfg.server.log_level.as_str() {
            "trace" => log::LevelFilter::Trace,
            "debug" => log::LevelFilter::Debug,
            "info" => log::LevelFilter::Info,
            "warn" => log::LevelFilter::Warn,
            _ => log::LevelFilter::Error,
        });
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.server.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_file(false)
        .with_line_number(false);
    let _ = if cfg.server.log_json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Loads the configuration, builds every service and runs forever.
pub fn serve(opts: ServeOpts) -> Result<(), String> {
    let mut cfg = config::load(&opts.config_path).map_err(|e| e.to_string())?;
    init_logging(&cfg);
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "configuration");
    }
    crate::metrics::init();
    // Database mode: the first catalog load and the schema check happen before any listener
    // opens. A short-lived runtime holds no connection afterwards; everything long-lived is
    // created inside Pingora's runtimes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let db = match cfg.database.clone() {
        Some(settings) => {
            let keys = crate::db::crypto::MasterKeys::from_env().map_err(|e| {
                format!(
                    "database mode needs {} to decrypt provider credentials: {e}",
                    crate::db::crypto::MASTER_KEYS_ENV
                )
            })?;
            rt.block_on(crate::control::initial_load(&mut cfg, &keys))?;
            Some(Arc::new(crate::control::DbMode::new(settings, keys)))
        }
        None => None,
    };
    let filters = crate::control::build::filters(&cfg).map_err(|e| e.to_string())?;
    // Resolve provider host names before the first request.
    rt.block_on(resolve_providers(&cfg, None));
    drop(rt);

    let server_cfg = cfg.server.clone();
    let conf = ServerConf {
        threads: server_cfg.threads,
        grace_period_seconds: Some(server_cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(server_cfg.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: server_cfg.upstream_keepalive_pool_size,
        pid_file: server_cfg.pid_file.clone(),
        upgrade_sock: server_cfg.upgrade_sock.clone(),
        daemon: opts.daemon,
        ca_file: server_cfg.upstream_ca_file.clone(),
        ..Default::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let (sink, rx) = UsageSink::new(cfg.usage.queue_capacity);
    let usage_path = cfg.usage.path.clone();
    let usage_database = cfg
        .database
        .as_ref()
        .map(|d| (d.url.expose().to_string(), cfg.usage.spill_path.clone()));
    let db_mode = db.is_some();
    let state = State::new(cfg, filters, opts.config_path.clone(), sink, db);

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway {
            state: state.clone(),
        },
        "wharf-proxy",
    );
    match &server_cfg.tls {
        Some(t) => {
            let mut tls = TlsSettings::intermediate(&t.cert_file, &t.key_file)
                .map_err(|e| format!("server.tls: {e}"))?;
            if t.h2 {
                tls.enable_h2();
            }
            proxy.add_tls_with_settings(&server_cfg.listen, None, tls);
        }
        None => proxy.add_tcp(&server_cfg.listen),
    }
    let proxy_handle = server.add_service(proxy);

    if let Some(admin_addr) = &server_cfg.admin_listen {
        let mut admin = Service::new(
            "wharf-admin".to_string(),
            crate::admin::AdminListener {
                app: AdminApp {
                    state: state.clone(),
                },
            },
        );
        admin.add_tcp(admin_addr);
        admin.threads = Some(1);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "usage-writer",
        UsageWriter {
            rx: Mutex::new(Some(rx)),
            path: usage_path,
            database: usage_database,
        },
    ));
    let telemetry = state.current().config.telemetry.clone();
    if let Some((exporter, task)) = crate::telemetry::Exporter::new(&telemetry) {
        let _ = state.traces.set(exporter);
        server.add_service(background_service("trace-exporter", task));
    }
    server.add_service(background_service(
        "config-watcher",
        ConfigWatcher {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "provider-monitor",
        ProviderMonitor {
            state: Arc::clone(&state),
            every: Duration::from_secs(10),
        },
    ));
    server.add_service(background_service("health-checks", {
        let state = Arc::clone(&state);
        crate::routing::health::HealthChecks {
            providers: Box::new(move || state.current().config.providers.clone()),
        }
    }));
    if let Some(url) = state.current().config.redis_url.clone() {
        server.add_service(background_service(
            "slice-return",
            crate::services::SliceReturn {
                state: state.clone(),
            },
        ));
        server.add_service(background_service(
            "redis-probe",
            crate::control::RedisProbe {
                state: state.clone(),
                url,
            },
        ));
    }
    if db_mode {
        let control = server.add_service(background_service(
            "control-sync",
            crate::control::ControlSync {
                state: state.clone(),
            },
        ));
        // No traffic before the key store is reachable.
        proxy_handle.add_dependency(&control);
    }
    tracing::info!(
        listen = %server_cfg.listen,
        admin = server_cfg.admin_listen.as_deref().unwrap_or("off"),
        tls = server_cfg.tls.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "wharf starting"
    );
    server.run_forever()
}
