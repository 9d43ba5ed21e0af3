//! Any text as a configuration file: problems are reported (with lines
//! found lazily), never a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(problems) = weft_config::load_sources([(Path::new("fuzz.yaml"), text)]) {
            let _ = problems.to_string();
        }
    }
});
