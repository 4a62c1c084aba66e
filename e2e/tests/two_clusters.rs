//! Two clusters at once, each with floe, joined by the harness's veth pair:
//! a Pod in one reaches a listener Pod in the other, and each cluster's
//! volumes work while the other runs. Run alone:
//! `make e2e E2E_TEST=two_clusters`.

use std::time::Duration;

use floe_e2e::{floe_pvc, records_pod, Cluster, Error, Result};

#[test]
#[ignore = "needs root, the e2e components and floe's binaries: make e2e"]
fn two_clusters_reach_each_other_only_over_their_link() -> Result<()> {
    let a = Cluster::up("e2e-a", 5)?;
    let b = Cluster::up("e2e-b", 6)?;
    a.install_floe()?;
    b.install_floe()?;

    b.apply(&records_pod(&b, "listener", &["listen", "-addr", ":7070"], None))?;
    b.wait_pod("listener", "Running", Duration::from_secs(120))?;
    let ip = b.kubectl(&["get", "pod", "listener", "-o", "jsonpath={.status.podIP}"])?;

    // Before the link there is no way from a to b.
    a.apply(&records_pod(&a, "caller", &["sleep"], None))?;
    a.wait_pod("caller", "Running", Duration::from_secs(120))?;
    if let Ok(out) = a.exec("caller", &["records", "dial", "-addr", &format!("{ip}:7070")]) {
        return Err(Error::Check(format!("reached {ip} before the link: {out}")));
    }
    a.link(&b)?;
    let answer = a.exec("caller", &["records", "dial", "-addr", &format!("{ip}:7070")])?;
    println!("a/caller -> b/listener {ip}:7070: {}", answer.trim());
    if !answer.starts_with("floe-e2e listener") {
        return Err(Error::Check(format!("listener answered {answer:?}")));
    }

    for c in [&a, &b] {
        c.apply(&floe_pvc("data", "1Gi", false))?;
        c.apply(&records_pod(
            c,
            "writer",
            &["write", "-path", "/data/records", "-count", "64"],
            Some(("data", false)),
        ))?;
    }
    for c in [&a, &b] {
        c.wait_pod("writer", "Succeeded", Duration::from_secs(180))?;
        println!("{}: {}", c.name(), c.kubectl(&["logs", "writer"])?.trim());
    }
    Ok(())
}
