//! CloudWatch Embedded Metric Format (EMF) for the `metrics` facade.
//!
//! The functions record metrics with the same macros and the same names
//! ([`fluxcb_core::metric_names`]) as the long-running server, whose `/metrics` endpoint renders
//! them for Prometheus. In Lambda there is nothing to scrape, so [`EmfRecorder`] aggregates in
//! memory and [`EmfRecorder::flush`] turns what happened since the previous flush into EMF JSON
//! lines. Written to stdout ([`flush_to_stdout`], at the end of each invocation), CloudWatch Logs
//! extracts them as metrics: no CloudWatch API call, no added latency.
//!
//! Each flush reports deltas:
//! - counters: the sum of the increments since the last flush (unit `Count`); counters not
//!   incremented since are left out, while an increment by zero reports 0 (the sweeper ran and
//!   recovered nothing);
//! - gauges: the current value, for gauges written (set, incremented or decremented) since the
//!   last flush; the value itself carries over, a gauge being a level;
//! - histograms: every value recorded since the last flush, rounded to
//!   [`SIGNIFICANT_DIGITS`] significant digits and sent as `{"Values": [..], "Counts": [..]}`.
//!
//! One line per label set: the labels become the line's dimensions (and root members) and the
//! metrics recorded with exactly those labels its metrics. EMF limits are kept: at most
//! [`MAX_METRICS_PER_DIRECTIVE`] metrics per line and [`MAX_VALUES_PER_METRIC`] values per
//! histogram per line (more take further lines, which CloudWatch aggregates), at most
//! [`MAX_DIMENSIONS`] dimensions (further labels stay root members, not dimensions), lines well
//! under the 256 KB event limit ([`MAX_LINE_BYTES`]), dimension names and values restricted to
//! what CloudWatch accepts, values CloudWatch cannot store dropped. Labels are meant to be
//! bounded (outcomes and statuses); should a flush still see more than
//! [`DEFAULT_MAX_LABEL_SETS`] label sets, the rest are folded into one label set per label-key
//! combination whose values all read [`OVERFLOW_LABEL_VALUE`], and the number folded is reported
//! as the unlabeled counter [`LABEL_SETS_OVERFLOWED`].

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fluxcb_core::metric_names as names;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};
use serde_json::{json, Map, Value};

/// EMF: a directive lists at most 100 metrics.
pub const MAX_METRICS_PER_DIRECTIVE: usize = 100;
/// CloudWatch: a metric has at most 30 dimensions.
pub const MAX_DIMENSIONS: usize = 30;
/// EMF: an array metric value has at most 100 values.
pub const MAX_VALUES_PER_METRIC: usize = 100;
/// A line is closed before it grows past this many bytes (CloudWatch Logs takes events of up to
/// 256 KB).
pub const MAX_LINE_BYTES: usize = 200 * 1024;
/// Label sets reported per flush, unless [`EmfRecorder::with_max_label_sets`] says otherwise.
pub const DEFAULT_MAX_LABEL_SETS: usize = 100;
/// Histogram values are rounded to this many significant digits, so that repeated values share
/// one `Values` entry (a relative error of at most 0.5%).
pub const SIGNIFICANT_DIGITS: usize = 3;
/// The value of every label of a label set folded into the overflow.
pub const OVERFLOW_LABEL_VALUE: &str = "_other";
/// Counter (unlabeled): label sets folded into the overflow in this flush.
pub const LABEL_SETS_OVERFLOWED: &str = "fluxcb_emf_label_sets_overflowed_total";

/// The root member holding the EMF metadata.
const AWS_MEMBER: &str = "_aws";
/// CloudWatch stores values of magnitude between 2^-360 and 2^360 (and zero).
const MAX_MAGNITUDE: f64 = f64::from_bits((1023 + 360) << 52);
const MIN_MAGNITUDE: f64 = f64::from_bits((1023 - 360) << 52);

