//! `floe-csi`: the CSI plugin binary.

use clap::Parser;
use floe_driver::cli::CsiArgs;

fn main() -> anyhow::Result<()> {
    let args = CsiArgs::parse();
    anyhow::bail!(
        "floe-csi {:?} on {}: the CSI services are not built yet (see the CSI services issue)",
        args.mode,
        args.endpoint
    )
}
