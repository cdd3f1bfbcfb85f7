//! Checks of what packaging/ ships, with the real tools (promtool, amtool,
//! systemd-analyze, cargo-deb and dpkg, kubernetes-validate) and, end to end, a real
//! Prometheus and Alertmanager. scripts/install-test-deps.sh installs the tools.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;
mod container;
mod deb;
mod kubernetes;
mod rules;
mod stack;
mod systemd;
