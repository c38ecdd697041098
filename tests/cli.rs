//! The `passerelle` binary as an admin uses it: `check` output and exit codes, and
//! `run` under signals (SIGHUP reloads groups.d, SIGTERM stops) against a real Synapse.
#![recursion_limit = "256"]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bridge::{unique, TestBridge};
use common::synapse::{http_json, Synapse};

fn passerelle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
}

/// config.toml (and an empty groups.d) in `dir`, state in `dir/state`.
fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    write_config_with_state(dir, &dir.join("state"), extra)
}

fn write_config_with_state(
    dir: &std::path::Path,
    state_dir: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("groups.d")).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser = \"@bot:example.org\"\npassword = \"x\"\n\n[paths]\nstate_dir = \"{}\"\n{extra}",
            state_dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn help_lists_the_commands() {
    let output = passerelle().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for command in [
        "run", "check", "status", "login", "groups", "join", "outbox",
    ] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn check_summarises_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    std::fs::write(
        dir.path().join("groups.d/famille.toml"),
        "whatsapp = \"120363041234567890@g.us\"\ninvite = [\"@alice:example.org\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("groups.d/club.toml"),
        "whatsapp = \"33612345678-1591234567@g.us\"\nallow = [\"@*:example.org\"]\n",
    )
    .unwrap();
    let output = passerelle()
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("2 groups approved"), "{text}");
    assert!(
        !dir.path().join("state").exists(),
        "check must write nothing"
    );
}

#[test]
fn check_reports_each_problem_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let groups = dir.path().join("groups.d");
    std::fs::write(
        groups.join("a.toml"),
        "whatsapp = \"120363041234567890@g.us\"\n",
    )
    .unwrap();
    std::fs::write(
        groups.join("b.toml"),
        "# same group again\nwhatsapp = \"120363041234567890@g.us\"\n",
    )
    .unwrap();
    std::fs::write(
        groups.join("c.toml"),
        "whatsapp = \"120363041234567891@g.us\"\n\nalow = [\"@*:example.org\"]\n",
    )
    .unwrap();
    std::fs::write(
        groups.join("d.toml"),
        "whatsapp = \"120363041234567892@g.us\"\ninvite = [\"alice\"]\n",
    )
    .unwrap();
    std::fs::write(groups.join("e.toml"), "whatsapp = [1, 2\n").unwrap();
    let output = passerelle()
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    let expect = |file: &str, line: u32| {
        let prefix = format!("{}:{line}: ", groups.join(file).display());
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)),
            "no line starting with {prefix:?} in:\n{text}"
        );
    };
    expect("b.toml", 2); // duplicate group id
    expect("c.toml", 3); // unknown key
    expect("d.toml", 2); // malformed user id
    expect("e.toml", 1); // TOML syntax
    assert!(
        text.contains("a.toml"),
        "the duplicate names the first file:\n{text}"
    );
}

