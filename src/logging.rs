//! Log lines through `env_logger`, `RUST_LOG` respected (default `info`), each line
//! naming the node and, inside a worker's code, the worker.

use std::io::Write;
use std::sync::OnceLock;

static NODE: OnceLock<String> = OnceLock::new();

/// Installs the logger for a process that runs node `node`. Later calls do nothing.
pub fn init(node: &str) {
    let node = NODE.get_or_init(|| node.to_string()).clone();
    let _already_installed =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format(move |buf, record| {
                let worker = crate::worker::current_worker();
                let who = match &worker {
                    Some(id) => id.to_string(),
                    None => node.clone(),
                };
                writeln!(
                    buf,
                    "{} {:<5} [{who}] {}: {}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            })
            .try_init();
}
