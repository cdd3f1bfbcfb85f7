//! What was built: the version, the git revision and the build date, for `--version`
//! and the `gpulse_build_info` series (as Prometheus' own components export).

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::names::BUILD_INFO;

/// The crate version, shared by the whole workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built, or "unknown" when built outside git.
pub const REVISION: &str = env!("GPULSE_REVISION");
/// The day of the build (UTC, YYYY-MM-DD), or SOURCE_DATE_EPOCH's.
pub const BUILD_DATE: &str = env!("GPULSE_BUILD_DATE");

/// What `--version` prints after the binary's name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("GPULSE_REVISION"),
    ", built ",
    env!("GPULSE_BUILD_DATE"),
    ")"
);

/// Registers `gpulse_build_info{version,revision,build_date} 1`.
pub fn register(registry: &Registry) -> prometheus::Result<()> {
    let gauge = IntGaugeVec::new(
        Opts::new(BUILD_INFO.name, BUILD_INFO.help),
        &["version", "revision", "build_date"],
    )?;
    gauge
        .with_label_values(&[VERSION, REVISION, BUILD_DATE])
        .set(1);
    registry.register(Box::new(gauge))
}
