//! The group freeze: one consistent cut across every member of a group, on
//! whatever nodes they live, as the demo and the controller both take it.
//!
//! 1. **Ready**: every member says it can take the freeze (link up, no
//!    epoch still closing). If one cannot, the freeze stops here, before
//!    any `FIFREEZE`, so no application stalls for a cut that would fail.
//! 2. **Quiesce**: every member's file system is flushed and frozen under
//!    one token, in parallel, until a deadline (the node's watchdog thaws
//!    it then, whatever this process does).
//! 3. **Freeze**: every member flips its open epoch to the group epoch; a
//!    member refuses unless it is still frozen under the token.
//! 4. **Thaw** every member, on every path, as soon as the flips are in or
//!    one failed.
//! 5. On any refusal, error or timeout: **abort** the group epoch on every
//!    member (the epoch's writes merge into the next one).
//!
//! [`FreezeMember`] is what a member must offer; the data plane implements
//! it directly for the volumes it hosts (`dataplane::freeze_member`) and
//! over `node.proto` for members on other nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_engine::GroupEpoch;
use tokio::task::JoinSet;

/// A quiesce's token: random, so a late thaw or freeze of an older cut
/// cannot touch this one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub String);

impl Token {
    /// A fresh token (128 random bits, hex).
    pub fn fresh() -> std::io::Result<Token> {
        let mut bytes = [0u8; 16];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }
}

/// Why a member could not do its step, in its own words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MemberError(pub String);

/// One volume of the group, wherever it lives.
#[tonic::async_trait]
pub trait FreezeMember: Send + Sync + 'static {
    /// How the member is named in reports (`node/volume`).
    fn name(&self) -> String;
    /// Whether the member can take group epoch `epoch` now.
    async fn ready(&self, epoch: GroupEpoch) -> Result<(), MemberError>;
    /// Flush and freeze the member's file system under `token` until
    /// `deadline` (a block volume with no file system only records the token).
    async fn quiesce(&self, token: &Token, deadline: Instant) -> Result<(), MemberError>;
    /// Flip the open epoch to `epoch`; refused unless frozen under `token`.
    async fn freeze(&self, epoch: GroupEpoch, token: &Token) -> Result<(), MemberError>;
    /// Thaw what `token` froze (nothing frozen is not an error).
    async fn thaw(&self, token: &Token) -> Result<(), MemberError>;
    /// Drop group epoch `epoch` (not frozen there is not an error).
    async fn abort(&self, epoch: GroupEpoch) -> Result<(), MemberError>;
}

/// Which step a member failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The readiness check.
    Ready,
    /// Flush and freeze of the file system.
    Quiesce,
    /// The epoch flip.
    Freeze,
    /// The thaw.
    Thaw,
    /// The abort after a failure.
    Abort,
}

/// A member's failed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The member.
    pub member: String,
    /// The step.
    pub step: Step,
    /// Why (a timeout says so).
    pub error: MemberError,
}

/// How a group freeze went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreezeReport {
    /// The group epoch.
    pub epoch: GroupEpoch,
    /// Whether every member flipped (otherwise the epoch was aborted).
    pub committed_to_flip: bool,
    /// Every failed step, first the one that stopped the freeze.
    pub failures: Vec<Failure>,
    /// From the first quiesce sent to the last thaw answered: the longest
    /// time an application may have stood still (zero if nothing froze).
    pub stall: Duration,
    /// The quiesce phase alone.
    pub quiesce: Duration,
    /// The freeze phase alone.
    pub flip: Duration,
}

/// Runs `step` on every member in parallel, each bounded by `deadline`;
/// returns the failures.
async fn on_all<F, Fut>(members: &[Arc<dyn FreezeMember>], step: Step, deadline: Instant, f: F) -> Vec<Failure>
where
    F: Fn(Arc<dyn FreezeMember>) -> Fut,
    Fut: std::future::Future<Output = Result<(), MemberError>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for m in members {
        let name = m.name();
        let fut = f(Arc::clone(m));
        let deadline = tokio::time::Instant::from_std(deadline);
        set.spawn(async move {
            let r = match tokio::time::timeout_at(deadline, fut).await {
                Ok(r) => r,
                Err(_) => Err(MemberError("no answer before the deadline".into())),
            };
            r.err().map(|error| Failure {
                member: name,
                step,
                error,
            })
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Some(f)) => failures.push(f),
            Ok(None) => {}
            Err(e) => failures.push(Failure {
                member: "?".into(),
                step,
                error: MemberError(format!("the call panicked: {e}")),
            }),
        }
    }
    failures
}

