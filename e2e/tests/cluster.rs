//! One real cluster: kubelet runs a Pod of the locally built records image
//! on containerd, and `kubectl exec` reaches it (the controller's freeze
//! hooks will use exec). Run alone: `make e2e E2E_TEST=pod_runs_and_kubectl_exec_reaches_it`.

use std::time::Duration;

use floe_e2e::{records_pod, Cluster, Error, Result};

#[test]
#[ignore = "needs root and the e2e components: make e2e"]
fn pod_runs_and_kubectl_exec_reaches_it() -> Result<()> {
    let cluster = Cluster::up("e2e-pod", 1)?;
    cluster.apply(&records_pod(&cluster, "sleeper", &["sleep"], None))?;
    cluster.wait_pod("sleeper", "Running", Duration::from_secs(120))?;

    let wrote = cluster.exec("sleeper", &["records", "write", "-path", "/tmp/r", "-count", "16"])?;
    let checked = cluster.exec("sleeper", &["records", "check", "-path", "/tmp/r", "-count", "16"])?;
    println!("exec: {} / {}", wrote.trim(), checked.trim());
    if !checked.starts_with("ok: 16 records") {
        return Err(Error::Check(format!("records check printed {checked:?}")));
    }
    let ip = cluster.kubectl(&["get", "pod", "sleeper", "-o", "jsonpath={.status.podIP}"])?;
    if !ip.starts_with("198.18.17.") {
        return Err(Error::Check(format!("pod IP {ip} is not from the cluster's pod range")));
    }
    cluster.delete("pod", "sleeper")?;
    Ok(())
}
