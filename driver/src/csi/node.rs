//! The Node service: stage (attach, mkfs when empty, mount), publish (bind
//! mount, or the device node for block volumes), stats, expansion.
//!
//! Every step checks the mount table first, so a retried call finds its
//! earlier work and succeeds, and a call interrupted half-way is finished by
//! its retry. Unpublish and unstage succeed when there is nothing left to do.

use std::path::Path;
use std::sync::Arc;

use floe_proto::csi;
use floe_proto::csi::node_server::Node;
use rustix::mount::MountFlags;

use super::identity::node_capabilities;
use super::params::{self, Access, Capability, Rpc};
use super::Plugin;
use crate::dataplane::mount::{format_once, unmount_path, MountError};
use crate::model::HostPath;
use crate::node::error::{grpc_service, Error, Result};
use crate::node::locks::volume_key;
use crate::node::mounts::{self, MountEntry};
use crate::node::volumes::Volume;

/// Left in the (not yet mounted) staging directory while `mkfs` runs
/// ([`format_once`]): a stage retried after the plugin died in the middle
/// of `mkfs` formats again.
pub const FORMAT_MARKER: &str = ".floe-mkfs-in-progress";

/// The Node service.
#[derive(Clone)]
pub struct NodeService {
    plugin: Arc<Plugin>,
}

/// How a volume shows at a path.
enum AtPath {
    /// Its file system (a stage or a bind of it).
    Fs(MountEntry),
    /// Its device node, bound onto a file.
    Device(MountEntry),
    /// Something else is mounted there.
    Other(MountEntry),
    /// Nothing is mounted there.
    Nothing,
}

fn at_path(table: &[MountEntry], path: &Path, device: Option<&Path>) -> Result<AtPath> {
    let Some(m) = mounts::mount_at(table, path) else {
        return Ok(AtPath::Nothing);
    };
    let Some(device) = device else {
        return Ok(AtPath::Other(m));
    };
    if (m.major, m.minor) == mounts::device_number(device)? {
        return Ok(AtPath::Fs(m));
    }
    if mounts::node_binds_of(std::slice::from_ref(&m), device).len() == 1 {
        return Ok(AtPath::Device(m));
    }
    Ok(AtPath::Other(m))
}

/// A path kubelet gives: required, absolute and canonical, and through
/// no symlink ([`HostPath`]), so a mount lands where it says.
fn host_path(rpc: Rpc, field: &'static str, value: &str, hint: &'static str) -> Result<HostPath> {
    rpc.required(field, value, hint)?;
    let path = HostPath::parse(field, value)?;
    path.check_no_symlink(field)?;
    Ok(path)
}

/// The `volume_path` of a stats or expand call: a path that is not
/// absolute and canonical, or passes through a symlink, is not where this
/// driver published the volume (NOT_FOUND, as the spec says for a path the
/// volume is not at), and is never followed.
fn volume_path(id: &str, value: &str) -> Result<HostPath> {
    let not_here = |e: crate::model::Invalid| Error::NotAtPath {
        volume: id.to_owned(),
        path: value.into(),
        why: format!("the path does not exist as given: {}", e.expected),
    };
    let path = HostPath::parse("volume_path", value).map_err(not_here)?;
    path.check_no_symlink("volume_path").map_err(not_here)?;
    Ok(path)
}

fn describe(m: &MountEntry) -> String {
    format!("{} from {} ({})", m.fs_type, m.source, m.options.join(","))
}

