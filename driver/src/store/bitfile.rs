//! An on-disk bitmap held in memory: one bit per block (side and staging
//! indexes) or per region (write-intent). Setting a bit touches memory only
//! and marks its 4 KiB page dirty; [`BitFile::persist`] writes the dirty
//! pages with `pwrite` and fsyncs.

use std::collections::BTreeSet;
use std::io;

use super::backend::BackendFile;

/// Bytes per page written back.
pub(crate) const PAGE: usize = 4096;

#[derive(Debug)]
pub(crate) struct BitFile {
    file: Box<dyn BackendFile>,
    bits: Vec<u8>,
    nbits: u64,
    dirty: BTreeSet<usize>,
}

/// Length in bytes of a bitmap of `nbits` bits.
pub(crate) fn bytes_for(nbits: u64) -> u64 {
    nbits.div_ceil(8)
}

impl BitFile {
    /// A bitmap of `nbits` clear bits over `file`, which holds zeroes.
    pub(crate) fn new(file: Box<dyn BackendFile>, nbits: u64) -> Self {
        BitFile {
            file,
            bits: vec![0; bytes_for(nbits) as usize],
            nbits,
            dirty: BTreeSet::new(),
        }
    }

    /// Read the bitmap; a short file reads as clear bits (an interrupted
    /// truncation), bits past `nbits` are ignored.
    pub(crate) fn load(file: Box<dyn BackendFile>, nbits: u64) -> io::Result<Self> {
        let mut me = BitFile::new(file, nbits);
        me.file.read_at(&mut me.bits, 0)?;
        let tail = nbits % 8;
        if tail != 0 {
            if let Some(last) = me.bits.last_mut() {
                *last &= (1u8 << tail) - 1;
            }
        }
        Ok(me)
    }

    pub(crate) fn file(&self) -> &dyn BackendFile {
        self.file.as_ref()
    }

    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.nbits && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Set or clear bit `i` (< `nbits`) in memory; its page becomes dirty if it changed.
    pub(crate) fn set(&mut self, i: u64, on: bool) {
        debug_assert!(i < self.nbits, "bit {i} of {}", self.nbits);
        let (byte, mask) = ((i / 8) as usize, 1u8 << (i % 8));
        let old = self.bits[byte];
        let new = if on { old | mask } else { old & !mask };
        if new != old {
            self.bits[byte] = new;
            self.dirty.insert(byte / PAGE);
        }
    }

    /// Indexes of the set bits, ascending.
    pub(crate) fn ones(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, &byte) in self.bits.iter().enumerate() {
            if byte != 0 {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        out.push(i as u64 * 8 + bit);
                    }
                }
            }
        }
        out
    }

    pub(crate) fn any(&self) -> bool {
        self.bits.iter().any(|&b| b != 0)
    }

    /// Clear every bit in memory without marking pages dirty: the caller
    /// makes the file all zeroes.
    pub(crate) fn forget_all(&mut self) {
        self.bits.fill(0);
        self.dirty.clear();
    }

    /// Write the dirty pages and fsync; `true` if anything was written.
    pub(crate) fn persist(&mut self) -> io::Result<bool> {
        if self.dirty.is_empty() {
            return Ok(false);
        }
        for &page in &self.dirty {
            let start = page * PAGE;
            let end = (start + PAGE).min(self.bits.len());
            self.file.write_at(&self.bits[start..end], start as u64)?;
        }
        self.file.sync()?;
        self.dirty.clear();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::backend::Backend;
    use super::super::crash::CrashingBackend;
    use super::*;

    #[test]
    fn only_dirty_pages_are_written_and_bits_reload() {
        let fs = CrashingBackend::new();
        let nbits = 3 * PAGE as u64 * 8 + 5;
        let f = fs.create(Path::new("/bits")).expect("create");
        f.set_len(bytes_for(nbits)).expect("size");
        let mut b = BitFile::new(f, nbits);
        assert!(!b.persist().expect("persist"), "nothing dirty");
        b.set(0, true);
        b.set(nbits - 1, true);
        b.set(7, true);
        b.set(7, false);
        let before = fs.ops();
        assert!(b.persist().expect("persist"));
        // Two pages written, one fsync.
        assert_eq!(fs.ops() - before, 3);
        let again = BitFile::load(fs.open(Path::new("/bits")).expect("open"), nbits).expect("load");
        assert_eq!(again.ones(), vec![0, nbits - 1]);
        assert!(again.get(0) && !again.get(7) && !again.get(nbits) && again.any());
    }

    #[test]
    fn a_short_file_loads_as_clear_bits_and_stray_high_bits_are_ignored() {
        let fs = CrashingBackend::new();
        let f = fs.create(Path::new("/bits")).expect("create");
        f.write_at(&[0xff], 0).expect("write");
        let b = BitFile::load(f, 20).expect("load");
        assert_eq!(b.ones(), (0..8).collect::<Vec<_>>());
        let f = fs.create(Path::new("/odd")).expect("create");
        f.write_at(&[0xff, 0xff], 0).expect("write");
        assert_eq!(BitFile::load(f, 11).expect("load").ones().len(), 11);
    }
}
