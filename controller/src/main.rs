//! `floe-controller`: the ReplicationGroup operator (built by the controller issue).

use clap::Parser;

/// floe controller.
#[derive(Debug, Parser)]
#[command(name = "floe-controller", version)]
struct Args {
    /// Namespace floe runs in (key Secrets are read only from here).
    #[arg(long, env = "FLOE_NAMESPACE", default_value = "floe-system")]
    namespace: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "floe-controller in {}: the reconciler is not built yet (see the controller issue)",
        args.namespace
    )
}
