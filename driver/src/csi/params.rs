//! Parsing at the edge: CSI request fields into strict domain types.
//!
//! Everything a request carries is validated here, once; the services and
//! [`crate::node::volumes::NodeVolumes`] only see the types below. Each refusal
//! says what to fix.

use std::collections::{BTreeMap, HashMap};

use floe_proto::csi;
use rustix::mount::MountFlags;

use crate::dataplane::mount::FsType;
use crate::node::error::{Error, Result};
pub use crate::node::params::{
    parse_fs_type, VolumeParams, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, PARAM_BLOCK_SIZE, PARAM_FS_TYPE,
    PARAM_REPLICATION_MODE,
};

/// Size of a volume whose request names no capacity.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// XFS refuses to make a file system smaller than this.
pub const XFS_MIN_BYTES: u64 = 300 << 20;
/// Longest name or id (the spec's 128).
pub const MAX_NAME: usize = 128;

/// Refuses any parameter (snapshots and group snapshots take none).
pub fn no_parameters(params: &HashMap<String, String>) -> Result<()> {
    match params.keys().next() {
        None => Ok(()),
        Some(key) => Err(Error::UnknownParameter {
            key: key.clone(),
            accepted: "snapshots of floe.csi.dev take no parameters",
        }),
    }
}

/// The size to provision for `range`: `required` (or the default) rounded
/// up to the block size, at least `floor`, and within `limit`.
pub fn capacity(range: Option<&csi::CapacityRange>, block_size: u64, floor: u64) -> Result<u64> {
    let (required, limit) = match range {
        None => (0, 0),
        Some(r) => (r.required_bytes, r.limit_bytes),
    };
    if required < 0 || limit < 0 {
        return Err(Error::Invalid {
            field: "capacity_range",
            value: format!("required_bytes={required}, limit_bytes={limit}"),
            expected: "byte counts of zero (unset) or more".into(),
        });
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && limit < required {
        return Err(Error::OutOfRange(format!(
            "capacity_range asks for at least {required} bytes but at most {limit}: make limit_bytes at least required_bytes"
        )));
    }
    let wanted = match (required, limit) {
        (0, 0) => DEFAULT_CAPACITY,
        (0, l) => DEFAULT_CAPACITY.min(l / block_size * block_size).max(block_size),
        (r, _) => r,
    }
    .max(floor);
    let size = wanted.div_ceil(block_size).saturating_mul(block_size);
    if limit > 0 && size > limit {
        return Err(Error::OutOfRange(format!(
            "{wanted} bytes rounded up to the {block_size}-byte block size is {size}, above limit_bytes {limit}: raise limit_bytes or use a smaller blockSize"
        )));
    }
    if size > i64::MAX as u64 {
        return Err(Error::OutOfRange(format!(
            "{size} bytes does not fit the CSI capacity field"
        )));
    }
    Ok(size)
}

/// Mount options of a capability: flags `mount(2)` takes, the rest as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags.
    pub flags: MountFlags,
    /// File-system specific options, comma-joined.
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MountFlags::empty(),
            data: Vec::new(),
        }
    }
}

impl MountOptions {
    /// Parses `mount_flags` entries (each may hold several, comma-separated).
    pub fn parse(entries: &[String]) -> Result<Self> {
        let mut out = MountOptions::default();
        for opt in entries.iter().flat_map(|e| e.split(',')).map(str::trim) {
            let flag = match opt {
                "" | "rw" | "defaults" => continue,
                "ro" => MountFlags::RDONLY,
                "noatime" => MountFlags::NOATIME,
                "nodiratime" => MountFlags::NODIRATIME,
                "relatime" => MountFlags::RELATIME,
                "strictatime" => MountFlags::STRICTATIME,
                "lazytime" => MountFlags::LAZYTIME,
                "nodev" => MountFlags::NODEV,
                "noexec" => MountFlags::NOEXEC,
                "nosuid" => MountFlags::NOSUID,
                "sync" => MountFlags::SYNCHRONOUS,
                "dirsync" => MountFlags::DIRSYNC,
                "bind" | "rbind" | "remount" | "move" | "loop" => {
                    return Err(Error::Invalid {
                        field: "mount_flags",
                        value: opt.to_owned(),
                        expected: "file-system options; the driver makes its own bind mounts".into(),
                    })
                }
                other => {
                    if fs_takes(FsType::Ext4, other)
                        .or_else(|| fs_takes(FsType::Xfs, other))
                        .is_none()
                    {
                        return Err(unknown_option(other, None));
                    }
                    out.data.push(other.to_owned());
                    continue;
                }
            };
            out.flags |= flag;
        }
        Ok(out)
    }

