//! Labels on the objects weft creates in a cluster.

/// Every object weft creates carries `app.kubernetes.io/part-of: weft`.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");
