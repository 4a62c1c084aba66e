//! A durable record in two alternating slots (A/B) of one file.
//!
//! Slot `s` starts at byte `s * slot_bytes` and holds
//! `magic (8) | format version (u32) | kind (u32) | sequence (u64) | length (u64) | payload | crc32c (u32)`,
//! little endian, the checksum over everything before it. A write goes to
//! the slot *not* holding the newest valid record, with the next sequence
//! number, then fsyncs: a torn write leaves the other slot intact. A reader
//! takes the valid slot with the highest sequence; a slot whose checksum
//! holds but whose version or kind is not the expected one is an error,
//! never skipped.
//!
//! The file exists only once a record is durable in it: the first record is
//! written to `<name>.tmp`, fsynced, renamed into place and the directory
//! fsynced. So a missing file means "never written" and a file whose slots
//! are both invalid means corruption.

use std::path::{Path, PathBuf};

use super::backend::{Backend, BackendFile};
use super::error::{Error, SlotState};

pub(crate) const MAGIC: [u8; 8] = *b"FLOE\0REC";
const HEADER: usize = 32;
const TRAILER: usize = 4;

/// What a record file holds, so one is never read as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Layout = 1,
    VolumeMeta = 2,
    Decisions = 3,
}

#[derive(Debug)]
pub(crate) struct Slots {
    path: PathBuf,
    kind: Kind,
    version: u32,
    slot_bytes: u64,
    file: Option<Box<dyn BackendFile>>,
    next_slot: u64,
    next_seq: u64,
}

/// The valid slot with the highest sequence number.
struct Newest {
    slot: u64,
    seq: u64,
    payload: Vec<u8>,
}

enum Slot {
    Empty,
    Corrupt,
    Valid {
        version: u32,
        kind: u32,
        seq: u64,
        payload: Vec<u8>,
    },
}

