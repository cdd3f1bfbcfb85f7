//! Generates the gpulse.v1 client and server code with a pure-Rust protobuf compiler,
//! so the build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // gpulse's own protocol, and the kubelet's pod-resources API the agent reads on
    // Kubernetes nodes (a server too, for the test kubelet).
    let files = [
        "gpulse/v1/ingest.proto",
        "kubelet/podresources/v1/api.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
