//! Compiles the xDS, Workload API and authorization protobufs with protox.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "discovery.proto",
        "workload.proto",
        "authorization.proto",
        "weft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Maps encode in key order: a resource's bytes, and so its
        // version, depend only on its content.
        .btree_map(".istio.workload")
        // Resources may travel pre-encoded (see src/wire.rs).
        .extern_path(
            ".envoy.service.discovery.v3.Resource",
            "crate::wire::Resource",
        )
        .compile_fds(fds)?;
    Ok(())
}
