//! gpulse-gpu: the GPU domain of gpulse.
//!
//! It holds the model of what a GPU is and what one reading of it says
//! ([`DeviceInfo`], [`DeviceSample`], [`Reading`], [`ThrottleReasons`]), the
//! [`GpuBackend`] trait that produces readings, and two backends: NVML (behind
//! the `nvml` cargo feature, the only code that names nvml-wrapper) and a
//! seeded, deterministic [`simulator`].
//!
//! It is not a runtime: nothing here is async, talks to the network or knows
//! about Prometheus. Backends are blocking, as NVML is synchronous FFI; the
//! agent calls them off its async runtime.

pub mod allocation;
mod backend;
pub mod diagnosis;
pub mod health;
mod host;
mod model;
#[cfg(feature = "nvml")]
pub mod nvml;
pub mod simulator;
mod throttle;
pub mod throttle_time;
pub mod workload;

pub use allocation::{Allocation, DeviceHolder};
pub use backend::{BackendError, GpuBackend};
pub use host::{HostFacts, HostIdentity, IdentitySource, Learned, ProviderIdentity};
pub use model::{DeviceInfo, DeviceSample, DeviceState, Field, FieldStatus, Reading, Snapshot};
pub use throttle::ThrottleReasons;
