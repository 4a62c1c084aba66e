//! Command-line surface of `floe-csi` and `floe-dataplane`.

use clap::{Parser, ValueEnum};

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
    pub data_dir: std::path::PathBuf,
    /// Kubernetes node name of this plugin.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
}
