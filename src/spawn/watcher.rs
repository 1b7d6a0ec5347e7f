//! The task that keeps one child running: it launches the process, reads its
//! listening notice, probes until it is online, restarts it after its backoff
//! (or leaves it errored after a crash loop), and carries out reloads and stops.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::child::{Child, Command, Phase};
use crate::backoff::Backoff;
use crate::error::ServiceError;
use crate::events::{EventBus, LifecycleEvent};
use crate::node::spawned::{NOTIFY_FD, PARENT_BRIDGE, RESTARTS};
use crate::node::Probe;

/// A child's restart delay: 100 ms, growing by half after each restart up to
/// 15 s, afresh after 30 s of uptime.
const RESTART: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15))
    .factor(1.5)
    .reset_after(Duration::from_secs(30));
/// How long a child may take to drain and exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long a reloaded child may take to be online and serving.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new config's check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting child is asked whether it serves.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How often after [`ONLINE_TIMEOUT`].
const PROBE_SLOW: Duration = Duration::from_secs(1);

/// Why a child that is not running starts again, or does not.
enum Wake {
    /// Its backoff is over.
    Elapsed,
    /// A reload asks for it, and waits for the answer.
    Reload(oneshot::Sender<Result<(), ServiceError>>),
    /// The node stops it.
    Stop(oneshot::Sender<()>),
    /// The node that spawned it is gone.
    Gone,
}

/// What the task that watches one process learnt.
enum Outcome {
    Exited(ExitStatus),
    Stopped(oneshot::Sender<()>),
    Reloading(oneshot::Sender<Result<(), ServiceError>>),
}

/// What a child writes on its notify pipe once it listens.
#[derive(Deserialize)]
struct Listening {
    api: Option<std::net::SocketAddr>,
    bridge: Option<std::net::SocketAddr>,
}

/// The task that keeps one child running.
pub(super) struct Watcher {
    pub(super) child: Arc<Child>,
    pub(super) program: PathBuf,
    pub(super) events: EventBus,
    pub(super) probe: Probe,
    pub(super) bridge: Option<std::net::SocketAddr>,
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) commands: mpsc::Receiver<Command>,
}

impl Watcher {
    pub(super) async fn run(mut self) {
        let mut backoff = RESTART;
        let mut unstable = 0u32;
        let mut reload: Option<oneshot::Sender<Result<(), ServiceError>>> = None;
        loop {
            let started = Instant::now();
            let outcome = match self.launch() {
                Ok((process, notify)) => self.watch(process, notify, &mut reload).await,
                Err(e) => {
                    log::error!(
                        "node {}: cannot start {}: {e}",
                        self.child.name,
                        self.program.display()
                    );
                    if let Some(reply) = reload.take() {
                        let _ = reply.send(Err(ServiceError::service_failed(format!(
                            "node {} cannot start: {e}",
                            self.child.name
                        ))));
                    }
                    Outcome::Exited(ExitStatus::from_raw(127 << 8))
                }
            };
            let wake = match outcome {
                Outcome::Stopped(done) => Wake::Stop(done),
                Outcome::Reloading(reply) => Wake::Reload(reply),
                Outcome::Exited(status) => {
                    let pid = self.child.state.lock().pid.unwrap_or(0);
                    if self.stopping.load(Ordering::Acquire) {
                        self.exit_event(pid, status, None);
                        self.set_phase(Phase::Stopped, None);
                        self.wait_for_stop().await;
                        return;
                    }
                    let up = started.elapsed();
                    backoff.ran_for(up);
                    unstable = if up < self.child.entry.min_uptime {
                        unstable + 1
                    } else {
                        0
                    };
                    if unstable >= self.child.entry.max_restarts {
                        self.exit_event(pid, status, None);
                        self.set_phase(Phase::Errored, None);
                        let restarts = self.child.state.lock().restarts;
                        self.events.publish(LifecycleEvent::NodeErrored {
                            node: self.child.name.clone(),
                            restarts,
                        });
                        // Nothing but a reload or a stop wakes an errored child.
                        self.idle(None).await
                    } else {
                        let delay = backoff.next_delay();
                        self.exit_event(pid, status, Some(delay));
                        self.set_phase(Phase::Restarting, None);
                        self.idle(Some(delay)).await
                    }
                }
            };
            match wake {
                Wake::Elapsed => {}
                // A reload starts afresh: no backoff, no crash counted.
                Wake::Reload(reply) => {
                    reload = Some(reply);
                    backoff.reset();
                    unstable = 0;
                }
                Wake::Stop(done) => {
                    self.set_phase(Phase::Stopped, None);
                    let _ = done.send(());
                    return;
                }
                Wake::Gone => return,
            }
            self.child.state.lock().restarts += 1;
        }
    }

