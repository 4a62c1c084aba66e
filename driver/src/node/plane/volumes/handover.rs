//! Start and exit: taking over the volumes a predecessor left attached,
//! and leaving them to a successor.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{lock, Slot, Volumes};
use crate::dataplane::SizedBackend;
use crate::node::plane::attachment::{AttachedFile, Attachment};
use crate::node::plane::error::{chain, PlaneError};
use crate::node::plane::files;

impl Volumes {
    /// Takes over every volume `attached.json` names (see
    /// [`Attachment::take_over`]) and rewrites it with what is attached now.
    /// Returns the volumes now served.
    pub(crate) fn take_over(&self) -> Result<Vec<String>, PlaneError> {
        let path = self.run.attached();
        let file = match files::read_json::<AttachedFile>(&path) {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable attached-volumes record: nothing taken over");
                AttachedFile::default()
            }
        };
        let mut served = Vec::new();
        let mut now = AttachedFile::default();
        for (id, rec) in &file.volumes {
            let arc = self.slot(id);
            let mut slot = lock(&arc);
            let Some(spec) = slot.spec.clone() else {
                tracing::error!(volume = %id, "attached volume without a volume record: left alone");
                continue;
            };
            let size = spec.record.size_bytes;
            if let Some(a) = Attachment::take_over(id, spec.mode, size, rec, &self.data_dir, &self.run) {
                if a.backend().is_some() {
                    served.push(id.clone());
                }
                now.volumes.insert(id.clone(), a.record());
                slot.attached = Some(a);
            }
        }
        files::write_json(&path, &now).map_err(PlaneError::io("write the attached-volumes record", &path))?;
        *lock(&self.index) = now;
        Ok(served)
    }

    /// For a process about to exit in favour of a successor: waits for every
    /// operation under way (and lets no other start), flushes every engine
    /// and holds its lock (so the process stops at a request boundary),
    /// leaves mounts, loop devices and the holder's fds in place, and exits.
    pub(crate) fn hand_over(&self) -> ! {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        let mut guards: Vec<MutexGuard<'_, Slot>> = slots.iter().map(|s| lock(s)).collect();
        let attachments: Vec<Attachment> = guards.iter_mut().filter_map(|g| g.attached.take()).collect();
        for a in attachments.iter().filter(|a| a.backend().is_some()) {
            if let Err(e) = crate::dataplane::handover::take(&self.run.holder_socket(), a.volume()) {
                tracing::error!(volume = a.volume(), error = %chain(&e), "the holder does not keep this volume's connection: it ends with this process");
            }
        }
        let backends: Vec<Arc<SizedBackend>> = attachments.iter().filter_map(|a| a.sized().cloned()).collect();
        hold_all(
            &backends,
            Box::new(move || {
                let n = attachments.len();
                for a in attachments {
                    a.abandon();
                }
                tracing::info!(volumes = n, "volumes left to the successor; exiting");
                crate::failpoint::hit(crate::failpoint::HANDOVER_LEAVING);
                crate::store::exiting();
                std::process::exit(0)
            }),
        );
        drop(guards);
        crate::failpoint::hit(crate::failpoint::HANDOVER_LEAVING);
        crate::store::exiting();
        std::process::exit(0)
    }
}

/// Flushes each engine and keeps its lock while `last` runs (it exits).
fn hold_all(backends: &[Arc<SizedBackend>], last: Box<dyn FnOnce() + '_>) {
    match backends.split_first() {
        None => last(),
        Some((b, rest)) => b.engine().with_primary(move |p| {
            if let Err(e) = p.flush() {
                tracing::error!(error = %chain(&e), "flush an engine before handing over");
            }
            hold_all(rest, last)
        }),
    }
}
