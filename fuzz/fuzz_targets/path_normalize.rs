//! Hostile request paths through the path normalization every L7 request
//! gets before routing and policy (`weft_waypoint::engine::path`).
//! Properties, in every mode but `NONE`: a normalized path normalizes to
//! itself; it starts with `/`, holds no `.` or `..` segment and no control
//! character; `MERGE_SLASHES` and `DECODE_AND_MERGE_SLASHES` leave no `//`;
//! `DECODE_AND_MERGE_SLASHES` leaves no `%2F` or `%5C`. A path the fast
//! check calls plainly normal, every mode leaves as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_waypoint::engine::path::{PathNormalization, is_plainly_normal, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let plain = is_plainly_normal(path);
    for mode in [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        let Ok(once) = normalize(path, mode) else {
            assert!(!plain, "{path:?} {mode:?}: plainly normal, yet refused");
            continue;
        };
        if plain {
            assert_eq!(once, path, "{mode:?}: plainly normal, yet changed");
        }
        if mode == PathNormalization::None {
            assert_eq!(once, path);
            continue;
        }
        assert_eq!(normalize(&once, mode).as_deref(), Ok(once.as_str()), "{path:?} {mode:?}");
        assert!(once.starts_with('/'));
        assert!(!once.bytes().any(|b| b.is_ascii_control()));
        assert!(once.split('/').all(|s| s != "." && s != ".."), "{once:?}");
        if mode != PathNormalization::Base {
            assert!(!once.contains("//"), "{once:?}");
        }
        if mode == PathNormalization::DecodeAndMergeSlashes {
            let upper = once.to_ascii_uppercase();
            assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{once:?}");
        }
    }
});
