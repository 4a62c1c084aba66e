//! Loop devices over a volume's FUSE file, always with direct I/O.
//!
//! Direct I/O matters twice: without it every block would sit in the page
//! cache of the loop device's backing file as well as in the cache of the
//! file system on top, and the loop driver would do synchronous buffered I/O
//! one request at a time. With it, the loop driver submits asynchronous
//! direct I/O that the FUSE layer turns into concurrent WRITE/READ requests.
//! The kernel may silently refuse direct I/O (alignment, a backing file that
//! cannot do `O_DIRECT`), so [`LoopDevice::attach`] checks sysfs and fails
//! rather than run without it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

use super::cmd::{self, CommandError};
use super::sys;

/// What can go wrong with a loop device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    /// `losetup` failed.
    #[error("losetup")]
    Losetup(#[source] CommandError),
    /// `losetup` printed something that is not a loop device path.
    #[error("losetup printed {0:?}, not a loop device")]
    UnexpectedOutput(String),
    /// The device attached, but without direct I/O.
    #[error("{device} attached without direct I/O (sysfs loop/dio reads {dio:?})")]
    NoDirectIo {
        /// The device.
        device: PathBuf,
        /// What `loop/dio` read.
        dio: String,
    },
    /// Reading the device's sysfs attributes failed.
    #[error("read sysfs of {device}")]
    Sysfs {
        /// The device.
        device: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Opening the device or its ioctl failed.
    #[error("{op} on {device}")]
    Ioctl {
        /// What was being done.
        op: &'static str,
        /// The device.
        device: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The device still has its backing file after detaching.
    #[error("{0} did not let go of its backing file")]
    DetachTimeout(PathBuf),
}

/// A loop device attached to a file. Detaches on [`LoopDevice::detach`] or,
/// best effort, on drop.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
    name: String,
    attached: bool,
}

impl LoopDevice {
    /// Attaches a free loop device to `file` with direct I/O and checks that
    /// direct I/O is really on.
    pub fn attach(file: &Path) -> Result<Self, LoopError> {
        let out = cmd::run(
            "losetup",
            &[
                "--find".as_ref(),
                "--show".as_ref(),
                "--direct-io=on".as_ref(),
                file.as_os_str(),
            ],
        )
        .map_err(LoopError::Losetup)?;
        let device = PathBuf::from(out.trim());
        let name = device
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.starts_with("loop"))
            .ok_or_else(|| LoopError::UnexpectedOutput(out.clone()))?
            .to_owned();
        let dev = LoopDevice {
            device,
            name,
            attached: true,
        };
        let dio = dev.sysfs("loop/dio")?;
        if dio != "1" {
            // Dropping `dev` detaches it.
            return Err(LoopError::NoDirectIo {
                device: dev.device.clone(),
                dio,
            });
        }
        tracing::info!(device = %dev.device.display(), file = %file.display(), "loop device attached with direct I/O");
        Ok(dev)
    }

    /// The device node, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// Whether direct I/O is on, as sysfs says now.
    pub fn direct_io(&self) -> Result<bool, LoopError> {
        Ok(self.sysfs("loop/dio")? == "1")
    }

    /// Size of the device in bytes, as the block layer sees it.
    pub fn size(&self) -> Result<u64, LoopError> {
        let sectors = self.sysfs("size")?;
        let sectors: u64 = sectors.parse().map_err(|_| LoopError::UnexpectedOutput(sectors))?;
        Ok(sectors * 512)
    }

    fn sysfs(&self, attr: &str) -> Result<String, LoopError> {
        let p = Path::new("/sys/block").join(&self.name).join(attr);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_owned())
            .map_err(|source| LoopError::Sysfs {
                device: self.device.clone(),
                source,
            })
    }

    /// Makes the device pick up a new size of its backing file
    /// (`LOOP_SET_CAPACITY`), after the volume grew.
    pub fn set_capacity(&self) -> Result<(), LoopError> {
        set_capacity_of(&self.device)
    }

    /// Detaches the device ([`detach_device`]). Idempotent.
    pub fn detach(&mut self) -> Result<(), LoopError> {
        if !self.attached {
            return Ok(());
        }
        detach_device(&self.device)?;
        self.attached = false;
        tracing::info!(device = %self.device.display(), "loop device detached");
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!(error = %e, "detach loop device on drop");
        }
    }
}

/// Detaches the loop device at `device`, attached by this process or
/// another, and waits until it has let go of its backing file (the kernel
/// finishes a detach asynchronously when the device is still open).
/// Idempotent.
pub fn detach_device(device: &Path) -> Result<(), LoopError> {
    let Some(name) = device.file_name() else {
        return Ok(());
    };
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    if backing.exists() {
        match cmd::run("losetup", &["-d".as_ref(), device.as_os_str()]) {
            Ok(_) => {}
            // Already gone (detached by someone else in between).
            Err(_) if !backing.exists() => {}
            Err(e) => return Err(LoopError::Losetup(e)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while backing.exists() {
        if Instant::now() > deadline {
            return Err(LoopError::DetachTimeout(device.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `LOOP_SET_CAPACITY` on the loop device at `device` (one this process
/// did not attach, such as a device taken over from a predecessor).
pub fn set_capacity_of(device: &Path) -> Result<(), LoopError> {
    let ioctl_err = |op| {
        move |e: rustix::io::Errno| LoopError::Ioctl {
            op,
            device: device.to_owned(),
            source: e.into(),
        }
    };
    let fd = rustix::fs::open(device, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(ioctl_err("open"))?;
    sys::loop_set_capacity(&fd).map_err(ioctl_err("LOOP_SET_CAPACITY"))
}

/// Loop devices whose backing file is `file` (to clean up after a crash).
pub fn devices_backed_by(file: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let want = file.as_os_str().to_string_lossy().into_owned();
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim();
            (backing == want || backing.strip_suffix(" (deleted)") == Some(want.as_str()))
                .then(|| Path::new("/dev").join(name))
        })
        .collect()
}
