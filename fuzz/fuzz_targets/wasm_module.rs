//! What a hostile plugin author or peer hands the Proxy-Wasm host: a
//! module the control plane and the proxy check before compiling it, and
//! the header-pair lists a plugin passes to host calls. Neither may
//! panic; a pair list that decodes encodes back to the bytes it was read
//! from (what follows the last pair is ignored).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weft_wasm::check("fuzz", data);
    if let Some(pairs) = weft_wasm::abi::decode_pairs(data)
        && !data.is_empty()
    {
        let again = weft_wasm::abi::encode_pairs(&pairs);
        assert_eq!(again, data[..again.len()]);
    }
});