/// Waits until `alias` resolves on the homeserver, returning the room id.
fn wait_alias(synapse: &Synapse, token: &str, alias: &str) -> String {
    let encoded = alias.replace('#', "%23").replace(':', "%3A");
    let url = synapse.api(&format!("/_matrix/client/v3/directory/room/{encoded}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_json("GET", &url, Some(token), None);
        if status == 200 {
            return body["room_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "alias {alias} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn run_reloads_on_sighup_and_stops_on_sigterm() {
    let synapse = Synapse::shared();
    let admin_local = unique("admin");
    let admin = synapse.register(&admin_local, "pw", false);
    let token = synapse.login(&admin, "pw");
    // The bridge's config from the shared test helper; WhatsApp is not linked, so
    // `run` relays nothing from WhatsApp but sets up the Matrix side.
    let bridge = TestBridge::new(synapse, &[&admin]);
    std::fs::write(
        &bridge.config_path,
        std::fs::read_to_string(&bridge.config_path).unwrap()
            + "\n[whatsapp]\nserver_url = \"ws://127.0.0.1:9/ws/chat\"\n",
    )
    .unwrap();
    let first = unique("first");
    bridge.write_group(&first, "120363000000000011@g.us", "");
    let log_path = bridge.dir.path().join("run.log");
    let mut child = passerelle()
        .arg("run")
        .arg("-c")
        .arg(&bridge.config_path)
        .stdout(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::options()
                .append(true)
                .open(&log_path)
                .unwrap(),
        ))
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let signal = |name: &str| {
        assert!(Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .unwrap()
            .success());
    };

    let server = &synapse.server_name;
    let first_room = wait_alias(synapse, &token, &format!("#{first}:{server}"));

    let second = unique("second");
    bridge.write_group(&second, "120363000000000012@g.us", "");
    std::fs::write(bridge.groups_dir.join("broken.toml"), "whatsapp = 42\n").unwrap();
    signal("HUP");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a broken reload must not stop the service; log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let (status, _) = http_json(
        "GET",
        &synapse.api(&format!(
            "/_matrix/client/v3/directory/room/%23{second}%3A{server}"
        )),
        Some(&token),
        None,
    );
    assert_eq!(
        status, 404,
        "a refused reload must not apply any part of it"
    );

    std::fs::remove_file(bridge.groups_dir.join("broken.toml")).unwrap();
    signal("HUP");
    let second_room = wait_alias(synapse, &token, &format!("#{second}:{server}"));
    assert_ne!(first_room, second_room);

    let status_of = |json: bool| {
        let mut command = passerelle();
        command.arg("status").arg("-c").arg(&bridge.config_path);
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    // The room exists a moment before the bridge has stored it: poll.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report: serde_json::Value = serde_json::from_str(&status_of(true)).unwrap();
        if report["groups_bridged"] == 2 || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["running"], true, "{report}");
    assert_eq!(report["groups_approved"], 2, "{report}");
    assert_eq!(report["groups_bridged"], 2, "{report}");
    assert!(report["matrix_device"].is_string(), "{report}");
    assert_eq!(report["to_whatsapp"]["waiting"], 0, "{report}");
    assert!(
        report["whatsapp"].as_str().unwrap().contains("not linked")
            && report["whatsapp_number"].is_null(),
        "{report}"
    );
    let text = status_of(false);
    assert!(text.contains("2 approved, 2 bridged"), "{text}");
    assert!(text.contains(&second_room), "{text}");

    // The admin commands reach the running service, which says what stops them.
    let groups = passerelle()
        .arg("groups")
        .arg("-c")
        .arg(&bridge.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&groups.stderr);
    assert!(!groups.status.success());
    assert!(stderr.contains("WhatsApp is not linked"), "{stderr}");
    // A second service on the same state directory would fight over the device.
    let second_run = run_expecting_refusal(&bridge.config_path);
    assert!(second_run.contains("already runs"), "{second_run}");
    assert!(child.try_wait().unwrap().is_none(), "the first one runs on");

    signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "passerelle did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let report: serde_json::Value = serde_json::from_str(&status_of(true)).unwrap();
    assert_eq!(report["running"], false, "after SIGTERM: {report}");
    assert!(!bridge.dir.path().join("state/control.sock").exists());
    let join = passerelle()
        .args(["join", "https://chat.whatsapp.com/AbCdEf", "-c"])
        .arg(&bridge.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&join.stderr);
    assert!(!join.status.success());
    assert!(stderr.contains("passerelle is not running"), "{stderr}");
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        log.contains("broken.toml:1:"),
        "the refused reload is logged with path:line:\n{log}"
    );
    let state = bridge.dir.path().join("state");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("passerelle.db")), 0o600);
    assert_eq!(mode(&state.join("matrix-session.json")), 0o600);
    assert_eq!(mode(&state.join("whatsapp.db")), 0o600);
    assert_eq!(mode(&state.join("matrix-store-key")), 0o600);
}

/// Runs `passerelle run` expecting it to refuse to start; returns its stderr.
fn run_expecting_refusal(config: &std::path::Path) -> String {
    let mut child = passerelle()
        .arg("run")
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("passerelle run did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !status.success(),
        "it must exit non-zero; stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn run_refuses_a_truncated_group_file_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let bad = dir.path().join("groups.d/famille.toml");
    std::fs::write(&bad, "whatsapp = \"1203630412").unwrap(); // cut mid-string
    let stderr = run_expecting_refusal(&config);
    assert!(
        stderr.contains(&format!("{}:1:", bad.display())),
        "{stderr}"
    );
    assert!(!dir.path().join("state").exists(), "nothing may be written");
}

#[test]
fn run_refuses_an_unusable_state_directory_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let config = write_config_with_state(dir.path(), &blocker.join("state"), "");
    let stderr = run_expecting_refusal(&config);
    assert!(stderr.contains("state directory"), "{stderr}");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 3, "only what the test wrote");
}

#[test]
fn outbox_lists_retries_and_drops_messages_set_aside_without_showing_them() {
    use passerelle::store::{Direction, NewOutboxItem, Store};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let jid = "120363041234567890@g.us";
    std::fs::write(
        dir.path().join("groups.d/famille.toml"),
        format!("whatsapp = \"{jid}\"\ninvite = [\"@alice:example.org\"]\n"),
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let store = Store::open(&state.join("passerelle.db")).unwrap();
    for source in ["W1", "W2"] {
        store
            .enqueue(&NewOutboxItem {
                direction: Direction::ToMatrix,
                source_id: source,
                target_id: &format!("t-{source}"),
                group_jid: jid,
                room_id: "!r:example.org",
                payload: "{\"body\":\"Bob: un secret\"}",
            })
            .unwrap();
    }
    let head = store
        .next_due(Direction::ToMatrix, i64::MAX)
        .unwrap()
        .unwrap();
    store.set_aside(head.seq, "failed 100 times").unwrap();

    let outbox = |args: &[&str]| {
        let output = passerelle()
            .arg("outbox")
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, listed, _) = outbox(&[]);
    assert!(ok, "{listed}");
    let line = listed
        .lines()
        .find(|line| line.starts_with(&format!("{}\t", head.seq)))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("\tmatrix\tfamille\t"), "{line}");
    assert!(line.contains("failed 100 times"), "{line}");
    assert!(!listed.contains("secret"), "content shown: {listed}");

    let seq = head.seq.to_string();
    let (ok, said, error) = outbox(&["retry", &seq]);
    assert!(ok && said.contains("queued again"), "{said}{error}");
    let again = store
        .next_due(Direction::ToMatrix, i64::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.seq, again.attempts),
        (head.seq, 0),
        "back at its place"
    );
    let (ok, listed, _) = outbox(&["list"]);
    assert!(ok && listed.contains("no message set aside"), "{listed}");

    store
        .set_aside(again.seq, "waited more than 7 days")
        .unwrap();
    let (ok, said, _) = outbox(&["drop", &seq]);
    assert!(ok && said.contains("forgotten"), "{said}");
    let (ok, _, error) = outbox(&["retry", &seq]);
    assert!(!ok && error.contains("no message set aside"), "{error}");
}