    /// Checks the file-system options against what `fs` takes: called
    /// before the volume is attached or formatted, so a bad option is
    /// INVALID_ARGUMENT and leaves nothing behind.
    pub fn check_for(&self, fs: FsType) -> Result<()> {
        match self.data.iter().find(|o| fs_takes(fs, o).is_none()) {
            None => Ok(()),
            Some(o) => Err(unknown_option(o, Some(fs))),
        }
    }

    /// The data string for `mount(2)` of file system `fs`. An xfs volume
    /// is always mounted with `nouuid`: a clone (a snapshot's restore, a
    /// DR rehearsal's clone, a promoted replica) carries the UUID of the
    /// file system it was copied from, and xfs refuses a second mount of
    /// one UUID on a kernel.
    pub fn data_string(&self, fs: FsType) -> String {
        let mut data = self.data.clone();
        if fs == FsType::Xfs && !data.iter().any(|o| o == "nouuid") {
            data.push("nouuid".into());
        }
        data.join(",")
    }
}

fn unknown_option(opt: &str, fs: Option<FsType>) -> Error {
    Error::Invalid {
        field: "mount_flags",
        value: opt.chars().take(64).collect(),
        expected: match fs {
            Some(fs) => format!(
                "a mount option {} takes (see its man page), or a generic one such as noatime",
                fs.name()
            ),
            None => "a generic mount option (noatime, nodev, ro, ...) or one ext4 or xfs takes".into(),
        },
    }
}

/// Options of ext4 (`ext4(5)`) floe passes on: flags, then `key=value`
/// options with the values each takes (`#` any decimal number, `#s` a
/// size with an optional k/m/g suffix).
const EXT4_OPTIONS: &[&str] = &[
    "acl",
    "noacl",
    "user_xattr",
    "nouser_xattr",
    "barrier",
    "nobarrier",
    "discard",
    "nodiscard",
    "delalloc",
    "nodelalloc",
    "auto_da_alloc",
    "noauto_da_alloc",
    "journal_checksum",
    "nojournal_checksum",
    "journal_async_commit",
    "noload",
    "norecovery",
    "init_itable",
    "noinit_itable",
    "dioread_lock",
    "dioread_nolock",
    "i_version",
    "nombcache",
    "block_validity",
    "noblock_validity",
    "grpid",
    "bsdgroups",
    "nogrpid",
    "sysvgroups",
    "quota",
    "noquota",
    "usrquota",
    "grpquota",
    "prjquota",
];
const EXT4_VALUES: &[(&str, &[&str])] = &[
    ("data", &["journal", "ordered", "writeback"]),
    ("errors", &["continue", "remount-ro", "panic"]),
    ("barrier", &["0", "1"]),
    ("commit", &["#"]),
    ("init_itable", &["#"]),
    ("stripe", &["#"]),
    ("max_batch_time", &["#"]),
    ("min_batch_time", &["#"]),
    ("journal_ioprio", &["#"]),
    ("inode_readahead_blks", &["#"]),
    ("resuid", &["#"]),
    ("resgid", &["#"]),
];
/// Options of xfs (`xfs(5)`) floe passes on.
const XFS_OPTIONS: &[&str] = &[
    "attr2",
    "noattr2",
    "discard",
    "nodiscard",
    "grpid",
    "bsdgroups",
    "nogrpid",
    "sysvgroups",
    "filestreams",
    "ikeep",
    "noikeep",
    "inode32",
    "inode64",
    "largeio",
    "nolargeio",
    "noalign",
    "norecovery",
    "nouuid",
    "noquota",
    "uquota",
    "usrquota",
    "uqnoenforce",
    "quota",
    "pquota",
    "prjquota",
    "pqnoenforce",
    "gquota",
    "grpquota",
    "gqnoenforce",
    "swalloc",
    "wsync",
];
const XFS_VALUES: &[(&str, &[&str])] = &[
    ("allocsize", &["#s"]),
    ("logbufs", &["#"]),
    ("logbsize", &["#s"]),
    ("sunit", &["#"]),
    ("swidth", &["#"]),
];

