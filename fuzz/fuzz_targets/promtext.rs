//! The Prometheus text a proxy answers the control plane's scrape with
//! (a broken or hostile proxy may answer anything).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(samples) = weft_telemetry::promtext::parse(text)
    {
        for s in &samples {
            let _ = s.label("destination_service");
        }
        let deltas = weft_telemetry::graph::increases(&[], &samples);
        let _ = weft_telemetry::graph::edges(&deltas, 60.0);
    }
});
