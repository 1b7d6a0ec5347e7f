//! A node in a process of its own, so that its open files and its VmRSS are
//! its own: the test binary runs itself again as the ignored test `node_child`,
//! which starts the node from the config in [`CONFIG`] and prints its API
//! address.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::*;

/// The environment variable that carries the child's config.
const CONFIG: &str = "API_HOSTILE_CHILD_CONFIG";
/// What the child prints before its API address.
const LINE: &str = "CHILD-API ";

/// The node process; killed when dropped.
pub struct NodeChild {
    child: Child,
    /// Its process id, for `/proc`.
    pub pid: String,
    /// Where its API listens.
    pub addr: SocketAddr,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the child: starts the node and prints its API address; runs until killed.
/// Does nothing unless [`start`] started it.
pub fn serve() {
    let Ok(yaml) = std::env::var(CONFIG) else {
        return;
    };
    actix_rt::System::new().block_on(async move {
        let node = start_node(&yaml).await;
        println!("{LINE}{}", node.api_addr().expect("API"));
        std::future::pending::<()>().await;
    });
}

/// Starts a node of `config` in a process of its own, `setup` adjusting its
/// command first (limits, for one); returns once it listens.
pub async fn start(config: &str, setup: impl FnOnce(&mut Command)) -> NodeChild {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "node_child", "--ignored", "--nocapture"])
        .env(CONFIG, config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    setup(&mut command);
    let mut child = command.spawn().expect("spawn the node process");
    let pid = child.id().to_string();
    let stdout = child.stdout.take().expect("piped stdout");
    // Killed if the address never comes.
    let mut node = NodeChild {
        child,
        pid,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    node.addr = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix(LINE).map(str::to_string))
    })
    .await
    .expect("reader")
    .expect("the node process printed its API address")
    .parse()
    .expect("an address");
    node
}

/// Files the process `pid` has open now.
pub fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}
