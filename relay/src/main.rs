//! The `relay` command line: serve, check a config, make dev certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use relay::config::{Config, ListenerKind};

// jemalloc rather than glibc's malloc, measured side by side (handshake storms of 20,000
// against tests/bench/relay-bench.toml): glibc's heap ages as the tenant key-value stores
// fill with long-lived nonces (an open-policy handshake went from 51 to 60 µs of relay CPU
// after 60,000 signed ones, `_int_malloc` and `malloc_consolidate` taking 12%), jemalloc's
// stays at 38-45 µs; fan-out at 1,000 clients rose from 1.86 M to 2.08-2.22 M deliveries/s;
// idle memory per connection is unchanged (3.64 vs 3.62 KiB ws).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "relay",
    version,
    about = "High-throughput, WebAssembly-extensible real-time edge relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (on the embedded default config when no --config is given).
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit (0 = valid).
    Check {
        /// TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Certificate tooling.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Plugin tooling.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load one plugin component without a config: compile it, check its imports and
    /// contract version, run its init, and say which hooks and headers it declares.
    Check {
        /// The `.wasm` component (or `bundled:<name>`).
        file: PathBuf,
        /// The tenant `settings` to init it with, as a JSON object.
        #[arg(long)]
        settings: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate a development CA and a localhost server certificate (never for production).
    Dev {
        /// Output directory.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config),
        Command::Check { config } => match Config::load(&config)
            .map_err(relay::Error::from)
            .and_then(|c| relay::check(&c).map(|_| c))
        {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!(
                    "{}: ok ({} listeners, {} tenants)",
                    config.display(),
                    c.listeners.len(),
                    c.tenants.len()
                );
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
        Command::Certs {
            command: CertsCommand::Dev { out, force },
        } => relay::transport::tls::ensure_dev_certs(&out, force)
            .map(|d| {
                println!("CA (trust this in dev clients): {}", d.ca.display());
                println!(
                    "certificate: {}\nkey:         {}",
                    d.cert.display(),
                    d.key.display()
                );
            })
            .map_err(Into::into),
        Command::Plugin {
            command: PluginCommand::Check { file, settings },
        } => relay::plugin::check_file(
            &match file.to_str().and_then(|f| f.strip_prefix("bundled:")) {
                Some(name) => relay::plugin::bundled(name),
                None => file.clone(),
            },
            settings.as_deref(),
        )
        .map(|p| {
            let headers = p.headers.map_or("every header".to_owned(), |h| {
                if h.is_empty() {
                    "none".to_owned()
                } else {
                    h.join(", ")
                }
            });
            println!("{}: ok", file.display());
            println!("  sha256   {}", p.hash);
            println!("  hooks    {}", p.hooks.join(", "));
            println!("  headers  {headers}");
        })
        .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Config::embedded_default().map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let running = relay::start(config.clone()).await?;
        // Install the SIGHUP handler before announcing anything: SIGHUP's default action kills.
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("SIGHUP handler")?;
        for l in &config.listeners {
            let addr = running.addr(l.name.get_ref());
            tracing::info!(listener = %l.name.get_ref(), kind = ?l.kind, %addr, "listening");
        }
        if path.is_none() {
            print_tour(&config, &running);
        }
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(running.node.clone(), hup));
        wait_for_signal().await;
        tracing::info!("shutting down: closing connections after their queued messages");
        if !running.stop().await {
            tracing::warn!("shutdown grace period ended with tasks still running");
        }
        anyhow::Ok(())
    })
}

fn print_tour(config: &Config, running: &relay::Running) {
    let find = |k: ListenerKind| {
        config
            .listeners
            .iter()
            .find(|l| l.kind == k)
            .map(|l| running.addr(l.name.get_ref()))
    };
    println!("relay is running on the embedded default config (tenant \"demo\", open policy: development only)");
    if let Some(a) = find(ListenerKind::Ws) {
        println!("  WebSocket:  ws://{a}/?user=alice&rooms=lobby   then send {{\"event\":\"emit\",\"room\":\"lobby\",\"data\":\"hi\"}}");
    }
    if let Some(a) = find(ListenerKind::Wss) {
        println!(
            "  TLS:        wss://localhost:{}/  (trust {}/dev-certs/ca.pem)",
            a.port(),
            config.data_dir().display()
        );
    }
    if let Some(a) = find(ListenerKind::Http) {
        println!("  HTTP push:  curl -d room=lobby -d data=hello http://{a}/push");
    }
    if let Some(a) = find(ListenerKind::Udp) {
        println!("  UDP push:   send a datagram {{\"room\":\"lobby\",\"data\":\"hi\"}} to {a}; the reply says how many are online");
    }
}

/// SIGHUP reloads every tenant's WASM plugin (a bad new version is rejected; the old one stays).
#[cfg(unix)]
async fn reload_on_sighup(
    node: std::sync::Arc<relay::node::Node>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.reload_plugins(None)).await {
            Ok(r) => tracing::info!(result = %r, "SIGHUP: plugins reloaded"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
