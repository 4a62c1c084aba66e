//! Compiles the three protos with `tonic-build` (messages, servers and
//! clients) and keeps each one's encoded `FileDescriptorSet` in `OUT_DIR/<stem>/`.
//! Needs `protoc` on `PATH` (or `PROTOC`) and the well-known types
//! (Debian: `protobuf-compiler libprotobuf-dev`).

use std::env;
use std::error::Error;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);

    compile(&proto_dir, &out_dir, "csi", tonic_build::configure())?;
    compile(&proto_dir, &out_dir, "replication", tonic_build::configure())?;
    // node.proto reuses RoleGeneration from the replication package.
    let node = tonic_build::configure().extern_path(".floe.replication.v1", "crate::replication");
    compile(&proto_dir, &out_dir, "node", node)?;
    Ok(())
}

/// Compiles `<stem>.proto` into `OUT_DIR/<stem>/`, with `descriptor.bin`
/// beside the code. One folder each: prost writes a (stub) module for an
/// extern package too, which would clobber the real one.
fn compile(proto_dir: &Path, out_dir: &Path, stem: &str, builder: tonic_build::Builder) -> Result<(), Box<dyn Error>> {
    let dir = out_dir.join(stem);
    std::fs::create_dir_all(&dir)?;
    builder
        .build_server(true)
        .build_client(true)
        .out_dir(&dir)
        .file_descriptor_set_path(dir.join("descriptor.bin"))
        .compile_protos(&[proto_dir.join(format!("{stem}.proto"))], &[proto_dir])?;
    Ok(())
}
