//! Compiles the subset of OTLP's trace protocol weft exports with.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/otlp_trace.proto");
    let fds = protox::compile(["otlp_trace.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