/// Why the recorder could not be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmfError {
    /// The namespace is not one CloudWatch accepts.
    #[error(
        "invalid CloudWatch namespace {0:?}: 1 to 255 characters among A-Z a-z 0-9 . - _ / # : \
         and space, not only spaces, not starting with \"AWS/\""
    )]
    Namespace(String),
    /// [`install`] was already called, or another global recorder is set.
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
}

/// A `metrics` recorder that aggregates in memory and renders EMF lines on [`flush`].
///
/// Recording is cheap: registering a metric is a read-locked lookup in a sharded map (a write
/// lock only the first time a name and label set is seen after a flush), and the handles update
/// atomics (counters, gauges) or append to a per-histogram vector. Flushing takes each shard's
/// write lock briefly, drains the handles and forgets the metrics nobody holds a handle to.
///
/// [`flush`]: EmfRecorder::flush
#[derive(Debug)]
pub struct EmfRecorder {
    namespace: String,
    max_label_sets: usize,
    registry: Registry<Key, EmfStorage>,
    max_line_bytes: usize,
    units: Mutex<HashMap<(Kind, String), &'static str>>,
}

impl EmfRecorder {
    /// A recorder writing metrics under the CloudWatch `namespace`.
    pub fn new(namespace: &str) -> Result<Self, EmfError> {
        if !valid_namespace(namespace) {
            return Err(EmfError::Namespace(namespace.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            max_label_sets: DEFAULT_MAX_LABEL_SETS,
            registry: Registry::new(EmfStorage),
            max_line_bytes: MAX_LINE_BYTES,
            units: Mutex::new(HashMap::new()),
        })
    }

    /// Report at most `max` label sets per flush (at least one) before folding the rest into the
    /// overflow.
    #[must_use]
    pub fn with_max_label_sets(mut self, max: usize) -> Self {
        self.max_label_sets = max.max(1);
        self
    }

    /// The CloudWatch namespace the lines carry.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The EMF lines (JSON objects, no trailing newline) for what was recorded since the last
    /// flush, stamped with the current time; none when nothing was.
    pub fn flush(&self) -> Vec<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.flush_at(now)
    }

    /// [`flush`](Self::flush) with the given timestamp (milliseconds since the Unix epoch).
    pub fn flush_at(&self, timestamp_ms: u64) -> Vec<String> {
        let mut sets = self.drain();
        let overflowed = fold_overflow(&mut sets, self.max_label_sets);
        if overflowed > 0 {
            sets.entry(Vec::new())
                .or_default()
                .add(LABEL_SETS_OVERFLOWED, Sample::Count(overflowed));
        }
        let units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines = Vec::new();
        for (labels, series) in sets {
            self.render(timestamp_ms, &labels, series, &units, &mut lines);
        }
        lines
    }

    /// Flushes into `out`, one line each, and flushes `out`. What a failed write held is lost:
    /// the recorder was already drained.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<()> {
        let lines = self.flush();
        if lines.is_empty() {
            return Ok(());
        }
        let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// Takes every handle's delta, forgetting the metrics nobody holds a handle to and whose
    /// state is at rest, grouped by label set.
    fn drain(&self) -> BTreeMap<LabelSet, Series> {
        let mut sets: BTreeMap<LabelSet, Series> = BTreeMap::new();
        // A write racing the drain of a cell someone holds is seen by this flush or the next.
        self.registry.retain_counters(|key, cell| {
            let idle = idle(cell);
            // Touched after the increment: an increment whose flag is not yet seen stays in
            // `delta` for the next flush.
            if cell.touched.swap(false, Ordering::AcqRel) {
                let delta = cell.delta.swap(0, Ordering::AcqRel);
                sets.entry(label_set(key))
                    .or_default()
                    .add(key.name(), Sample::Count(delta));
            }
            !idle
        });
        self.registry.retain_gauges(|key, cell| {
            let idle = idle(cell);
            if cell.written.swap(false, Ordering::AcqRel) {
                let value = f64::from_bits(cell.bits.load(Ordering::Acquire));
                sets.entry(label_set(key))
                    .or_default()
                    .add(key.name(), Sample::Level(value));
            }
            // A level other than zero is kept for the next increment or decrement.
            !idle || f64::from_bits(cell.bits.load(Ordering::Acquire)) != 0.0
        });
        self.registry.retain_histograms(|key, cell| {
            let idle = idle(cell);
            let values =
                std::mem::take(&mut *cell.values.lock().unwrap_or_else(PoisonError::into_inner));
            if !values.is_empty() {
                sets.entry(label_set(key))
                    .or_default()
                    .add(key.name(), Sample::Values(values));
            }
            !idle
        });
        sets
    }

