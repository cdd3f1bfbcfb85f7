//! Generates the Prometheus remote-write messages (proto/prometheus/remote.proto) with
//! a pure-Rust protobuf compiler, as gpulse-proto does: the build needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["prometheus/remote.proto"];
    println!("cargo:rerun-if-changed=proto/prometheus/remote.proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
