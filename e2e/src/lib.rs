//! floe's end-to-end harness: real Kubernetes clusters on this machine.
//!
//! [`Cluster::up`] runs `e2e/cluster.sh up`, which starts etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, containerd and a
//! kubelet in a network namespace of their own and waits until the Node is
//! Ready; [`Cluster::install_floe`] adds floe's node plugin, controller,
//! floe-registrar (kubelet plugin registration), csi-provisioner, the CSIDriver and the
//! StorageClass `floe`. Dropping a [`Cluster`] tears it all down
//! (`e2e/cluster.sh down`), also when a test panics; an interrupted test run
//! is cleaned up by `e2e/run-tests.sh`, which `make e2e` calls. Set
//! `FLOE_E2E_KEEP=1` to keep a cluster after its test for a look.
//!
//! The components are built once into `/var/cache/floe-e2e` by
//! `e2e/build.sh`; `docs/e2e.md` says what runs and what does not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What can go wrong driving a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command could not be started.
    #[error("start {command}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command exited non-zero.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (and stdout, when stderr was empty).
        stderr: String,
    },
    /// A condition did not hold in time.
    #[error("timed out after {secs} s waiting for {what}; last: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
        /// The last observation.
        last: String,
    },
    /// The cluster's env file is missing or malformed.
    #[error("read {path}")]
    Env {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A check of a test failed.
    #[error("{0}")]
    Check(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The `e2e/` directory of this checkout.
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn run(mut cmd: Command) -> Result<String> {
    let command = format!("{cmd:?}");
    let out: Output = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = stdout;
        }
        Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr,
        })
    }
}

fn script(args: &[&str]) -> Command {
    let mut cmd = Command::new(e2e_dir().join("cluster.sh"));
    cmd.args(args);
    cmd
}

/// A running cluster; dropped, it is torn down.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    env: HashMap<String, String>,
}

impl Cluster {
    /// Starts cluster `name` (addresses picked by `index`, 1..8) after
    /// removing whatever a failed run left under that name; returns when its
    /// Node is Ready.
    pub fn up(name: &str, index: u8) -> Result<Cluster> {
        // A leftover from an interrupted run.
        run(script(&["down", name]))?;
        let mut cmd = script(&["up", name, &index.to_string()]);
        cmd.stdout(std::process::Stdio::inherit());
        cmd.stderr(std::process::Stdio::inherit());
        let status = cmd.status().map_err(|source| Error::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        if !status.success() {
            return Err(Error::Failed {
                command: format!("e2e/cluster.sh up {name}"),
                status: status.to_string(),
                stderr: "see its output above".into(),
            });
        }
        let state = std::env::var("FLOE_E2E_STATE").unwrap_or_else(|_| "/var/lib/floe-e2e".to_owned());
        let path = PathBuf::from(format!("{state}/{name}/env"));
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Env { path, source })?;
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Cluster {
            name: name.to_owned(),
            env,
        })
    }

    /// Installs floe (node plugin, controller, sidecars, CSIDriver,
    /// StorageClass `floe`); returns when kubelet lists the driver.
    pub fn install_floe(&self) -> Result<()> {
        let mut cmd = script(&["floe", &self.name]);
        cmd.stdout(std::process::Stdio::inherit());
        run(cmd).map(drop)
    }

    /// SIGKILLs one of the cluster's processes (as `e2e/cluster.sh` names
    /// them: `floe-csi-node`, `floe-serve`, `kubelet`, …) and starts it again
    /// with the same command line.
    pub fn restart(&self, process: &str) -> Result<()> {
        run(script(&["restart", &self.name, process])).map(drop)
    }

    /// Joins this cluster and `other` with a veth pair and routes, the only
    /// way between them.
    pub fn link(&self, other: &Cluster) -> Result<()> {
        run(script(&["link", &self.name, &other.name])).map(drop)
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A value of the cluster's env file (`FLOE_E2E_NODE`, `FLOE_E2E_DIR`, …).
    pub fn env(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or("")
    }

    /// The records image's reference.
    pub fn records_image(&self) -> &str {
        self.env("FLOE_E2E_RECORDS_IMAGE")
    }

    /// Runs kubectl against the cluster; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.env("FLOE_E2E_NETNS")))
            .arg("--")
            .arg(self.env("FLOE_E2E_KUBECTL"))
            .arg("--kubeconfig")
            .arg(self.env("FLOE_E2E_KUBECONFIG"))
            .args(args);
        run(cmd)
    }

    /// `kubectl apply` of a manifest.
    pub fn apply(&self, manifest: &str) -> Result<()> {
        let dir = self.env("FLOE_E2E_DIR");
        let path = PathBuf::from(dir).join("apply.yaml");
        std::fs::write(&path, manifest).map_err(|source| Error::Env {
            path: path.clone(),
            source,
        })?;
        self.kubectl(&["apply", "-f", &path.to_string_lossy()]).map(drop)
    }

    /// Polls `check` every half second until it returns `Ok(true)`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<(bool, String)>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match check() {
                Ok((true, _)) => return Ok(()),
                Ok((false, seen)) => seen,
                Err(e) => e.to_string(),
            };
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until pod `name` (namespace default) is in `phase` (Running
    /// means Ready too); a pod that ends Failed while awaited fails fast.
    pub fn wait_pod(&self, name: &str, phase: &str, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("pod {name} {phase}"), timeout, || {
            let out = self.kubectl(&[
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            let mut it = out.split_whitespace();
            let seen = it.next().unwrap_or("").to_owned();
            let ready = it.next() == Some("True");
            if seen == "Failed" && phase != "Failed" {
                let logs = self.kubectl(&["logs", name]).unwrap_or_default();
                return Err(Error::Check(format!("pod {name} failed: {logs}")));
            }
            let ok = seen == phase && (phase != "Running" || ready);
            Ok((ok, format!("{out} {}", self.events_of(name))))
        })
    }

    /// The events about object `name`, one line each (for error messages).
    pub fn events_of(&self, name: &str) -> String {
        self.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
            "--no-headers",
        ])
        .unwrap_or_default()
        .replace('\n', " | ")
    }

    /// `kubectl exec POD -- CMD…`; its stdout.
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.kubectl(&args)
    }

    /// Deletes an object and waits until it is gone.
    pub fn delete(&self, kind: &str, name: &str) -> Result<()> {
        self.kubectl(&["delete", kind, name, "--wait=true", "--timeout=120s"])
            .map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("FLOE_E2E_KEEP").is_some() {
            eprintln!(
                "FLOE_E2E_KEEP: cluster {} kept; e2e/cluster.sh down {} removes it",
                self.name, self.name
            );
            return;
        }
        if let Err(e) = run(script(&["down", &self.name])) {
            eprintln!("tear down cluster {}: {e}", self.name);
        }
    }
}

