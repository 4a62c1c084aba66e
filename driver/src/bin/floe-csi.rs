//! `floe-csi`: the CSI plugin binary (see `floe_driver::csi`).
//!
//! `--mode=all` and `--mode=node` call the node's data-plane daemon
//! (`floe-dataplane serve`, `--dataplane-socket`), which holds the volumes,
//! their I/O and their catalog: this process can be killed at any time
//! without touching a volume; with `--node-admin-listen` a node plugin also
//! serves its volumes to a split controller over mutual TLS.
//! `--mode=controller` serves the controller services over the node plugins
//! named by `--node-endpoint` (`floe_driver::csi::remote`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use floe_driver::cli::{CsiArgs, PluginMode};
use floe_driver::csi::{self, remote, Plugin};
use floe_driver::node::rpc::client::RemoteVolumes;
use floe_driver::node::volumes::NodeVolumes;

fn main() -> ExitCode {
    let args = CsiArgs::parse();
    floe_driver::cli::init_logging();
    match run(args) {
        // Attachments are left as they are: their mounts belong to pods.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "floe-csi failed");
            ExitCode::FAILURE
        }
    }
}

fn run(args: CsiArgs) -> Result<()> {
    args.validate().context("check the flags")?;
    let serves_node = matches!(args.mode, PluginMode::Node | PluginMode::All);
    let path = csi::socket_path(&args.endpoint).context("parse --endpoint")?;
    let node_id = match args.node_id.clone() {
        Some(n) if !n.is_empty() => n,
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --node-id given and the host name is unreadable")?
            .trim()
            .to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let volumes: Arc<dyn NodeVolumes> = if serves_node {
            // Not in the I/O path: logs what the data plane says, every 10 s.
            floe_driver::daemon::client::spawn_status_watch(&args.dataplane_socket, std::time::Duration::from_secs(10));
            Arc::new(RemoteVolumes::local(&args.dataplane_socket))
        } else {
            Arc::new(remote::cluster_from_args(&args).context("set up the node plugins' volumes")?)
        };
        let admin = remote::serve_node_admin(&args, Arc::clone(&volumes))
            .await
            .context("serve NodeVolumes on --node-admin-listen")?;
        let plugin = Arc::new(Plugin::new(args.mode, &node_id, args.max_volumes, volumes));
        let served = csi::serve(plugin, &path, shutdown()).await.context("serve CSI");
        if let Some(admin) = admin {
            admin.stop().await.context("serve NodeVolumes")?;
        }
        served
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT: stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
