//! Command-line surface of `floe-csi` and `floe-dataplane`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Which CSI services a `floe-csi` process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PluginMode {
    /// Controller service (volume lifecycle, snapshots).
    Controller,
    /// Node service (stage, publish, stats).
    Node,
    /// Both, in one process (tests and single-node use).
    All,
}

/// floe CSI plugin.
#[derive(Debug, Parser)]
#[command(name = "floe-csi", version)]
pub struct CsiArgs {
    /// Services to serve.
    #[arg(long, env = "FLOE_MODE", value_enum, default_value = "all")]
    pub mode: PluginMode,
    /// CSI endpoint, e.g. unix:///csi/csi.sock.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///tmp/floe-csi.sock")]
    pub endpoint: String,
    /// Directory holding volume data and metadata.
    #[arg(long, env = "FLOE_DATA_DIR", default_value = "/var/lib/floe")]
    pub data_dir: PathBuf,
    /// Kubernetes node name of this plugin.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// The data plane's API socket (`floe-dataplane serve`), used in node mode.
    #[arg(long, env = "FLOE_DATAPLANE_SOCKET", default_value = "/run/floe/dataplane.sock")]
    pub dataplane_socket: PathBuf,
    /// Most volumes this node stages at once (NodeGetInfo's max_volumes_per_node).
    #[arg(long, env = "FLOE_MAX_VOLUMES", default_value_t = 128, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_volumes: i64,
}

/// floe data plane: serves the I/O of every attached volume on a node.
#[derive(Debug, Parser)]
#[command(name = "floe-dataplane", version)]
pub struct DataplaneArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: DataplaneCommand,
}

/// The processes of the data plane.
#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// The long-lived data-plane process: volumes, FUSE, loop devices, the
    /// local API on <run-dir>/dataplane.sock. Takes over from a predecessor.
    Serve(ServeArgs),
    /// The fd holder: keeps every /dev/fuse fd of the data plane on
    /// <run-dir>/holder.sock so that a restart of `serve` costs no I/O error.
    Holder(HolderArgs),
}

/// Flags of `floe-dataplane serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding volume data and metadata.
    #[arg(long, env = "FLOE_DATA_DIR", default_value = "/var/lib/floe")]
    pub data_dir: PathBuf,
    /// Directory of sockets, locks, FUSE mounts and run-time records (shared
    /// with the holder and with the successor of this process).
    #[arg(long, env = "FLOE_RUN_DIR", default_value = "/run/floe")]
    pub run_dir: PathBuf,
    /// FUSE worker threads per volume.
    #[arg(long, env = "FLOE_FUSE_THREADS", default_value_t = 4)]
    pub fuse_threads: usize,
}

/// Flags of `floe-dataplane holder`.
#[derive(Debug, Args)]
pub struct HolderArgs {
    /// The data plane's run directory (the socket is <run-dir>/holder.sock).
    #[arg(long, env = "FLOE_RUN_DIR", default_value = "/run/floe")]
    pub run_dir: PathBuf,
}
