//! `wa-sim --listen 127.0.0.1:PORT`: runs the simulator until Ctrl-C, printing the
//! WhatsApp and control URLs on stdout (one `key=value` per line) once ready.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};

fn parse_listen() -> Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args.next().context("--listen needs ADDR:PORT")?;
                listen = v.parse().with_context(|| format!("bad address {v:?}"))?;
            }
            "-h" | "--help" => {
                println!("usage: wa-sim [--listen 127.0.0.1:PORT]   (default port: any free one)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(listen)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wa_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let sim = wa_sim::Simulator::start(parse_listen()?).await?;
    println!("ws_url={}", sim.ws_url());
    println!("control_url={}", sim.http_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
