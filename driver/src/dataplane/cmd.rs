//! Running the system tools the data path leans on (`losetup`, `mkfs.*`,
//! `blkid`, `resize2fs`, `xfs_growfs`, `fstrim`).

use std::io;
use std::process::Command;

/// A tool that could not run or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The tool could not be started (not installed?).
    #[error("run {program}")]
    Spawn {
        /// The tool.
        program: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The tool exited with a failure.
    #[error("{program} {args} exited with {code:?}: {stderr}")]
    Failed {
        /// The tool.
        program: String,
        /// Its arguments, space-separated.
        args: String,
        /// Its exit code (none when killed by a signal).
        code: Option<i32>,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

impl CommandError {
    /// The exit code, when the tool ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            CommandError::Failed { code, .. } => *code,
            CommandError::Spawn { .. } => None,
        }
    }
}

/// Runs `program args…` and returns its stdout when it exits with 0. The
/// tool is killed if this thread dies first (a killed plugin leaves no
/// `mkfs` running behind it).
pub fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<String, CommandError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    super::sys::kill_with_parent(&mut cmd);
    let out = cmd.output().map_err(|source| CommandError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        Err(CommandError::Failed {
            program: program.to_owned(),
            args: args.join(" "),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
