//! `<data-dir>/replication/pairings.json`: the groups this node is paired
//! in, so a restarted data plane resumes every stream and every DR group.
//! Written whole and durably (temporary file, fsync, rename) at each pair.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use floe_engine::{Geometry, Mode, RoleGeneration};
use serde::{Deserialize, Serialize};

use crate::node::plane::files;

/// Which side of its group this node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The volumes are this node's CSI volumes; they stream to the DR.
    Primary,
    /// Replicas of the primary's volumes live here, with the group's
    /// coordinator.
    Dr,
}

/// One member of a group, as paired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The volume id (the primary's CSI volume id; the DR's replica has the
    /// same name).
    pub volume: String,
    /// Tracking block size.
    pub block_size: u64,
    /// Blocks of the store.
    pub blocks: u64,
    /// Blocks per write-intent region.
    pub region_blocks: u64,
    /// Replication mode.
    pub mode: String,
    /// The volume's size in bytes (0: not known, pairings written before).
    #[serde(default)]
    pub size_bytes: u64,
    /// Its file system (`ext4`, `xfs`; empty: not known).
    #[serde(default)]
    pub fs_type: String,
}

impl MemberRecord {
    /// The member's geometry and mode, checked.
    pub fn shape(&self) -> Result<(Geometry, Mode), String> {
        let bs = usize::try_from(self.block_size).map_err(|_| format!("block size {}", self.block_size))?;
        let geo = Geometry::new(bs, self.blocks, self.region_blocks).map_err(|e| e.to_string())?;
        let mode = self.mode.parse::<Mode>().map_err(|e| e.to_string())?;
        Ok((geo, mode))
    }
}

/// A group this node is paired in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// This node's side.
    pub side: Side,
    /// Members in member order.
    pub members: Vec<MemberRecord>,
    /// The primary's role generation: counter, then site.
    pub generation: (u64, u64),
    /// Primary: where the DR node's replication listener is (none on a
    /// promoted DR until it fails back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    /// DR: a promotion under way by this site id (finished at the next
    /// start if the process dies in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoting: Option<u64>,
    /// DR: the retained point the promotion under way goes back to (none:
    /// the last committed epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoting_point: Option<u64>,
    /// The group epoch the promotion brought every member to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<u64>,
    /// The committed epochs kept, while this node is the group's DR,
    /// besides the last one (K).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retained_points: u32,
    /// Primary: a demotion under way (finished at the next start if the
    /// process dies in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demoting: Option<Demoting>,
    /// DR, a group spanning the site's nodes: the coordinator listener of
    /// the node running the group's coordinator (none: this node runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// DR: the members whose replicas this node holds, ascending (empty:
    /// every member).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosted: Vec<u32>,
    /// Primary: the DR listener of each member that does not stream to
    /// `peer_address`, by volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_peers: BTreeMap<String, String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A demotion under way: to whom, and whether the strays are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demoting {
    /// The new primary's generation: counter, then site.
    pub generation: (u64, u64),
    /// Drop the writes after the last committed epoch instead of keeping
    /// them as a snapshot.
    pub discard_strays: bool,
}

impl GroupRecord {
    /// Whether this node holds member `m` (a DR node may hold some only).
    pub fn hosts(&self, m: u32) -> bool {
        self.hosted.is_empty() || self.hosted.contains(&m)
    }

    /// Whether the group's replicas span nodes of this site.
    pub fn spans_nodes(&self) -> bool {
        self.coordinator.is_some() || !self.hosted.is_empty()
    }

    /// The primary's role generation.
    pub fn generation(&self) -> RoleGeneration {
        RoleGeneration {
            counter: self.generation.0,
            site: self.generation.1,
        }
    }
}

/// Every group, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairings {
    /// The groups.
    pub groups: BTreeMap<String, GroupRecord>,
}

/// Where the pairings live under `dir` (`<data-dir>/replication`).
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join("pairings.json")
}

impl Pairings {
    /// The pairings under `dir`, none if the file is absent.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        Ok(files::read_json(&path_in(dir))?.unwrap_or_default())
    }

    /// Writes the pairings under `dir`, durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        files::write_json(&path_in(dir), self)
    }

    /// The group and member of `volume` on this node, if paired.
    pub fn member_of(&self, volume: &str) -> Option<(&str, &GroupRecord, u32)> {
        self.groups.iter().find_map(|(name, g)| {
            g.members
                .iter()
                .position(|m| m.volume == volume)
                .map(|i| (name.as_str(), g, i as u32))
                .filter(|&(_, g, i)| g.hosts(i))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(v: &str) -> MemberRecord {
        MemberRecord {
            volume: v.into(),
            block_size: 4096,
            blocks: 256,
            region_blocks: 16,
            mode: "log".into(),
            size_bytes: 1 << 20,
            fs_type: "ext4".into(),
        }
    }

    #[test]
    fn pairings_survive_a_save_and_find_their_members() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            Pairings::load(dir.path()).expect("absent is empty"),
            Pairings::default()
        );
        let mut p = Pairings::default();
        p.groups.insert(
            "orders".into(),
            GroupRecord {
                side: Side::Dr,
                members: vec![member("pvc-0"), member("pvc-1")],
                generation: (3, 2),
                peer_address: None,
                promoting: Some(2),
                promoting_point: Some(3),
                promoted_at: None,
                retained_points: 4,
                demoting: None,
                coordinator: None,
                hosted: Vec::new(),
                member_peers: BTreeMap::new(),
            },
        );
        p.save(dir.path()).expect("save");
        let back = Pairings::load(dir.path()).expect("load");
        assert_eq!(back, p);
        let (group, g, m) = back.member_of("pvc-1").expect("paired");
        assert_eq!((group, m), ("orders", 1));
        assert_eq!(g.generation(), RoleGeneration { counter: 3, site: 2 });
        assert!(back.member_of("pvc-9").is_none());
        let (geo, mode) = g.members[0].shape().expect("valid");
        assert_eq!((geo.block_size(), geo.blocks(), mode), (4096, 256, Mode::Log));
    }

    #[test]
    fn a_record_written_before_size_and_promotion_fields_still_reads() {
        let old = r#"{"groups":{"g":{"side":"primary","members":[{"volume":"v","block_size":4096,"blocks":8,"region_blocks":8,"mode":"continuous"}],"generation":[0,1],"peer_address":"198.18.2.1:7443"}}}"#;
        let p: Pairings = serde_json::from_str(old).expect("parses");
        let g = &p.groups["g"];
        assert_eq!((g.members[0].size_bytes, g.promoting, g.promoted_at), (0, None, None));
        assert_eq!(g.demoting, None);
        let mut bad = member("v");
        bad.block_size = 3000;
        assert!(bad.shape().is_err());
    }
}