/// A Pod of the records image running `args`, optionally with PVC `claim`
/// at /data (Filesystem) or as the device /dev/floe (Block).
pub fn records_pod(cluster: &Cluster, name: &str, args: &[&str], claim: Option<(&str, bool)>) -> String {
    let args = args.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let (mounts, volumes) = match claim {
        None => (String::new(), String::new()),
        Some((claim, false)) => (
            "    volumeMounts: [{name: data, mountPath: /data}]\n".to_owned(),
            format!("  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]\n"),
        ),
        Some((claim, true)) => (
            "    volumeDevices: [{name: data, devicePath: /dev/floe}]\n".to_owned(),
            format!("  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]\n"),
        ),
    };
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  dnsPolicy: Default
  terminationGracePeriodSeconds: 2
  automountServiceAccountToken: false
  enableServiceLinks: false
  containers:
  - name: records
    image: {image}
    imagePullPolicy: IfNotPresent
    args: [{args}]
{mounts}{volumes}",
        image = cluster.records_image(),
    )
}

/// A PVC of the StorageClass `floe`.
pub fn floe_pvc(name: &str, size: &str, block: bool) -> String {
    let mode = if block { "Block" } else { "Filesystem" };
    format!(
        "apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  storageClassName: floe
  volumeMode: {mode}
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: {size}
"
    )
}

/// A PVC of the StorageClass `floe` restored from VolumeSnapshot `snapshot`.
pub fn floe_pvc_from_snapshot(name: &str, size: &str, snapshot: &str) -> String {
    format!(
        "{}  dataSource:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: {snapshot}
",
        floe_pvc(name, size, false)
    )
}

/// A Pod of the records image running `args` with each `(claim, path)`
/// mounted (Filesystem) at `path`.
pub fn records_pod_mounts(cluster: &Cluster, name: &str, args: &[&str], mounts: &[(&str, &str)]) -> String {
    let base = records_pod(cluster, name, args, None);
    let volume_mounts = mounts
        .iter()
        .enumerate()
        .map(|(i, (_, path))| format!("{{name: v{i}, mountPath: {path}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let volumes = mounts
        .iter()
        .enumerate()
        .map(|(i, (claim, _))| format!("{{name: v{i}, persistentVolumeClaim: {{claimName: {claim}}}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{base}    volumeMounts: [{volume_mounts}]\n  volumes: [{volumes}]\n")
}
