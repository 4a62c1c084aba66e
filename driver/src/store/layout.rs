//! Where a volume's files live and the layout record that says what shape
//! they have.
//!
//! ```text
//! <data_dir>/volumes/<volume-id>/
//!     layout              geometry and metadata slot size (A/B record, written once)
//!     meta                the VolumeMeta record (A/B slots)
//!     image               the live volume / consistent image (sparse, blocks * block_size)
//!     side, side.map      copy-on-write / freeze-log blocks and their bitmap
//!     intent              write-intent bitmap, one bit per region
//!     stage/<epoch>.data  staged blocks of a local epoch (sparse, at b * block_size)
//!     stage/<epoch>.map   which blocks of it are staged
//!     snapshots/<name>.img point-in-time copies of the image
//!     snapshots/.<name>.img.part, .<name>.progress   a snapshot being copied, and how far
//! <data_dir>/groups/<group>/decisions   the group coordinator's record (A/B slots)
//! ```
//!
//! The layout record is written last when a volume is created: a directory
//! without it is a creation that did not finish.

use std::path::{Path, PathBuf};

use floe_engine::Geometry;

use super::codec::{DecodeError, Reader, Writer};
use super::error::Error;
use super::meta;

/// Format version of the layout record.
pub(crate) const LAYOUT_VERSION: u32 = 1;

/// Paths of one volume's files.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub(crate) dir: PathBuf,
    pub(crate) layout: PathBuf,
    pub(crate) meta: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) side: PathBuf,
    pub(crate) side_map: PathBuf,
    pub(crate) intent: PathBuf,
    pub(crate) stage: PathBuf,
    pub(crate) undo: PathBuf,
    pub(crate) snapshots: PathBuf,
}

impl Paths {
    pub(crate) fn new(data_dir: &Path, volume: &str) -> Paths {
        let dir = data_dir.join("volumes").join(volume);
        Paths {
            layout: dir.join("layout"),
            meta: dir.join("meta"),
            image: dir.join("image"),
            side: dir.join("side"),
            side_map: dir.join("side.map"),
            intent: dir.join("intent"),
            stage: dir.join("stage"),
            undo: dir.join("undo"),
            snapshots: dir.join("snapshots"),
            dir,
        }
    }

    pub(crate) fn snapshot(&self, name: &str) -> PathBuf {
        self.snapshots.join(format!("{name}.img"))
    }

    pub(crate) fn snapshot_tmp(&self, name: &str) -> PathBuf {
        self.snapshots.join(format!(".{name}.img.tmp"))
    }

    pub(crate) fn snapshot_part(&self, name: &str) -> PathBuf {
        self.snapshots.join(super::snapshots::part_name(name))
    }

    pub(crate) fn snapshot_progress(&self, name: &str) -> PathBuf {
        self.snapshots.join(format!(".{name}.progress"))
    }
}

/// Path of a group's decision record.
pub(crate) fn decisions(data_dir: &Path, group: &str) -> PathBuf {
    data_dir.join("groups").join(group).join("decisions")
}

/// What the layout record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) geometry: Geometry,
    /// Size of each metadata slot, fixed at creation.
    pub(crate) meta_slot_bytes: u64,
}

impl Layout {
    /// The layout of a new volume: metadata slots big enough for the largest
    /// record this geometry allows (sparse: unused room costs nothing).
    pub(crate) fn for_geometry(geometry: Geometry) -> Layout {
        let need = meta::max_encoded_len(geometry.blocks()) + 64;
        Layout {
            geometry,
            meta_slot_bytes: need.div_ceil(64 << 10).max(1) * (64 << 10),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let g = self.geometry;
        let mut w = Writer::default();
        w.u64(g.block_size() as u64)
            .u64(g.blocks())
            .u64(g.region_blocks())
            .u64(self.meta_slot_bytes);
        w.finish()
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Layout, DecodeError> {
        let mut r = Reader::new(payload);
        let block_size = usize::try_from(r.u64()?).map_err(|_| DecodeError::Invalid("block size"))?;
        let blocks = r.u64()?;
        let region_blocks = r.u64()?;
        let meta_slot_bytes = r.u64()?;
        r.finish()?;
        let geometry =
            Geometry::new(block_size, blocks, region_blocks).map_err(|_| DecodeError::Invalid("geometry"))?;
        if blocks.checked_mul(block_size as u64).is_none() || meta_slot_bytes < 4096 {
            return Err(DecodeError::Invalid("geometry"));
        }
        Ok(Layout {
            geometry,
            meta_slot_bytes,
        })
    }

    /// Refuse files whose sizes disagree with the layout.
    pub(crate) fn check_image_len(&self, dir: &Path, len: u64) -> Result<(), Error> {
        let want = self.geometry.bytes();
        if len != want {
            return Err(Error::Layout {
                path: dir.to_owned(),
                what: format!("image is {len} bytes, the layout says {want}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_sizes_slots_for_the_largest_record() {
        let geo = Geometry::new(4096, 1000, 16).expect("geometry");
        let l = Layout::for_geometry(geo);
        assert_eq!(Layout::decode(&l.encode()), Ok(l));
        assert!(l.meta_slot_bytes >= meta::max_encoded_len(1000));
        assert_eq!(l.meta_slot_bytes % (64 << 10), 0);
    }

    #[test]
    fn a_layout_with_an_impossible_geometry_is_refused() {
        let geo = Geometry::new(4096, 10, 4).expect("geometry");
        let mut bytes = Layout::for_geometry(geo).encode();
        bytes[0] = 3; // block size 4099
        assert!(Layout::decode(&bytes).is_err());
        assert!(Layout::decode(&bytes[..8]).is_err());
    }

    #[test]
    fn paths_follow_the_documented_layout() {
        let p = Paths::new(Path::new("/var/lib/floe"), "pvc-1");
        assert_eq!(p.image, Path::new("/var/lib/floe/volumes/pvc-1/image"));
        assert_eq!(
            p.snapshot("s"),
            Path::new("/var/lib/floe/volumes/pvc-1/snapshots/s.img")
        );
        assert_eq!(decisions(Path::new("/d"), "g"), Path::new("/d/groups/g/decisions"));
    }
}
