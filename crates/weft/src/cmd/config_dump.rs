//! `weft config-dump <admin-addr>`: what a proxy holds from the config
//! stream, per resource, with versions.

use std::net::SocketAddr;
use std::process::ExitCode;

/// Flags of `weft config-dump`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Admin address of a weft proxy, e.g. 127.0.0.1:15000.
    #[arg(default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
}

pub(crate) fn run(args: Args) -> ExitCode {
    match super::runtime().and_then(|rt| rt.block_on(super::certs::get(args.admin, "/config_dump")))
    {
        Ok(body) => {
            println!("{}", body.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft config-dump: {e}");
            ExitCode::from(2)
        }
    }
}
