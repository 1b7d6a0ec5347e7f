//! What the attack tests watch: a process's memory from `/proc/PID/status`, and
//! the log lines of this test process, captured.

use parking_lot::Mutex;

/// A line of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`); `pid` may be `self`.
/// 0 when the process or the line is gone.
pub fn proc_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This process's resident memory, in kB.
pub fn rss_kb() -> u64 {
    let kb = proc_kb("self", "VmRSS");
    assert!(kb > 0, "no VmRSS in /proc/self/status");
    kb
}

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            LINES.lock().push(line);
        }
    }
    fn flush(&self) {}
}

/// Captures this process's log lines at info and above (once per process).
pub fn capture_logs() {
    static CAPTURE: Capture = Capture;
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// The captured lines that contain every one of `parts`.
pub fn log_lines_with(parts: &[&str]) -> Vec<String> {
    LINES
        .lock()
        .iter()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .cloned()
        .collect()
}

/// How many captured lines contain every one of `parts`.
pub fn logged(parts: &[&str]) -> usize {
    log_lines_with(parts).len()
}
