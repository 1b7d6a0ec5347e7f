//! Files a config points at that hold secrets: they must be readable by their
//! owner only, as ssh insists for its keys, so a shared machine's other users
//! cannot join the cluster or command the API.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Checks that `path` exists and that neither group nor others may access it.
pub fn check_private(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "is readable by group or others (mode {mode:o}); run: chmod 600 {}",
            path.display()
        ));
    }
    Ok(())
}