impl NodeService {
    /// The service of `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Self {
        NodeService { plugin }
    }

    /// Attaches `v`, refusing past the node's volume limit. Asks the data
    /// plane even when `v` shows an attachment: it refuses one whose FUSE
    /// connection is lost (FAILED_PRECONDITION), which must not pass for
    /// staged.
    async fn attach(&self, v: &Volume) -> Result<std::path::PathBuf> {
        if v.attachment.is_some() {
            return Ok(self.plugin.volumes.attach(&v.id).await?.device);
        }
        let staged = self
            .plugin
            .volumes
            .volumes()
            .await?
            .iter()
            .filter(|v| v.attachment.is_some())
            .count();
        if staged as i64 >= self.plugin.max_volumes {
            return Err(Error::ResourceExhausted(format!(
                "node {} has {staged} volumes staged, its limit (--max-volumes): unstage one first",
                self.plugin.node_id
            )));
        }
        Ok(self.plugin.volumes.attach(&v.id).await?.device)
    }

    async fn stage(&self, req: csi::NodeStageVolumeRequest) -> Result<csi::NodeStageVolumeResponse> {
        let rpc = Rpc("NodeStageVolume");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to stage")?;
        let hint = "the global mount path kubelet chose";
        let staging = host_path(rpc, "staging_target_path", &req.staging_target_path, hint)?;
        let staging = staging.as_path();
        let cap = rpc.capability(req.volume_capability.as_ref())?;
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        let v = self.plugin.volume(id).await?;
        if let Access::Mount { fs_type, options } = &cap.access {
            // Before anything is attached or formatted.
            options.check_for(fs_type.unwrap_or(v.params.fs_type))?;
        }
        let Access::Mount { fs_type, options } = &cap.access else {
            // Block: the device is the product; publish binds it.
            self.attach(&v).await?;
            return Ok(csi::NodeStageVolumeResponse {});
        };
        std::fs::create_dir_all(staging).map_err(Error::io("create the staging path", staging))?;
        let table = mounts::mount_table()?;
        match at_path(&table, staging, v.attachment.as_ref().map(|a| a.device.as_path()))? {
            AtPath::Fs(_) => {
                // Staged already, if its device still works.
                self.attach(&v).await?;
                return Ok(csi::NodeStageVolumeResponse {});
            }
            AtPath::Nothing => {}
            AtPath::Device(m) | AtPath::Other(m) => {
                return Err(Error::AlreadyExists {
                    kind: "mount",
                    name: staging.display().to_string(),
                    existing: describe(&m),
                    requested: format!("volume {id:?}"),
                })
            }
        }
        let device = self.attach(&v).await?;
        let fs = fs_type.unwrap_or(v.params.fs_type);
        let (dev, dir) = (device.clone(), staging.to_owned());
        tokio::task::spawn_blocking(move || {
            format_once(&dev, fs, Some(&dir.join(FORMAT_MARKER))).map_err(|source| match source {
                MountError::WrongContent { found, wanted, .. } => Error::FailedPrecondition(format!(
                    "volume {:?} holds {found}, not {wanted}: ask for fs_type {found} or use another volume",
                    dev.display()
                )),
                source => Error::Mount {
                    op: "make the file system",
                    source,
                },
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("mkfs task: {e}")))??;
        let mut flags = options.flags;
        if cap.reader_only {
            flags |= MountFlags::RDONLY;
        }
        mounts::mount_fs(&device, staging, fs, flags, &options.data_string(fs))?;
        tracing::info!(volume = %id, staging = %staging.display(), fs = fs.name(), "volume staged");
        Ok(csi::NodeStageVolumeResponse {})
    }

    async fn unstage(&self, req: csi::NodeUnstageVolumeRequest) -> Result<csi::NodeUnstageVolumeResponse> {
        let rpc = Rpc("NodeUnstageVolume");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to unstage")?;
        let hint = "the path given to NodeStageVolume";
        let staging = host_path(rpc, "staging_target_path", &req.staging_target_path, hint)?;
        let staging = staging.as_path();
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        let Some(v) = self.plugin.volumes.volume(id).await? else {
            return Ok(csi::NodeUnstageVolumeResponse {});
        };
        let table = mounts::mount_table()?;
        if let AtPath::Fs(_) = at_path(&table, staging, v.attachment.as_ref().map(|a| a.device.as_path()))? {
            mounts::unmount_all(staging)?;
        }
        self.plugin.volumes.detach(id).await?;
        tracing::info!(volume = %id, staging = %staging.display(), "volume unstaged");
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<csi::NodePublishVolumeResponse> {
        let rpc = Rpc("NodePublishVolume");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to publish")?;
        let target = host_path(rpc, "target_path", &req.target_path, "where the pod sees the volume")?;
        let target = target.as_path();
        let cap = rpc.capability(req.volume_capability.as_ref())?;
        let hint = "the path given to NodeStageVolume (this driver stages)";
        let staging = host_path(rpc, "staging_target_path", &req.staging_target_path, hint)?;
        let staging = staging.as_path();
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        let v = self.plugin.volume(id).await?;
        let not_staged = || {
            Error::FailedPrecondition(format!(
                "volume {id:?} is not staged at {}: call NodeStageVolume first",
                staging.display()
            ))
        };
        if v.attachment.is_none() {
            return Err(not_staged());
        }
        // Through the data plane: a broken attachment is refused here too.
        let device = self.attach(&v).await?;
        let read_only = req.readonly || cap.reader_only;
        let table = mounts::mount_table()?;
        let (source, flags) = match &cap.access {
            Access::Block => (device.clone(), MountFlags::empty()),
            Access::Mount { options, .. } => {
                if !matches!(at_path(&table, staging, Some(&device))?, AtPath::Fs(_)) {
                    return Err(not_staged());
                }
                (staging.to_owned(), options.flags)
            }
        };
        match at_path(&table, target, Some(&device))? {
            AtPath::Fs(m) | AtPath::Device(m)
                if m.read_only() == read_only && (cap.is_block() == (m.fs_type == "devtmpfs")) =>
            {
                return Ok(csi::NodePublishVolumeResponse {})
            }
            AtPath::Nothing => {}
            AtPath::Fs(m) | AtPath::Device(m) | AtPath::Other(m) => {
                return Err(Error::AlreadyExists {
                    kind: "mount",
                    name: target.display().to_string(),
                    existing: describe(&m),
                    requested: format!(
                        "volume {id:?} as {}{}",
                        if cap.is_block() {
                            "a block device"
                        } else {
                            "a file system"
                        },
                        if read_only { ", read-only" } else { "" }
                    ),
                })
            }
        }
        if cap.single_publication {
            let mut elsewhere: Vec<String> = match &cap.access {
                Access::Block => mounts::node_binds_of(&table, &device),
                Access::Mount { .. } => mounts::mounts_of(&table, mounts::device_number(&device)?),
            }
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p != staging && p != target)
            .map(|p| p.display().to_string())
            .collect();
            if !elsewhere.is_empty() {
                elsewhere.sort();
                return Err(Error::FailedPrecondition(format!(
                    "volume {id:?} is published at {} and SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) allows one \
                     publication: unpublish it there first",
                    elsewhere.join(", ")
                )));
            }
        }
        if cap.is_block() {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(Error::io("create the parent of", target))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map_err(Error::io("create the target file", target))?;
        } else {
            std::fs::create_dir_all(target).map_err(Error::io("create the target directory", target))?;
        }
        mounts::bind(&source, target, read_only, flags)?;
        tracing::info!(volume = %id, target = %target.display(), read_only, "volume published");
        Ok(csi::NodePublishVolumeResponse {})
    }

    async fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<csi::NodeUnpublishVolumeResponse> {
        let rpc = Rpc("NodeUnpublishVolume");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to unpublish")?;
        let hint = "the path given to NodePublishVolume";
        let target = host_path(rpc, "target_path", &req.target_path, hint)?;
        let target = target.as_path();
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        // Only a publication of this volume is undone: an unknown volume is
        // NOT_FOUND, and a foreign mount or file at the target stays.
        let v = self.plugin.volume(id).await?;
        let device = v.attachment.as_ref().map(|a| a.device.clone());
        let not_ours = |what: String| {
            Error::FailedPrecondition(format!(
                "{} holds {what}, not a publication of volume {id:?}: left as it is",
                target.display()
            ))
        };
        for layer in 0.. {
            match at_path(&mounts::mount_table()?, target, device.as_deref())? {
                AtPath::Nothing => break,
                _ if layer == 16 => {
                    return Err(Error::FailedPrecondition(format!(
                        "{} still has mounts stacked on it after 16 unmounts",
                        target.display()
                    )))
                }
                AtPath::Fs(_) | AtPath::Device(_) => unmount_path(target).map_err(|source| Error::Mount {
                    op: "unmount the publication",
                    source,
                })?,
                AtPath::Other(m) => return Err(not_ours(describe(&m))),
            }
        }
        // What publish made: a directory (left empty by the unmount) or an
        // empty file (a block volume's bind target).
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(target).map_err(|e| match e.kind() {
                std::io::ErrorKind::DirectoryNotEmpty => not_ours("a directory with files in it".into()),
                _ => Error::io("remove the target directory", target)(e),
            })?,
            Ok(m) if m.is_file() && m.len() == 0 => {
                std::fs::remove_file(target).map_err(Error::io("remove the target file", target))?
            }
            Ok(m) => return Err(not_ours(format!("a {:?} of {} bytes", m.file_type(), m.len()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("look at the target", target)(e)),
        }
        tracing::info!(volume = %id, target = %target.display(), "volume unpublished");
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn stats(&self, req: csi::NodeGetVolumeStatsRequest) -> Result<csi::NodeGetVolumeStatsResponse> {
        use csi::volume_usage::Unit;
        let rpc = Rpc("NodeGetVolumeStats");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to measure")?;
        let hint = "a path the volume is published or staged at";
        let path = rpc.required("volume_path", &req.volume_path, hint)?;
        let v = self.plugin.volume(id).await?;
        let path = volume_path(id, path)?;
        let path = path.as_path();
        if std::fs::symlink_metadata(path).is_err() {
            return Err(Error::NotAtPath {
                volume: id.to_owned(),
                path: path.to_owned(),
                why: "the path does not exist".into(),
            });
        }
        let usage = |unit: Unit, [total, available, used]: [u64; 3]| csi::VolumeUsage {
            total: total as i64,
            available: available as i64,
            used: used as i64,
            unit: unit as i32,
        };
        let condition = |abnormal: bool, message: String| Some(csi::VolumeCondition { abnormal, message });
        let device = v.attachment.as_ref().map(|a| a.device.as_path());
        let table = mounts::mount_table()?;
        Ok(match at_path(&table, path, device)? {
            AtPath::Fs(_) => match mounts::usage(path) {
                Ok((bytes, inodes)) => csi::NodeGetVolumeStatsResponse {
                    usage: vec![usage(Unit::Bytes, bytes), usage(Unit::Inodes, inodes)],
                    volume_condition: condition(false, "mounted".into()),
                },
                Err(e) => csi::NodeGetVolumeStatsResponse {
                    usage: vec![],
                    volume_condition: condition(
                        true,
                        format!("the file system does not answer: {}", crate::node::error::chain(&e)),
                    ),
                },
            },
            AtPath::Device(_) => csi::NodeGetVolumeStatsResponse {
                usage: vec![usage(Unit::Bytes, [v.size_bytes, 0, 0])],
                volume_condition: condition(false, "block device published".into()),
            },
            AtPath::Other(m) => {
                return Err(Error::NotAtPath {
                    volume: id.to_owned(),
                    path: path.to_owned(),
                    why: format!("it holds {}", describe(&m)),
                })
            }
            AtPath::Nothing => csi::NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: condition(
                    true,
                    match device {
                        Some(d) => format!(
                            "the mount of {} at {} is gone: stage and publish again",
                            d.display(),
                            path.display()
                        ),
                        None => format!(
                            "volume {id:?} is not staged on this node and nothing is mounted at {}",
                            path.display()
                        ),
                    },
                ),
            },
        })
    }

    async fn expand(&self, req: csi::NodeExpandVolumeRequest) -> Result<csi::NodeExpandVolumeResponse> {
        let rpc = Rpc("NodeExpandVolume");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to grow")?;
        let path = rpc.required("volume_path", &req.volume_path, "where the volume is published")?;
        if let Some(c) = req.volume_capability.as_ref() {
            Capability::parse(c)?;
        }
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        let mut v = self.plugin.volume(id).await?;
        let path = volume_path(id, path)?;
        let path = path.as_path();
        if let Some(range) = req.capacity_range.as_ref() {
            let size = params::capacity(Some(range), v.params.block_size, 0)?;
            if size > v.size_bytes {
                v = self.plugin.volumes.expand(id, size).await?;
            }
        }
        let device = v.attachment.as_ref().map(|a| a.device.clone()).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "volume {id:?} is not staged on this node: stage and publish it first"
            ))
        })?;
        let table = mounts::mount_table()?;
        match at_path(&table, path, Some(&device))? {
            AtPath::Fs(m) => {
                let (fs, mp) = (m.fs_type.clone(), m.mount_point.clone());
                let dev = device.clone();
                tokio::task::spawn_blocking(move || mounts::grow_fs(&fs, &dev, &mp))
                    .await
                    .map_err(|e| Error::Internal(format!("grow task: {e}")))??;
                tracing::info!(volume = %id, size = v.size_bytes, "file system grown");
            }
            AtPath::Device(_) => {}
            AtPath::Nothing | AtPath::Other(_) => {
                return Err(Error::NotAtPath {
                    volume: id.to_owned(),
                    path: path.to_owned(),
                    why: "it is not published there".into(),
                })
            }
        }
        Ok(csi::NodeExpandVolumeResponse {
            capacity_bytes: v.size_bytes as i64,
        })
    }

    async fn capabilities(&self, _: csi::NodeGetCapabilitiesRequest) -> Result<csi::NodeGetCapabilitiesResponse> {
        Ok(csi::NodeGetCapabilitiesResponse {
            capabilities: node_capabilities(),
        })
    }

    async fn info(&self, _: csi::NodeGetInfoRequest) -> Result<csi::NodeGetInfoResponse> {
        Ok(csi::NodeGetInfoResponse {
            node_id: self.plugin.node_id.clone(),
            max_volumes_per_node: self.plugin.max_volumes,
            accessible_topology: Some(super::topology(&self.plugin.node_id)),
        })
    }
}

grpc_service! {
    Node for NodeService {
        node_stage_volume(csi::NodeStageVolumeRequest) -> csi::NodeStageVolumeResponse => stage;
        node_unstage_volume(csi::NodeUnstageVolumeRequest) -> csi::NodeUnstageVolumeResponse => unstage;
        node_publish_volume(csi::NodePublishVolumeRequest) -> csi::NodePublishVolumeResponse => publish;
        node_unpublish_volume(csi::NodeUnpublishVolumeRequest) -> csi::NodeUnpublishVolumeResponse => unpublish;
        node_get_volume_stats(csi::NodeGetVolumeStatsRequest) -> csi::NodeGetVolumeStatsResponse => stats;
        node_expand_volume(csi::NodeExpandVolumeRequest) -> csi::NodeExpandVolumeResponse => expand;
        node_get_capabilities(csi::NodeGetCapabilitiesRequest) -> csi::NodeGetCapabilitiesResponse => capabilities;
        node_get_info(csi::NodeGetInfoRequest) -> csi::NodeGetInfoResponse => info;
    }
}
