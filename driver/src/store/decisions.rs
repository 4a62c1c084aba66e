//! The group coordinator's decision record on disk:
//! `<data_dir>/groups/<group>/decisions`, A/B checksummed slots
//! ([`super::record`]), durable when [`DecisionLog::record`] returns.
//!
//! Payload, format version 1: `committed u64 | n u64 | n × aborted u64`.

use std::path::Path;
use std::sync::Arc;

use floe_engine::{DecisionLog, DecisionRecord, StoreError};

use super::backend::{ensure_dir, Backend};
use super::codec::{DecodeError, Reader, Writer};
use super::error::{check_name, Error};
use super::layout;
use super::record::{Kind, Slots};

const DECISIONS_VERSION: u32 = 1;
/// Room for about 130,000 aborted epochs between two commits.
const SLOT_BYTES: u64 = 1 << 20;

/// A replication group's decision record.
#[derive(Debug)]
pub struct FileDecisionLog {
    fs: Arc<dyn Backend>,
    slots: Slots,
}

fn encode(rec: &DecisionRecord) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(rec.committed).count(rec.aborted.len());
    for &g in &rec.aborted {
        w.u64(g);
    }
    // The trailer: the membership changes (a record written before them
    // ends here, and reads as none).
    if !rec.membership.is_empty() {
        w.count(rec.membership.len());
        for m in &rec.membership {
            w.u64(m.from).count(m.members.len());
            for &i in &m.members {
                w.u32(i);
            }
        }
    }
    w.finish()
}

fn decode(payload: &[u8]) -> Result<DecisionRecord, DecodeError> {
    let mut r = Reader::new(payload);
    let committed = r.u64()?;
    let n = r.count("aborted epochs", 8)?;
    let mut aborted = Vec::with_capacity(n);
    for _ in 0..n {
        aborted.push(r.u64()?);
    }
    let mut membership = Vec::new();
    if !r.at_end() {
        let n = r.count("membership changes", 12)?;
        for _ in 0..n {
            let from = r.u64()?;
            let k = r.count("members", 4)?;
            let mut members = Vec::with_capacity(k);
            for _ in 0..k {
                members.push(r.u32()?);
            }
            membership.push(floe_engine::Membership { from, members });
        }
    }
    r.finish()?;
    Ok(DecisionRecord {
        committed,
        aborted,
        membership,
    })
}

impl FileDecisionLog {
    /// Open (creating its directory) the decision record of `group` under `data_dir`.
    pub fn open(data_dir: &Path, group: &str) -> Result<Self, Error> {
        Self::open_with(super::default_backend(), data_dir, group)
    }

    /// [`FileDecisionLog::open`] on another backend.
    pub fn open_with(fs: Arc<dyn Backend>, data_dir: &Path, group: &str) -> Result<Self, Error> {
        check_name(group)?;
        let path = layout::decisions(data_dir, group);
        let dir = path.parent().unwrap_or(data_dir);
        ensure_dir(fs.as_ref(), dir).map_err(Error::io("create group directory", dir))?;
        let slots = Slots::open(fs.as_ref(), path, Kind::Decisions, DECISIONS_VERSION, SLOT_BYTES)?;
        Ok(FileDecisionLog { fs, slots })
    }

    /// Removes the decision record of `group` under `data_dir` (durably; an
    /// absent one is not an error): the group's coordinator starts afresh.
    pub fn remove(data_dir: &Path, group: &str) -> Result<(), Error> {
        check_name(group)?;
        let path = layout::decisions(data_dir, group);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let dir = path.parent().unwrap_or(data_dir);
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io("sync group directory", dir))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove decision record", &path)(e)),
        }
    }

    fn load_record(&self) -> Result<DecisionRecord, Error> {
        match self.slots.read()? {
            None => Ok(DecisionRecord::default()),
            Some(payload) => decode(&payload).map_err(|source| Error::Decode {
                path: self.slots.path().to_owned(),
                source,
            }),
        }
    }
}

impl DecisionLog for FileDecisionLog {
    fn record(&mut self, rec: &DecisionRecord) -> Result<(), StoreError> {
        self.slots
            .write(self.fs.as_ref(), &encode(rec))
            .map_err(|e| e.at("record group decision"))
    }

