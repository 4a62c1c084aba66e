//! What a volume is made with: the StorageClass parameters, parsed once
//! into [`VolumeParams`] by whoever receives them (the CSI controller, or
//! the node from the volume context it wrote).

use std::collections::HashMap;

use floe_engine::Mode;

use super::error::{Error, Result};
use crate::dataplane::mount::FsType;
use crate::model::BlockSize;

/// StorageClass parameter: file system of a mount volume (ext4 or xfs).
pub const PARAM_FS_TYPE: &str = "fsType";
/// StorageClass parameter: the engine's tracking block size in bytes.
pub const PARAM_BLOCK_SIZE: &str = "blockSize";
/// StorageClass parameter: replication mode (continuous, log or interval).
pub const PARAM_REPLICATION_MODE: &str = "replicationMode";
const ACCEPTED: &str = "floe.csi.dev takes fsType (ext4|xfs), blockSize (a power of two from 4096 to 1048576) and replicationMode (continuous|log|interval)";

/// Smallest tracking block.
pub const MIN_BLOCK_SIZE: u64 = BlockSize::MIN;
/// Largest tracking block.
pub const MAX_BLOCK_SIZE: u64 = BlockSize::MAX;

/// What a volume is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "HashMap<String, String>", into = "HashMap<String, String>")]
pub struct VolumeParams {
    /// File system made on first stage of a mount volume.
    pub fs_type: FsType,
    /// Tracking block size; the capacity is a multiple of it.
    pub block_size: u64,
    /// Replication mode of the engine.
    pub mode: Mode,
}

impl Default for VolumeParams {
    fn default() -> Self {
        VolumeParams {
            fs_type: FsType::Ext4,
            block_size: MIN_BLOCK_SIZE,
            mode: Mode::Continuous,
        }
    }
}

impl VolumeParams {
    /// Parses StorageClass parameters; unknown keys are refused.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self> {
        let mut out = VolumeParams::default();
        for (key, value) in params {
            match key.as_str() {
                PARAM_FS_TYPE => out.fs_type = parse_fs_type(PARAM_FS_TYPE, value)?,
                PARAM_BLOCK_SIZE => out.block_size = parse_block_size(value)?,
                PARAM_REPLICATION_MODE => {
                    out.mode = value.parse().map_err(|_| Error::Invalid {
                        field: PARAM_REPLICATION_MODE,
                        value: value.clone(),
                        expected: "continuous, log or interval".into(),
                    })?
                }
                _ => {
                    return Err(Error::UnknownParameter {
                        key: key.clone(),
                        accepted: ACCEPTED,
                    })
                }
            }
        }
        Ok(out)
    }

    /// The parameters as the volume context (what NodeStage reads back).
    pub fn context(&self) -> HashMap<String, String> {
        HashMap::from([
            (PARAM_FS_TYPE.to_owned(), self.fs_type.name().to_owned()),
            (PARAM_BLOCK_SIZE.to_owned(), self.block_size.to_string()),
            (PARAM_REPLICATION_MODE.to_owned(), self.mode.name().to_owned()),
        ])
    }
}

impl TryFrom<HashMap<String, String>> for VolumeParams {
    type Error = Error;
    fn try_from(map: HashMap<String, String>) -> Result<Self> {
        VolumeParams::parse(&map)
    }
}

impl From<VolumeParams> for HashMap<String, String> {
    fn from(p: VolumeParams) -> Self {
        p.context()
    }
}

/// Parses a file system name given in `field`.
pub fn parse_fs_type(field: &'static str, value: &str) -> Result<FsType> {
    FsType::parse(value).ok_or_else(|| Error::Invalid {
        field,
        value: value.to_owned(),
        expected: "ext4 or xfs".into(),
    })
}

fn parse_block_size(value: &str) -> Result<u64> {
    let bad = || Error::Invalid {
        field: PARAM_BLOCK_SIZE,
        value: value.to_owned(),
        expected: format!("a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} bytes, e.g. 4096"),
    };
    let n: u64 = value.trim().parse().map_err(|_| bad())?;
    Ok(BlockSize::new(n).ok_or_else(bad)?.get())
}
