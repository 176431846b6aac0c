//! Writing values read from elsewhere (snapshots, atomics) as metric families.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Wraps a collector's [`DescriptorEncoder`]: one call per family. Counter names are given
/// without `_total` (the encoder appends it); units are part of the name (`_bytes`, `_seconds`).
pub struct Emit<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Emit<'a> {
    pub fn new(encoder: DescriptorEncoder<'a>) -> Emit<'a> {
        Emit { encoder }
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let counter = ConstCounter::new(value);
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)
    }

    /// A counter with a floating-point value (seconds).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let counter = ConstCounter::new(value);
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let gauge = ConstGauge::new(value);
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }

    /// A counter family with one label; every `(label value, count)` becomes a sample. An empty
    /// iterator still declares the family (HELP and TYPE), so dashboards and alerts can refer to
    /// it before the first event.
    pub fn counters<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (value, count) in values {
            let labels = [(label, value)];
            let metric = family.encode_family(&labels)?;
            ConstCounter::new(count).encode(metric)?;
        }
        Ok(())
    }

    /// A counter family with two labels.
    pub fn counters2<'v>(
        &mut self,
        name: &str,
        help: &str,
        labels: [&str; 2],
        values: impl IntoIterator<Item = ([&'v str; 2], u64)>,
    ) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for ([a, b], count) in values {
            let set = [(labels[0], a), (labels[1], b)];
            let metric = family.encode_family(&set)?;
            ConstCounter::new(count).encode(metric)?;
        }
        Ok(())
    }

    /// A gauge family with one label.
    pub fn gauges<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, f64)>,
    ) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (value, v) in values {
            let labels = [(label, value)];
            let metric = family.encode_family(&labels)?;
            ConstGauge::new(v).encode(metric)?;
        }
        Ok(())
    }

    /// An info metric: a gauge of value 1 whose labels carry the information (`*_info`).
    pub fn info(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) -> std::fmt::Result {
        let mut family = self.encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let metric = family.encode_family(&labels)?;
        ConstGauge::new(1i64).encode(metric)
    }
}
