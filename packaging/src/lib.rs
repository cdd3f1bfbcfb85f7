//! gpulse-packaging: no code of its own. Its tests check what `packaging/` ships
//! (Prometheus rules, the Alertmanager example, systemd units, .deb packages,
//! Kubernetes manifests) against the real tools, and run the collector with a
//! simulated fleet under a real Prometheus and Alertmanager.
