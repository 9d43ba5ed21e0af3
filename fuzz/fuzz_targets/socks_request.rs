//! SOCKS5 greeting and request parsing must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weft_node::socks::parse_greeting(data);
    let _ = weft_node::socks::parse_request(data);
});