    /// Appends the lines of one label set.
    fn render(
        &self,
        timestamp_ms: u64,
        labels: &LabelSet,
        series: Series,
        units: &HashMap<(Kind, String), &'static str>,
        out: &mut Vec<String>,
    ) {
        // A label may not shadow the metadata or a metric of the line.
        let labels: Vec<&(String, String)> = labels
            .iter()
            .filter(|(k, _)| k != AWS_MEMBER && !series.0.contains_key(k))
            .collect();
        let dimensions: Vec<&str> = labels
            .iter()
            .take(MAX_DIMENSIONS)
            .map(|(k, _)| k.as_str())
            .collect();
        let base_bytes = 160
            + self.namespace.len()
            + labels
                .iter()
                .map(|(k, v)| 2 * k.len() + v.len() + 8)
                .sum::<usize>();

        let metrics: Vec<(String, &'static str, Vec<Value>)> = series
            .0
            .into_iter()
            .filter_map(|(name, sample)| {
                let kind = sample.kind();
                let chunks = sample.into_chunks();
                if chunks.is_empty() {
                    return None;
                }
                let unit = units
                    .get(&(kind, name.clone()))
                    .copied()
                    .unwrap_or_else(|| default_unit(kind, &name));
                Some((name, unit, chunks))
            })
            .collect();

        // Line group `level` carries the `level`-th chunk of every metric that has one.
        let levels = metrics.iter().map(|(_, _, c)| c.len()).max().unwrap_or(0);
        for level in 0..levels {
            let mut batch: Vec<(&str, &str, &Value)> = Vec::new();
            let mut bytes = base_bytes;
            for (name, unit, chunks) in &metrics {
                let Some(value) = chunks.get(level) else {
                    continue;
                };
                let cost = 2 * name.len() + unit.len() + value.to_string().len() + 32;
                if !batch.is_empty()
                    && (batch.len() == MAX_METRICS_PER_DIRECTIVE
                        || bytes + cost > self.max_line_bytes)
                {
                    out.push(self.line(timestamp_ms, &labels, &dimensions, &batch));
                    batch.clear();
                    bytes = base_bytes;
                }
                batch.push((name.as_str(), *unit, value));
                bytes += cost;
            }
            if !batch.is_empty() {
                out.push(self.line(timestamp_ms, &labels, &dimensions, &batch));
            }
        }
    }

    /// One EMF document.
    fn line(
        &self,
        timestamp_ms: u64,
        labels: &[&(String, String)],
        dimensions: &[&str],
        metrics: &[(&str, &str, &Value)],
    ) -> String {
        let mut root = Map::new();
        for (key, value) in labels {
            root.insert(key.clone(), Value::String(value.clone()));
        }
        let mut definitions = Vec::with_capacity(metrics.len());
        for (name, unit, value) in metrics {
            root.insert((*name).to_owned(), (*value).clone());
            definitions.push(json!({ "Name": name, "Unit": unit }));
        }
        root.insert(
            AWS_MEMBER.to_owned(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [dimensions],
                    "Metrics": definitions,
                }],
            }),
        );
        Value::Object(root).to_string()
    }

    fn describe(&self, kind: Kind, key: KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.units
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((kind, key.as_str().to_owned()), cloudwatch_unit(unit));
        }
    }
}

