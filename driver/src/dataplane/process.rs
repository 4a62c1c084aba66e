//! Process set-up for a data-plane process, run by `main` before any thread.
//!
//! A FUSE server under a loop device is part of the kernel's write-back path:
//! when memory runs short the kernel writes dirty pages of the file system on
//! the loop device, which become FUSE requests that this process must answer.
//! If answering them needs memory the kernel is trying to free, the node
//! deadlocks. `PR_SET_IO_FLUSHER` makes the kernel treat our allocations as
//! `GFP_NOIO` and exempts us from dirty throttling; `mlockall` keeps our pages
//! from being paged out (and in again) while we serve.
//!
//! Both are per-task attributes that new threads inherit, hence "before any
//! thread starts". The FUSE workers also set `PR_SET_IO_FLUSHER` on
//! themselves, so a server started in a process that skipped this (a test) is
//! still covered.

use rustix::mm::MlockAllFlags;

/// Why preparing the process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// `prctl(PR_SET_IO_FLUSHER)` failed (it needs `CAP_SYS_RESOURCE`).
    #[error("set PR_SET_IO_FLUSHER")]
    IoFlusher(#[source] std::io::Error),
    /// `mlockall` failed (it needs `CAP_IPC_LOCK` or a large enough
    /// `RLIMIT_MEMLOCK`).
    #[error("mlockall")]
    Mlock(#[source] std::io::Error),
}

/// Marks the calling thread (and every thread it starts afterwards) as an I/O
/// flusher.
pub fn set_io_flusher() -> Result<(), ProcessError> {
    rustix::process::configure_io_flusher_behavior(true).map_err(|e| ProcessError::IoFlusher(e.into()))
}

/// Locks every current and future page of the process in memory.
pub fn lock_memory() -> Result<(), ProcessError> {
    rustix::mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).map_err(|e| ProcessError::Mlock(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_flusher_is_set_on_the_calling_thread() {
        // Run on a fresh thread so the test harness's thread keeps its flags.
        let got = std::thread::spawn(|| match set_io_flusher() {
            Ok(()) => rustix::process::is_io_flusher().map(Some),
            Err(_) => Ok(None), // not privileged: nothing to check
        })
        .join()
        .expect("thread");
        if let Ok(Some(on)) = got {
            assert!(on);
        }
    }
}
