//! `floe-csi`: the CSI plugin binary (see `floe_driver::csi`).
//!
//! `--mode=all` and `--mode=node` serve the node's volumes in this process
//! (store, engine, FUSE, loop devices under `--data-dir`) until the
//! data-plane daemon takes them over; `--mode=controller` serves the
//! controller services only.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use floe_driver::cli::{CsiArgs, PluginMode};
use floe_driver::csi::local::LocalVolumes;
use floe_driver::csi::volumes::NodeVolumes;
use floe_driver::csi::{self, Plugin, SplitMode};
use floe_driver::dataplane::process::{self, ProcessError};

fn main() -> ExitCode {
    let args = CsiArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    let serves_node = matches!(args.mode, PluginMode::Node | PluginMode::All);
    if serves_node {
        // This process serves FUSE under loop devices: mark it before any
        // thread starts (a loop over FUSE can deadlock under memory pressure).
        match process::set_io_flusher() {
            Ok(()) => {}
            Err(ProcessError::IoFlusher(e)) => {
                tracing::warn!(error = %e, "PR_SET_IO_FLUSHER refused: writeback under memory pressure may deadlock")
            }
            Err(e) => return Err(e).context("prepare the I/O process"),
        }
    }
    if serves_node {
        // Not in the I/O path: logs what the data plane says, every 10 s.
        floe_driver::dataplane::daemon::client::spawn_status_watch(
            args.dataplane_socket.clone(),
            std::time::Duration::from_secs(10),
        )
        .context("start watching the data plane")?;
    }
    let path = csi::socket_path(&args.endpoint).context("parse --endpoint")?;
    let node_id = match args.node_id {
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
            let data_dir = args.data_dir.clone();
            let local = tokio::task::spawn_blocking(move || LocalVolumes::open(&data_dir))
                .await
                .context("open the node's volumes")?
                .with_context(|| format!("open the node's volumes in {}", args.data_dir.display()))?;
            Arc::new(local)
        } else {
            Arc::new(SplitMode)
        };
        let plugin = Arc::new(Plugin::new(args.mode, &node_id, args.max_volumes, volumes));
        csi::serve(plugin, &path, shutdown()).await.context("serve CSI")
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
