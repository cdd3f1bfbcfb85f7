//! gpulse-exposition: how gpulse shows GPUs to Prometheus.
//!
//! It keeps a [`HostView`] per host (identity, inventory, latest reading) and
//! turns views into Prometheus metric families with the `prometheus` crate
//! ([`FleetCollector`]). The collector serves it for the whole fleet and the
//! agent for its own host, so both expose the same names. Every metric name
//! and help text lives in [`names`]; [`dcgm`] maps them to dcgm-exporter's names
//! for a DCGM-compatible view.
//!
//! It is not where data is validated, deduplicated or stored: callers hand it
//! readings they have already accepted.

pub mod dcgm;
mod families;
pub mod names;
mod view;

pub use families::{FleetCollector, HostSource};
pub use view::{GpuView, HostView, UnknownGpu};
