//! The data plane's own volumes as members of a group freeze: the engine
//! this process hosts, and the file system mounted on its device if there
//! is one (`syncfs` + `FIFREEZE`, thawed at the deadline by a timer of its
//! own if nobody thaws it first).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use floe_engine::{GroupEpoch, VolumeStore};

use super::fsfreeze::{self, FrozenFs};
use crate::replication::endpoint::HostedPrimary;
use crate::replication::freeze::{FreezeMember, MemberError, Token};

/// The token a member is frozen under, and its frozen file system if any.
type FrozenSlot = Option<(Token, Option<FrozenFs>)>;

/// A member whose engine this process hosts, with the mount point of its
/// file system if it has one. Its quiesce thaws by itself at the deadline
/// (a flip after that is refused), as the node's watchdog does.
pub struct LocalMember<S: VolumeStore + Send + 'static> {
    name: String,
    primary: Arc<HostedPrimary<S>>,
    mount: Option<PathBuf>,
    frozen: Arc<Mutex<FrozenSlot>>,
}

impl<S: VolumeStore + Send + 'static> LocalMember<S> {
    /// `primary`, named `name`, with its file system at `mount` (none for a
    /// raw block volume, or an engine without a data path).
    pub fn new(name: impl Into<String>, primary: Arc<HostedPrimary<S>>, mount: Option<PathBuf>) -> Self {
        LocalMember {
            name: name.into(),
            primary,
            mount,
            frozen: Arc::default(),
        }
    }
}

fn lock_frozen(m: &Mutex<FrozenSlot>) -> std::sync::MutexGuard<'_, FrozenSlot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Thaws what `frozen` holds if it is still `token`'s.
fn thaw_if(frozen: &Mutex<FrozenSlot>, token: &Token) -> Result<bool, MemberError> {
    let mut slot = lock_frozen(frozen);
    if slot.as_ref().is_none_or(|(t, _)| t != token) {
        return Ok(false);
    }
    if let Some((_, Some(mut fs))) = slot.take() {
        fs.thaw()
            .map_err(|e| MemberError(format!("thaw {}: {e}", fs.path().display())))?;
    }
    Ok(true)
}

#[tonic::async_trait]
impl<S: VolumeStore + Send + 'static> FreezeMember for LocalMember<S> {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn ready(&self, epoch: GroupEpoch) -> Result<(), MemberError> {
        match *self.primary.watch_closing().borrow() {
            Some(closing) => Err(MemberError(format!(
                "epoch {closing} is still being replicated; epoch {epoch} would be refused"
            ))),
            None => Ok(()),
        }
    }

    async fn quiesce(&self, token: &Token, deadline: Instant) -> Result<(), MemberError> {
        let fs = match self.mount.clone() {
            None => None,
            Some(mount) => Some(
                tokio::task::spawn_blocking(move || {
                    fsfreeze::syncfs(&mount)?;
                    FrozenFs::freeze(&mount)
                })
                .await
                .map_err(|e| MemberError(format!("the freeze call panicked: {e}")))?
                .map_err(|e| MemberError(format!("freeze the file system: {e}")))?,
            ),
        };
        *lock_frozen(&self.frozen) = Some((token.clone(), fs));
        let (frozen, token) = (Arc::clone(&self.frozen), token.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            if let Ok(true) = thaw_if(&frozen, &token) {
                tracing::warn!("a quiesce outlived its deadline: thawed by the watchdog");
            }
        });
        Ok(())
    }

    async fn freeze(&self, epoch: GroupEpoch, token: &Token) -> Result<(), MemberError> {
        let slot = lock_frozen(&self.frozen);
        if slot.as_ref().is_none_or(|(t, _)| t != token) {
            return Err(MemberError("not frozen under this token (the deadline passed?)".into()));
        }
        // The flip is O(dirty) in memory; it runs under the frozen slot so
        // the watchdog cannot thaw between the check and the flip.
        self.primary
            .with(|p| p.freeze(epoch))
            .map(|_| ())
            .map_err(|e| MemberError(format!("flip to epoch {epoch}: {e}")))
    }

    async fn thaw(&self, token: &Token) -> Result<(), MemberError> {
        thaw_if(&self.frozen, token).map(|_| ())
    }

    async fn abort(&self, epoch: GroupEpoch) -> Result<(), MemberError> {
        self.primary
            .with(|p| p.abort(epoch))
            .map(|_| ())
            .map_err(|e| MemberError(format!("abort epoch {epoch}: {e}")))
    }
}
