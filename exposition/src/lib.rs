//! gpulse-exposition: how gpulse shows GPUs to Prometheus.
//!
//! It keeps a [`HostView`] per host (identity, inventory, latest reading) and turns
//! views into series once ([`write_host`], [`write_fleet`]) for any [`SeriesSink`]:
//! the Prometheus text format ([`Families`], [`render_fleet`]) or the collector's
//! remote-write samples; [`render`] adds a `prometheus` crate registry
//! (self-metrics) after them. The collector serves it for
//! the whole fleet and the agent for its own host, so both expose the same names.
//! Every metric name and help text lives in [`names`]; [`dcgm`] renames gpulse's
//! series to dcgm-exporter's names for a DCGM-compatible view.
//!
//! It is not where data is validated, deduplicated or stored: callers hand it
//! readings they have already accepted.

#![forbid(unsafe_code)]

#[cfg(test)]
mod allocation_tests;
pub mod build_info;
pub mod dcgm;
mod families;
pub mod names;
mod view;

pub use families::{
    ExpositionOptions, Families, GpuContext, HostSource, Labels, SeriesSink, render_fleet,
    write_fleet, write_host,
};
pub use view::{
    AgentStats, DEFAULT_FINDINGS_READINGS, GpuView, HostView, MAX_FINDINGS_READINGS, UnknownGpu,
};

/// The fleet's series followed by a registry's (self-metrics), as one scrape.
pub fn render(
    source: &dyn HostSource,
    options: ExpositionOptions,
    registry: &prometheus::Registry,
) -> String {
    let mut out = String::with_capacity(64 * 1024);
    render_fleet(source, options, &mut out);
    append_registry(registry, &mut out);
    out
}

/// Appends a registry's metrics (self-metrics: a few dozen series) in the text format.
pub fn append_registry(registry: &prometheus::Registry, out: &mut String) {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("writing to a Vec cannot fail");
    out.push_str(&String::from_utf8_lossy(&buf));
}
