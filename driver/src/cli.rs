//! Command-line surface of `floe-csi` and `floe-dataplane`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Logs to stderr, colored on a terminal, at the level `RUST_LOG` asks
/// (`info` by default): what both binaries set up first.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

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
    /// Kubernetes node name of this plugin.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// The data plane's API socket (`floe-dataplane serve`), used in node mode.
    #[arg(long, env = "FLOE_DATAPLANE_SOCKET", default_value = "/run/floe/dataplane.sock")]
    pub dataplane_socket: PathBuf,
    /// Most volumes this node stages at once (NodeGetInfo's max_volumes_per_node).
    #[arg(long, env = "FLOE_MAX_VOLUMES", default_value_t = 128, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_volumes: i64,
    /// Node mode: where to serve this node's volumes to the controller
    /// (NodeVolumes, mutual TLS), e.g. 0.0.0.0:9443. Unset: not served.
    #[arg(long, env = "FLOE_NODE_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub node_admin_listen: Option<SocketAddr>,
    /// Controller mode: a node plugin to reach, NODE=https://HOST:PORT (NODE
    /// is its node id). Repeat the flag, or separate entries with commas.
    #[arg(
        long = "node-endpoint",
        env = "FLOE_NODE_ENDPOINTS",
        value_name = "NODE=URL",
        value_delimiter = ','
    )]
    pub node_endpoints: Vec<NodeEndpoint>,
    /// Node mode: the DNS name (a subject alternative name) the controller's
    /// client certificate must carry for --node-admin-listen to serve it;
    /// another certificate of the same CA is refused.
    #[arg(long, env = "FLOE_PEER_NAME", default_value = "controller")]
    pub peer_name: crate::model::PeerName,
    /// PEM certificate this process shows: a node's server certificate, or
    /// the controller's client certificate.
    #[arg(long, env = "FLOE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLOE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the CA that signs the other side's certificate.
    #[arg(long, env = "FLOE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// A node plugin as the controller reaches it: `NODE=https://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The node's id (its Kubernetes node name).
    pub node: String,
    /// Where it serves NodeVolumes.
    pub url: String,
}

impl std::str::FromStr for NodeEndpoint {
    type Err = ArgsError;
    fn from_str(s: &str) -> Result<Self, ArgsError> {
        let bad = |why: &'static str| ArgsError::Endpoint {
            value: s.to_owned(),
            why,
        };
        let (node, url) = s
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("no '=' between the node id and the URL"))?;
        if node.is_empty() {
            return Err(bad("the node id is empty"));
        }
        let uri: tonic::transport::Uri = url.parse().map_err(|_| bad("the URL does not parse"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the URL must start with https://"));
        }
        if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
            return Err(bad("the URL needs a host and a port"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad("the URL must have no path"));
        }
        Ok(NodeEndpoint {
            node: node.to_owned(),
            url: url.to_owned(),
        })
    }
}