    fn load(&self) -> Result<DecisionRecord, StoreError> {
        self.load_record().map_err(|e| e.at("load group decisions"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::crash::CrashingBackend;
    use super::*;

    #[test]
    fn a_new_group_loads_the_default_and_records_survive_reopen() {
        let fs = Arc::new(CrashingBackend::new());
        let mut log = FileDecisionLog::open_with(fs.clone(), Path::new("/data"), "g1").expect("open");
        assert_eq!(log.load().expect("load"), DecisionRecord::default());
        let rec = DecisionRecord {
            committed: 7,
            aborted: vec![8, 10],
            membership: vec![floe_engine::Membership {
                from: 9,
                members: vec![0, 2],
            }],
        };
        log.record(&rec).expect("record");
        let again = FileDecisionLog::open_with(fs.clone(), Path::new("/data"), "g1").expect("reopen");
        assert_eq!(again.load().expect("load"), rec);
    }

    #[test]
    fn a_record_is_durable_when_record_returns() {
        for seed in 0..40 {
            let fs = Arc::new(CrashingBackend::new());
            let mut log = FileDecisionLog::open_with(fs.clone(), Path::new("/data"), "g").expect("open");
            for committed in 1..=3 {
                log.record(&DecisionRecord {
                    committed,
                    ..DecisionRecord::default()
                })
                .expect("record");
            }
            fs.restart(seed);
            let log = FileDecisionLog::open_with(fs.clone(), Path::new("/data"), "g").expect("reopen");
            assert_eq!(log.load().expect("load").committed, 3, "seed {seed}");
        }
    }

    #[test]
    fn a_cut_during_record_leaves_the_old_or_the_new_decision() {
        // Count the operations of one record, then cut at each of them.
        let probe = Arc::new(CrashingBackend::new());
        let mut log = FileDecisionLog::open_with(probe.clone(), Path::new("/d"), "g").expect("open");
        log.record(&DecisionRecord::default()).expect("record");
        let before = probe.ops();
        log.record(&DecisionRecord::default()).expect("record");
        let per_record = probe.ops() - before;
        for cut in 0..=per_record * 3 {
            for seed in 0..4 {
                let fs = Arc::new(CrashingBackend::new());
                let start = fs.ops();
                fs.cut_at(start + cut);
                let mut last_ok = None;
                if let Ok(mut log) = FileDecisionLog::open_with(fs.clone(), Path::new("/d"), "g") {
                    for committed in 1..=3 {
                        let rec = DecisionRecord {
                            committed,
                            aborted: vec![committed + 1],
                            membership: Vec::new(),
                        };
                        if log.record(&rec).is_err() {
                            break;
                        }
                        last_ok = Some(committed);
                    }
                }
                fs.restart(seed);
                let Ok(log) = FileDecisionLog::open_with(fs.clone(), Path::new("/d"), "g") else {
                    panic!("cut {cut} seed {seed}: reopen failed");
                };
                let got = log.load().expect("never garbage").committed;
                let ok = last_ok.unwrap_or(0);
                assert!(
                    got == ok || got == ok + 1,
                    "cut {cut} seed {seed}: {got} after {last_ok:?}"
                );
            }
        }
    }

    #[test]
    fn decoding_refuses_garbage_without_panicking() {
        let old = encode(&DecisionRecord {
            committed: 1,
            aborted: vec![2, 3],
            membership: Vec::new(),
        });
        let bytes = encode(&DecisionRecord {
            committed: 1,
            aborted: vec![2, 3],
            membership: vec![floe_engine::Membership {
                from: 4,
                members: vec![0, 1, 5],
            }],
        });
        for n in 0..bytes.len() {
            // Cut where the membership trailer starts, it is a record
            // written before membership changes: the one cut that decodes.
            assert_eq!(decode(&bytes[..n]).is_ok(), n == old.len(), "cut at {n}");
        }
        let mut x = 99u64;
        for _ in 0..1000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let junk: Vec<u8> = (0..(x % 40)).map(|i| (x >> (i % 60)) as u8).collect();
            let _ = decode(&junk);
        }
    }

    #[test]
    fn group_names_are_checked() {
        let fs = Arc::new(CrashingBackend::new());
        assert!(FileDecisionLog::open_with(fs, Path::new("/d"), "../x").is_err());
    }
}
