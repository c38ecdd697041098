//! The `passerelle` command line: run the service, check the configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use passerelle::config;
use passerelle::service::{Service, Signals, WhatsAppNetwork};

const DEFAULT_CONFIG: &str = "/etc/passerelle/config.toml";

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "Mirror admin-approved WhatsApp groups into Matrix rooms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (SIGHUP reloads groups.d and config.toml, SIGTERM stops).
    Run {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the state of the bridge: service, Matrix, WhatsApp, groups, queues.
    Status {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate config.toml and every file in groups.d; one line per problem.
    Check {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Status { config, json } => status(&config, json),
    }
}

fn check(config_path: &Path) -> ExitCode {
    match config::load_all(config_path) {
        Ok((_, groups)) => {
            println!(
                "{}: OK, {} group{} approved",
                config_path.display(),
                groups.len(),
                if groups.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems.0 {
                println!("{problem}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::FAILURE
        }
    }
}

/// A bare level (`info`) applies to passerelle; its dependencies log warnings and
/// errors only, and whatsapp-rust errors only, since the SDKs print identifiers
/// (whatsapp-rust's warnings include whole stanzas with phone numbers). Per-module
/// directives (`info,whatsapp_rust=debug`) are taken as written.
fn log_directives(level: &str) -> String {
    match level.trim() {
        bare @ ("info" | "warn" | "error") => {
            format!("warn,whatsapp_rust=error,wacore=error,passerelle={bare}")
        }
        other => other.to_string(),
    }
}

fn status(config_path: &Path, json: bool) -> ExitCode {
    match passerelle::status::gather(config_path) {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("passerelle: {error}");
                ExitCode::FAILURE
            }
        },
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_directives(level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn run(config_path: &Path) -> ExitCode {
    let config = match config::Config::load(config_path) {
        Ok(config) => config,
        Err(problems) => {
            for problem in &problems.0 {
                eprintln!("{problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.logging.level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let signals = Signals::install()?;
        let service = Service::start(config_path, WhatsAppNetwork::Real).await?;
        service.run_until_signalled(signals).await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("passerelle: {error:#}");
            ExitCode::FAILURE
        }
    }
}
