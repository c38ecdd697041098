//! Test harness: a real Synapse homeserver on 127.0.0.1 for integration tests, and a tiny
//! blocking HTTP/JSON client over `std::net::TcpStream` to talk to it (std only, no tokio).
//!
//! Synapse comes from the venv made by `scripts/install-test-deps.sh` (see [`venv_dir`]).
//! Each instance lives in its own temp dir (config, signing key, sqlite db, media, and
//! `synapse.log` with Synapse's stdout/stderr).
//!
//! No orphans: Synapse runs under a small Python supervisor (`<dir>/supervisor.py`) whose
//! stdin is a pipe (close-on-exec) held only by the test process. When that pipe closes
//! (explicit [`Synapse::stop`], drop, or the test process dying in any way, even SIGKILL:
//! the kernel closes the fd) the supervisor stops Synapse: SIGTERM then SIGKILL after
//! 10 s for an explicit stop (data kept for [`Synapse::restart`]); SIGKILL at once plus
//! removal of the temp dir when the test process is gone. [`Synapse::shared`] (a static,
//! never dropped) is also stopped by an `atexit` hook that waits for it, so on a normal
//! exit of the test binary nothing is left running, not even for a few milliseconds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Synapse version `scripts/install-test-deps.sh` installs.
pub const SYNAPSE_VERSION: &str = "1.163.2";

const START_MARKER: &str = "=== passerelle test harness: starting Synapse";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The supervisor itself SIGKILLs Synapse 10 s after SIGTERM; this is the margin on top.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Supervisor, written to `<dir>/supervisor.py` and run as `python supervisor.py <dir>`
/// (so that only Synapse itself matches `pgrep -f synapse.app.homeserver`). Starts
/// Synapse in `<dir>`, records its pid in `<dir>/synapse.pid`, exits when it exits.
/// On EOF on stdin after `keep` (an explicit stop) it sends SIGTERM, then SIGKILL after
/// 10 s. On EOF without `keep` (the test process is gone) or on SIGTERM/SIGINT, it
/// SIGKILLs Synapse and removes `<dir>`. PR_SET_PDEATHSIG on the Synapse child covers
/// the supervisor itself being SIGKILLed (reliable here: the forking thread is the
/// supervisor's main thread, which lives as long as the supervisor).
const SUPERVISOR: &str = r#"
import ctypes, os, shutil, signal, subprocess, sys, threading
data_dir = sys.argv[1]
cmd = [sys.executable, "-m", "synapse.app.homeserver", "--config-path", "homeserver.yaml"]
def pdeathsig():
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    except Exception:
        pass
child = subprocess.Popen(cmd, cwd=data_dir, stdin=subprocess.DEVNULL, preexec_fn=pdeathsig)
with open(os.path.join(data_dir, "synapse.pid"), "w") as f:
    f.write(str(child.pid))
done = threading.Event()
stopping = threading.Event()
keep = threading.Event()
def hard_kill():
    if not done.is_set():
        try:
            os.kill(child.pid, signal.SIGKILL)
        except OSError:
            pass
def stop(*_):
    if stopping.is_set():
        return
    stopping.set()
    try:
        # Explicit stop: graceful. Test process gone: the data is about to be deleted,
        # so kill at once and leave nothing running behind the test binary.
        os.kill(child.pid, signal.SIGTERM if keep.is_set() else signal.SIGKILL)
    except OSError:
        pass
    t = threading.Timer(10.0, hard_kill)
    t.daemon = True
    t.start()
def watch_stdin():
    buf = b""
    try:
        while True:
            chunk = os.read(0, 4096)
            if not chunk:
                break
            buf += chunk
            if b"keep" in buf:
                keep.set()
    except OSError:
        pass
    stop()
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
threading.Thread(target=watch_stdin, daemon=True).start()
rc = child.wait()
done.set()
if stopping.is_set() and not keep.is_set():
    shutil.rmtree(data_dir, ignore_errors=True)
sys.exit(rc if rc >= 0 else 128 - rc)
"#;

/// A Synapse homeserver on 127.0.0.1, killed on [`Synapse::stop`], on drop, and when the
/// test process exits.
pub struct Synapse {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `localhost`
    pub server_name: String,
    pub port: u16,
    /// Data dir: `homeserver.yaml`, `synapse.log`, `homeserver.db`, `media_store/`.
    pub dir: PathBuf,
    /// `registration_shared_secret` of this instance.
    pub shared_secret: String,
    /// The supervisor process (a Mutex so that the `atexit` hook can reach the shared one).
    child: Mutex<Option<Child>>,
    // Declared last: removed after the process is stopped (Drop runs first anyway).
    _tmp: tempfile::TempDir,
}

enum StartError {
    PortInUse,
    Failed(String),
}

