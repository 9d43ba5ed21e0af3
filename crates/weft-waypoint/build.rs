//! Compiles the subsets of Envoy's external authorization, external
//! processing and rate limit service APIs weft speaks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ext_authz.proto");
    println!("cargo:rerun-if-changed=proto/ratelimit.proto");
    println!("cargo:rerun-if-changed=proto/ext_proc.proto");
    let fds = protox::compile(
        ["ext_authz.proto", "ext_proc.proto", "ratelimit.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
