//! The crate's single error type.

/// Everything that can go wrong when configuring or starting a sample app.
///
/// Errors on individual connections are never returned: they are logged and
/// the server keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// `fail_ratio` is NaN or outside `0.0..=1.0`.
    #[error(
        "invalid fail_ratio {0}: it must be a number from 0.0 (never fail) to 1.0 \
         (fail every request)"
    )]
    InvalidFailRatio(f64),

    /// `name`, `version` or `locality` cannot be sent as a response header value.
    #[error(
        "invalid {field} {value:?}: it is sent in the {header} response header, so it \
         must not contain control characters such as newlines"
    )]
    InvalidHeaderText {
        /// The configuration field (`name`, `version` or `locality`).
        field: &'static str,
        /// The header the field is sent in.
        header: &'static str,
        /// The rejected value.
        value: String,
    },

    /// A required identity field (`name` or `version`) is empty.
    #[error("{field} must not be empty: it identifies this instance in every response")]
    EmptyField {
        /// The configuration field that is empty.
        field: &'static str,
    },

    /// A mode name given on the command line is not known.
    #[error("unknown mode {0:?}: expected \"http\" or \"tcp-echo\"")]
    UnknownMode(String),

    /// The listener handed to a server is unusable.
    #[error("cannot read the local address of the listening socket: {0}")]
    Listener(#[source] std::io::Error),
}
