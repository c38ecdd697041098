//! The `passerelle` command line: run the service, check the configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use passerelle::service::{Service, Signals, WhatsAppNetwork};
use passerelle::whatsapp::link::{link, LinkError, LinkMethod, LinkPrompt};
use passerelle::{admin, config, control};

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
    /// Link the association's WhatsApp number (QR code, or pair code with --phone).
    Login {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the QR payloads as text lines instead of drawing them.
        #[arg(long)]
        raw: bool,
        /// Link with a pair code typed on this phone (international format, +33...).
        #[arg(long)]
        phone: Option<String>,
        /// Link again even if a number is already linked (forgets the old link).
        #[arg(long)]
        force: bool,
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
    /// List the WhatsApp groups of the linked number and which group file approves each
    /// (asks the running service).
    Groups {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Join a WhatsApp group by invite link and print a group file for it (asks the
    /// running service).
    Join {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The invite link, https://chat.whatsapp.com/CODE (or the code).
        invite: String,
    },
    /// Messages set aside after too many attempts (or too long a wait): list them,
    /// send one again (`retry SEQ`, picked up by the running service within a
    /// minute) or forget it (`drop SEQ`). Local, for the admin of the host.
    Outbox {
        /// Path of config.toml (before the action).
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<OutboxAction>,
    },
    /// Validate config.toml and every file in groups.d; one line per problem.
    Check {
        /// Path of config.toml.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// List the messages set aside (the default).
    List,
    /// Put message SEQ back in its queue, at its place.
    Retry { seq: i64 },
    /// Forget message SEQ for good.
    Drop { seq: i64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Status { config, json } => status(&config, json),
        Command::Groups { config, json } => groups(&config, json),
        Command::Join { config, invite } => join(&config, &invite),
        Command::Outbox { config, action } => outbox(&config, action.unwrap_or(OutboxAction::List)),
        Command::Login {
            config,
            raw,
            phone,
            force,
        } => login(&config, raw, phone, force),
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
            // What the service found when it made the rooms (nothing before it ran).
            if let Ok(report) = passerelle::status::gather(config_path) {
                for group in &report.groups {
                    if let Some((alias, room)) = &group.alias_taken {
                        println!(
                            "warning: group {}: the alias {alias} is held by {room}, a room the \
                             bridge did not make; the group's room ({}) has no alias",
                            group.name,
                            group.room.as_deref().unwrap_or("not made yet")
                        );
                    }
                }
            }
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

/// The group files on disk; their problems are printed, the valid ones still count.
fn group_files(config: &config::Config) -> Vec<config::GroupFile> {
    let (files, problems) = config::load_groups_with_problems(&config.paths.groups_dir);
    for problem in &problems {
        eprintln!("{problem}");
    }
    if !problems.is_empty() {
        eprintln!("(group files with problems are ignored below; see `passerelle check`)");
    }
    files
}

/// Sends one request to the running service; errors are printed.
fn ask_service(config: &config::Config, request: &control::Request) -> Option<control::Reply> {
    match control::ask(&config.paths.state_dir, request) {
        Ok(control::Reply::Error { message }) => {
            eprintln!("passerelle: {message}");
            None
        }
        Ok(reply) => Some(reply),
        Err(error) => {
            eprintln!("passerelle: {error}");
            None
        }
    }
}

fn outbox(config_path: &Path, action: OutboxAction) -> ExitCode {
    let Some(config) = load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    let path = config.paths.state_dir.join("passerelle.db");
    if !path.exists() {
        eprintln!("passerelle: no bridge database at {} yet", path.display());
        return ExitCode::FAILURE;
    }
    let store = match passerelle::store::Store::open(&path) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("passerelle: {error}");
            return ExitCode::FAILURE;
        }
    };
    let done = match action {
        OutboxAction::List => store.set_aside_items().map(|items| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            print!(
                "{}",
                admin::set_aside_table(&items, &group_files(&config), now)
            );
            true
        }),
        OutboxAction::Retry { seq } => store.requeue_set_aside(seq).inspect(|&found| {
            if found {
                println!("message {seq} is queued again");
            }
        }),
        OutboxAction::Drop { seq } => store.drop_set_aside(seq).inspect(|&found| {
            if found {
                println!("message {seq} is forgotten");
            }
        }),
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "passerelle: no message set aside under that number (see `passerelle outbox`)"
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("passerelle: {error}");
            ExitCode::FAILURE
        }
    }
}

fn groups(config_path: &Path, json: bool) -> ExitCode {
    let Some(config) = load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    let Some(control::Reply::Groups { groups }) = ask_service(&config, &control::Request::Groups)
    else {
        return ExitCode::FAILURE;
    };
    let lines = admin::group_lines(&groups, &group_files(&config));
    if json {
        match serde_json::to_string_pretty(&lines) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("passerelle: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", admin::render_groups(&lines));
    }
    ExitCode::SUCCESS
}

fn join(config_path: &Path, invite: &str) -> ExitCode {
    let Some(config) = load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    let request = control::Request::Join {
        invite: invite.trim().to_string(),
    };
    let Some(control::Reply::Join { outcome }) = ask_service(&config, &request) else {
        return ExitCode::FAILURE;
    };
    print!(
        "{}",
        admin::render_join(&outcome, &config.paths.groups_dir, &group_files(&config))
    );
    ExitCode::SUCCESS
}

fn render_qr(code: &str) -> String {
    match qrcode::QrCode::new(code.as_bytes()) {
        Ok(qr) => qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
        Err(error) => format!("(cannot draw this QR code: {error}; use --raw)"),
    }
}

fn login(config_path: &Path, raw: bool, phone: Option<String>, force: bool) -> ExitCode {
    let Some(config) = load_config(config_path) else {
        return ExitCode::FAILURE;
    };
    if force {
        if let Ok(report) = passerelle::status::gather(config_path) {
            if report.running {
                eprintln!("passerelle is running: stop it before linking again (systemctl stop passerelle)");
                return ExitCode::FAILURE;
            }
        }
    }
    let method = match phone {
        Some(phone) => {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            if digits.len() < 6
                || phone
                    .chars()
                    .any(|c| !c.is_ascii_digit() && !"+ -.".contains(c))
            {
                eprintln!("--phone: give the number in international format, e.g. +33612345678");
                return ExitCode::FAILURE;
            }
            LinkMethod::PairCode { phone: digits }
        }
        None => LinkMethod::Qr,
    };
    let Some(runtime) = new_runtime() else {
        return ExitCode::FAILURE;
    };
    let state_dir = config.paths.state_dir.clone();
    let url = config.whatsapp.url.clone();
    let result = runtime.block_on(link(&state_dir, url.as_deref(), method, force, |prompt| {
        match prompt {
            LinkPrompt::Qr { code, valid_for } if raw => {
                println!("{code}");
                eprintln!("(QR payload above, valid {} s)", valid_for.as_secs());
            }
            LinkPrompt::Qr { code, valid_for } => {
                println!("{}", render_qr(&code));
                println!(
                    "Scan with the phone: WhatsApp > Settings > Linked devices > Link a device (valid {} s, a new code follows).",
                    valid_for.as_secs()
                );
            }
            LinkPrompt::PairCode { code, valid_for } => {
                println!("Pair code: {code}");
                println!(
                    "On the phone: WhatsApp > Settings > Linked devices > Link a device > Link with phone number instead, then type the code (valid {} s).",
                    valid_for.as_secs()
                );
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }));
    match result {
        Ok(number) => {
            println!("linked to +{number}");
            println!("Restart the service to start relaying: systemctl restart passerelle");
            ExitCode::SUCCESS
        }
        Err(LinkError::AlreadyLinked(number)) => {
            println!("already linked to +{number}; nothing to do (--force links again)");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("passerelle login: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Loads config.toml (printing its problems) and sets up logging from it.
fn load_config(config_path: &Path) -> Option<config::Config> {
    match config::Config::load(config_path) {
        Ok(config) => {
            init_logging(&config.logging.level);
            Some(config)
        }
        Err(problems) => {
            for problem in &problems.0 {
                eprintln!("{problem}");
            }
            None
        }
    }
}

fn new_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .map_err(|error| eprintln!("cannot start the async runtime: {error}"))
        .ok()
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_directives(level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr (journald keeps it): stdout carries command output only, such
    // as the QR payloads of `login --raw`. Colours only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(config_path: &Path) -> ExitCode {
    if load_config(config_path).is_none() {
        return ExitCode::FAILURE;
    }
    let Some(runtime) = new_runtime() else {
        return ExitCode::FAILURE;
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let signals = Signals::install()?;
        let service = Service::start(config_path, WhatsAppNetwork::Real).await?;
        service
            .run_until_signalled(signals)
            .await
            .map_err(|why| anyhow::anyhow!("stopped: {why}"))
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
