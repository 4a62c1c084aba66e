//! [`Cluster`]: the volumes of several nodes as one [`NodeVolumes`], what a
//! controller in split mode calls.
//!
//! Ids are the ones the CSI names give (`params::id_for_name`), unique
//! across the cluster because every creation goes through here. Where an
//! object lives is found by asking the nodes, in parallel, and remembered;
//! a remembered home is checked with one call before it is used, and asked
//! for again when the object is no longer there.
//!
//! - **Placement.** A create whose id some node holds goes back to that node
//!   (a retry: the node returns its volume or refuses a different one). A
//!   restore or clone goes to the node holding its source. Otherwise the
//!   spec's placement hint, else the node with the most free bytes.
//! - **Unreachable nodes.** A node that cannot be reached makes every call
//!   that has to ask it fail with `UNAVAILABLE` naming it: "not on the other
//!   nodes" does not prove "nowhere", and creating a volume elsewhere could
//!   leave the same id on two nodes.
//! - **Groups.** A group snapshot is one cut on one node; members on several
//!   nodes are refused until the controller's quiesce/freeze/thaw sequence
//!   over `NodeAdmin` can cut across nodes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use super::RemoteVolumes;
use crate::node::error::{Error, Result};
use crate::node::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, NodeVolumes, Snapshot, SnapshotSpec, Source, Volume, VolumeSpec,
};

/// What kind of object a remembered home is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Volume,
    Snapshot,
    Group,
}

/// The volumes of several nodes.
pub struct Cluster {
    nodes: Vec<RemoteVolumes>,
    /// Object (kind, id) to index in `nodes`.
    homes: Mutex<HashMap<(Kind, String), usize>>,
}