/// Takes group epoch `epoch` on every member, or on none: see the module
/// documentation for the steps. `timeout` bounds the quiesce and freeze
/// steps together (the file systems are thawed by then at the latest);
/// thaw and abort get `timeout` again each.
pub async fn group_freeze(members: &[Arc<dyn FreezeMember>], epoch: GroupEpoch, timeout: Duration) -> FreezeReport {
    let mut report = FreezeReport {
        epoch,
        committed_to_flip: false,
        failures: Vec::new(),
        stall: Duration::ZERO,
        quiesce: Duration::ZERO,
        flip: Duration::ZERO,
    };
    let ready = on_all(members, Step::Ready, Instant::now() + timeout, move |m| async move {
        m.ready(epoch).await
    })
    .await;
    if !ready.is_empty() {
        report.failures = ready;
        return report;
    }
    let token = match Token::fresh() {
        Ok(t) => t,
        Err(e) => {
            report.failures.push(Failure {
                member: "-".into(),
                step: Step::Quiesce,
                error: MemberError(format!("no randomness for the token: {e}")),
            });
            return report;
        }
    };
    let start = Instant::now();
    let deadline = start + timeout;
    let t = token.clone();
    let mut failures = on_all(members, Step::Quiesce, deadline, move |m| {
        let t = t.clone();
        async move { m.quiesce(&t, deadline).await }
    })
    .await;
    report.quiesce = start.elapsed();
    if failures.is_empty() {
        let flip_start = Instant::now();
        let t = token.clone();
        failures = on_all(members, Step::Freeze, deadline, move |m| {
            let t = t.clone();
            async move { m.freeze(epoch, &t).await }
        })
        .await;
        report.flip = flip_start.elapsed();
    }
    // Thaw on every path: also members whose quiesce failed may be frozen.
    let t = token.clone();
    let thawed = on_all(members, Step::Thaw, Instant::now() + timeout, move |m| {
        let t = t.clone();
        async move { m.thaw(&t).await }
    })
    .await;
    report.stall = start.elapsed();
    report.committed_to_flip = failures.is_empty() && thawed.is_empty();
    if !report.committed_to_flip {
        // A thaw that failed means the watchdog thawed first: the cut may
        // not be consistent, so the epoch goes too.
        let aborted = on_all(members, Step::Abort, Instant::now() + timeout, move |m| async move {
            m.abort(epoch).await
        })
        .await;
        failures.extend(thawed);
        failures.extend(aborted);
    } else {
        failures.extend(thawed);
    }
    report.failures = failures;
    report
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A member that does what it is told and notes every call; it may fail
    /// or never answer at one step.
    struct Scripted {
        name: &'static str,
        fail_at: Option<Step>,
        hang_at: Option<Step>,
        frozen: Mutex<Option<Token>>,
        log: Arc<Mutex<Vec<(&'static str, Step)>>>,
    }

    impl Scripted {
        async fn step(&self, step: Step) -> Result<(), MemberError> {
            self.log.lock().expect("log").push((self.name, step));
            if self.hang_at == Some(step) {
                std::future::pending::<()>().await;
            }
            if self.fail_at == Some(step) {
                return Err(MemberError(format!("{} refuses {step:?}", self.name)));
            }
            Ok(())
        }
    }

    #[tonic::async_trait]
    impl FreezeMember for Scripted {
        fn name(&self) -> String {
            self.name.to_owned()
        }
        async fn ready(&self, _: GroupEpoch) -> Result<(), MemberError> {
            self.step(Step::Ready).await
        }
        async fn quiesce(&self, token: &Token, _: Instant) -> Result<(), MemberError> {
            self.step(Step::Quiesce).await?;
            *self.frozen.lock().expect("frozen") = Some(token.clone());
            Ok(())
        }
        async fn freeze(&self, _: GroupEpoch, token: &Token) -> Result<(), MemberError> {
            self.step(Step::Freeze).await?;
            if self.frozen.lock().expect("frozen").as_ref() != Some(token) {
                return Err(MemberError("not frozen under this token".into()));
            }
            Ok(())
        }
        async fn thaw(&self, _: &Token) -> Result<(), MemberError> {
            self.step(Step::Thaw).await?;
            *self.frozen.lock().expect("frozen") = None;
            Ok(())
        }
        async fn abort(&self, _: GroupEpoch) -> Result<(), MemberError> {
            self.step(Step::Abort).await
        }
    }

    type Log = Arc<Mutex<Vec<(&'static str, Step)>>>;

    fn group(
        script: &[(&'static str, Option<Step>, Option<Step>)],
    ) -> (Vec<Arc<dyn FreezeMember>>, Vec<Arc<Scripted>>, Log) {
        let log: Log = Arc::default();
        let members: Vec<Arc<Scripted>> = script
            .iter()
            .map(|&(name, fail_at, hang_at)| {
                Arc::new(Scripted {
                    name,
                    fail_at,
                    hang_at,
                    frozen: Mutex::new(None),
                    log: Arc::clone(&log),
                })
            })
            .collect();
        let dyns = members.iter().map(|m| Arc::clone(m) as Arc<dyn FreezeMember>).collect();
        (dyns, members, log)
    }

    fn steps_of(log: &Log, name: &str) -> Vec<Step> {
        let log = log.lock().expect("log");
        log.iter().filter(|(n, _)| *n == name).map(|(_, s)| *s).collect()
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn every_member_flips_and_is_thawed() {
        let (members, scripted, log) = group(&[("a", None, None), ("b", None, None), ("c", None, None)]);
        let report = group_freeze(&members, 7, T).await;
        assert!(report.committed_to_flip, "{report:?}");
        assert!(report.failures.is_empty());
        for name in ["a", "b", "c"] {
            assert_eq!(
                steps_of(&log, name),
                [Step::Ready, Step::Quiesce, Step::Freeze, Step::Thaw]
            );
        }
        assert!(scripted.iter().all(|m| m.frozen.lock().expect("frozen").is_none()));
    }

    #[tokio::test]
    async fn a_member_not_ready_stops_the_freeze_before_anything_is_frozen() {
        let (members, _, log) = group(&[("a", None, None), ("b", Some(Step::Ready), None)]);
        let report = group_freeze(&members, 7, T).await;
        assert!(!report.committed_to_flip);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(
            (report.failures[0].member.as_str(), report.failures[0].step),
            ("b", Step::Ready)
        );
        assert_eq!(report.stall, Duration::ZERO);
        for name in ["a", "b"] {
            assert_eq!(steps_of(&log, name), [Step::Ready], "{name} was never quiesced");
        }
    }

    #[tokio::test]
    async fn a_failed_quiesce_thaws_everyone_and_aborts_everywhere_without_a_flip() {
        let (members, scripted, log) = group(&[("a", None, None), ("b", Some(Step::Quiesce), None)]);
        let report = group_freeze(&members, 7, T).await;
        assert!(!report.committed_to_flip);
        assert_eq!(report.failures[0].step, Step::Quiesce);
        for name in ["a", "b"] {
            assert_eq!(
                steps_of(&log, name),
                [Step::Ready, Step::Quiesce, Step::Thaw, Step::Abort]
            );
        }
        assert!(scripted.iter().all(|m| m.frozen.lock().expect("frozen").is_none()));
    }

    #[tokio::test]
    async fn a_refused_flip_thaws_everyone_and_aborts_everywhere() {
        let (members, _, log) = group(&[("a", Some(Step::Freeze), None), ("b", None, None)]);
        let report = group_freeze(&members, 7, T).await;
        assert!(!report.committed_to_flip);
        assert_eq!(
            (report.failures[0].member.as_str(), report.failures[0].step),
            ("a", Step::Freeze)
        );
        for name in ["a", "b"] {
            assert_eq!(
                steps_of(&log, name),
                [Step::Ready, Step::Quiesce, Step::Freeze, Step::Thaw, Step::Abort]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_never_answers_is_timed_out_and_the_others_thawed() {
        let (members, _, log) = group(&[("a", None, None), ("b", None, Some(Step::Quiesce))]);
        let report = group_freeze(&members, 7, T).await;
        assert!(!report.committed_to_flip);
        assert_eq!(report.failures[0].step, Step::Quiesce);
        assert!(
            report.failures[0].error.0.contains("deadline"),
            "{:?}",
            report.failures[0]
        );
        assert_eq!(
            steps_of(&log, "a"),
            [Step::Ready, Step::Quiesce, Step::Thaw, Step::Abort]
        );
        assert_eq!(
            steps_of(&log, "b"),
            [Step::Ready, Step::Quiesce, Step::Thaw, Step::Abort]
        );
    }

    #[tokio::test]
    async fn a_failed_thaw_means_the_cut_may_be_torn_so_the_epoch_is_aborted() {
        let (members, _, log) = group(&[("a", None, None), ("b", Some(Step::Thaw), None)]);
        let report = group_freeze(&members, 7, T).await;
        assert!(!report.committed_to_flip);
        assert_eq!(report.failures[0].step, Step::Thaw);
        assert_eq!(steps_of(&log, "a").last(), Some(&Step::Abort));
    }
}
