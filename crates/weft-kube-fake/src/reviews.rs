//! The fake's answer to a `TokenReview`: the registered user of a known
//! token (with the node its pod runs on, and the audiences asked for), or
//! not authenticated.

use serde_json::{Value, json};

/// `review` with its `status` filled in; `known` is the token's
/// (username, node), if it was registered.
pub(crate) fn answer(review: Value, known: Option<(String, Option<String>)>) -> Value {
    let status = match known {
        Some((username, node)) => {
            let extra = node.map_or(
                json!({}),
                |n| json!({"authentication.kubernetes.io/node-name": [n]}),
            );
            json!({"authenticated": true, "user": {"username": username, "extra": extra},
                   "audiences": review["spec"]["audiences"]})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut answer = review;
    answer["status"] = status;
    answer
}