impl Recorder for EmfRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(Kind::Counter, key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(Kind::Gauge, key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(Kind::Histogram, key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |cell| Counter::from_arc(Arc::clone(cell)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |cell| Gauge::from_arc(Arc::clone(cell)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |cell| Histogram::from_arc(Arc::clone(cell)))
    }
}

static GLOBAL: OnceLock<EmfRecorder> = OnceLock::new();

/// Installs an [`EmfRecorder`] for `namespace` as the process's global `metrics` recorder.
pub fn install(namespace: &str) -> Result<&'static EmfRecorder, EmfError> {
    let recorder = EmfRecorder::new(namespace)?;
    if GLOBAL.set(recorder).is_err() {
        return Err(EmfError::AlreadyInstalled);
    }
    let recorder = GLOBAL.get().ok_or(EmfError::AlreadyInstalled)?;
    metrics::set_global_recorder(recorder).map_err(|_| EmfError::AlreadyInstalled)?;
    Ok(recorder)
}

/// The recorder [`install`] set up, if any.
pub fn installed() -> Option<&'static EmfRecorder> {
    GLOBAL.get()
}

/// Writes what the installed recorder gathered since the last flush to stdout, one EMF line
/// each; nothing when [`install`] was not called. Lambda handlers call it at the end of every
/// invocation.
pub fn flush_to_stdout() -> io::Result<()> {
    match GLOBAL.get() {
        Some(recorder) => recorder.write_to(io::stdout().lock()),
        None => Ok(()),
    }
}

/// Whether only the registry holds `cell`, so that it can be forgotten once drained. Called
/// under the shard's write lock, where no handle can be cloned out of the registry; the fence
/// pairs with the release of the last handle's drop, so that its writes are seen.
fn idle<T>(cell: &Arc<T>) -> bool {
    let idle = Arc::strong_count(cell) == 1;
    if idle {
        fence(Ordering::Acquire);
    }
    idle
}

/// Kinds of metric, for units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Counter state: the increments since the last flush, and whether there were any.
#[derive(Debug, Default)]
struct CounterCell {
    delta: AtomicU64,
    touched: AtomicBool,
}

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.delta.fetch_add(value, Ordering::AcqRel);
        self.touched.store(true, Ordering::Release);
    }

    /// With delta reporting an absolute value cannot be differenced; the largest value set
    /// since the last flush is reported as is. Nothing in fluxcb sets counters absolutely.
    fn absolute(&self, value: u64) {
        self.delta.fetch_max(value, Ordering::AcqRel);
        self.touched.store(true, Ordering::Release);
    }
}

/// Gauge state: the level (f64 bits) and whether it was written since the last flush.
#[derive(Debug, Default)]
struct GaugeCell {
    bits: AtomicU64,
    written: AtomicBool,
}

impl GaugeCell {
    fn update(&self, f: impl Fn(f64) -> f64) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .bits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some(f(f64::from_bits(bits)).to_bits())
            });
        self.written.store(true, Ordering::Release);
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        self.update(|level| level + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|level| level - value);
    }

    fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Ordering::Release);
        self.written.store(true, Ordering::Release);
    }
}

/// Histogram state: the values recorded since the last flush.
#[derive(Debug, Default)]
struct HistogramCell {
    values: Mutex<Vec<f64>>,
}

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(std::iter::repeat_n(value, count));
    }
}

/// Creates the cells the registry holds.
#[derive(Debug)]
struct EmfStorage;

impl Storage<Key> for EmfStorage {
    type Counter = Arc<CounterCell>;
    type Gauge = Arc<GaugeCell>;
    type Histogram = Arc<HistogramCell>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::default()
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::default()
    }

    fn histogram(&self, _: &Key) -> Self::Histogram {
        Arc::default()
    }
}

/// Labels as dimensions: sanitized, sorted by name, one value per name.
type LabelSet = Vec<(String, String)>;

