//! Named points where a test build cuts its own power: with the
//! `test-hooks` feature and `FLOE_FAILPOINT=<name>@<n>` in its environment,
//! the process SIGKILLs itself the `n`th time it reaches point `name`.
//! Together with the store's volatile backend (`FLOE_POWER_CUT=1`,
//! `store/volatile.rs`) that loses exactly what a power cut at that step
//! loses. Without the feature, [`hit`] is empty and the names are all that
//! is compiled.
//!
//! The points, by where they sit (`sites_powercut` kills at each):
//! - a primary's sender: [`BATCH_IN_FLIGHT`], [`SEALED`], [`STAGED_ACKED`],
//!   [`CONSISTENT`];
//! - a DR's receiver and group: [`STAGE_WRITE`], [`STAGED_UNREPORTED`],
//!   [`BETWEEN_STAGED`], [`DECIDED`];
//! - either side's store and restart: [`IMAGE_WRITE`] (a primary's host
//!   write, a DR's fold), [`HANDOVER_TAKEN`].

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
/// A restarted data plane took a volume's FUSE connection from the holder
/// and has not served it yet.
pub const HANDOVER_TAKEN: &str = "handover-taken";

/// Every point, for tests that iterate them.
pub const ALL: [&str; 10] = [
    BATCH_IN_FLIGHT,
    SEALED,
    STAGED_ACKED,
    CONSISTENT,
    STAGE_WRITE,
    STAGED_UNREPORTED,
    BETWEEN_STAGED,
    DECIDED,
    IMAGE_WRITE,
    HANDOVER_TAKEN,
];

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
    use std::sync::OnceLock;

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
            eprintln!("failpoint {name} reached: power cut (SIGKILL)");
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            // The signal is on its way; never go on past the point.
            loop {
                std::thread::park();
            }
        }
    }
}