/// `Some(())` when `fs` takes the option `opt`.
fn fs_takes(fs: FsType, opt: &str) -> Option<()> {
    let (flags, values) = match fs {
        FsType::Ext4 => (EXT4_OPTIONS, EXT4_VALUES),
        FsType::Xfs => (XFS_OPTIONS, XFS_VALUES),
    };
    let Some((key, value)) = opt.split_once('=') else {
        return flags.contains(&opt).then_some(());
    };
    let (_, allowed) = values.iter().find(|(k, _)| *k == key)?;
    let number = |v: &str| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
    allowed
        .iter()
        .any(|a| match *a {
            "#" => number(value),
            "#s" => number(value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G'])),
            literal => literal == value,
        })
        .then_some(())
}

/// How a volume is consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A file system.
    Mount {
        /// Asked for by the capability; `None` means the volume's own.
        fs_type: Option<FsType>,
        /// Mount options.
        options: MountOptions,
    },
    /// The raw block device.
    Block,
}

/// A validated volume capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Mount or block.
    pub access: Access,
    /// The access mode allows no writer.
    pub reader_only: bool,
    /// The access mode allows one publication on the node
    /// (SINGLE_NODE_SINGLE_WRITER, Kubernetes' ReadWriteOncePod).
    pub single_publication: bool,
}

impl Capability {
    /// Parses one capability; volumes are node-local, so multi-node modes
    /// are refused.
    pub fn parse(cap: &csi::VolumeCapability) -> Result<Self> {
        use csi::volume_capability::access_mode::Mode as M;
        let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
        let single_publication = mode == M::SingleNodeSingleWriter as i32;
        let reader_only = match M::try_from(mode) {
            Ok(M::SingleNodeWriter | M::SingleNodeSingleWriter | M::SingleNodeMultiWriter) => false,
            Ok(M::SingleNodeReaderOnly) => true,
            Ok(M::Unknown) | Err(_) => {
                return Err(Error::Invalid {
                    field: "volume_capability.access_mode",
                    value: format!("{mode}"),
                    expected: "a single-node mode, e.g. SINGLE_NODE_WRITER".into(),
                })
            }
            Ok(m) => {
                return Err(Error::Invalid {
                    field: "volume_capability.access_mode",
                    value: m.as_str_name().to_owned(),
                    expected: "a single-node mode: floe volumes live on one node (use ReadWriteOnce)".into(),
                })
            }
        };
        let access = match &cap.access_type {
            Some(csi::volume_capability::AccessType::Block(_)) => Access::Block,
            Some(csi::volume_capability::AccessType::Mount(m)) => {
                if !m.volume_mount_group.is_empty() {
                    return Err(Error::Invalid {
                        field: "volume_capability.mount.volume_mount_group",
                        value: m.volume_mount_group.clone(),
                        expected: "empty: floe does not advertise VOLUME_MOUNT_GROUP".into(),
                    });
                }
                let fs_type = match m.fs_type.as_str() {
                    "" => None,
                    fs => Some(parse_fs_type("volume_capability.mount.fs_type", fs)?),
                };
                Access::Mount {
                    fs_type,
                    options: MountOptions::parse(&m.mount_flags)?,
                }
            }
            None => {
                return Err(Error::Invalid {
                    field: "volume_capability.access_type",
                    value: "unset".into(),
                    expected: "mount or block".into(),
                })
            }
        };
        Ok(Capability {
            access,
            reader_only,
            single_publication,
        })
    }

    /// Whether this is a block capability.
    pub fn is_block(&self) -> bool {
        matches!(self.access, Access::Block)
    }
}