/// What one flush saw of one metric.
#[derive(Debug)]
enum Sample {
    Count(u64),
    Level(f64),
    Values(Vec<f64>),
}

impl Sample {
    fn kind(&self) -> Kind {
        match self {
            Sample::Count(_) => Kind::Counter,
            Sample::Level(_) => Kind::Gauge,
            Sample::Values(_) => Kind::Histogram,
        }
    }

    /// Adds another sample of the same metric and label set (labels that sanitize alike, or
    /// label sets folded into the overflow). Gauges add up: the overflow's level is the sum of
    /// the levels folded into it. A name used for two kinds keeps the first.
    fn merge(&mut self, other: Sample) {
        match (self, other) {
            (Sample::Count(a), Sample::Count(b)) => *a = a.saturating_add(b),
            (Sample::Level(a), Sample::Level(b)) => *a += b,
            (Sample::Values(a), Sample::Values(b)) => a.extend(b),
            _ => {}
        }
    }

    /// The metric's values, one per line: a number for counters and gauges, `Values`/`Counts`
    /// objects of at most [`MAX_VALUES_PER_METRIC`] values for histograms. Empty when nothing
    /// CloudWatch accepts is left.
    fn into_chunks(self) -> Vec<Value> {
        match self {
            Sample::Count(n) => vec![Value::from(n)],
            Sample::Level(level) => storable(level).map(Value::from).into_iter().collect(),
            Sample::Values(values) => histogram_chunks(values),
        }
    }
}

/// The metrics of one label set, by name.
#[derive(Debug, Default)]
struct Series(BTreeMap<String, Sample>);

impl Series {
    fn add(&mut self, name: &str, sample: Sample) {
        match self.0.get_mut(name) {
            Some(existing) => existing.merge(sample),
            None => {
                self.0.insert(name.to_owned(), sample);
            }
        }
    }
}

/// Folds every label set past the first `max` (in label order, so the unlabeled set is always
/// kept) into a set with the same label names and [`OVERFLOW_LABEL_VALUE`] for every value.
/// Returns how many were folded.
fn fold_overflow(sets: &mut BTreeMap<LabelSet, Series>, max: usize) -> u64 {
    let Some(first_over) = sets.keys().nth(max).cloned() else {
        return 0;
    };
    let over = sets.split_off(&first_over);
    let folded = over.len() as u64;
    for (labels, series) in over {
        let other: LabelSet = labels
            .into_iter()
            .map(|(name, _)| (name, OVERFLOW_LABEL_VALUE.to_owned()))
            .collect();
        let target = sets.entry(other).or_default();
        for (name, sample) in series.0 {
            target.add(&name, sample);
        }
    }
    folded
}

fn label_set(key: &Key) -> LabelSet {
    let mut labels: LabelSet = key
        .labels()
        .map(|l| (dimension_name(l.key()), dimension_value(l.value())))
        .collect();
    // Stable: of repeated names the first given wins.
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.dedup_by(|later, earlier| later.0 == earlier.0);
    labels
}

/// CloudWatch dimension strings: printable ASCII, at least one non-space, at most `max` bytes.
fn dimension_string(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if out.trim().is_empty() {
        "_".to_owned()
    } else {
        out
    }
}

/// Dimension names: at most 255 bytes, not starting with a colon.
fn dimension_name(s: &str) -> String {
    let mut name = dimension_string(s, 255);
    if name.starts_with(':') {
        name.replace_range(..1, "_");
    }
    name
}

/// Dimension values: at most 1024 bytes.
fn dimension_value(s: &str) -> String {
    dimension_string(s, 1024)
}

/// The value as CloudWatch can store it: `None` for NaN, infinities and magnitudes past 2^360,
/// zero for magnitudes under 2^-360.
fn storable(value: f64) -> Option<f64> {
    let magnitude = value.abs();
    if !value.is_finite() || magnitude > MAX_MAGNITUDE {
        None
    } else if magnitude < MIN_MAGNITUDE {
        Some(0.0)
    } else {
        Some(value)
    }
}

