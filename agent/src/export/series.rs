//! Writing families of constant series, each `credential_*` family capped at `--max-series`
//! series; a dropped series is counted once in `events_lost_total{stage="cardinality"}`.
use std::{
    borrow::Cow,
    collections::HashSet,
    fmt,
    hash::{Hash, Hasher},
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::state::{State, UserLoss};

/// A series' labels; values borrow from the state's records where they can (a scrape of 5,000
/// pods writes ~140,000 series: a copy of every value was most of its time).
pub type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// Distinct dropped series remembered; past it drops are counted without remembering.
const MAX_REMEMBERED_DROPS: usize = 1_000_000;

#[derive(Debug)]
pub struct SeriesCap {
    pub max_series: usize,
    /// Hashes of series dropped by the cap, so each is counted once.
    dropped: Mutex<HashSet<u64>>,
}

impl SeriesCap {
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            dropped: Mutex::default(),
        }
    }

    /// Keeps at most `max_series` rows of a `credential_*` or `auth_*` family (the others have a fixed
    /// size, and the loss counters must never be hidden); counts each dropped series once.
    fn cap<'a, V>(
        &self,
        state: &State,
        name: &str,
        mut rows: Vec<(Labels<'a>, V)>,
    ) -> Vec<(Labels<'a>, V)> {
        let capped = name.starts_with("credential_") || name.starts_with("auth_");
        if rows.len() <= self.max_series || !capped {
            return rows;
        }
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        let mut new = 0;
        for (labels, _) in rows.drain(self.max_series..) {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (name, &labels).hash(&mut h);
            if dropped.len() > MAX_REMEMBERED_DROPS || dropped.insert(h.finish()) {
                new += 1;
            }
        }
        state.count_lost(UserLoss::Cardinality, new);
        rows
    }
}

/// The writer of one scrape: the encoder, the cap, and the state that counts what the cap drops.
pub struct Families<'a, 'e> {
    pub enc: &'a mut DescriptorEncoder<'e>,
    pub cap: &'a SeriesCap,
    pub state: &'a State,
}

/// A label value in the text formats' escaping (`\\`, `\"`, `\n`). prometheus-client writes
/// values as they are, and a file name, a claim or a path can hold any character: unescaped, one
/// quote breaks the parse of the whole page, or a newline injects series.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_rows<V>(rows: &mut [(Labels, V)]) {
    for (labels, _) in rows {
        for (_, v) in labels.iter_mut() {
            if v.contains(['\\', '"', '\n']) {
                *v = Cow::Owned(escape_label_value(v));
            }
        }
    }
}

impl Families<'_, '_> {
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        rows: Vec<(Labels<'_>, u64)>,
    ) -> fmt::Result {
        let mut rows = self.cap.cap(self.state, name, rows);
        escape_rows(&mut rows);
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in &rows {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    pub fn gauges(&mut self, name: &str, help: &str, rows: Vec<(Labels<'_>, f64)>) -> fmt::Result {
        let mut rows = self.cap.cap(self.state, name, rows);
        escape_rows(&mut rows);
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        if let [(labels, v)] = rows.as_slice() {
            if labels.is_empty() {
                return ConstGauge::new(*v).encode(m);
            }
        }
        for (labels, v) in &rows {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// A histogram's state at scrape time: per-bucket (not cumulative) counts with their upper
/// bounds, the +Inf bucket last as `f64::MAX`, as prometheus-client's encoder takes them.
#[derive(Debug)]
pub struct ConstHistogram {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Families<'_, '_> {
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        mut rows: Vec<(Labels, ConstHistogram)>,
    ) -> fmt::Result {
        escape_rows(&mut rows);
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in &rows {
            h.encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_wants() {
        assert_eq!(escape_label_value("plain/file.txt"), "plain/file.txt");
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
