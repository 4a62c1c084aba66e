//! Named points where a test build cuts its own power: with the
//! `test-hooks` feature and `FLOE_FAILPOINT=<name>@<n>` in its environment,
//! the process SIGKILLs itself the `n`th time it reaches point `name`.
//! Together with the store's volatile backend (`FLOE_POWER_CUT=1`,
//! `store/volatile.rs`) that loses exactly what a power cut at that step
//! loses. Without the feature, [`hit`] is empty and the names are all that
//! is compiled. (`node::local::Failpoints` is another thing: delays a test
//! injects into an in-process catalog.)
//!
//! The points, by where they sit (`sites_powercut` kills at each):
//! - a primary's sender: [`BATCH_IN_FLIGHT`], [`SEALED`], [`STAGED_ACKED`],
//!   [`CONSISTENT`];
//! - a DR's receiver and group: [`STAGE_WRITE`], [`STAGED_UNREPORTED`],
//!   [`BETWEEN_STAGED`], [`DECIDED`];
//! - either side's store and restart: [`IMAGE_WRITE`] (a primary's host
//!   write, a DR's fold), [`HANDOVER_LEAVING`], [`HANDOVER_TAKEN`] (a DR
//!   has no FUSE connection to take).

/// The sender took a batch of blocks from the engine and has not sent it.
pub const BATCH_IN_FLIGHT: &str = "batch-in-flight";
/// The sender sent an epoch's seal; its staged-ack has not come back.
pub const SEALED: &str = "sealed";
/// The primary took a member's staged-ack; the group's decision is not in.
pub const STAGED_ACKED: &str = "staged-acked";
/// The primary took a member's commit of an epoch.
pub const CONSISTENT: &str = "consistent";
/// The store wrote one block of a staged epoch (a DR, mid-batch).
pub const STAGE_WRITE: &str = "stage-write";
/// A DR replica staged an epoch; the coordinator has not heard it.
pub const STAGED_UNREPORTED: &str = "staged-unreported";
/// The coordinator recorded one member's staged epoch and waits for another.
pub const BETWEEN_STAGED: &str = "between-staged";
/// The coordinator's decision is in its log; no member has folded it.
pub const DECIDED: &str = "decided";
/// The store wrote one block of the image (a primary's host write, a
/// DR's fold).
pub const IMAGE_WRITE: &str = "image-write";
/// A data plane handing over (SIGTERM) has flushed its engines and left
/// its connections to the holder; it has not exited.
pub const HANDOVER_LEAVING: &str = "handover-leaving";
/// A restarted data plane took a volume's FUSE connection from the holder
/// and has not served it yet.
pub const HANDOVER_TAKEN: &str = "handover-taken";

/// Every point, for tests that iterate them.
pub const ALL: [&str; 11] = [
    BATCH_IN_FLIGHT,
    SEALED,
    STAGED_ACKED,
    CONSISTENT,
    STAGE_WRITE,
    STAGED_UNREPORTED,
    BETWEEN_STAGED,
    DECIDED,
    IMAGE_WRITE,
    HANDOVER_LEAVING,
    HANDOVER_TAKEN,
];

/// A call of this process that waits on its own FUSE server: `syncfs`,
/// `FIFREEZE` or `FITHAW` (ext4 writes its superblock as it thaws) of a
/// floe volume's file system. A process killed inside one
/// cannot exit until the call returns, and only a successor serving the
/// connection makes it return, so a kill there is not a power cut but a
/// process that never ends (`docs/replication.md`, "Power cuts"). A point
/// reached during such a call kills when the last one returns (waiting in
/// place could deadlock: the call may wait on the very thread that reached
/// the point). Without the feature, entering costs nothing.
#[must_use = "the call is under way while the guard lives"]
pub struct OwnIo(());

impl OwnIo {
    /// A call on this process's own file system starts.
    pub fn enter() -> Self {
        #[cfg(feature = "test-hooks")]
        armed::own_io(1);
        OwnIo(())
    }
}

impl Drop for OwnIo {
    fn drop(&mut self) {
        #[cfg(feature = "test-hooks")]
        armed::own_io(-1);
    }
}

/// The environment variable that arms a point: `<name>@<n>`.
pub const ENV: &str = "FLOE_FAILPOINT";

/// Reached point `name`: in an armed test build, the `n`th time kills the
/// process.
#[inline]
pub fn hit(name: &'static str) {
    #[cfg(feature = "test-hooks")]
    armed::hit(name);
    #[cfg(not(feature = "test-hooks"))]
    let _ = name;
}

#[cfg(feature = "test-hooks")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    /// Calls of [`super::OwnIo`] under way, and whether a point was
    /// reached during one (the kill is due when the last returns).
    static OWN_IO: Mutex<(i64, Option<&'static str>)> = Mutex::new((0, None));

    pub(super) fn own_io(delta: i64) {
        let mut g = OWN_IO.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += delta;
        if let (0, Some(name)) = *g {
            kill(name);
        }
    }

    /// SIGKILLs this process; never returns. Called with `OWN_IO` held, so
    /// no call on our own file system starts before the signal lands.
    fn kill(name: &str) -> ! {
        eprintln!("failpoint {name} reached: power cut (SIGKILL)");
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        loop {
            std::thread::park();
        }
    }

    struct Armed {
        name: String,
        left: AtomicU64,
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let spec = std::env::var(super::ENV).ok()?;
                let parsed = spec
                    .split_once('@')
                    .and_then(|(name, n)| Some((name, n.parse::<u64>().ok().filter(|n| *n > 0)?)))
                    .filter(|(name, _)| super::ALL.contains(name));
                let Some((name, n)) = parsed else {
                    // A test asked for a point that does not exist: say so loudly.
                    eprintln!("{}={spec:?} names no failpoint (known: {:?})", super::ENV, super::ALL);
                    std::process::exit(2);
                };
                tracing::warn!(point = name, n, "test build: failpoint armed");
                Some(Armed {
                    name: name.to_owned(),
                    left: AtomicU64::new(n),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(name: &'static str) {
        let Some(a) = armed() else { return };
        if a.name != name {
            return;
        }
        if a.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut g = OWN_IO.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 == 0 {
                kill(name);
            }
            g.1 = Some(name);
        }
    }
}
