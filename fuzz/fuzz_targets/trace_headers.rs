//! Trace context a caller sends (W3C `traceparent`/`tracestate`, B3 single
//! and multi header) and the `baggage` a peer node sends: whatever is
//! extracted must survive being injected and extracted again unchanged.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weft_telemetry::trace::{extract, inject};

const NAMES: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "baggage",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data.split(|b| *b == 0xff)) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
    }
    if let Some(ctx) = extract(&headers) {
        let mut again = HeaderMap::new();
        inject(&mut again, &ctx);
        let round = extract(&again).expect("an injected context extracts");
        assert_eq!(round.trace_id, ctx.trace_id);
        assert_eq!(round.span_id, ctx.span_id);
        assert_eq!(round.sampled, ctx.sampled);
    }
    if let Some(b) = headers.get("baggage").and_then(|v| v.to_str().ok()) {
        let _ = weft_telemetry::labels::peer_from_baggage(b, "spiffe://cluster.local/ns/a/sa/b");
    }
});
