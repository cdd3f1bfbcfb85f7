//! Compiles the NVML mock's source as an old driver that lacks the newer NVML functions.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(nvml_mock_legacy)");
    println!("cargo::rustc-cfg=nvml_mock_legacy");
}
