//! The node's catalog of CSI objects: volumes, snapshots, group snapshots.
//!
//! One JSON file, `<data_dir>/csi/catalog.json`, rewritten whole on every
//! change: a temporary file is written and fsynced, renamed over the old one,
//! and the directory fsynced, so after a crash the file is either the old
//! catalog or the new one, never a mix. Multi-step operations write a
//! `Creating` record before their first side effect and the final record
//! after their last, so a restart can tell a finished object from one to
//! clean up (`LocalVolumes::open` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::plane::files;
use super::volumes::{GroupSnapshot, Snapshot, Volume};

/// Format version of the catalog file.
pub const CATALOG_VERSION: u32 = 1;

/// Whether a multi-step operation finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Started, not finished: cleaned up at start, redone on retry.
    Creating,
    /// Done.
    Ready,
}

/// A volume as the catalog keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// What the services see.
    pub volume: Volume,
    /// Name of the store under `<data_dir>/volumes/` (changes when an
    /// offline expansion copies the volume into a larger store).
    pub store: String,
    /// Bytes the store's geometry holds: the volume grows online up to this.
    pub reserve_bytes: u64,
    /// Finished or not.
    pub state: State,
}

/// A group snapshot as the catalog keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// What the services see (snapshots filled in from the catalog).
    pub group: GroupSnapshot,
    /// Finished or not.
    pub state: State,
}

/// Everything the catalog holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version.
    pub version: u32,
    /// Volumes by id.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Snapshots by id (ready ones only: a snapshot is recorded after its
    /// file is durable).
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Group snapshots by id.
    pub groups: BTreeMap<String, GroupRecord>,
}

/// The catalog file.
#[derive(Debug)]
pub struct CatalogFile {
    path: PathBuf,
}

impl CatalogFile {
    /// The catalog in `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("create the catalog directory", dir))?;
        Ok(CatalogFile {
            path: dir.join("catalog.json"),
        })
    }

    /// Reads the catalog; an absent file is an empty catalog.
    pub fn load(&self) -> Result<Catalog> {
        let Some(catalog) =
            files::read_json::<Catalog>(&self.path).map_err(Error::io("read the catalog", &self.path))?
        else {
            return Ok(Catalog {
                version: CATALOG_VERSION,
                ..Catalog::default()
            });
        };
        if catalog.version != CATALOG_VERSION {
            return Err(Error::io("read the catalog", &self.path)(std::io::Error::other(
                format!(
                    "format version {} is not the {CATALOG_VERSION} this build reads",
                    catalog.version
                ),
            )));
        }
        Ok(catalog)
    }

    /// Replaces the catalog atomically and durably ([`files::write_json`]).
    pub fn save(&self, catalog: &Catalog) -> Result<()> {
        files::write_json(&self.path, catalog).map_err(Error::io("write the catalog", &self.path))
    }
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    files::sync_dir(dir).map_err(Error::io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::volumes::Source;

    fn volume(id: &str) -> Volume {
        Volume {
            id: id.into(),
            name: id.into(),
            size_bytes: 1 << 20,
            params: Default::default(),
            source: Some(Source::Snapshot("s".into())),
            attachment: None,
        }
    }

    #[test]
    fn a_saved_catalog_loads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::Builder::new()
            .prefix("floe-catalog")
            .tempdir()
            .expect("tempdir");
        let file = CatalogFile::new(dir.path()).expect("catalog");
        assert_eq!(file.load().expect("empty").volumes.len(), 0);
        let mut c = file.load().expect("empty");
        c.volumes.insert(
            "v".into(),
            VolumeRecord {
                volume: volume("v"),
                store: "v".into(),
                reserve_bytes: 2 << 20,
                state: State::Creating,
            },
        );
        file.save(&c).expect("save");
        assert_eq!(file.load().expect("load"), c);
        assert!(!dir.path().join(".catalog.json.tmp").exists());
    }

    #[test]
    fn a_catalog_of_another_version_is_refused() {
        let dir = tempfile::Builder::new()
            .prefix("floe-catalog")
            .tempdir()
            .expect("tempdir");
        std::fs::write(
            dir.path().join("catalog.json"),
            br#"{"version":99,"volumes":{},"snapshots":{},"groups":{}}"#,
        )
        .expect("write");
        assert!(CatalogFile::new(dir.path()).expect("catalog").load().is_err());
    }
}