impl Cluster {
    /// The cluster of `nodes`; node ids must be distinct.
    pub fn new(nodes: Vec<RemoteVolumes>) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        for n in &nodes {
            if !seen.insert(n.node()) {
                return Err(Error::Invalid {
                    field: "--node-endpoint",
                    value: n.node().to_owned(),
                    expected: "each node named once".into(),
                });
            }
        }
        Ok(Cluster {
            nodes,
            homes: Mutex::default(),
        })
    }

    fn homes(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), usize>> {
        self.homes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, kind: Kind, id: &str, node: usize) {
        self.homes().insert((kind, id.to_owned()), node);
    }

    fn forget(&self, kind: Kind, id: &str) {
        self.homes().remove(&(kind, id.to_owned()));
    }

    fn cached(&self, kind: Kind, id: &str) -> Option<usize> {
        self.homes().get(&(kind, id.to_owned())).copied()
    }

    fn index_of(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.node() == node)
            .ok_or_else(|| Error::Invalid {
                field: "node",
                value: node.to_owned(),
                expected: format!("one of the nodes given with --node-endpoint: {:?}", self.nodes()),
            })
    }

    /// Runs `call` on every node at once; the answers in node order.
    async fn on_all<T, F, Fut>(&self, call: F) -> Vec<Result<T>>
    where
        T: Send + 'static,
        F: Fn(RemoteVolumes) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let call = call(n.clone());
            set.spawn(async move { (i, call.await) });
        }
        let mut out: Vec<Option<Result<T>>> = self.nodes.iter().map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, r)) => out[i] = Some(r),
                Err(e) => tracing::error!(error = %e, "a call to a node panicked"),
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a call to a node panicked".into()))))
            .collect()
    }

    /// Every node's answer, or the first failure in node order.
    async fn every_node<T, F, Fut>(&self, call: F) -> Result<Vec<(usize, T)>>
    where
        T: Send + 'static,
        F: Fn(RemoteVolumes) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.on_all(call)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map(|t| (i, t)))
            .collect()
    }

    /// The node whose `probe` finds object `id`, checking a remembered home
    /// first. `None` when every node answered and none has it; the failure
    /// of an unreachable node when no other node has it.
    async fn find<T, F, Fut>(&self, kind: Kind, id: &str, probe: F) -> Result<Option<(usize, T)>>
    where
        T: Send + 'static,
        F: Fn(RemoteVolumes, String) -> Fut,
        Fut: Future<Output = Result<Option<T>>> + Send + 'static,
    {
        if let Some(i) = self.cached(kind, id) {
            if let Some(t) = probe(self.nodes[i].clone(), id.to_owned()).await? {
                return Ok(Some((i, t)));
            }
            self.forget(kind, id);
        }
        let mut failure = None;
        let mut found = None;
        for (i, r) in self.on_all(|n| probe(n, id.to_owned())).await.into_iter().enumerate() {
            match r {
                Ok(Some(t)) if found.is_none() => found = Some((i, t)),
                Ok(Some(_)) => tracing::warn!(?kind, id, node = %self.nodes[i].node(), "held by two nodes"),
                Ok(None) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match (found, failure) {
            (Some((i, t)), _) => {
                self.remember(kind, id, i);
                Ok(Some((i, t)))
            }
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    async fn find_volume(&self, id: &str) -> Result<Option<(usize, Volume)>> {
        self.find(Kind::Volume, id, |n, id| async move { n.volume(&id).await })
            .await
    }

    async fn find_snapshot(&self, id: &str) -> Result<Option<(usize, Snapshot)>> {
        let probe =
            |n: RemoteVolumes, id: String| async move { Ok(n.snapshots().await?.into_iter().find(|s| s.id == id)) };
        self.find(Kind::Snapshot, id, probe).await
    }

    async fn find_group(&self, id: &str) -> Result<Option<(usize, GroupSnapshot)>> {
        self.find(Kind::Group, id, |n, id| async move { n.group(&id).await })
            .await
    }

    /// Where a new volume goes (see the module doc).
    async fn place(&self, spec: &VolumeSpec) -> Result<usize> {
        if let Some((i, _)) = self.find_volume(&spec.id).await? {
            return Ok(i);
        }
        let source = match &spec.source {
            Some(Source::Snapshot(s)) => Some(
                self.find_snapshot(s)
                    .await?
                    .ok_or_else(|| Error::SnapshotNotFound(s.clone()))?
                    .0,
            ),
            Some(Source::Volume(v)) => Some(self.volume_home(v).await?),
            None => None,
        };
        let hint = spec.node.as_deref().map(|n| self.index_of(n)).transpose()?;
        match (source, hint) {
            (Some(s), Some(h)) if s != h => Err(Error::ResourceExhausted(format!(
                "volume {:?} is to be made from {} on node {:?}, which holds it, but the topology asks for node {:?}: a restore or clone is made where its source is",
                spec.name,
                spec.source.as_ref().map(describe_source).unwrap_or_default(),
                self.nodes[s].node(),
                self.nodes[h].node()
            ))),
            (Some(i), _) | (None, Some(i)) => Ok(i),
            (None, None) => {
                let caps = self.every_node(|n| async move { n.capacity().await }).await?;
                let best = caps
                    .iter()
                    .max_by_key(|(i, c)| (c.available_bytes, std::cmp::Reverse(*i)))
                    .map(|(i, _)| *i);
                best.ok_or_else(|| Error::FailedPrecondition("the cluster has no nodes: give --node-endpoint".into()))
            }
        }
    }

    /// The node holding volume `id`; NOT_FOUND when none does.
    async fn volume_home(&self, id: &str) -> Result<usize> {
        let found = self.find_volume(id).await?;
        Ok(found.ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?.0)
    }
}

fn describe_source(s: &Source) -> String {
    match s {
        Source::Snapshot(id) => format!("snapshot {id:?}"),
        Source::Volume(id) => format!("volume {id:?}"),
    }
}

#[tonic::async_trait]
impl NodeVolumes for Cluster {
    async fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        let i = self.place(&spec).await?;
        let id = spec.id.clone();
        let v = self.nodes[i].create(spec).await?;
        self.remember(Kind::Volume, &id, i);
        tracing::info!(volume = %id, node = %self.nodes[i].node(), "volume placed");
        Ok(v)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if let Some((i, _)) = self.find_volume(id).await? {
            self.nodes[i].delete(id).await?;
        }
        self.forget(Kind::Volume, id);
        Ok(())
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        Ok(self.find_volume(id).await?.map(|(_, v)| v))
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        let mut out: BTreeMap<String, Volume> = BTreeMap::new();
        for (i, vs) in self.every_node(|n| async move { n.volumes().await }).await? {
            for v in vs {
                self.remember(Kind::Volume, &v.id, i);
                out.entry(v.id.clone()).or_insert(v);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn expand(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        self.nodes[self.volume_home(id).await?].expand(id, size_bytes).await
    }

    async fn attach(&self, id: &str) -> Result<Attachment> {
        self.nodes[self.volume_home(id).await?].attach(id).await
    }

    async fn detach(&self, id: &str) -> Result<()> {
        match self.find_volume(id).await? {
            Some((i, _)) => self.nodes[i].detach(id).await,
            None => Ok(()),
        }
    }

    async fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        let i = match self.find_snapshot(&spec.id).await? {
            Some((i, _)) => i,
            None => self.volume_home(&spec.volume).await?,
        };
        let s = self.nodes[i].snapshot(spec).await?;
        self.remember(Kind::Snapshot, &s.id, i);
        Ok(s)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        if let Some((i, _)) = self.find_snapshot(id).await? {
            self.nodes[i].delete_snapshot(id).await?;
        }
        self.forget(Kind::Snapshot, id);
        Ok(())
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut out: BTreeMap<String, Snapshot> = BTreeMap::new();
        for (i, ss) in self.every_node(|n| async move { n.snapshots().await }).await? {
            for s in ss {
                self.remember(Kind::Snapshot, &s.id, i);
                out.entry(s.id.clone()).or_insert(s);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        let i = match self.find_group(&spec.id).await? {
            Some((i, _)) => i,
            None => {
                let mut by_node: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
                for m in &spec.members {
                    let i = self.volume_home(&m.volume).await?;
                    by_node.entry(i).or_default().push(&m.volume);
                }
                if by_node.len() > 1 {
                    let spread: Vec<String> = by_node
                        .iter()
                        .map(|(i, vs)| format!("{} on node {:?}", vs.join(", "), self.nodes[*i].node()))
                        .collect();
                    return Err(Error::FailedPrecondition(format!(
                        "group snapshot {:?} spans nodes ({}): a cut across nodes needs the controller's freeze sequence, \
                         which is not built yet: put the group's volumes on one node",
                        spec.name,
                        spread.join("; ")
                    )));
                }
                by_node
                    .into_keys()
                    .next()
                    .ok_or_else(|| Error::Contradiction("a group snapshot needs at least one volume".into()))?
            }
        };
        let g = self.nodes[i].create_group(spec).await?;
        self.remember(Kind::Group, &g.id, i);
        for m in &g.members {
            self.remember(Kind::Snapshot, m, i);
        }
        Ok(g)
    }

    async fn delete_group(&self, id: &str) -> Result<()> {
        if let Some((i, g)) = self.find_group(id).await? {
            self.nodes[i].delete_group(id).await?;
            for m in &g.members {
                self.forget(Kind::Snapshot, m);
            }
        }
        self.forget(Kind::Group, id);
        Ok(())
    }

    async fn group(&self, id: &str) -> Result<Option<GroupSnapshot>> {
        Ok(self.find_group(id).await?.map(|(_, g)| g))
    }

    /// The whole cluster: free bytes added up, the largest volume any one
    /// node could make.
    async fn capacity(&self) -> Result<Capacity> {
        let caps = self.every_node(|n| async move { n.capacity().await }).await?;
        Ok(Capacity {
            available_bytes: caps
                .iter()
                .fold(0u64, |sum, (_, c)| sum.saturating_add(c.available_bytes)),
            max_volume_bytes: caps.iter().map(|(_, c)| c.max_volume_bytes).max().unwrap_or(0),
        })
    }

    fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node().to_owned()).collect()
    }

    async fn volume_node(&self, id: &str) -> Result<Option<String>> {
        let i = match self.cached(Kind::Volume, id) {
            Some(i) => Some(i),
            None => self.find_volume(id).await?.map(|(i, _)| i),
        };
        Ok(i.map(|i| self.nodes[i].node().to_owned()))
    }

    async fn snapshot_node(&self, id: &str) -> Result<Option<String>> {
        let i = match self.cached(Kind::Snapshot, id) {
            Some(i) => Some(i),
            None => self.find_snapshot(id).await?.map(|(i, _)| i),
        };
        Ok(i.map(|i| self.nodes[i].node().to_owned()))
    }

    async fn capacity_of(&self, node: &str) -> Result<Capacity> {
        self.nodes[self.index_of(node)?].capacity().await
    }
}
