//! Files a config points at that hold secrets: they must be readable by their
//! owner only, as ssh insists for its keys, so a shared machine's other users
//! cannot join the cluster or command the API. They are small regular files: a
//! FIFO, a device or a huge file is refused before it is read.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The largest secret or token file read.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Checks that `path` is a regular file of at most [`MAX_SECRET_FILE`] bytes
/// that neither group nor others may access.
pub fn check_private(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "is readable by group or others (mode {mode:o}); run: chmod 600 {}",
            path.display()
        ));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!(
            "holds {} bytes; a secret or token file holds at most {MAX_SECRET_FILE}",
            meta.len()
        ));
    }
    Ok(())
}

/// Reads the file at `path` after [`check_private`], never more than
/// [`MAX_SECRET_FILE`] bytes even if it grows meanwhile.
pub fn read_private(path: &Path) -> Result<Vec<u8>, String> {
    check_private(path)?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "holds more than {MAX_SECRET_FILE} bytes, the most a secret or token file holds"
        ));
    }
    Ok(bytes)
}

/// Reads a bearer token file, private as [`read_private`] requires: its first
/// line, trimmed, must not be empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let bytes = read_private(path)?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err("is empty".into());
    }
    Ok(token)
}
