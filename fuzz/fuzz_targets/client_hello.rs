//! The first bytes a client sends a gateway's TLS passthrough listener:
//! whatever they are, reading the ClientHello ends with its SNI or an
//! error, never a panic, and keeps exactly the bytes it read.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_waypoint::fronts::passthrough::client_hello;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok((read, _sni)) = runtime().block_on(client_hello(&mut input)) {
        assert!(data.starts_with(&read), "replayed bytes are what was read");
    }
});