/// Rounds to [`SIGNIFICANT_DIGITS`] significant digits, as the nearest double to the decimal
/// (so that it prints short: 0.123, not 0.12300000000000001).
fn round_significant(value: f64) -> f64 {
    if value == 0.0 {
        return 0.0;
    }
    format!("{:.*e}", SIGNIFICANT_DIGITS - 1, value)
        .parse()
        .unwrap_or(value)
}

/// Histogram values as `{"Values": [..], "Counts": [..]}` objects of at most
/// [`MAX_VALUES_PER_METRIC`] distinct (rounded) values each, in increasing order.
fn histogram_chunks(values: Vec<f64>) -> Vec<Value> {
    let mut values: Vec<f64> = values.into_iter().filter_map(storable).collect();
    values.sort_by(f64::total_cmp);
    // Rounding is monotonic, so equal rounded values are adjacent.
    let mut bins: Vec<(f64, u64)> = Vec::new();
    for value in values {
        let rounded = round_significant(value);
        match bins.last_mut() {
            Some((last, count)) if *last == rounded => *count += 1,
            _ => bins.push((rounded, 1)),
        }
    }
    bins.chunks(MAX_VALUES_PER_METRIC)
        .map(|chunk| {
            let values: Vec<f64> = chunk.iter().map(|(v, _)| *v).collect();
            let counts: Vec<u64> = chunk.iter().map(|(_, c)| *c).collect();
            json!({ "Values": values, "Counts": counts })
        })
        .collect()
}

/// The unit of a metric nobody described: the vocabulary's, else by name suffix, else `Count`
/// for counters and `None` for the rest.
fn default_unit(kind: Kind, name: &str) -> &'static str {
    match name {
        names::ATTEMPT_DURATION | names::ACCEPTED_TO_DELIVERED => "Seconds",
        names::ACCEPTED
        | names::ATTEMPTS
        | names::CALLBACKS
        | names::IN_FLIGHT
        | names::QUEUE_MESSAGES
        | names::SWEEPER_ENQUEUED
        | names::LEASES_RECOVERED => "Count",
        LABEL_SETS_OVERFLOWED => "Count",
        _ if name.ends_with("_seconds") => "Seconds",
        _ if name.ends_with("_milliseconds") => "Milliseconds",
        _ if name.ends_with("_bytes") => "Bytes",
        _ if kind == Kind::Counter => "Count",
        _ => "None",
    }
}

/// The CloudWatch unit for a `metrics` unit (CloudWatch has no nanoseconds).
fn cloudwatch_unit(unit: Unit) -> &'static str {
    match unit {
        Unit::Count => "Count",
        Unit::Percent => "Percent",
        Unit::Seconds => "Seconds",
        Unit::Milliseconds => "Milliseconds",
        Unit::Microseconds => "Microseconds",
        Unit::Nanoseconds => "None",
        Unit::Tebibytes => "Terabytes",
        Unit::Gibibytes => "Gigabytes",
        Unit::Mebibytes => "Megabytes",
        Unit::Kibibytes => "Kilobytes",
        Unit::Bytes => "Bytes",
        Unit::TerabitsPerSecond => "Terabits/Second",
        Unit::GigabitsPerSecond => "Gigabits/Second",
        Unit::MegabitsPerSecond => "Megabits/Second",
        Unit::KilobitsPerSecond => "Kilobits/Second",
        Unit::BitsPerSecond => "Bits/Second",
        Unit::CountPerSecond => "Count/Second",
    }
}

/// CloudWatch namespaces: 1 to 255 of `0-9A-Za-z.-_/#:` and space, not only spaces, and not
/// the reserved `AWS/` prefix.
fn valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 255
        && !namespace.trim().is_empty()
        && !namespace.starts_with("AWS/")
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c))
}

#[cfg(test)]
mod tests;
