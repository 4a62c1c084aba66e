//! The role-change steps as metrics, read from [`Replication::status`] at
//! each scrape (so they never drift from `Status.step`):
//!
//! - `floe_replication_step{group, volume, step}` is 1 for each paired
//!   volume with a role change under way (`promoting`, `demoting`,
//!   `rehearsing`, `awaiting hashes`, `comparing`) or a primary that may
//!   not stream (`fenced`, `split brain`); absent otherwise;
//! - `floe_replication_resync_candidates_left_blocks{volume}`: on a promoted
//!   primary failing back, the candidates not compared yet;
//! - `floe_replication_retained_points{volume}`: on a DR, the committed
//!   epochs it can still be promoted back to;
//! - `floe_sender_resent_blocks_total{volume}`: on a primary, the block
//!   versions its engine shipped again after a reconnect because the DR
//!   did not hold them durably (since the process started);
//! - `floe_sender_written_blocks_total{volume}`: on a primary, the block
//!   writes of the host (since the process started).

use std::sync::{Mutex, PoisonError, Weak};

use floe_engine::ResyncPhase;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use super::Replication;

/// Reads the hub's status of every paired volume when scraped.
pub(super) struct StepCollector {
    hub: Weak<Replication>,
    step: IntGaugeVec,
    left: IntGaugeVec,
    retained: IntGaugeVec,
    resent: IntCounterVec,
    written: IntCounterVec,
    /// One scrape at a time: each resets the gauges and fills them again.
    scrape: Mutex<()>,
}

impl StepCollector {
    pub(super) fn new(hub: Weak<Replication>) -> prometheus::Result<Self> {
        Ok(StepCollector {
            hub,
            step: IntGaugeVec::new(
                Opts::new(
                    "floe_replication_step",
                    "1 for a paired volume with a role change under way, labelled with its step",
                ),
                &["group", "volume", "step"],
            )?,
            left: IntGaugeVec::new(
                Opts::new(
                    "floe_replication_resync_candidates_left_blocks",
                    "Failback candidates a promoted primary has not compared yet",
                ),
                &["volume"],
            )?,
            retained: IntGaugeVec::new(
                Opts::new(
                    "floe_replication_retained_points",
                    "Committed epochs a DR volume can still be promoted back to",
                ),
                &["volume"],
            )?,
            resent: IntCounterVec::new(
                Opts::new(
                    "floe_sender_resent_blocks_total",
                    "Block versions a primary shipped again after a reconnect (not held durably by the DR)",
                ),
                &["volume"],
            )?,
            written: IntCounterVec::new(
                Opts::new(
                    "floe_sender_written_blocks_total",
                    "Block writes of the host on a primary volume",
                ),
                &["volume"],
            )?,
            scrape: Mutex::new(()),
        })
    }
}

impl Collector for StepCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d: Vec<&Desc> = [&self.step, &self.left, &self.retained]
            .into_iter()
            .flat_map(|m| m.desc())
            .collect();
        d.extend(self.resent.desc());
        d.extend(self.written.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.step.reset();
        self.left.reset();
        self.retained.reset();
        self.resent.reset();
        self.written.reset();
        if let Some(hub) = self.hub.upgrade() {
            for (group, volume) in hub.paired_volumes() {
                let Ok(s) = hub.status(&volume) else { continue };
                let step = s.step();
                if !step.is_empty() {
                    // The step's name, without its progress (a label that
                    // changed at every scrape would make a new series).
                    let name = step.split(':').next().unwrap_or_default();
                    self.step.with_label_values(&[&group, &volume, name]).set(1);
                }
                if let ResyncPhase::Comparing { left } = s.resync {
                    self.left
                        .with_label_values(&[&volume])
                        .set(i64::try_from(left).unwrap_or(i64::MAX));
                }
                if s.side == super::Side::Primary {
                    self.resent.with_label_values(&[&volume]).inc_by(s.resent_blocks);
                    self.written.with_label_values(&[&volume]).inc_by(s.written_blocks);
                }
                if !s.retained.is_empty() {
                    self.retained.with_label_values(&[&volume]).set(s.retained.len() as i64);
                }
            }
        }
        let mut out: Vec<MetricFamily> = [&self.step, &self.left, &self.retained]
            .into_iter()
            .flat_map(|m| m.collect())
            .collect();
        out.extend(self.resent.collect());
        out.extend(self.written.collect());
        out
    }
}
