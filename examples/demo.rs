//! The local demo (`./scripts/demo`): a Synapse, the WhatsApp simulator and the real
//! `passerelle` binary, all on loopback, with a simulated WhatsApp group bridged to a
//! Matrix room, so that a newcomer sees messages cross both ways without any account.
//!
//! It links the association's number by QR (the simulated phone scans what
//! `passerelle login --raw` prints), approves the group with one file in `groups.d/`,
//! lets Bob write from WhatsApp and Alice answer from Matrix, then stays up for you
//! to play (`--once`: stop after the scripted exchange, as CI runs it).

#[path = "../tests/common/synapse.rs"]
#[allow(dead_code)]
mod synapse;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use synapse::{http_json, Synapse};

const ASSOCIATION_PHONE: &str = "33700000001";
const BOB: &str = "33611111111";
const CAROL: &str = "33622222222";
const ALICE_PASSWORD: &str = "demo";
const PATIENCE: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    let work = match tempfile::Builder::new().prefix("passerelle-demo").tempdir() {
        Ok(work) => work,
        Err(error) => {
            eprintln!("demo failed: no temporary directory: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match demo(work.path()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\ndemo failed: {error:#}");
            let log =
                std::fs::read_to_string(work.path().join("passerelle.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            if !tail.is_empty() {
                eprintln!("last lines of passerelle's log:");
                for line in tail.into_iter().rev() {
                    eprintln!("    {line}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn demo(work: &Path) -> Result<()> {
    let once = std::env::args().any(|arg| arg == "--once");
    let runtime = tokio::runtime::Runtime::new()?;
    let passerelle_bin = passerelle_binary()?;

    step("Starting Synapse on loopback (from the venv scripts/install-test-deps.sh made)");
    let synapse = Synapse::start();
    let alice = synapse.register("alice", ALICE_PASSWORD, false);
    let alice_token = synapse.login(&alice, ALICE_PASSWORD);
    let (status, body) = http_json(
        "PUT",
        &synapse.api(&format!("/_matrix/client/v3/profile/{alice}/displayname")),
        Some(&alice_token),
        Some(&json!({"displayname": "Alice"})),
    );
    ensure_ok(status, &body, "setting Alice's name")?;
    let bot_password = format!("bot-{:x}", rand_u64());
    let bot = synapse.register("passerelle", &bot_password, false);
    say(&format!(
        "Synapse: {} (Matrix user {alice}, password {ALICE_PASSWORD:?})",
        synapse.url
    ));

    step("Starting wa-sim, the WhatsApp simulator, with Bob and Carol");
    let sim = runtime.block_on(wa_sim::Simulator::start("127.0.0.1:0".parse()?))?;
    let control = sim.http_url();
    for (phone, name) in [(BOB, "Bob"), (CAROL, "Carol")] {
        let (status, body) = http_json(
            "POST",
            &format!("{control}members"),
            None,
            Some(&json!({"phone": phone, "name": name})),
        );
        ensure_ok(status, &body, "creating a member")?;
    }
    say(&format!(
        "wa-sim: {control} (WhatsApp endpoint {})",
        sim.ws_url()
    ));

    let config = write_config(work, &synapse, &bot, &bot_password, &alice, &sim.ws_url())?;
    step("Linking the association's number: passerelle login, the phone scans the QR code");
    link(&runtime, &sim, &passerelle_bin, &config)?;

    step("A WhatsApp group \"Famille Dupont\" (Bob, Carol, the association's number)");
    let (status, group) = http_json(
        "POST",
        &format!("{control}groups"),
        None,
        Some(&json!({
            "subject": "Famille Dupont",
            "creator": BOB,
            "members": [BOB, CAROL, ASSOCIATION_PHONE],
        })),
    );
    ensure_ok(status, &group, "creating the group")?;
    let jid = group["jid"].as_str().context("group jid")?.to_string();
    let group_file = work.join("groups.d").join("famille.toml");
    std::fs::write(
        &group_file,
        format!("# Approved by the admin.\nwhatsapp = \"{jid}\"\ninvite = [\"{alice}\"]\n"),
    )?;
    say(&format!("approved with {}:", group_file.display()));
    for line in std::fs::read_to_string(&group_file)?.lines() {
        say(&format!("    {line}"));
    }

    step("Starting passerelle run (its log: passerelle.log in the demo directory)");
    let log = std::fs::File::create(work.join("passerelle.log"))?;
    let service = Arc::new(Mutex::new(Some(
        Command::new(&passerelle_bin)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting passerelle run")?,
    )));
    stop_everything_on_ctrl_c(&runtime, Arc::clone(&service), work.to_path_buf());

    let room = accept_invite(&synapse, &alice_token)?;
    say(&format!(
        "Alice was invited to the room {room} and joined it"
    ));

    step("WhatsApp -> Matrix");
    let from_bob = "Bonjour à tous, *la photo* arrive ce soir !";
    let (status, body) = http_json(
        "POST",
        &format!("{control}groups/{jid}/messages"),
        None,
        Some(&json!({"from": BOB, "text": from_bob})),
    );
    ensure_ok(status, &body, "Bob sending")?;
    say(&format!("Bob (WhatsApp) writes:      {from_bob}"));
    let seen = wait_room_message(&synapse, &alice_token, &room, &bot, "Bonjour à tous")?;
    say(&format!("Alice (Matrix) sees:        {seen}"));

    step("Matrix -> WhatsApp");
    let from_alice = "Merci Bob ! Je suis sur Matrix maintenant.";
    let (status, body) = http_json(
        "PUT",
        &synapse.api(&format!(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/demo-{}",
            rand_u64()
        )),
        Some(&alice_token),
        Some(&json!({"msgtype": "m.text", "body": from_alice})),
    );
    ensure_ok(status, &body, "Alice sending")?;
    say(&format!("Alice (Matrix) writes:      {from_alice}"));
    for (phone, name) in [(BOB, "Bob"), (CAROL, "Carol")] {
        let seen = wait_whatsapp_message(&control, phone, &jid, "Merci Bob")?;
        say(&format!("{name}'s phone (WhatsApp) shows: {seen}"));
    }

    step("passerelle status");
    let status = Command::new(&passerelle_bin)
        .args(["status", "-c"])
        .arg(&config)
        .output()?;
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        say(&format!("    {line}"));
    }

    if !once {
        play(&synapse, &alice_token, &room, &control, &jid)?;
    }
    stop(&service);
    step("Done: everything was on loopback and is removed now");
    Ok(())
}

/// Keeps the demo up: lines typed are sent by Bob from WhatsApp; what arrives in the
/// room and on Bob's phone is printed. Ends at end of input (Ctrl-D) or Ctrl-C.
fn play(synapse: &Synapse, token: &str, room: &str, control: &str, jid: &str) -> Result<()> {
    step("Your turn");
    say(&format!(
        "Any Matrix client (Element...) can join in: homeserver {}, user alice, password {ALICE_PASSWORD:?}.",
        synapse.url
    ));
    say("Type a line and press Enter: Bob sends it from WhatsApp. Ctrl-D or Ctrl-C stops.");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines_tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = lines_tx.send(None);
    });
    let mut since = sync_token(synapse, token)?;
    let mut shown_on_phone = whatsapp_messages(control, BOB, jid)?.len();
    loop {
        match lines_rx.try_recv() {
            Ok(Some(line)) if !line.trim().is_empty() => {
                let (status, body) = http_json(
                    "POST",
                    &format!("{control}groups/{jid}/messages"),
                    None,
                    Some(&json!({"from": BOB, "text": line})),
                );
                ensure_ok(status, &body, "Bob sending")?;
            }
            Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(()),
            Ok(Some(_)) | Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        let (status, body) = http_json(
            "GET",
            &synapse.api(&format!(
                "/_matrix/client/v3/sync?timeout=500&since={since}"
            )),
            Some(token),
            None,
        );
        ensure_ok(status, &body, "syncing")?;
        since = body["next_batch"].as_str().unwrap_or(&since).to_string();
        for event in body["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if event["type"] == "m.room.message" {
                say(&format!(
                    "[Matrix room]    {}: {}",
                    event["sender"].as_str().unwrap_or("?"),
                    event["content"]["body"].as_str().unwrap_or("")
                ));
            }
        }
        let messages = whatsapp_messages(control, BOB, jid)?;
        for message in messages.iter().skip(shown_on_phone) {
            if message["from_me"] != true {
                say(&format!(
                    "[Bob's WhatsApp] {}",
                    message["text"].as_str().unwrap_or("")
                ));
            }
        }
        shown_on_phone = messages.len();
    }
}

/// `passerelle login --raw`: the first line it prints is the QR payload, which the
/// association's simulated phone scans.
fn link(
    runtime: &tokio::runtime::Runtime,
    sim: &wa_sim::Simulator,
    bin: &Path,
    config: &Path,
) -> Result<()> {
    let mut login = Command::new(bin)
        .args(["login", "--raw", "-c"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting passerelle login")?;
    let mut lines = BufReader::new(login.stdout.take().context("login stdout")?).lines();
    let qr = lines.next().context("passerelle login printed nothing")??;
    say(&format!(
        "passerelle login --raw printed a QR code: {}...",
        &qr[..qr.len().min(24)]
    ));
    runtime
        .block_on(sim.scan(ASSOCIATION_PHONE, &qr))
        .map_err(|error| anyhow::anyhow!("the phone could not scan: {error}"))?;
    for line in lines.map_while(Result::ok) {
        say(&format!("passerelle login: {line}"));
    }
    if !login.wait()?.success() {
        bail!("passerelle login failed");
    }
    Ok(())
}

fn write_config(
    dir: &Path,
    synapse: &Synapse,
    bot: &str,
    bot_password: &str,
    admin: &str,
    whatsapp_url: &str,
) -> Result<PathBuf> {
    std::fs::create_dir(dir.join("groups.d"))?;
    let password_file = dir.join("matrix-password");
    std::fs::write(&password_file, format!("{bot_password}\n"))?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[matrix]\nhomeserver = \"{}\"\nuser = \"{bot}\"\npassword_file = \"{}\"\n\
             admins = [\"{admin}\"]\n\
             # The demo reads the room over plain HTTP, which cannot decrypt.\n\
             encrypt_new_rooms = false\n\n[paths]\nstate_dir = \"{}\"\ngroups_dir = \"groups.d\"\n\n\
             [whatsapp]\nserver_url = \"{whatsapp_url}\"\n",
            synapse.url,
            password_file.display(),
            dir.join("state").display(),
        ),
    )?;
    Ok(config)
}

/// Waits for the bot's invite, joins, returns the room id.
fn accept_invite(synapse: &Synapse, token: &str) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    // Incremental syncs: Synapse caches an initial sync for a while.
    let mut since = sync_token(synapse, token)?;
    while Instant::now() < deadline {
        let (status, body) = http_json(
            "GET",
            &synapse.api(&format!(
                "/_matrix/client/v3/sync?timeout=1000&since={since}"
            )),
            Some(token),
            None,
        );
        ensure_ok(status, &body, "syncing")?;
        since = body["next_batch"].as_str().unwrap_or(&since).to_string();
        if let Some(room) = body["rooms"]["invite"]
            .as_object()
            .and_then(|invites| invites.keys().next().cloned())
        {
            let (status, body) = http_json(
                "POST",
                &synapse.api(&format!("/_matrix/client/v3/join/{room}")),
                Some(token),
                Some(&json!({})),
            );
            ensure_ok(status, &body, "joining")?;
            return Ok(room);
        }
    }
    bail!("passerelle never invited Alice (see passerelle.log)")
}

/// The body of the newest message from `sender` in `room` containing `needle`.
fn wait_room_message(
    synapse: &Synapse,
    token: &str,
    room: &str,
    sender: &str,
    needle: &str,
) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let (status, body) = http_json(
            "GET",
            &synapse.api(&format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"
            )),
            Some(token),
            None,
        );
        ensure_ok(status, &body, "reading the room")?;
        for event in body["chunk"].as_array().into_iter().flatten() {
            let text = event["content"]["body"].as_str().unwrap_or("");
            if event["sender"] == sender && text.contains(needle) {
                return Ok(text.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("the message never reached the Matrix room")
}

/// What `phone`'s WhatsApp client received in `jid` (wa-sim's read-back).
fn whatsapp_messages(control: &str, phone: &str, jid: &str) -> Result<Vec<Value>> {
    let (status, body) = http_json(
        "GET",
        &format!("{control}members/{phone}/messages?chat={jid}"),
        None,
        None,
    );
    ensure_ok(status, &body, "reading a phone")?;
    Ok(body["messages"].as_array().cloned().unwrap_or_default())
}

fn wait_whatsapp_message(control: &str, phone: &str, jid: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        for message in whatsapp_messages(control, phone, jid)? {
            let text = message["text"].as_str().unwrap_or("");
            if message["from_me"] != true && text.contains(needle) {
                return Ok(text.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("the message never reached the WhatsApp group")
}

fn sync_token(synapse: &Synapse, token: &str) -> Result<String> {
    let (status, body) = http_json(
        "GET",
        &synapse.api("/_matrix/client/v3/sync?timeout=0"),
        Some(token),
        None,
    );
    ensure_ok(status, &body, "syncing")?;
    Ok(body["next_batch"].as_str().unwrap_or_default().to_string())
}

/// Ctrl-C stops passerelle and removes the demo directory; Synapse's supervisor
/// stops Synapse by itself once this process is gone.
fn stop_everything_on_ctrl_c(
    runtime: &tokio::runtime::Runtime,
    service: Arc<Mutex<Option<Child>>>,
    dir: PathBuf,
) {
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop(&service);
            let _ = std::fs::remove_dir_all(&dir);
            println!();
            step("Stopped: everything was on loopback and is removed now");
            std::process::exit(0);
        }
    });
}

fn stop(service: &Mutex<Option<Child>>) {
    if let Some(mut child) = service.lock().map(|mut guard| guard.take()).ok().flatten() {
        // SIGTERM, as systemd stops it: passerelle shuts down cleanly.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The passerelle binary: `$PASSERELLE_BIN`, else the one built next to this example.
fn passerelle_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PASSERELLE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe()?;
    let bin = me
        .parent()
        .and_then(Path::parent)
        .context("no directory above the demo")?
        .join("passerelle");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --features simulator --bin passerelle`",
            bin.display()
        );
    }
    Ok(bin)
}

fn ensure_ok(status: u16, body: &Value, what: &str) -> Result<()> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        bail!("{what}: HTTP {status}: {body}")
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn say(line: &str) {
    println!("   {line}");
}
