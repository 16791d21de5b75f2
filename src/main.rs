//! `wharf`: the gateway binary.

use clap::{Parser, Subcommand};

/// jemalloc: per-request allocations (headers, bodies, records) are many and short-lived; it
/// beats the system allocator on the request path and keeps RSS per open stream low.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "wharf", version, about = "Wharf: an LLM and MCP gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(short = 'c', long = "config", default_value = "conf/wharf.toml")]
        config: String,
        /// Take over the listening sockets of a running instance (after SIGQUIT to it).
        #[arg(short = 'u', long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short = 'd', long)]
        daemon: bool,
    },
    /// Validate configuration files and exit (non-zero on any error).
    Check {
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Apply pending database migrations (forward-only).
    Migrate {
        /// Postgres URL (default: $DATABASE_URL).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Only report whether the schema is up to date.
        #[arg(long)]
        check: bool,
    },
    /// Secret maintenance (database mode).
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
    /// Admin API maintenance (database mode).
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Generate a virtual key: prints the secret (once) and the SHA-256 hash for the config.
    Keygen,
    /// Print the SHA-256 hash of a virtual key read from standard input.
    Hash,
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Print a new master key entry (`id:<base64 of 32 random bytes>`) for WHARF_MASTER_KEYS:
    /// the whole value on a first install, appended (comma, newest last) when rotating.
    NewMasterKey {
        /// Key id (default: `k` and today's date, UTC).
        #[arg(long)]
        id: Option<String>,
    },
    /// Re-encrypt every provider credential envelope under the newest master key of
    /// WHARF_MASTER_KEYS (add the new key to every gateway first).
    Rotate {
        /// Postgres URL (default: $DATABASE_URL).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Create the first SUPER_ADMIN user (when there is none) and print a new admin token once.
    Bootstrap {
        /// Postgres URL (default: $DATABASE_URL).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// E-mail of the super admin (default: admin@localhost); naming an existing super
        /// admin issues another token for it.
        #[arg(long)]
        email: Option<String>,
        /// Also set the super admin's admin-console password, read from this environment
        /// variable (the password never appears on the command line).
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            config,
            upgrade,
            daemon,
        } => match wharf::server::serve(wharf::server::ServeOpts {
            config_path: config,
            upgrade,
            daemon,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wharf: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Check { files } => {
            let mut failed = false;
            for f in files {
                match wharf::control::build::check_file(&f) {
                    Ok(c) => {
                        println!(
                            "{f}: ok ({} providers, {} models, {} keys)",
                            c.providers.len(),
                            c.models.len(),
                            c.keys.len()
                        );
                        for w in c.warnings {
                            println!("{f}: warning: {w}");
                        }
                    }
                    Err(e) => {
                        failed = true;
                        for line in e.0 {
                            eprintln!("{f}: error: {line}");
                        }
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::Migrate {
            database_url,
            check,
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("wharf: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = rt.block_on(async {
                let pool = wharf::db::connect(&database_url).await?;
                let applied = if check {
                    Vec::new()
                } else {
                    wharf::db::migrate_report(&pool).await?
                };
                wharf::db::check_schema(&pool).await.map(|()| applied)
            });
            match r {
                Ok(applied) => {
                    for (version, description) in &applied {
                        println!("applied {version:04} {description}");
                    }
                    if applied.is_empty() && !check {
                        println!("nothing to apply");
                    }
                    println!(
                        "schema up to date (version {})",
                        wharf::db::expected_version()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wharf: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Secrets {
            cmd: SecretsCmd::NewMasterKey { id },
        } => {
            let id = id.unwrap_or_else(|| {
                let fmt = time::macros::format_description!("k[year][month][day]");
                time::OffsetDateTime::now_utc()
                    .format(&fmt)
                    .unwrap_or_else(|_| "k1".into())
            });
            let entry = format!("{id}:{}", wharf::db::crypto::MasterKeys::generate_key());
            // Checked the way the gateway reads it, so what is printed is what it accepts.
            if let Err(e) = wharf::db::crypto::MasterKeys::parse(&entry) {
                eprintln!("wharf: {e}");
                return ExitCode::FAILURE;
            }
            println!("{entry}");
            eprintln!(
                "Set {} to this line on every gateway (when rotating, append it after a comma: the last key encrypts), and keep it safe: provider credentials cannot be decrypted without it.",
                wharf::db::crypto::MASTER_KEYS_ENV
            );
            ExitCode::SUCCESS
        }
        Cmd::Secrets {
            cmd: SecretsCmd::Rotate { database_url },
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("wharf: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(wharf::db::secrets::rotate_envelopes_at(&database_url)) {
                Ok(report) => {
                    println!("{report}");
                    if report.is_complete() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("wharf: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Admin {
            cmd:
                AdminCmd::Bootstrap {
                    database_url,
                    email,
                    password_env,
                },
        } => {
            let password = match password_env.as_deref().map(std::env::var) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => {
                    eprintln!(
                        "wharf: the environment variable {} is not set",
                        password_env.as_deref().unwrap_or_default()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("wharf: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(wharf::api::bootstrap::run(
                &database_url,
                email.as_deref(),
                password.as_deref(),
            )) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wharf: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Keygen => {
            let (secret, hash) = wharf::keys::generate();
            println!("key:  {secret}");
            println!("hash: {}", hash.to_hex());
            ExitCode::SUCCESS
        }
        Cmd::Hash => {
            let mut s = String::new();
            if std::io::stdin().read_line(&mut s).is_err() {
                return ExitCode::FAILURE;
            }
            println!(
                "{}",
                wharf::keys::KeyHash::of(s.trim_end_matches(['\n', '\r'])).to_hex()
            );
            ExitCode::SUCCESS
        }
    }
}
