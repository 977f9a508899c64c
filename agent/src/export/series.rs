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
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::state::{credentials::Named, State, UserLoss};

/// The labels of a small family's row (auth calls, health); values borrow where they can.
pub type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// A credential series' labels: `id`, the credential's identity labels rendered once per scrape
/// ([`identity`]), then the row's own. A scrape of 1,000 pods writes ~30,000 such rows, and
/// prometheus-client's per-label path (three dynamic writes a label, a `Vec` a row) was most of
/// its time.
#[derive(Hash)]
pub struct Row<'a, const N: usize> {
    pub id: &'a str,
    pub more: [(&'static str, &'a str); N],
}

/// `namespace="…",pod="…",volume="…",file="…"`, escaped: what every series of a credential
/// starts with.
pub fn identity(c: &Named) -> String {
    let mut out =
        String::with_capacity(48 + c.namespace.len() + c.pod.len() + c.volume.len() + c.file.len());
    let row = Row {
        id: "",
        more: [
            ("namespace", c.namespace),
            ("pod", c.pod),
            ("volume", c.record.volume.as_str()),
            ("file", c.record.file.as_str()),
        ],
    };
    row.write(&mut out).expect("writing to a String");
    out
}

/// A row's label set as the text format writes it (`k="v",…`, values escaped).
pub trait LabelSet: Hash {
    fn write(&self, w: &mut dyn fmt::Write) -> fmt::Result;
}

impl<const N: usize> LabelSet for Row<'_, N> {
    fn write(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(self.id)?;
        let pairs = self.more.iter().map(|(k, v)| (*k, *v));
        write_pairs(w, !self.id.is_empty(), pairs)
    }
}

impl LabelSet for Labels<'_> {
    fn write(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        write_pairs(w, false, self.iter().map(|(k, v)| (*k, v.as_ref())))
    }
}

fn write_pairs<'v>(
    w: &mut dyn fmt::Write,
    mut comma: bool,
    pairs: impl Iterator<Item = (&'static str, &'v str)>,
) -> fmt::Result {
    for (k, v) in pairs {
        if comma {
            w.write_str(",")?;
        }
        comma = true;
        w.write_str(k)?;
        w.write_str("=\"")?;
        write_value(w, v)?;
        w.write_str("\"")?;
    }
    Ok(())
}

/// A label value in the text formats' escaping (`\\`, `\"`, `\n`). prometheus-client writes
/// values as they are, and a file name, a claim or a path can hold any character: unescaped, one
/// quote breaks the parse of the whole page, or a newline injects series.
fn write_value(w: &mut dyn fmt::Write, v: &str) -> fmt::Result {
    let mut rest = v;
    while let Some(i) = memchr::memchr3(b'\\', b'"', b'\n', rest.as_bytes()) {
        w.write_str(&rest[..i])?;
        w.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[i + 1..];
    }
    w.write_str(rest)
}

/// Hands a [`LabelSet`] to prometheus-client whole: written through the first label's key
/// encoder (a plain `fmt::Write` into the page), as one set instead of label by label.
struct Text<'l, L>(&'l L);

impl<L: LabelSet> EncodeLabelSet for Text<'_, L> {
    fn encode(&self, mut enc: LabelSetEncoder) -> fmt::Result {
        let mut label = enc.encode_label();
        let mut key = label.encode_label_key()?;
        self.0.write(&mut key)
    }
}

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
    fn admit(&self, state: &State, name: &str, index: usize, labels: &impl Hash) -> bool {
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

impl Families<'_, '_> {
    /// Writes a family row by row as `rows` yields them: each row's labels are made, written and
    /// freed in turn (a scrape of 5,000 pods has ~140,000 rows; holding them all was most of its
    /// allocator time).
    fn family<L: LabelSet, V>(
        &mut self,
        name: &str,
        help: &str,
        ty: MetricType,
        rows: impl IntoIterator<Item = (L, V)>,
        write: impl Fn(&V, MetricEncoder) -> fmt::Result,
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, ty)?;
        for (i, (labels, v)) in rows.into_iter().enumerate() {
            if self.cap.admit(self.state, name, i, &labels) {
                write(&v, m.encode_family(&Text(&labels))?)?;
            }
        }
        Ok(())
    }

    pub fn counters<L: LabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        self.family(name, help, MetricType::Counter, rows, |v, m| {
            ConstCounter::new(*v).encode(m)
        })
    }

    pub fn gauges<L: LabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, f64)>,
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

    pub fn histograms<L: LabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, ConstHistogram)>,
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

    fn written(v: &str) -> String {
        let mut out = String::new();
        let row = Row {
            id: "",
            more: [("k", v)],
        };
        row.write(&mut out).unwrap();
        out
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_wants() {
        assert_eq!(written("plain/file.txt"), "k=\"plain/file.txt\"");
        assert_eq!(written("a\"b\\c\nd"), "k=\"a\\\"b\\\\c\\nd\"");
        assert_eq!(written("\n\n"), "k=\"\\n\\n\"");
        let labels: Labels = vec![("a", "x".into()), ("b", "\"".into())];
        let mut out = String::new();
        labels.write(&mut out).unwrap();
        assert_eq!(out, "a=\"x\",b=\"\\\"\"");
    }
}
