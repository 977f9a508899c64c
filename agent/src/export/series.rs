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
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
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

    /// Whether row `index` of family `name` is written: a `credential_*` or `auth_*` family keeps
    /// its first `max_series` rows (the others have a fixed size, and the loss counters must
    /// never be hidden); a dropped series is counted once.
    fn admit(&self, state: &State, name: &str, index: usize, labels: &Labels) -> bool {
        let capped = name.starts_with("credential_") || name.starts_with("auth_");
        if index < self.max_series || !capped {
            return true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, labels).hash(&mut h);
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        if dropped.len() > MAX_REMEMBERED_DROPS || dropped.insert(h.finish()) {
            state.count_lost(UserLoss::Cardinality, 1);
        }
        false
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

fn escape(labels: &mut Labels) {
    for (_, v) in labels.iter_mut() {
        // Bytes, not chars: a scan of every label value of every row is on the scrape's path.
        if v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
            *v = Cow::Owned(escape_label_value(v));
        }
    }
}

impl Families<'_, '_> {
    /// Writes a family row by row as `rows` yields them: each row's labels are made, written and
    /// freed in turn (a scrape of 5,000 pods has ~140,000 rows; holding them all was most of its
    /// allocator time).
    fn family<'a, V>(
        &mut self,
        name: &str,
        help: &str,
        ty: MetricType,
        rows: impl IntoIterator<Item = (Labels<'a>, V)>,
        write: impl Fn(&V, MetricEncoder) -> fmt::Result,
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, ty)?;
        for (i, (mut labels, v)) in rows.into_iter().enumerate() {
            if self.cap.admit(self.state, name, i, &labels) {
                escape(&mut labels);
                write(&v, m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    pub fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, u64)>,
    ) -> fmt::Result {
        self.family(name, help, MetricType::Counter, rows, |v, m| {
            ConstCounter::new(*v).encode(m)
        })
    }

    pub fn gauges<'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, f64)>,
    ) -> fmt::Result {
        self.family(name, help, MetricType::Gauge, rows, |v, m| {
            ConstGauge::new(*v).encode(m)
        })
    }

    /// A family of one series without labels.
    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }

    pub fn histograms<'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, ConstHistogram)>,
    ) -> fmt::Result {
        self.family(name, help, MetricType::Histogram, rows, |h, m| h.encode(m))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_wants() {
        assert_eq!(escape_label_value("plain/file.txt"), "plain/file.txt");
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