/// The RPC a request came in: the checks of its fields name it in their
/// refusals.
#[derive(Clone, Copy, Debug)]
pub struct Rpc(pub &'static str);

impl Rpc {
    /// The refusal of a required `field` left empty; `hint` says what to
    /// put there.
    pub fn missing(self, field: &'static str, hint: &'static str) -> Error {
        Error::Missing {
            rpc: self.0,
            field,
            hint,
        }
    }

    /// Checks that a required string field is set.
    pub fn required<'a>(self, field: &'static str, value: &'a str, hint: &'static str) -> Result<&'a str> {
        if value.is_empty() {
            return Err(self.missing(field, hint));
        }
        if value.len() > 4096 || value.contains('\0') {
            return Err(Error::Invalid {
                field,
                value: value.chars().take(64).collect(),
                expected: "at most 4096 bytes without NUL".into(),
            });
        }
        Ok(value)
    }

    /// Checks that a required id field holds an id this driver could have
    /// made ([`crate::model::ObjectId`]): never a path.
    pub fn object_id<'a>(self, field: &'static str, value: &'a str, hint: &'static str) -> Result<&'a str> {
        self.required(field, value, hint)?;
        crate::model::ObjectId::parse(field, value)?;
        Ok(value)
    }

    /// Validates an object name (CreateVolume, CreateSnapshot, group) and
    /// gives its id ([`id_for_name`]).
    pub fn name(self, name: &str) -> Result<String> {
        self.required("name", name, "the CO's idempotency key for this object")?;
        Ok(id_for_name(name))
    }

    /// Parses a required capability.
    pub fn capability(self, cap: Option<&csi::VolumeCapability>) -> Result<Capability> {
        let cap = cap.ok_or(self.missing("volume_capability", "say mount or block and the access mode"))?;
        Capability::parse(cap)
    }
}

/// The id of the object named `name`: the name itself when it is a safe
/// file name, else `~` and a hash of it. The same name always gives the same
/// id, which is what makes creation idempotent; `~` is not a character of a
/// kept name, so the two kinds never collide.
pub fn id_for_name(name: &str) -> String {
    let safe = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if safe {
        name.to_owned()
    } else {
        let hash = blake3::hash(name.as_bytes());
        format!("~{}", &hash.to_hex()[..40])
    }
}

/// Paging: a token is the next id to list, hex-encoded behind a tag, so a
/// token this driver did not make is recognised and refused.
pub fn encode_token(tag: &str, next: &str) -> String {
    let hex: String = next.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{tag}:{hex}")
}

