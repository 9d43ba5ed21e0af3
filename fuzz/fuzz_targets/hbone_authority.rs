//! CONNECT authorities from a hostile peer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft_hbone::server::parse_authority(text);
        if let Some((host, port)) = weft_hbone::server::parse_service_authority(text) {
            // What is accepted is a host name and port, written back the same.
            assert!(port != 0 && !host.is_empty() && !host.contains(':'));
            assert_eq!(
                weft_hbone::server::parse_service_authority(&format!("{host}:{port}")),
                Some((host, port))
            );
        }
    }
});
