//! Snapshots through the real csi-snapshotter and snapshot-controller: a
//! VolumeSnapshot of a PVC becomes readyToUse and a PVC restored from it
//! holds the records; a VolumeGroupSnapshot of two PVCs written in lockstep
//! restores to one cut (each restored volume is a gap-free prefix, and the
//! two prefixes differ by at most the one record in flight). Run alone:
//! `make e2e E2E_TEST=snapshot`.

use std::time::Duration;

use floe_e2e::{floe_pvc, floe_pvc_from_snapshot, records_pod, records_pod_mounts, Cluster, Error, Result};

fn ready(cluster: &Cluster, kind: &str, name: &str) -> Result<()> {
    cluster.wait_until(&format!("{kind} {name} readyToUse"), Duration::from_secs(120), || {
        let out = cluster.kubectl(&[
            "get",
            kind,
            name,
            "-o",
            "jsonpath={.status.readyToUse} {.status.error.message}",
        ])?;
        Ok((out.starts_with("true"), format!("{out} {}", cluster.events_of(name))))
    })
}

fn streamed(cluster: &Cluster, pod: &str, at_least: usize) -> Result<()> {
    cluster.wait_until(&format!("{at_least} records streamed"), Duration::from_secs(60), || {
        let log = cluster.kubectl(&["logs", pod])?;
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
}

#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn volume_snapshot_is_ready_and_restores_the_records() -> Result<()> {
    let cluster = Cluster::up("e2e-snap", 1)?;
    cluster.install_floe()?;
    cluster.apply(&floe_pvc("data", "1Gi", false))?;
    cluster.apply(&records_pod(
        &cluster,
        "writer",
        &["write", "-path", "/data/records", "-count", "128"],
        Some(("data", false)),
    ))?;
    cluster.wait_pod("writer", "Succeeded", Duration::from_secs(180))?;
    cluster.apply(
        "apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: snap
spec:
  volumeSnapshotClassName: floe
  source:
    persistentVolumeClaimName: data
",
    )?;
    ready(&cluster, "volumesnapshot", "snap")?;
    println!("volumesnapshot snap readyToUse");
    cluster.apply(&floe_pvc_from_snapshot("restored", "1Gi", "snap"))?;
    cluster.apply(&records_pod(
        &cluster,
        "reader",
        &["check", "-path", "/data/records", "-count", "128"],
        Some(("restored", false)),
    ))?;
    cluster.wait_pod("reader", "Succeeded", Duration::from_secs(180))?;
    let read = cluster.kubectl(&["logs", "reader"])?;
    println!("reader of the restored PVC: {}", read.trim());
    if !read.starts_with("ok: 128 records intact") {
        return Err(Error::Check(format!("reader printed {read:?}")));
    }
    Ok(())
}

#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn volume_group_snapshot_restores_one_cut_of_two_volumes() -> Result<()> {
    let cluster = Cluster::up("e2e-group", 2)?;
    cluster.install_floe()?;
    for pvc in ["ga", "gb"] {
        let manifest = floe_pvc(pvc, "1Gi", false).replace("  name: ", "  labels: {group: g}\n  name: ");
        cluster.apply(&manifest)?;
    }
    cluster.apply(&records_pod_mounts(
        &cluster,
        "streamer",
        &[
            "stream",
            "-path",
            "/a/records",
            "-path2",
            "/b/records",
            "-interval",
            "2ms",
        ],
        &[("ga", "/a"), ("gb", "/b")],
    ))?;
    cluster.wait_pod("streamer", "Running", Duration::from_secs(180))?;
    streamed(&cluster, "streamer", 300)?;
    cluster.apply(
        "apiVersion: groupsnapshot.storage.k8s.io/v1beta2
kind: VolumeGroupSnapshot
metadata:
  name: cut
spec:
  volumeGroupSnapshotClassName: floe
  source:
    selector:
      matchLabels: {group: g}
",
    )?;
    ready(&cluster, "volumegroupsnapshot", "cut")?;
    let snaps = cluster.kubectl(&["get", "volumesnapshot", "-o", "jsonpath={.items[*].metadata.name}"])?;
    let snaps: Vec<&str> = snaps.split_whitespace().collect();
    println!("volumegroupsnapshot cut readyToUse: {snaps:?}");
    if snaps.len() != 2 {
        return Err(Error::Check(format!(
            "expected 2 VolumeSnapshots of the group, got {snaps:?}"
        )));
    }
    cluster.delete("pod", "streamer")?;
    for (i, snap) in snaps.iter().enumerate() {
        cluster.apply(&floe_pvc_from_snapshot(&format!("r{i}"), "1Gi", snap))?;
    }
    cluster.apply(&records_pod_mounts(
        &cluster,
        "reader",
        &["sleep"],
        &[("r0", "/x"), ("r1", "/y")],
    ))?;
    cluster.wait_pod("reader", "Running", Duration::from_secs(180))?;
    let mut prefixes = Vec::new();
    for path in ["/x/records", "/y/records"] {
        let out = cluster.exec("reader", &["records", "prefix", "-path", path])?;
        let n: usize = out
            .trim()
            .parse()
            .map_err(|_| Error::Check(format!("prefix printed {out:?}")))?;
        prefixes.push(n);
    }
    println!("restored group: gap-free prefixes {prefixes:?}");
    let (lo, hi) = (prefixes[0].min(prefixes[1]), prefixes[0].max(prefixes[1]));
    if lo < 300 || hi - lo > 1 {
        return Err(Error::Check(format!(
            "prefixes {prefixes:?} are not one cut of >= 300 records"
        )));
    }
    Ok(())
}
