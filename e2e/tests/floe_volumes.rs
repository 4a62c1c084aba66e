//! floe serving real pods through kubelet: csi-provisioner creates the
//! volume, kubelet stages and publishes it (NodeStage, NodePublish), a Pod
//! writes and fsyncs numbered records, is deleted, and a second Pod on the
//! same PVC reads every record back; deleting the PVC leaves no floe
//! volume, mount or loop device. Run alone:
//! `make e2e E2E_TEST=records_written_by_one_pod_are_read_by_the_next`.

use std::time::Duration;

use floe_e2e::{floe_pvc, records_pod, Cluster, Error, Result};

const RECORDS: &str = "256";

fn pod_log(cluster: &Cluster, pod: &str) -> Result<String> {
    cluster.kubectl(&["logs", pod])
}

/// floe volumes (the data plane's stores), their mounts and loop devices on
/// this cluster's node.
fn floe_leftovers(cluster: &Cluster) -> Result<Vec<String>> {
    let dir = cluster.env("FLOE_E2E_DIR");
    let mut left = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|source| Error::Env {
        path: "/proc/self/mounts".into(),
        source,
    })?;
    for line in mounts.lines() {
        let target = line.split_whitespace().nth(1).unwrap_or("");
        if target.starts_with(&format!("{dir}/kubelet/root/")) || target.starts_with(&format!("{dir}/floe/data/")) {
            left.push(format!("mount {target}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(format!("{dir}/floe/data/volumes")) {
        for e in entries.flatten() {
            left.push(format!("floe volume {}", e.file_name().to_string_lossy()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let backing = e.path().join("loop/backing_file");
            if let Ok(file) = std::fs::read_to_string(&backing) {
                if file.starts_with(dir) {
                    left.push(format!(
                        "loop device {} on {}",
                        e.file_name().to_string_lossy(),
                        file.trim()
                    ));
                }
            }
        }
    }
    Ok(left)
}

#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn records_written_by_one_pod_are_read_by_the_next() -> Result<()> {
    let cluster = Cluster::up("e2e-floe", 2)?;
    cluster.install_floe()?;
    cluster.apply(&floe_pvc("data", "1Gi", false))?;

    cluster.apply(&records_pod(
        &cluster,
        "writer",
        &["write", "-path", "/data/records", "-count", RECORDS, "-sleep"],
        Some(("data", false)),
    ))?;
    cluster.wait_pod("writer", "Running", Duration::from_secs(180))?;
    cluster.wait_until("writer's records", Duration::from_secs(60), || {
        let log = pod_log(&cluster, "writer")?;
        Ok((log.contains("wrote"), log))
    })?;
    println!("writer: {}", pod_log(&cluster, "writer")?.trim());
    let pv = cluster.kubectl(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"])?;
    println!("pvc data bound to {pv}");
    cluster.delete("pod", "writer")?;

    cluster.apply(&records_pod(
        &cluster,
        "reader",
        &["check", "-path", "/data/records", "-count", RECORDS],
        Some(("data", false)),
    ))?;
    cluster.wait_pod("reader", "Succeeded", Duration::from_secs(180))?;
    let read = pod_log(&cluster, "reader")?;
    println!("reader: {}", read.trim());
    if !read.starts_with(&format!("ok: {RECORDS} records intact")) {
        return Err(Error::Check(format!("reader printed {read:?}")));
    }
    cluster.delete("pod", "reader")?;

    cluster.delete("pvc", "data")?;
    cluster.wait_until("PV deleted", Duration::from_secs(60), || {
        let pvs = cluster.kubectl(&["get", "pv", "-o", "name"])?;
        Ok((pvs.trim().is_empty(), pvs))
    })?;
    cluster.wait_until("no floe volume, mount or loop device", Duration::from_secs(30), || {
        let left = floe_leftovers(&cluster)?;
        Ok((left.is_empty(), left.join(", ")))
    })?;
    println!("pvc data deleted: no PV, floe volume, mount or loop device left");
    Ok(())
}

#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn block_volume_records_written_by_one_pod_are_read_by_the_next() -> Result<()> {
    let cluster = Cluster::up("e2e-block", 3)?;
    cluster.install_floe()?;
    cluster.apply(&floe_pvc("raw", "1Gi", true))?;
    cluster.apply(&records_pod(
        &cluster,
        "writer",
        &["write", "-path", "/dev/floe", "-count", RECORDS, "-sleep"],
        Some(("raw", true)),
    ))?;
    cluster.wait_pod("writer", "Running", Duration::from_secs(180))?;
    cluster.wait_until("writer's records", Duration::from_secs(60), || {
        let log = pod_log(&cluster, "writer")?;
        Ok((log.contains("wrote"), log))
    })?;
    println!("writer: {}", pod_log(&cluster, "writer")?.trim());
    cluster.delete("pod", "writer")?;
    cluster.apply(&records_pod(
        &cluster,
        "reader",
        &["check", "-path", "/dev/floe", "-count", RECORDS],
        Some(("raw", true)),
    ))?;
    cluster.wait_pod("reader", "Succeeded", Duration::from_secs(180))?;
    let read = pod_log(&cluster, "reader")?;
    println!("reader: {}", read.trim());
    if !read.starts_with(&format!("ok: {RECORDS} records intact")) {
        return Err(Error::Check(format!("reader printed {read:?}")));
    }
    cluster.delete("pod", "reader")?;
    cluster.delete("pvc", "raw")?;
    cluster.wait_until("no floe volume, mount or loop device", Duration::from_secs(60), || {
        let left = floe_leftovers(&cluster)?;
        Ok((left.is_empty(), left.join(", ")))
    })?;
    Ok(())
}

/// floe-csi (node) and then the data plane are SIGKILLed and restarted
/// under a Pod that streams fsynced records: the writer sees no I/O error
/// (the data plane's successor takes the FUSE connections over from the
/// holder), and every record it reported is there.
#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn writer_sees_no_error_when_floe_is_killed_and_restarted() -> Result<()> {
    let cluster = Cluster::up("e2e-kill", 4)?;
    cluster.install_floe()?;
    cluster.apply(&floe_pvc("busy", "1Gi", false))?;
    cluster.apply(&records_pod(
        &cluster,
        "streamer",
        &["stream", "-path", "/data/records", "-interval", "5ms"],
        Some(("busy", false)),
    ))?;
    cluster.wait_pod("streamer", "Running", Duration::from_secs(180))?;
    let streamed = |at_least: usize| -> Result<()> {
        cluster.wait_until(&format!("{at_least} records streamed"), Duration::from_secs(60), || {
            let log = pod_log(&cluster, "streamer")?;
            let n = log
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("streamed ")?
                        .split_whitespace()
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            Ok((n >= at_least, log.lines().last().unwrap_or("").to_owned()))
        })
    };
    streamed(200)?;
    cluster.restart("floe-csi-node")?;
    streamed(600)?;
    cluster.restart("floe-serve")?;
    streamed(1200)?;
    let phase = cluster.kubectl(&["get", "pod", "streamer", "-o", "jsonpath={.status.phase}"])?;
    if phase != "Running" {
        return Err(Error::Check(format!(
            "streamer is {phase} after the kills: {}",
            pod_log(&cluster, "streamer")?
        )));
    }
    let prefix = cluster.exec("streamer", &["records", "prefix", "-path", "/data/records"])?;
    let prefix: usize = prefix
        .trim()
        .parse()
        .map_err(|_| Error::Check(format!("prefix printed {prefix:?}")))?;
    println!("streamer still running after both kills; {prefix} records intact from 0");
    if prefix < 1200 {
        return Err(Error::Check(format!(
            "only {prefix} intact records, 1200 were streamed"
        )));
    }
    cluster.delete("pod", "streamer")?;
    cluster.delete("pvc", "busy")?;
    Ok(())
}

/// The PVC grows online through csi-resizer (ControllerExpandVolume) and
/// kubelet (NodeExpandVolume) while its Pod runs, and the Pod sees the new
/// size of its file system. The volume is xfs: growing a mounted ext4 needs
/// CAP_SYS_RESOURCE, which root lacks on this machine (floe refuses with a
/// message that says so).
#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn pvc_expanded_online_and_the_pod_sees_the_new_size() -> Result<()> {
    let cluster = Cluster::up("e2e-grow", 5)?;
    cluster.install_floe()?;
    cluster.apply(&floe_pvc("grow", "1Gi", false).replace("storageClassName: floe", "storageClassName: floe-xfs"))?;
    cluster.apply(&records_pod(&cluster, "holder", &["sleep"], Some(("grow", false))))?;
    cluster.wait_pod("holder", "Running", Duration::from_secs(180))?;
    let size = |c: &Cluster| -> Result<u64> {
        let out = c.exec("holder", &["records", "size", "-path", "/data"])?;
        out.trim()
            .parse()
            .map_err(|_| Error::Check(format!("size printed {out:?}")))
    };
    let before = size(&cluster)?;
    cluster.kubectl(&[
        "patch",
        "pvc",
        "grow",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
    ])?;
    cluster.wait_until("the Pod sees the grown file system", Duration::from_secs(180), || {
        let now = size(&cluster)?;
        Ok((
            now > before + (768 << 20),
            format!("{now} bytes {}", cluster.events_of("grow")),
        ))
    })?;
    let capacity = cluster.kubectl(&["get", "pvc", "grow", "-o", "jsonpath={.status.capacity.storage}"])?;
    println!(
        "file system in the Pod: {before} -> {} bytes; PVC capacity {capacity}",
        size(&cluster)?
    );
    Ok(())
}
