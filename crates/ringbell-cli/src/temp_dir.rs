//! A private temporary directory for the sockets of the commands that start their own
//! servers (`demo`, `stress`), removed with everything in it when it is dropped.

use std::fs;
use std::io::ErrorKind;
#[cfg(unix)]
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{CliError, Context};

/// `$TMPDIR/<prefix>-<pid>`, owner-only, removed on drop. (On Windows the directory takes
/// the user's temporary directory's permissions, which are the user's own; and the servers'
/// addresses in it become pipe names, so it stays empty there.)
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<our pid>`, replacing a stale one.
    pub fn create(prefix: &str) -> Result<TempDir, CliError> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        #[cfg_attr(windows, allow(unused_mut, reason = "only Unix sets a mode"))]
        let mut builder = fs::DirBuilder::new();
        #[cfg(unix)]
        builder.mode(0o700);
        if let Err(error) = builder.create(&path) {
            if error.kind() != ErrorKind::AlreadyExists {
                return Err(error).context(format_args!("creating {}", path.display()));
            }
            // Left by an earlier process with our pid that was killed before cleaning up.
            // (`remove_dir_all` removes a symbolic link itself, never what it points to.)
            fs::remove_dir_all(&path)
                .context(format_args!("removing the stale {}", path.display()))?;
            builder
                .create(&path)
                .context(format_args!("creating {}", path.display()))?;
        }
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Nothing better to do with a failure than to leave the directory behind.
        let _ = fs::remove_dir_all(&self.path);
    }
}
