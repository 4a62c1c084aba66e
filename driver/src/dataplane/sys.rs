//! The few kernel calls that no safe wrapper covers: `ioctl`s on `/dev/fuse`,
//! on a mounted file system and on a loop device. This is the only module of
//! the crate that uses `unsafe`; every block says why it is sound.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{opcode, NoArg, Opcode, Setter};

/// `FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)`: binds a fresh `/dev/fuse`
/// open file to the connection of another one.
const FUSE_DEV_IOC_CLONE: Opcode = opcode::read::<u32>(229, 0);
/// `FIFREEZE = _IOWR('X', 119, int)`.
const FIFREEZE: Opcode = opcode::read_write::<i32>(b'X', 119);
/// `FITHAW = _IOWR('X', 120, int)`.
const FITHAW: Opcode = opcode::read_write::<i32>(b'X', 120);
/// `LOOP_SET_CAPACITY = 0x4C07`.
const LOOP_SET_CAPACITY: Opcode = opcode::none(0x4C, 0x07);

/// Opens `/dev/fuse` again and attaches the new file to the connection that
/// `session` serves, so a thread can read its own requests from it.
pub fn fuse_clone(session: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let clone = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let old = u32::try_from(rustix::fd::AsRawFd::as_raw_fd(&session)).map_err(|_| Errno::BADF)?;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one `uint32_t` (the old fd) through the
    // pointer argument, which `Setter` passes to a live `u32`; it writes
    // nothing back. Both fds stay open for the duration of the call.
    unsafe { rustix::ioctl::ioctl(&clone, Setter::<FUSE_DEV_IOC_CLONE, u32>::new(old))? };
    Ok(clone)
}

/// `FIFREEZE` on a file system, through any fd open on it (its root).
pub fn fifreeze(fs: impl AsFd) -> Result<(), Errno> {
    // SAFETY: FIFREEZE takes no argument memory (the kernel ignores `arg`).
    unsafe { rustix::ioctl::ioctl(fs, NoArg::<FIFREEZE>::new()) }
}

/// `FITHAW` on a file system, through any fd open on it (its root).
pub fn fithaw(fs: impl AsFd) -> Result<(), Errno> {
    // SAFETY: FITHAW takes no argument memory (the kernel ignores `arg`).
    unsafe { rustix::ioctl::ioctl(fs, NoArg::<FITHAW>::new()) }
}

/// `LOOP_SET_CAPACITY`: the loop device re-reads its backing file's size.
pub fn loop_set_capacity(dev: impl AsFd) -> Result<(), Errno> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    unsafe { rustix::ioctl::ioctl(dev, NoArg::<LOOP_SET_CAPACITY>::new()) }
}

/// Makes the child that `cmd` starts get SIGKILL when the thread that
/// started it dies (`PR_SET_PDEATHSIG`): a tool such as `mkfs` must not
/// outlive a killed plugin and race the retry of the call that ran it.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one system call (prctl), which is async-signal-safe; it touches
    // no memory shared with the parent and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_kernel_headers() {
        assert_eq!(FUSE_DEV_IOC_CLONE as u64, 0x8004_E500);
        assert_eq!(FIFREEZE as u64, 0xC004_5877);
        assert_eq!(FITHAW as u64, 0xC004_5878);
        assert_eq!(LOOP_SET_CAPACITY as u64, 0x4C07);
    }
}