    /// Waits out `delay` (or forever) unless a reload or a stop comes first.
    async fn idle(&mut self, delay: Option<Duration>) -> Wake {
        let elapsed = async {
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = elapsed => Wake::Elapsed,
            command = self.commands.recv() => match command {
                Some(Command::Reload(reply)) => Wake::Reload(reply),
                Some(Command::Stop(done)) => Wake::Stop(done),
                None => Wake::Gone,
            },
        }
    }

    /// Answers the stop that follows a node's own shutdown.
    async fn wait_for_stop(&mut self) {
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Stop(done) => {
                    let _ = done.send(());
                    return;
                }
                Command::Reload(reply) => {
                    let _ = reply.send(Err(ServiceError::service_failed(
                        "the node is shutting down",
                    )));
                }
            }
        }
    }

    fn set_phase(&self, phase: Phase, pid: Option<u32>) {
        let mut state = self.child.state.lock();
        state.phase = phase;
        state.since = Instant::now();
        if pid.is_some() {
            state.pid = pid;
        }
        // No process, no pid (as pm2 shows it).
        if matches!(phase, Phase::Restarting | Phase::Errored | Phase::Stopped) {
            state.pid = None;
        }
    }

    fn exit_event(&self, pid: u32, status: ExitStatus, restart_in: Option<Duration>) {
        self.events.publish(LifecycleEvent::NodeExit {
            node: self.child.name.clone(),
            pid,
            code: status.code(),
            signal: status.signal(),
            restart_in_ms: restart_in.map(|d| d.as_millis() as u64),
        });
    }

    /// Starts the process: `PROGRAM node --config CONFIG`, its notify pipe on fd 3,
    /// pinned to its CPU, with SIGTERM as its parent-death signal.
    fn launch(&self) -> std::io::Result<(tokio::process::Child, tokio::net::unix::pipe::Receiver)> {
        let (reader, writer) = std::io::pipe()?;
        let restarts = self.child.state.lock().restarts;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg("node")
            .arg("--config")
            .arg(&self.child.entry.config)
            .env(NOTIFY_FD, "3")
            .env(RESTARTS, restarts.to_string())
            .stdin(Stdio::null());
        without_overrides(command.as_std_mut());
        match self.bridge {
            Some(addr) => command.env(PARENT_BRIDGE, addr.to_string()),
            None => command.env_remove(PARENT_BRIDGE),
        };
        let fd = writer.as_raw_fd();
        let cpu = self.child.cpu;
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (dup2, fcntl, setpgid, prctl, getppid,
        // sched_setaffinity) on stack data; it allocates nothing.
        unsafe {
            command.pre_exec(move || child_setup(fd, cpu, parent));
        }
        self.set_phase(Phase::Starting, None);
        let process = command.spawn()?;
        // The child holds the write end now; ours must close for EOF to come.
        drop(writer);
        let notify = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
        let pid = process.id().unwrap_or(0);
        self.set_phase(Phase::Starting, Some(pid));
        self.events.publish(LifecycleEvent::NodeFork {
            node: self.child.name.clone(),
            pid,
        });
        Ok((process, notify))
    }

    /// Watches one process until it exits, or a stop or a reload ends it.
    async fn watch(
        &mut self,
        mut process: tokio::process::Child,
        notify: tokio::net::unix::pipe::Receiver,
        reload: &mut Option<oneshot::Sender<Result<(), ServiceError>>>,
    ) -> Outcome {
        let name = self.child.name.clone();
        let pid = process.id().unwrap_or(0);
        let mut lines = tokio::io::BufReader::new(notify).lines();
        let mut notifying = true;
        let mut listening = false;
        let mut online = false;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let online_by = Instant::now() + ONLINE_TIMEOUT;
        loop {
            tokio::select! {
                status = process.wait() => {
                    let status = status.unwrap_or_else(|e| {
                        log::error!("node {name}: cannot wait for pid {pid}: {e}");
                        ExitStatus::from_raw(1 << 8)
                    });
                    if let Some(reply) = reload.take() {
                        let _ = reply.send(Err(ServiceError::service_failed(format!(
                            "node {name} exited ({}) before it was online",
                            describe(status)
                        ))));
                    }
                    return Outcome::Exited(status);
                }
                line = lines.next_line(), if notifying => match line {
                    Ok(Some(line)) => match serde_json::from_str::<Listening>(&line) {
                        Ok(at) if !listening => {
                            listening = true;
                            // The probe may have seen it online first.
                            if !online {
                                self.set_phase(Phase::Listening, None);
                            }
                            self.events.publish(LifecycleEvent::NodeListening {
                                node: name.clone(), pid, api: at.api, bridge: at.bridge,
                            });
                            if !self.child.bridged {
                                online = true;
                                self.went_online(pid, reload);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => log::warn!("node {name}: unreadable notice `{line}`: {e}"),
                    },
                    _ => notifying = false,
                },
                _ = probe.tick(), if !online => {
                    // Online follows listening: the probe counts once the
                    // child's notice is read (or its notice pipe is closed).
                    if (listening || !notifying) && (self.probe)(name.clone()).await {
                        online = true;
                        self.went_online(pid, reload);
                    } else if Instant::now() > online_by {
                        // Still asked, but seldom: it may be linked to another master.
                        if probe.period() == PROBE_EVERY {
                            log::warn!(
                                "node {name}: not online {}s after it started",
                                ONLINE_TIMEOUT.as_secs()
                            );
                            probe = tokio::time::interval(PROBE_SLOW);
                        }
                        if let Some(reply) = reload.take() {
                            let _ = reply.send(Err(ServiceError::timeout(format!(
                                "node {name} was not online within {}s",
                                ONLINE_TIMEOUT.as_secs()
                            ))));
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Stop(done)) => {
                        self.terminate(&mut process, pid).await;
                        return Outcome::Stopped(done);
                    }
                    Some(Command::Reload(reply)) => {
                        if let Err(e) = self.check_config().await {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                        self.terminate(&mut process, pid).await;
                        return Outcome::Reloading(reply);
                    }
                    None => {
                        self.terminate(&mut process, pid).await;
                        return Outcome::Exited(ExitStatus::from_raw(0));
                    }
                },
            }
        }
    }

    fn went_online(
        &self,
        pid: u32,
        reload: &mut Option<oneshot::Sender<Result<(), ServiceError>>>,
    ) {
        self.set_phase(Phase::Online, None);
        self.events.publish(LifecycleEvent::NodeOnline {
            node: self.child.name.clone(),
            pid,
        });
        if let Some(reply) = reload.take() {
            let _ = reply.send(Ok(()));
        }
    }

    /// SIGTERM, then up to [`STOP_GRACE`] for the child to drain, then SIGKILL.
    async fn terminate(&self, process: &mut tokio::process::Child, pid: u32) {
        self.set_phase(Phase::Stopping, None);
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: kill(2) with a pid this node spawned and has not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(STOP_GRACE, process.wait()).await {
            Ok(status) => status,
            Err(_) => {
                log::error!(
                    "node {}: did not stop within {}s of SIGTERM; killing it",
                    self.child.name,
                    STOP_GRACE.as_secs()
                );
                let _ = process.start_kill();
                process.wait().await
            }
        };
        match status {
            Ok(status) => self.exit_event(pid, status, None),
            Err(e) => log::error!("node {}: cannot wait for pid {pid}: {e}", self.child.name),
        }
    }

    /// Runs `colony check-config` on the child's config, so that a reload with a
    /// broken config leaves the running process alone.
    async fn check_config(&self) -> Result<(), ServiceError> {
        if self.child.entry.command.is_some() {
            // Another program may not know `check-config`; its own start decides.
            return Ok(());
        }
        let mut checked = tokio::process::Command::new(&self.program);
        checked
            .arg("check-config")
            .arg(&self.child.entry.config)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        without_overrides(checked.as_std_mut());
        let checked = checked.output();
        match tokio::time::timeout(CHECK_TIMEOUT, checked).await {
            Ok(Ok(output)) if output.status.success() => Ok(()),
            Ok(Ok(output)) => Err(ServiceError::bad_request(format!(
                "node {} not reloaded; its config does not check: {}",
                self.child.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
            Ok(Err(e)) => Err(ServiceError::service_failed(format!(
                "node {} not reloaded; cannot check its config: {e}",
                self.child.name
            ))),
            Err(_) => Err(ServiceError::timeout(format!(
                "node {} not reloaded; checking its config took over {}s",
                self.child.name,
                CHECK_TIMEOUT.as_secs()
            ))),
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown status".into(),
    }
}

/// In the forked child, before exec: the notify pipe onto fd 3, its own process
/// group, the parent-death signal, and the CPU affinity.
fn child_setup(fd: i32, cpu: Option<usize>, parent: u32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on integers and a stack-allocated cpu_set_t.
    unsafe {
        if fd == 3 {
            // dup2 onto itself keeps close-on-exec; clear it instead.
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, 3) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A process group of its own: Ctrl-C in a terminal reaches the parent only,
        // which then stops its children in order.
        if libc::setpgid(0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died before the signal was armed.
        if libc::getppid() as u32 != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        if let Some(cpu) = cpu {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Removes this node's `COLONY__…` config overrides from a child's environment:
/// they were meant for this node's config, not its children's (an
/// `COLONY__API__LISTEN` would make every child bind the same port).
fn without_overrides(command: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(crate::config::ENV_PREFIX) {
            command.env_remove(key);
        }
    }
}
