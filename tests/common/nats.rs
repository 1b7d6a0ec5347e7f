//! A real nats-server for tests: JetStream on (`sync_interval: always`, as
//! configs/nats/ recommends), its store in a temporary directory, on a free
//! loopback port. A test starts, stops (SIGTERM), kills (SIGKILL) and restarts
//! it on the same port and store; dropping it kills it.
//!
//! The binary is `$NATS_SERVER_BIN` if set, else what `scripts/nats-server.sh`
//! prints (a nats-server 2.10+ from PATH, or the one it installs into
//! `.colony/tools`), else `.colony/tools/bin/nats-server`, else `nats-server` on
//! PATH; it must be 2.10 or later. Only std and tempfile are used, so the
//! `actors` crate's tests include this same file.
//!
//! Starting blocks the calling thread until the server answers (at most
//! [`NATS_START`]), which in an actix test also holds up that test's runtime.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to answer after it is started.
pub const NATS_START: Duration = Duration::from_secs(15);
/// How long [`NatsServer::stop`] waits for an exit before it kills.
pub const NATS_STOP: Duration = Duration::from_secs(10);
/// Ports tried before giving up when another process takes the free port first.
const PORT_ATTEMPTS: usize = 10;

/// A nats-server child process with JetStream, on `127.0.0.1:port()`.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

/// What the stderr reader of one server process reports.
enum Event {
    Ready,
    Exited,
}

/// Why one attempt to start failed.
enum StartError {
    /// Someone else holds the port: try another (or wait, on restart).
    PortTaken,
    Other(String),
}

impl NatsServer {
    /// Starts a server on a free port with an empty store; panics, with the
    /// server's log, if none answers within [`NATS_START`].
    pub fn start() -> NatsServer {
        let bin = nats_server_bin().clone();
        let dir = tempfile::Builder::new()
            .prefix("colony-nats-")
            .tempdir()
            .expect("a temporary directory for nats-server");
        let mut server = NatsServer {
            bin,
            port: 0,
            dir,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            server.write_config();
            match server.spawn() {
                Ok(()) => return server,
                Err(StartError::PortTaken) => continue,
                Err(StartError::Other(why)) => server.fail(&why),
            }
        }
        server.fail(&format!("no free port in {PORT_ATTEMPTS} attempts"))
    }

    /// `nats://127.0.0.1:PORT`, for `nats.url` in a node config.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory, kept across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The pid of the running process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Everything the server wrote to stderr so far, all runs.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// SIGTERM (the server shuts down cleanly) and waits for the exit; after
    /// [`NATS_STOP`] it kills. No-op when not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + NATS_STOP;
            while let Ok(None) = child.try_wait() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.wait();
    }

    /// SIGKILL, as a crash, and waits for the exit. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and
    /// store; waits until it answers. The port may still be held for a moment by
    /// the old process: it is retried until [`NATS_START`].
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + NATS_START;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(StartError::PortTaken) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(StartError::PortTaken) => self.fail(&format!(
                    "port {} stayed taken: cannot restart on the same port",
                    self.port
                )),
                Err(StartError::Other(why)) => self.fail(&why),
            }
        }
    }

    /// The config file: the store and `sync_interval: always`, as configs/nats/.
    fn write_config(&self) {
        let store = self.store_dir();
        let text = format!(
            "server_name: colony-test\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            self.port,
            store.display().to_string()
        );
        std::fs::write(self.dir.path().join("nats-server.conf"), text)
            .expect("write the nats-server test config");
    }

    /// Starts the process and waits until it logs ready and answers with INFO.
    fn spawn(&mut self) -> Result<(), StartError> {
        let lines_before = self.log.lock().map(|l| l.len()).unwrap_or(0);
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("nats-server.conf"))
            .arg("-js")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StartError::Other(format!("cannot run {}: {e}", self.bin.display())))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::clone(&self.log);
        thread::spawn(move || read_log(stderr, log, tx));
        self.child = Some(child);

        let deadline = Instant::now() + NATS_START;
        let mut ready = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                return Err(StartError::Other(format!(
                    "nats-server did not answer within {NATS_START:?}"
                )));
            }
            if !ready {
                match rx.recv_timeout(left.min(Duration::from_millis(50))) {
                    Ok(Event::Ready) => ready = true,
                    Ok(Event::Exited) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.kill();
                        let port_taken = self.log.lock().is_ok_and(|l| {
                            l.iter()
                                .skip(lines_before)
                                .any(|line| line.contains("address already in use"))
                        });
                        return Err(if port_taken {
                            StartError::PortTaken
                        } else {
                            StartError::Other("nats-server exited while starting".into())
                        });
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            if ready {
                if info_line(self.port).is_some() {
                    return Ok(());
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "nats-server {} on port {}: {why}\n--- its log, last lines ---\n{}",
            self.bin.display(),
            self.port,
            tail.join("\n")
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the server's stderr into `log`; says when it is ready and when it ends.
fn read_log(stderr: impl Read, log: Arc<Mutex<Vec<String>>>, tx: mpsc::Sender<Event>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let ready = line.contains("Server is ready");
        if let Ok(mut log) = log.lock() {
            log.push(line);
        }
        if ready {
            let _ = tx.send(Event::Ready);
        }
    }
    let _ = tx.send(Event::Exited);
}

/// The first line the server sends a new client (`INFO {…}`), if it answers.
pub fn info_line(port: u16) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("INFO {").then_some(line)
}

/// A port nobody listens on now: bound on port 0, then released.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The nats-server binary, found once per test process; panics when there is
/// none of 2.10 or later.
fn nats_server_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut tried = Vec::new();
        for candidate in candidates() {
            match version(&candidate) {
                Some((v, _)) if v >= (2, 10) => return candidate,
                Some((_, full)) => tried.push(format!(
                    "nats-server {full} ({}) is older than 2.10, which colony needs \
                     (JetStream KV and the 2.10 stream and consumer options)",
                    candidate.display()
                )),
                None => tried.push(format!("{} does not run", candidate.display())),
            }
        }
        panic!(
            "no nats-server 2.10 or later for the NATS tests; run `bash scripts/nats-server.sh` \
             (it installs one into .colony/tools) or set NATS_SERVER_BIN. Tried: {}",
            if tried.is_empty() {
                "nothing".to_string()
            } else {
                tried.join("; ")
            }
        )
    })
}

/// Where a nats-server may be, best first.
fn candidates() -> Vec<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return vec![PathBuf::from(bin)];
    }
    let mut found = Vec::new();
    if let Some(root) = workspace_root() {
        let script = root.join("scripts/nats-server.sh");
        if let Ok(out) = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
        {
            let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !printed.is_empty() {
                found.push(PathBuf::from(printed));
            }
        }
        found.push(root.join(".colony/tools/bin/nats-server"));
    }
    found.push(PathBuf::from("nats-server"));
    found
}

/// The directory holding `scripts/nats-server.sh`, above this crate's manifest.
fn workspace_root() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts/nats-server.sh").is_file())
        .map(Path::to_path_buf)
}

/// `(major, minor)` and `X.Y.Z` of `BIN --version` ("nats-server: v2.15.1").
fn version(bin: &Path) -> Option<((u32, u32), String)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.split('v').skip(1).find_map(|rest| {
        let full: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = full.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(((major, minor), full))
    })
}