/// Decodes a token made by [`encode_token`] with the same tag.
pub fn decode_token(tag: &str, token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::BadToken(token.to_owned());
    let hex = token
        .strip_prefix(tag)
        .and_then(|t| t.strip_prefix(':'))
        .ok_or_else(bad)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// One page of `items` (sorted by key) from `start`, at most `max` (0 = all).
pub fn page<T: Clone>(
    items: &BTreeMap<String, T>,
    start: Option<&str>,
    max: i32,
    tag: &str,
) -> Result<(Vec<T>, String)> {
    if max < 0 {
        return Err(Error::Invalid {
            field: "max_entries",
            value: max.to_string(),
            expected: "zero (all) or more".into(),
        });
    }
    let mut iter = match start {
        Some(s) => items.range(s.to_owned()..),
        None => items.range::<String, _>(..),
    };
    let take = if max == 0 { usize::MAX } else { max as usize };
    let out: Vec<T> = iter.by_ref().take(take).map(|(_, v)| v.clone()).collect();
    let next = iter.next().map(|(k, _)| encode_token(tag, k)).unwrap_or_default();
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_engine::Mode;

    fn range(required: i64, limit: i64) -> csi::CapacityRange {
        csi::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    #[test]
    fn capacity_rounds_up_to_the_block_and_respects_the_limit() {
        assert_eq!(capacity(Some(&range(1, 0)), 4096, 0).ok(), Some(4096));
        assert_eq!(capacity(Some(&range(4096, 4096)), 4096, 0).ok(), Some(4096));
        assert_eq!(capacity(None, 4096, 0).ok(), Some(DEFAULT_CAPACITY));
        assert_eq!(capacity(Some(&range(0, 8192)), 4096, 0).ok(), Some(8192));
        let e = capacity(Some(&range(4097, 5000)), 4096, 0).expect_err("rounding passes the limit");
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        let e = capacity(Some(&range(10, 5)), 4096, 0).expect_err("limit below required");
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        let e = capacity(Some(&range(-1, 0)), 4096, 0).expect_err("negative");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(capacity(Some(&range(1, 0)), 4096, 1 << 20).ok(), Some(1 << 20));
    }

    #[test]
    fn parameters_are_strict() {
        let p = |kv: &[(&str, &str)]| {
            VolumeParams::parse(&kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        };
        let got = p(&[("fsType", "xfs"), ("blockSize", "65536"), ("replicationMode", "log")]).expect("valid");
        assert_eq!(
            got,
            VolumeParams {
                fs_type: FsType::Xfs,
                block_size: 65536,
                mode: Mode::Log
            }
        );
        for bad in [
            &[("fsType", "btrfs")][..],
            &[("blockSize", "4000")],
            &[("blockSize", "2048")],
            &[("blockSize", "x")],
            &[("replicationMode", "sync")],
            &[("fstype", "ext4")],
        ] {
            let e = p(bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert_eq!(VolumeParams::parse(&got.context()).ok(), Some(got));
    }

    #[test]
    fn mount_options_split_flags_from_data() {
        let o = MountOptions::parse(&["noatime,discard".into(), "ro".into()]).expect("valid");
        assert_eq!(o.flags, MountFlags::NOATIME | MountFlags::RDONLY);
        assert_eq!(o.data_string(FsType::Ext4), "discard");
        // xfs always with nouuid, once.
        assert_eq!(o.data_string(FsType::Xfs), "discard,nouuid");
        let o = MountOptions::parse(&["nouuid".into()]).expect("valid");
        assert_eq!(o.data_string(FsType::Xfs), "nouuid");
        assert!(MountOptions::parse(&["bind".into()]).is_err());
        for bad in [
            "nosuchoption",
            "data=nonsense",
            "errors=explode",
            "context=\"x\"",
            "commit=1x",
            "sb=",
        ] {
            assert!(MountOptions::parse(&[bad.into()]).is_err(), "{bad}");
        }
        let o = MountOptions::parse(&["data=ordered,errors=remount-ro".into(), "logbsize=256k".into()]).expect("valid");
        assert!(o.check_for(FsType::Ext4).is_err(), "logbsize is xfs's");
        assert!(o.check_for(FsType::Xfs).is_err(), "data= is ext4's");
        let o = MountOptions::parse(&["data=ordered,commit=30".into(), "discard".into()]).expect("valid");
        assert!(o.check_for(FsType::Ext4).is_ok());
    }

    #[test]
    fn ids_are_stable_safe_and_distinct() {
        assert_eq!(id_for_name("pvc-1234"), "pvc-1234");
        let weird = id_for_name("a/b");
        assert!(weird.starts_with('~') && !weird.contains('/'));
        assert_eq!(weird, id_for_name("a/b"));
        assert_ne!(id_for_name("a/b"), id_for_name("a/c"));
        assert!(id_for_name(&"x".repeat(129)).starts_with('~'));
        assert!(id_for_name(".hidden").starts_with('~'));
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let t = encode_token("v", "pvc-1");
        assert_eq!(decode_token("v", &t).ok(), Some(Some("pvc-1".to_owned())));
        assert_eq!(decode_token("v", "").ok(), Some(None));
        for bad in ["invalid-token", "v:zz", "s:00", "v:", "v:0"] {
            assert_eq!(decode_token("v", bad).expect_err(bad).code(), tonic::Code::Aborted);
        }
    }

    #[test]
    fn pages_cover_everything_once() {
        let items: BTreeMap<String, u32> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let (a, next) = page(&items, None, 2, "v").expect("page");
        assert_eq!(a, vec![0, 1]);
        let start = decode_token("v", &next).expect("token");
        let (b, next) = page(&items, start.as_deref(), 0, "v").expect("page");
        assert_eq!(b, vec![2, 3, 4]);
        assert!(next.is_empty());
        assert!(page(&items, None, -1, "v").is_err());
    }
}
