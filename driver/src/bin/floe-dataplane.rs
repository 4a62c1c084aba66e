//! `floe-dataplane`: the node's data-plane process (`serve`) and its fd
//! holder (`holder`). See `floe_driver::daemon`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use floe_driver::cli::{DataplaneArgs, DataplaneCommand, HolderArgs, ServeArgs};
use floe_driver::daemon::files::RunPaths;
use floe_driver::daemon::{chain, ApiLimits, Daemon, ReplicationConfig, ServeConfig};
use floe_driver::dataplane::fuse::FuseConfig;
use floe_driver::dataplane::handover::{Holder, HolderLink};
use floe_driver::dataplane::process::{self, ProcessError};
use floe_driver::replication::tls::SiteTls;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let args = DataplaneArgs::parse();
    floe_driver::cli::init_logging();
    let result = match args.command {
        DataplaneCommand::Serve(a) => serve(*a),
        DataplaneCommand::Holder(a) => holder(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "floe-dataplane failed");
            ExitCode::FAILURE
        }
    }
}

/// Marks the process as an I/O flusher and locks its memory, before any
/// thread starts (both are inherited by the threads started later).
fn prepare_process() -> Result<()> {
    match process::set_io_flusher() {
        Ok(()) => {}
        Err(ProcessError::IoFlusher(e)) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            tracing::warn!(
                "PR_SET_IO_FLUSHER refused (EPERM: no CAP_SYS_RESOURCE): writeback under memory pressure may deadlock on this node"
            );
        }
        Err(e) => return Err(e).context("prepare the I/O process"),
    }
    process::lock_memory().context("prepare the I/O process")
}

fn serve(args: ServeArgs) -> Result<()> {
    prepare_process()?;
    // Before any thread: a signal arriving later waits in the pipe.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("register SIGTERM and SIGINT")?;
    let replication = replication_config(&args)?;
    let cfg = ServeConfig {
        data_dir: args.data_dir,
        run_dir: args.run_dir,
        fuse: FuseConfig {
            threads: args.fuse_threads,
            ..FuseConfig::default()
        },
        api: ApiLimits {
            max_connections: args.api_max_connections,
            idle_timeout: std::time::Duration::from_secs(args.api_idle_timeout_secs),
        },
        replication,
        metrics_listen: args.metrics_listen,
    };
    cfg.validate()?;
    let daemon = Daemon::start(&cfg)
        .map_err(|e| anyhow::anyhow!(chain(&e)))
        .context("start serving")?;
    daemon
        .serve_api()
        .map_err(|e| anyhow::anyhow!(chain(&e)))
        .context("start the API")?;
    tracing::info!(pid = std::process::id(), "data plane serving");
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "signal: handing the volumes over to a successor");
        daemon.hand_over();
    }
    bail!("the signal iterator ended")
}

/// The `--replication-*` flags (all four TLS flags or none) and the
/// `--site-*` ones (both or neither, on top of them).
fn replication_config(args: &ServeArgs) -> Result<ReplicationConfig> {
    let tls = match (
        &args.replication_cert,
        &args.replication_key,
        &args.replication_ca,
        &args.replication_peer,
    ) {
        (Some(cert), Some(key), Some(ca), Some(peer)) => Some(SiteTls {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
            peer: peer.clone(),
        }),
        (None, None, None, None) => None,
        _ => bail!("--replication-cert, --replication-key, --replication-ca and --replication-peer go together: give all four or none"),
    };
    if args.replication_listen.is_some() && tls.is_none() {
        bail!(
            "--replication-listen needs --replication-cert, --replication-key, --replication-ca and --replication-peer"
        );
    }
    let site_tls = match (&args.site_ca, &args.site_name, &tls) {
        (Some(ca), Some(name), Some(own)) => Some(SiteTls {
            cert: own.cert.clone(),
            key: own.key.clone(),
            ca: ca.clone(),
            peer: name.clone(),
        }),
        (None, None, _) => None,
        (Some(_), Some(_), None) => bail!("--site-ca and --site-name need the node's --replication-cert and --replication-key (and the rest of the --replication-* identity)"),
        _ => bail!("--site-ca and --site-name go together: give both or neither"),
    };
    if args.coordinator_listen.is_some() && site_tls.is_none() {
        bail!("--coordinator-listen needs --site-ca and --site-name (and the --replication-* identity)");
    }
    Ok(ReplicationConfig {
        listen: args.replication_listen,
        tls,
        limit_bytes_per_second: args.replication_limit_bytes,
        site_tls,
        coordinator_listen: args.coordinator_listen,
    })
}

fn holder(args: HolderArgs) -> Result<()> {
    let run = RunPaths::new(&args.run_dir);
    floe_driver::dataplane::localsock::private_dir(&run.dir)
        .with_context(|| format!("create {} (mode 0700)", run.dir.display()))?;
    let path = run.holder_socket();
    if HolderLink::connect(&path, "probe").is_ok() {
        bail!("a holder already answers on {}", path.display());
    }
    let holder = Holder::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    tracing::info!(socket = %path.display(), pid = std::process::id(), "fd holder serving");
    holder.wait();
    Ok(())
}
