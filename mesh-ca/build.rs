//! Generates the `istio.v1.auth` gRPC client and server from `proto/istio/v1/auth/ca.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/istio/v1/auth/ca.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/istio/v1/auth/ca.proto"], &["proto"])?;
    Ok(())
}