/// Flags that do not go together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// A `--node-endpoint` that is not `NODE=https://HOST:PORT`.
    #[error("--node-endpoint {value:?}: {why}; expected NODE=https://HOST:PORT")]
    Endpoint {
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A flag another flag or the mode needs.
    #[error("{needed} is required {because}")]
    Missing {
        /// The missing flag.
        needed: &'static str,
        /// Why it is needed.
        because: &'static str,
    },
    /// A flag the mode does not use.
    #[error("{flag} does not apply to --mode={mode}: {hint}")]
    WrongMode {
        /// The flag.
        flag: &'static str,
        /// The mode, as given.
        mode: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// A TLS file that cannot be read.
    #[error("{flag} {path}: cannot be read")]
    Unreadable {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl CsiArgs {
    /// Checks what clap cannot: the flags of split mode against the mode
    /// and each other.
    pub fn validate(&self) -> Result<(), ArgsError> {
        let mode = match self.mode {
            PluginMode::Controller => "controller",
            PluginMode::Node => "node",
            PluginMode::All => "all",
        };
        let controller = self.mode == PluginMode::Controller;
        if controller && self.node_endpoints.is_empty() {
            return Err(ArgsError::Missing {
                needed: "--node-endpoint",
                because: "in --mode=controller: the controller reaches the node plugins' volumes there",
            });
        }
        if !controller && !self.node_endpoints.is_empty() {
            return Err(ArgsError::WrongMode {
                flag: "--node-endpoint",
                mode,
                hint: "only the controller reaches node plugins; run with --mode=controller",
            });
        }
        if controller && self.node_admin_listen.is_some() {
            return Err(ArgsError::WrongMode {
                flag: "--node-admin-listen",
                mode,
                hint: "a node plugin serves its volumes; run with --mode=node",
            });
        }
        let because = if controller {
            "with --node-endpoint: the controller shows it to the nodes over mutual TLS"
        } else if self.node_admin_listen.is_some() {
            "with --node-admin-listen: the node serves its volumes over mutual TLS only"
        } else {
            return Ok(());
        };
        for (flag, path) in [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-ca", &self.tls_ca),
        ] {
            let path = path.as_ref().ok_or(ArgsError::Missing { needed: flag, because })?;
            std::fs::File::open(path).map_err(|source| ArgsError::Unreadable {
                flag,
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
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
    /// gRPC API (node.proto) on <run-dir>/dataplane.sock. Takes over from a predecessor.
    Serve(Box<ServeArgs>),
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
    /// Local API connections served at once; past it, the connection idle
    /// the longest is closed.
    #[arg(long, env = "FLOE_API_MAX_CONNECTIONS", default_value_t = 32)]
    pub api_max_connections: usize,
    /// Seconds an API connection may wait between requests before it is closed.
    #[arg(long, env = "FLOE_API_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub api_idle_timeout_secs: u64,
    /// Where this node takes the replication streams of the primary site
    /// (a DR node), HOST:PORT.
    #[arg(long, env = "FLOE_REPLICATION_LISTEN")]
    pub replication_listen: Option<std::net::SocketAddr>,
    /// This node's replication certificate (PEM), shown to the peer site.
    #[arg(long, env = "FLOE_REPLICATION_CERT")]
    pub replication_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "FLOE_REPLICATION_KEY")]
    pub replication_key: Option<PathBuf>,
    /// The CA (PEM) that signs the peer site's certificates.
    #[arg(long, env = "FLOE_REPLICATION_CA")]
    pub replication_ca: Option<PathBuf>,
    /// The DNS name the peer site's certificate must carry.
    #[arg(long, env = "FLOE_REPLICATION_PEER")]
    pub replication_peer: Option<crate::model::PeerName>,
    /// Where to serve the Prometheus metrics (GET /metrics), HOST:PORT.
    #[arg(long, env = "FLOE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Bytes a second this node's replication streams may send together.
    #[arg(long, env = "FLOE_REPLICATION_LIMIT_BYTES")]
    pub replication_limit_bytes: Option<u64>,
    /// The CA (PEM) that signs this site's node certificates: a node of
    /// this site reaching a group coordinator here, or served by one, must
    /// show one (with the replication certificate and key).
    #[arg(long, env = "FLOE_SITE_CA")]
    pub site_ca: Option<PathBuf>,
    /// The DNS name this site's node certificates carry.
    #[arg(long, env = "FLOE_SITE_NAME")]
    pub site_name: Option<crate::model::PeerName>,
    /// Where this node serves the coordinators of the DR groups it runs to
    /// the site's other nodes (groups whose replicas span nodes), HOST:PORT.
    #[arg(long, env = "FLOE_COORDINATOR_LISTEN")]
    pub coordinator_listen: Option<std::net::SocketAddr>,
}

/// Flags of `floe-dataplane holder`.
#[derive(Debug, Args)]
pub struct HolderArgs {
    /// The data plane's run directory (the socket is <run-dir>/holder.sock).
    #[arg(long, env = "FLOE_RUN_DIR", default_value = "/run/floe")]
    pub run_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<CsiArgs, String> {
        let argv = ["floe-csi"].iter().chain(extra);
        CsiArgs::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn node_endpoints_are_node_equals_an_https_url_with_a_port() {
        let ok: NodeEndpoint = "node-b=https://10.0.0.2:9443".parse().expect("valid");
        assert_eq!(ok.node, "node-b");
        assert_eq!(ok.url, "https://10.0.0.2:9443");
        for bad in [
            "https://10.0.0.2:9443",
            "=https://10.0.0.2:9443",
            "node-b=http://10.0.0.2:9443",
            "node-b=https://10.0.0.2",
            "node-b=https://10.0.0.2:9443/x",
            "node-b=not a url",
        ] {
            assert!(bad.parse::<NodeEndpoint>().is_err(), "{bad}");
        }
        let a = args(&[
            "--node-endpoint",
            "a=https://h:1,b=https://h:2",
            "--node-endpoint",
            "c=https://h:3",
        ])
        .expect("parses");
        let nodes: Vec<&str> = a.node_endpoints.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(nodes, ["a", "b", "c"]);
        let e = args(&["--node-endpoint", "a=https://h"]).expect_err("no port");
        assert!(e.contains("NODE=https://HOST:PORT"), "{e}");
    }

    #[test]
    fn split_mode_flags_must_fit_the_mode_and_bring_their_tls_files() {
        let pem = tempfile::NamedTempFile::new().expect("temp file");
        let pem = pem.path().to_str().expect("utf-8 path");
        let tls = ["--tls-cert", pem, "--tls-key", pem, "--tls-ca", pem];
        let check = |extra: &[&str]| args(extra).expect("parses").validate();
        assert!(check(&[]).is_ok(), "mode=all alone");
        assert!(check(&["--mode=node"]).is_ok());
        assert!(check(&["--mode=controller"]).is_err(), "no endpoint");
        let ep = ["--mode=controller", "--node-endpoint", "a=https://h:1"];
        assert!(matches!(
            check(&ep),
            Err(ArgsError::Missing {
                needed: "--tls-cert",
                ..
            })
        ));
        assert!(check(&[&ep[..], &tls[..]].concat()).is_ok());
        let listen = ["--mode=node", "--node-admin-listen", "127.0.0.1:9443"];
        assert!(check(&listen).is_err(), "no TLS files");
        assert!(check(&[&listen[..], &tls[..]].concat()).is_ok());
        let missing = ["--tls-cert", "/nonexistent/floe.pem", "--tls-key", pem, "--tls-ca", pem];
        assert!(matches!(
            check(&[&listen[..], &missing[..]].concat()),
            Err(ArgsError::Unreadable { flag: "--tls-cert", .. })
        ));
        assert!(check(&["--mode=node", "--node-endpoint", "a=https://h:1"]).is_err());
        let both = [
            "--mode=controller",
            "--node-endpoint",
            "a=https://h:1",
            "--node-admin-listen",
            "127.0.0.1:1",
        ];
        assert!(matches!(check(&both), Err(ArgsError::WrongMode { .. })));
    }
}