impl Synapse {
    /// A fresh homeserver with relaxed rate limits (all `rc_*`), sqlite, no federation
    /// listener, presence and URL previews off, `bcrypt_rounds: 4` (fast register/login).
    /// Blocks until `GET /_matrix/client/versions` answers 200 (panics after 60 s, with
    /// the tail of Synapse's log).
    pub fn start() -> Synapse {
        Self::launch(false, Value::Null)
    }

    /// Like [`Synapse::start`] but keeps Synapse's default `rc_message` (0.2/s, burst 10).
    pub fn start_with_default_message_rate_limit() -> Synapse {
        Self::launch(true, Value::Null)
    }

    /// Like [`Synapse::start`], then each top-level key of `extra` (a JSON object)
    /// replaces the generated one in `homeserver.yaml` (e.g. `{"rc_message": {...}}`).
    pub fn start_with_config(extra: Value) -> Synapse {
        assert!(extra.is_object(), "start_with_config wants a JSON object");
        Self::launch(false, extra)
    }

    /// One Synapse shared by all tests of this test binary, started on first use. It is
    /// never dropped; the supervisor stops it and removes its dir when the process exits.
    pub fn shared() -> &'static Synapse {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            // SAFETY: atexit is the C library's; the callback is a plain extern "C" fn.
            unsafe { atexit(stop_shared_at_exit) };
        });
        SHARED.get_or_init(Synapse::start)
    }

    fn launch(default_rc_message: bool, extra: Value) -> Synapse {
        let venv = venv_dir();
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let tmp = tempfile::Builder::new()
                .prefix("passerelle-synapse-")
                .tempdir()
                .expect("create temp dir for Synapse");
            let dir = tmp.path().to_path_buf();
            let port = free_port();
            let shared_secret = random_hex(32);
            write_config(&dir, port, &shared_secret, default_rc_message, &extra);
            let mut s = Synapse {
                url: format!("http://127.0.0.1:{port}"),
                server_name: "localhost".to_string(),
                port,
                dir,
                shared_secret,
                child: Mutex::new(None),
                _tmp: tmp,
            };
            match s.spawn_and_wait(&venv) {
                Ok(()) => return s,
                // Another process took the port between our probe and Synapse's bind.
                Err(StartError::PortInUse) => {
                    last_err = s.log_tail(20);
                    s.stop();
                }
                Err(StartError::Failed(msg)) => {
                    s.stop();
                    panic!("{msg}");
                }
            }
        }
        panic!("Synapse could not bind a free port after 5 attempts; last log:\n{last_err}");
    }

    /// Register a user with the shared-secret admin API and return `@localpart:localhost`.
    pub fn register(&self, localpart: &str, password: &str, admin: bool) -> String {
        self.register_with_token(localpart, password, admin).0
    }

    /// Like [`Synapse::register`], also returning the access token of the new session.
    pub fn register_with_token(
        &self,
        localpart: &str,
        password: &str,
        admin: bool,
    ) -> (String, String) {
        let url = format!("{}/_synapse/admin/v1/register", self.url);
        let (status, body) = http_json("GET", &url, None, None);
        assert_eq!(status, 200, "GET register nonce: {body}");
        let nonce = body["nonce"].as_str().expect("nonce").to_string();
        let role = if admin { "admin" } else { "notadmin" };
        let msg = [
            nonce.as_bytes(),
            localpart.as_bytes(),
            password.as_bytes(),
            role.as_bytes(),
        ]
        .join(&0u8);
        let mac = to_hex(&hmac_sha1(self.shared_secret.as_bytes(), &msg));
        let req = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac,
        });
        let (status, body) = http_json("POST", &url, None, Some(&req));
        assert_eq!(status, 200, "register {localpart}: {body}");
        let user_id = body["user_id"].as_str().expect("user_id").to_string();
        let token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        (user_id, token)
    }

    /// Log in with a password (`m.login.password`) and return a fresh access token.
    pub fn login(&self, user_id: &str, password: &str) -> String {
        let url = format!("{}/_matrix/client/v3/login", self.url);
        let req = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "initial_device_display_name": "passerelle test harness",
        });
        let (status, body) = http_json("POST", &url, None, Some(&req));
        assert_eq!(status, 200, "login {user_id}: {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// `self.url` + `path` (which starts with `/`).
    pub fn api(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Whether the Synapse process is running (started and not stopped, not crashed).
    pub fn is_running(&self) -> bool {
        match lock(&self.child).as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stop Synapse: SIGTERM, SIGKILL after 10 s; keeps the data for [`Synapse::restart`].
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(child) = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            stop_supervisor(child, true, &self.dir);
        }
    }

    /// Start Synapse again on the same port with the same data (after [`Synapse::stop`],
    /// or stops it first). Blocks until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let venv = venv_dir();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait(&venv) {
                Ok(()) => return,
                // The old listening socket may linger for a moment.
                Err(StartError::PortInUse) if Instant::now() < deadline => {
                    self.stop();
                    sleep(Duration::from_millis(200));
                }
                Err(StartError::PortInUse) => {
                    let tail = self.log_tail(30);
                    self.stop();
                    panic!(
                        "Synapse restart: port {} still in use; log:\n{tail}",
                        self.port
                    );
                }
                Err(StartError::Failed(msg)) => {
                    self.stop();
                    panic!("Synapse restart: {msg}");
                }
            }
        }
    }

    /// The last `lines` lines of Synapse's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log since the last start (the harness writes a marker line at each start).
    fn current_log(&self) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        match text.rfind(START_MARKER) {
            Some(i) => text[i..].to_string(),
            None => text.into_owned(),
        }
    }

    /// Path of Synapse's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("synapse.log")
    }

    fn spawn_and_wait(&mut self, venv: &Path) -> Result<(), StartError> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open synapse.log");
        let _ = writeln!(log, "{START_MARKER} on {} ===", self.url);
        let log_err = log.try_clone().expect("clone log fd");
        let python = venv.join("bin").join("python");
        let supervisor = self.dir.join("supervisor.py");
        fs::write(&supervisor, SUPERVISOR).expect("write supervisor.py");
        let child = Command::new(&python)
            .arg(&supervisor)
            .arg(&self.dir)
            .current_dir(&self.dir)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));
        *lock(&self.child) = Some(child);

        let versions = format!("{}/_matrix/client/versions", self.url);
        let listening = format!("Synapse now listening on TCP port {}", self.port);
        let started = Instant::now();
        loop {
            let exited = {
                let mut guard = lock(&self.child);
                let status = guard.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if status.is_some() {
                    *guard = None;
                }
                status
            };
            if let Some(status) = exited {
                let tail = self.log_tail(40);
                if tail.contains("Address already in use") {
                    return Err(StartError::PortInUse);
                }
                return Err(StartError::Failed(format!(
                    "Synapse exited during startup ({status}); dir {}; log tail:\n{tail}",
                    self.dir.display()
                )));
            }
            // The log check makes sure the answer comes from this Synapse, not from another
            // process that grabbed the port first (then this one fails to bind and exits).
            let short = Duration::from_secs(2);
            if let Ok((200, _)) = http_request_timeout("GET", &versions, None, None, &[], short) {
                if self.current_log().contains(&listening) {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(StartError::Failed(format!(
                    "Synapse did not answer GET {versions} with 200 within {} s; dir {}; \
                     log tail:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.dir.display(),
                    self.log_tail(40)
                )));
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
    }
}

static SHARED: OnceLock<Synapse> = OnceLock::new();

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

/// Runs at normal process exit: kill the shared Synapse and wait for it (its data dir
/// goes too), so nothing outlives the test binary.
extern "C" fn stop_shared_at_exit() {
    if let Some(hs) = SHARED.get() {
        if let Some(child) = lock(&hs.child).take() {
            stop_supervisor(child, false, &hs.dir);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Close the supervisor's stdin (after `keep` if `keep_data`: SIGTERM and keep the dir;
/// otherwise SIGKILL and remove the dir) and wait for it; kill by pid if it is wedged.
fn stop_supervisor(mut child: Child, keep_data: bool, dir: &Path) {
    if let Some(mut stdin) = child.stdin.take() {
        if keep_data {
            let _ = stdin.write_all(b"keep\n");
            let _ = stdin.flush();
        }
        // Dropping stdin closes the pipe: the supervisor stops Synapse.
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(10)),
            _ => break,
        }
    }
    // Supervisor wedged: kill both by pid.
    if let Ok(pid) = fs::read_to_string(dir.join("synapse.pid")) {
        let _ = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where the Synapse venv is: `$PASSERELLE_SYNAPSE_VENV`, else
/// `${PASSERELLE_CACHE:-$HOME/.cache/passerelle}/synapse-venv`. Panics if missing.
pub fn venv_dir() -> PathBuf {
    let dir = match std::env::var_os("PASSERELLE_SYNAPSE_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let cache = match std::env::var_os("PASSERELLE_CACHE") {
                Some(c) if !c.is_empty() => PathBuf::from(c),
                _ => {
                    let home = std::env::var_os("HOME").expect("HOME is not set");
                    PathBuf::from(home).join(".cache").join("passerelle")
                }
            };
            cache.join("synapse-venv")
        }
    };
    if !dir.join("bin").join("python").exists() {
        panic!(
            "no Synapse venv at {} (set PASSERELLE_SYNAPSE_VENV or PASSERELLE_CACHE): \
             run scripts/install-test-deps.sh",
            dir.display()
        );
    }
    dir
}

/// Write `homeserver.yaml` (as JSON, which is YAML), the log config and a signing key.
fn write_config(dir: &Path, port: u16, secret: &str, default_rc_message: bool, extra: &Value) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let relaxed = json!({"per_second": 100000, "burst_count": 1000000});
    let mut cfg = json!({
        "server_name": "localhost",
        "public_baseurl": format!("http://127.0.0.1:{port}/"),
        "report_stats": false,
        "listeners": [{
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": false,
            "x_forwarded": false,
            "resources": [{"names": ["client"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": p("homeserver.db")}},
        "log_config": p("log.config.yaml"),
        "media_store_path": p("media_store"),
        "signing_key_path": p("localhost.signing.key"),
        "registration_shared_secret": secret,
        "macaroon_secret_key": random_hex(32),
        "form_secret": random_hex(32),
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "presence": {"enabled": false},
        "url_preview_enabled": false,
        "enable_metrics": false,
        "bcrypt_rounds": 4,
        "rc_message": relaxed,
        "rc_registration": relaxed,
        "rc_registration_token_validity": relaxed,
        "rc_login": {"address": relaxed, "account": relaxed, "failed_attempts": relaxed},
        "rc_admin_redaction": relaxed,
        "rc_joins": {"local": relaxed, "remote": relaxed},
        "rc_joins_per_room": relaxed,
        "rc_key_requests": relaxed,
        "rc_3pid_validation": relaxed,
        "rc_invites": {"per_room": relaxed, "per_user": relaxed, "per_issuer": relaxed},
        "rc_third_party_invite": relaxed,
        "rc_media_create": relaxed,
        "rc_presence": {"per_user": relaxed},
        "rc_delayed_event_mgmt": relaxed,
        "rc_room_creation": relaxed,
        "rc_reports": relaxed,
        "rc_user_directory": relaxed,
        "rc_profile": relaxed,
    });
    let obj = cfg.as_object_mut().expect("object");
    if default_rc_message {
        obj.remove("rc_message");
    }
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    let log_cfg = json!({
        "version": 1,
        "formatters": {"precise": {"format":
            "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "precise",
            "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "disable_existing_loggers": false,
    });
    // An ed25519 signing key is any 32 random bytes: "ed25519 <key id> <unpadded base64>".
    let key = format!(
        "ed25519 a_{} {}\n",
        random_hex(2),
        base64_unpadded(&random_bytes(32))
    );
    let write = |name: &str, text: String| {
        fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"))
    };
    write(
        "homeserver.yaml",
        serde_json::to_string_pretty(&cfg).expect("json"),
    );
    write(
        "log.config.yaml",
        serde_json::to_string_pretty(&log_cfg).expect("json"),
    );
    write("localhost.signing.key", key);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

fn random_hex(n_bytes: usize) -> String {
    to_hex(&random_bytes(n_bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64_unpadded(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// SHA-1 (FIPS 180-4); only for the registration MAC Synapse requires.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, hi) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&hi.to_be_bytes());
    }
    out
}

/// HMAC-SHA1 (RFC 2104), as Synapse's shared-secret registration wants.
pub fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&sha1(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha1(&inner));
    sha1(&outer)
}

/// Blocking JSON request: `method` `url` (plain `http://host:port/path`), optional bearer
/// token and JSON body. Returns the status and the body parsed as JSON (`Null` if empty,
/// a JSON string holding the raw text if it is not JSON). Panics on I/O errors.
pub fn http_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("serialize body"));
    let ctype = bytes.as_ref().map(|_| "application/json");
    let (status, resp) = http_request(method, url, token, ctype, bytes.as_deref().unwrap_or(&[]))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let value = if resp.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&resp)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&resp).into_owned()))
    };
    (status, value)
}

/// Blocking HTTP/1.1 request with a raw body (e.g. a media upload) and an optional
/// `Content-Type`; returns the status and the raw response body. Read timeout 120 s.
pub fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    http_request_timeout(
        method,
        url,
        token,
        content_type,
        body,
        Duration::from_secs(120),
    )
}

fn http_request_timeout(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("only http:// URLs are supported: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid(format!("cannot resolve {authority}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;

    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req)?;
    stream.flush()?;

    let mut resp = Vec::new();
    stream.read_to_end(&mut resp)?;
    parse_response(&resp).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "malformed HTTP response: {:?}",
                String::from_utf8_lossy(&resp)
            ),
        )
    })
}

fn parse_response(resp: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&resp[..split]).ok()?;
    let body = &resp[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    if chunked {
        return decode_chunked(body).map(|b| (status, b));
    }
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        Some(_) => return None, // truncated
        None => body,
    };
    Some((status, body.to_vec()))
}

fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&data[..eol]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
