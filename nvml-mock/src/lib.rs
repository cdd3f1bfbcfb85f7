//! gpulse-nvml-mock: a shared library that exports the NVML C ABI and answers every
//! call from the gpulse simulator, so that the unmodified NVML backend (and anything
//! else that loads libnvidia-ml.so.1 through nvml-wrapper) runs without a GPU.
//!
//! The library holds one [`gpulse_gpu::simulator::Simulator`], built from the spec in
//! the `GPULSE_NVML_MOCK` environment variable (the `--simulate` syntax, default
//! `gpus=2`), and answers inventory calls from its inventory and per-reading calls from
//! its latest sample. Time is simulated: one step of one second per reading round, a
//! round starting when the first per-reading call of the last round comes again for the
//! same GPU (so callers may keep handles and read in any order). Tests
//! reconfigure and step it through the `gpulse_mock_*` exports.
//!
//! It is not a driver emulator: it answers what gpulse reads, in NVML's units, codes
//! and struct layouts, and NVML_ERROR_NOT_SUPPORTED, or a missing symbol, for the rest.
//! Built with `cfg(nvml_mock_legacy)` (the gpulse-nvml-mock-legacy package) it leaves
//! out the functions newer drivers added. See docs/nvml-mock.md.

#![cfg_attr(
    nvml_mock_legacy,
    allow(
        dead_code,
        reason = "the old-driver build leaves out the exports that use some answers"
    )
)]

mod abi;
mod device;
mod nvml_h;
mod quirks;
mod state;

pub use quirks::{Quirk, Quirks};
pub use state::{DEFAULT_SPEC, ENV_DRIVER, ENV_QUIRKS, ENV_SPEC, EPOCH_UNIX_MS, STEP_MS};
