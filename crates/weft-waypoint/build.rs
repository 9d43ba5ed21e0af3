//! Compiles the subset of Envoy's external authorization API weft speaks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ext_authz.proto");
    let fds = protox::compile(["ext_authz.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
