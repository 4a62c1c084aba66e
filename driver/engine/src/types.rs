//! Strict domain types shared by every state machine of the engine.

/// Index of a tracking block within a volume.
pub type BlockIndex = u64;

/// A freeze point of a replication group, numbered by the controller.
///
/// Group epochs increase strictly; one may be skipped when its freeze aborts.
pub type GroupEpoch = u64;

/// A volume's own epoch counter: the stream of blocks between two seals.
///
/// Local epochs are persisted before a seal goes out, so a restarted primary
/// never reuses the number of an epoch the DR site may have staged.
pub type LocalEpoch = u64;

/// Replication mode of a group, one per embodiment of the patent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Third embodiment: dirty blocks stream all the time; at a freeze the
    /// still-unstaged blocks of the closing epoch are preserved by copy-on-write.
    Continuous,
    /// First embodiment: during the freeze window writes to blocks of the
    /// closing epoch are redirected into a freeze log that reads consult and
    /// that is merged back once the DR holds the epoch.
    Log,
    /// Second embodiment: nothing streams between freezes; at a freeze the
    /// changed blocks are split off (copy-on-write) and shipped once.
    Interval,
}

impl Mode {
    /// Every mode, for tests and matrices.
    pub const ALL: [Mode; 3] = [Mode::Continuous, Mode::Log, Mode::Interval];

    /// Whether blocks of the open epoch are shipped before its freeze.
    pub fn streams_open_epoch(self) -> bool {
        !matches!(self, Mode::Interval)
    }

    /// Stable lowercase name, as used in CRDs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Continuous => "continuous",
            Mode::Log => "log",
            Mode::Interval => "interval",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "continuous" => Ok(Mode::Continuous),
            "log" => Ok(Mode::Log),
            "interval" => Ok(Mode::Interval),
            other => Err(ConfigError::UnknownMode(other.to_owned())),
        }
    }
}

/// Role generation: bumped by every promotion, ordered by counter then site.
///
/// Two sites never share a site id, so two promotions never yield equal
/// generations; a site refuses frames and commands from an older generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RoleGeneration {
    /// Number of promotions so far.
    pub counter: u64,
    /// Id of the site that made the promotion.
    pub site: u64,
}

impl RoleGeneration {
    /// The generation a promotion by `site` produces from this one.
    pub fn promoted_by(self, site: u64) -> RoleGeneration {
        RoleGeneration {
            counter: self.counter + 1,
            site,
        }
    }
}

/// Per-volume send sequence: later shipments of a block always compare greater.
///
/// Monotonic across restarts (the incarnation is persisted and bumped at each
/// start) and across promotions (the generation counter leads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SendSeq {
    /// Role generation counter of the sender.
    pub generation: u64,
    /// Sender incarnation (bumped on every restart).
    pub incarnation: u64,
    /// Counter within the incarnation.
    pub counter: u64,
}

/// Geometry of a volume: tracking block size, block count and write-intent region size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    block_size: usize,
    blocks: u64,
    region_blocks: u64,
}

/// Largest tracking block the engine accepts.
pub const MAX_BLOCK_SIZE: usize = 1 << 20;

impl Geometry {
    /// Validate a geometry: block size a power of two up to 1 MiB (the driver
    /// further requires at least 4 KiB; tests use tiny blocks), region size a
    /// power of two number of blocks.
    pub fn new(block_size: usize, blocks: u64, region_blocks: u64) -> Result<Self, ConfigError> {
        if !block_size.is_power_of_two() || block_size > MAX_BLOCK_SIZE {
            return Err(ConfigError::BlockSize(block_size));
        }
        if blocks == 0 {
            return Err(ConfigError::EmptyVolume);
        }
        if !region_blocks.is_power_of_two() {
            return Err(ConfigError::RegionSize(region_blocks));
        }
        Ok(Geometry {
            block_size,
            blocks,
            region_blocks,
        })
    }

    /// Tracking block size in bytes.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of tracking blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Volume size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }

    /// Blocks per write-intent region.
    pub fn region_blocks(&self) -> u64 {
        self.region_blocks
    }

    /// Number of write-intent regions.
    pub fn regions(&self) -> u64 {
        self.blocks.div_ceil(self.region_blocks)
    }

    /// Region holding block `b`.
    pub fn region_of(&self, b: BlockIndex) -> u64 {
        b / self.region_blocks
    }

    /// Blocks of region `r`.
    pub fn region_range(&self, r: u64) -> std::ops::Range<BlockIndex> {
        let start = r * self.region_blocks;
        start..(start + self.region_blocks).min(self.blocks)
    }
}

/// Content hash of a block, as carried in seal manifests and resync offers.
pub type BlockHash = [u8; 32];

/// Hash a block's content.
pub fn hash_block(data: &[u8]) -> BlockHash {
    *blake3::hash(data).as_bytes()
}

/// One entry of a seal manifest: the last version of a block in the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Block index.
    pub index: BlockIndex,
    /// Send sequence of the version that belongs to the epoch.
    pub seq: SendSeq,
    /// Hash of that version's content.
    pub hash: BlockHash,
}

/// A configuration the engine refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Block size not a power of two or above 1 MiB.
    #[error("block size {0} must be a power of two of at most 1 MiB")]
    BlockSize(usize),
    /// A volume of zero blocks.
    #[error("a volume needs at least one block")]
    EmptyVolume,
    /// Region size not a power of two.
    #[error("write-intent region of {0} blocks must be a power of two")]
    RegionSize(u64),
    /// Mode name not known.
    #[error("unknown replication mode {0:?}: expected continuous, log or interval")]
    UnknownMode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_seq_orders_generation_then_incarnation_then_counter() {
        let a = SendSeq {
            generation: 1,
            incarnation: 9,
            counter: 9,
        };
        let b = SendSeq {
            generation: 2,
            incarnation: 0,
            counter: 0,
        };
        let c = SendSeq {
            generation: 2,
            incarnation: 0,
            counter: 1,
        };
        assert!(a < b && b < c);
    }

    #[test]
    fn promotion_always_yields_a_newer_generation() {
        let g = RoleGeneration { counter: 3, site: 9 };
        assert!(g.promoted_by(1) > g);
        assert_ne!(g.promoted_by(1), g.promoted_by(2));
    }

    #[test]
    fn geometry_rejects_bad_shapes() {
        assert!(Geometry::new(3, 10, 4).is_err());
        assert!(Geometry::new(2 << 20, 10, 4).is_err());
        assert!(Geometry::new(4096, 0, 4).is_err());
        assert!(Geometry::new(4096, 10, 3).is_err());
        let g = Geometry::new(4096, 10, 4).expect("valid");
        assert_eq!(g.regions(), 3);
        assert_eq!(g.region_range(2), 8..10);
        assert_eq!(g.region_of(9), 2);
    }

    #[test]
    fn mode_names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().expect("known"), m);
        }
        assert!("sync".parse::<Mode>().is_err());
    }
}