/// Encode one slot's bytes.
pub(crate) fn encode(kind: Kind, version: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Check a slot's header: `Err` for an empty or corrupt slot, else the
/// payload length, which fits `room` bytes (payload and checksum).
fn parse_header(h: &[u8; HEADER], room: u64) -> Result<u64, SlotState> {
    if h.iter().all(|&b| b == 0) {
        return Err(SlotState::Empty);
    }
    let len = le_u64(&h[24..32]);
    if h[..8] != MAGIC || len.checked_add(TRAILER as u64).is_none_or(|n| n > room) {
        return Err(SlotState::Corrupt);
    }
    Ok(len)
}

/// Check the checksum of a header and its payload-and-checksum bytes.
fn parse_body(h: &[u8; HEADER], body: &[u8]) -> Slot {
    let Some(split) = body.len().checked_sub(TRAILER) else {
        return Slot::Corrupt;
    };
    let (payload, crc) = body.split_at(split);
    if crc32c::crc32c_append(crc32c::crc32c(h), payload) != le_u32(crc) {
        return Slot::Corrupt;
    }
    Slot::Valid {
        version: le_u32(&h[8..12]),
        kind: le_u32(&h[12..16]),
        seq: le_u64(&h[16..24]),
        payload: payload.to_vec(),
    }
}

/// Parse a slot held whole in memory. Never panics.
#[cfg(test)]
fn parse(bytes: &[u8]) -> Slot {
    let Some(h) = bytes.get(..HEADER) else {
        return if bytes.iter().all(|&b| b == 0) {
            Slot::Empty
        } else {
            Slot::Corrupt
        };
    };
    let mut header = [0u8; HEADER];
    header.copy_from_slice(h);
    match parse_header(&header, (bytes.len() - HEADER) as u64) {
        Ok(len) => parse_body(&header, &bytes[HEADER..HEADER + len as usize + TRAILER]),
        Err(SlotState::Empty) => Slot::Empty,
        Err(SlotState::Corrupt) => Slot::Corrupt,
    }
}

impl Slots {
    /// The record file at `path`, holding records of `kind` in format
    /// `version`, in slots of `slot_bytes` (at least 4 KiB).
    pub(crate) fn open(
        fs: &dyn Backend,
        path: PathBuf,
        kind: Kind,
        version: u32,
        slot_bytes: u64,
    ) -> Result<Self, Error> {
        let file = if fs.exists(&path).map_err(Error::io("look for record file", &path))? {
            Some(fs.open(&path).map_err(Error::io("open record file", &path))?)
        } else {
            None
        };
        let mut me = Slots {
            path,
            kind,
            version,
            slot_bytes: slot_bytes.max(4096),
            file,
            next_slot: 0,
            next_seq: 1,
        };
        // Where the next write goes: away from the newest valid record. A
        // corrupt file opens (its reader reports the corruption); a record
        // written over it starts at slot A.
        if let Ok(Some(newest)) = me.newest() {
            me.next_slot = 1 - newest.slot;
            me.next_seq = newest.seq + 1;
        }
        Ok(me)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity of a slot's payload.
    pub(crate) fn capacity(&self) -> u64 {
        self.slot_bytes - (HEADER + TRAILER) as u64
    }

    fn read_slots(&self, file: &dyn BackendFile) -> Result<[Slot; 2], Error> {
        let io = || Error::io("read record file", &self.path);
        let len = file.size().map_err(io())?;
        let mut slots = [Slot::Empty, Slot::Empty];
        for (s, out) in slots.iter_mut().enumerate() {
            let start = s as u64 * self.slot_bytes;
            // The slot's room, cut short by the end of the file.
            let room = len.saturating_sub(start).min(self.slot_bytes);
            if room < HEADER as u64 {
                let mut bytes = vec![0u8; room as usize];
                file.read_at(&mut bytes, start).map_err(io())?;
                if bytes.iter().any(|&b| b != 0) {
                    *out = Slot::Corrupt;
                }
                continue;
            }
            let mut header = [0u8; HEADER];
            file.read_at(&mut header, start).map_err(io())?;
            *out = match parse_header(&header, room - HEADER as u64) {
                Ok(n) => {
                    let mut body = vec![0u8; n as usize + TRAILER];
                    file.read_at(&mut body, start + HEADER as u64).map_err(io())?;
                    parse_body(&header, &body)
                }
                Err(SlotState::Empty) => Slot::Empty,
                Err(SlotState::Corrupt) => Slot::Corrupt,
            };
        }
        Ok(slots)
    }

    /// The newest valid slot: (slot, sequence, version, payload).
    fn newest(&self) -> Result<Option<Newest>, Error> {
        let Some(file) = &self.file else { return Ok(None) };
        let slots = self.read_slots(file.as_ref())?;
        let mut best: Option<Newest> = None;
        let mut states = [SlotState::Empty; 2];
        for (s, slot) in slots.into_iter().enumerate() {
            match slot {
                Slot::Empty => {}
                Slot::Corrupt => states[s] = SlotState::Corrupt,
                Slot::Valid {
                    version,
                    kind,
                    seq,
                    payload,
                } => {
                    if kind != self.kind as u32 {
                        return Err(Error::WrongKind {
                            path: self.path.clone(),
                            found: kind,
                            expected: self.kind as u32,
                        });
                    }
                    if version != self.version {
                        return Err(Error::UnknownVersion {
                            path: self.path.clone(),
                            found: version,
                            known: self.version,
                        });
                    }
                    if best.as_ref().is_none_or(|b| seq > b.seq) {
                        best = Some(Newest {
                            slot: s as u64,
                            seq,
                            payload,
                        });
                    }
                }
            }
        }
        match best {
            Some(b) => Ok(Some(b)),
            None => Err(Error::NoValidRecord {
                path: self.path.clone(),
                a: states[0],
                b: states[1],
            }),
        }
    }

    /// The newest record's payload; `None` if none was ever written.
    pub(crate) fn read(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.newest()?.map(|n| n.payload))
    }

    /// Write `payload` as the newest record, durable on return.
    pub(crate) fn write(&mut self, fs: &dyn Backend, payload: &[u8]) -> Result<(), Error> {
        let rec = encode(self.kind, self.version, self.next_seq, payload);
        if rec.len() as u64 > self.slot_bytes {
            return Err(Error::RecordTooLarge {
                path: self.path.clone(),
                len: payload.len() as u64,
                capacity: self.capacity(),
            });
        }
        match &self.file {
            Some(file) => {
                let at = self.next_slot * self.slot_bytes;
                file.write_at(&rec, at)
                    .map_err(Error::io("write record slot", &self.path))?;
                file.sync().map_err(Error::io("sync record file", &self.path))?;
            }
            None => {
                let mut tmp = self.path.clone().into_os_string();
                tmp.push(".tmp");
                let tmp = PathBuf::from(tmp);
                let file = fs.create(&tmp).map_err(Error::io("create record file", &tmp))?;
                file.write_at(&rec, 0).map_err(Error::io("write record slot", &tmp))?;
                file.sync().map_err(Error::io("sync record file", &tmp))?;
                fs.rename(&tmp, &self.path)
                    .map_err(Error::io("move record file into place", &self.path))?;
                let dir = self.path.parent().unwrap_or(Path::new("."));
                fs.sync_dir(dir).map_err(Error::io("sync directory", dir))?;
                self.file = Some(file);
                self.next_slot = 0;
            }
        }
        self.next_slot = 1 - self.next_slot;
        self.next_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::crash::CrashingBackend;
    use super::*;

    fn slots(fs: &CrashingBackend) -> Slots {
        Slots::open(fs, PathBuf::from("/rec"), Kind::Decisions, 1, 4096).expect("open")
    }

    #[test]
    fn records_alternate_and_the_newest_wins() {
        let fs = CrashingBackend::new();
        let mut s = slots(&fs);
        assert_eq!(s.read().expect("read"), None);
        for i in 0..5u8 {
            s.write(&fs, &[i; 10]).expect("write");
            assert_eq!(s.read().expect("read"), Some(vec![i; 10]));
            // A fresh reader agrees.
            assert_eq!(slots(&fs).read().expect("read"), Some(vec![i; 10]));
        }
        assert_eq!(s.next_slot, 1, "five writes: A B A B A");
    }

    #[test]
    fn a_torn_newer_slot_falls_back_to_the_older_one() {
        let fs = CrashingBackend::new();
        let mut s = slots(&fs);
        s.write(&fs, b"one").expect("write");
        s.write(&fs, b"two").expect("write");
        let f = fs.open(Path::new("/rec")).expect("open");
        // Flip one byte of slot B's payload.
        f.write_at(b"X", 4096 + HEADER as u64).expect("corrupt");
        assert_eq!(slots(&fs).read().expect("read"), Some(b"one".to_vec()));
        // The next write goes to B again, never over the only valid copy.
        let mut s = slots(&fs);
        s.write(&fs, b"three").expect("write");
        assert_eq!(slots(&fs).read().expect("read"), Some(b"three".to_vec()));
        let mut a = vec![0u8; HEADER + 3 + 4];
        f.read_at(&mut a, 0).expect("read");
        assert!(matches!(parse(&a), Slot::Valid { ref payload, .. } if payload == b"one"));
    }

    #[test]
    fn both_slots_corrupt_is_an_error_naming_the_file() {
        let fs = CrashingBackend::new();
        let mut s = slots(&fs);
        s.write(&fs, b"one").expect("write");
        s.write(&fs, b"two").expect("write");
        let f = fs.open(Path::new("/rec")).expect("open");
        f.write_at(&[0xAA], 20).expect("corrupt A");
        f.write_at(&[0xAA], 4096 + 20).expect("corrupt B");
        let err = slots(&fs).read().expect_err("corrupt");
        assert!(matches!(err, Error::NoValidRecord { .. }), "{err}");
        assert!(err.to_string().contains("/rec"));
    }

    #[test]
    fn unknown_versions_and_kinds_are_errors_not_fallbacks() {
        let fs = CrashingBackend::new();
        let mut s = slots(&fs);
        s.write(&fs, b"v1").expect("write");
        let f = fs.open(Path::new("/rec")).expect("open");
        f.write_at(&encode(Kind::Decisions, 2, 9, b"v2"), 4096)
            .expect("newer format");
        let err = slots(&fs).read().expect_err("v2");
        assert!(matches!(err, Error::UnknownVersion { found: 2, known: 1, .. }), "{err}");
        let other = Slots::open(&fs, PathBuf::from("/rec"), Kind::VolumeMeta, 2, 4096).expect("open");
        let err = other.read().expect_err("kind");
        assert!(matches!(err, Error::WrongKind { .. }), "{err}");
    }

    #[test]
    fn an_oversized_record_is_refused() {
        let fs = CrashingBackend::new();
        let mut s = slots(&fs);
        let err = s.write(&fs, &vec![1; 5000]).expect_err("too large");
        assert!(matches!(err, Error::RecordTooLarge { .. }));
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics() {
        let good = encode(Kind::Layout, 1, 3, b"payload");
        let mut x = 0x1234_5678_u64;
        for n in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = good.clone();
            bytes.truncate((x as usize) % (good.len() + 1));
            if n % 2 == 0 && !bytes.is_empty() {
                let i = (x >> 20) as usize % bytes.len();
                bytes[i] ^= (x >> 40) as u8 | 1;
            }
            if let Slot::Valid { payload, .. } = parse(&bytes) {
                assert_eq!(payload, b"payload", "only the intact record may parse");
            }
            let random: Vec<u8> = (0..(x % 64)).map(|i| (x >> (i % 56)) as u8).collect();
            let _ = parse(&random);
        }
    }
}
