//! Settings of one sample app instance.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::AppError;

/// Settings of one sample app instance.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Instance name, returned by `/` and in the `x-weft-app` header. Default `"sample-app"`.
    pub name: String,
    /// Version label, returned by `/` and in the `x-weft-version` header. Default `"v1"`.
    pub version: String,
    /// Locality such as `"eu-west/eu-west-1a"`, returned by `/` and in the
    /// `x-weft-locality` header (omitted when empty). Default `""`.
    pub locality: String,
    /// Fraction of requests (`0.0..=1.0`) answered with an injected `503`.
    /// `/healthz` is never failed.
    pub fail_ratio: f64,
    /// Delay added before every response except `/healthz`.
    pub latency: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            name: "sample-app".to_owned(),
            version: "v1".to_owned(),
            locality: String::new(),
            fail_ratio: 0.0,
            latency: Duration::ZERO,
        }
    }
}

impl AppConfig {
    /// Checks the settings: `fail_ratio` must be within `0.0..=1.0` (NaN is
    /// rejected), `name` and `version` must be non-empty, and `name`, `version`
    /// and `locality` must be usable as HTTP header values.
    pub fn validate(&self) -> Result<(), AppError> {
        if !(0.0..=1.0).contains(&self.fail_ratio) {
            return Err(AppError::InvalidFailRatio(self.fail_ratio));
        }
        for (field, header, value, required) in [
            ("name", "x-weft-app", &self.name, true),
            ("version", "x-weft-version", &self.version, true),
            ("locality", "x-weft-locality", &self.locality, false),
        ] {
            if required && value.is_empty() {
                return Err(AppError::EmptyField { field });
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(AppError::InvalidHeaderText {
                    field,
                    header,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

/// What a sample app instance serves on its port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 and h2c endpoints, see [`serve_http`](crate::serve_http).
    #[default]
    Http,
    /// Raw TCP echo, see [`serve_tcp_echo`](crate::serve_tcp_echo).
    TcpEcho,
}

impl FromStr for Mode {
    type Err = AppError;

    /// Parses `"http"` or `"tcp-echo"` (also `"tcp_echo"`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(Self::Http),
            "tcp-echo" | "tcp_echo" => Ok(Self::TcpEcho),
            _ => Err(AppError::UnknownMode(s.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::TcpEcho => "tcp-echo",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let config = AppConfig::default();
        assert_eq!(config.name, "sample-app");
        assert_eq!(config.version, "v1");
        assert_eq!(config.locality, "");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn fail_ratio_bounds() {
        for ok in [0.0, 0.5, 1.0] {
            let config = AppConfig {
                fail_ratio: ok,
                ..AppConfig::default()
            };
            assert!(config.validate().is_ok(), "{ok} should be accepted");
        }
        for bad in [1.5, -0.1, f64::NAN, f64::INFINITY] {
            let config = AppConfig {
                fail_ratio: bad,
                ..AppConfig::default()
            };
            let err = config.validate().expect_err("should be rejected");
            assert!(matches!(err, AppError::InvalidFailRatio(_)));
            assert!(err.to_string().contains("fail_ratio"), "{err}");
        }
    }

    #[test]
    fn identity_fields_checked() {
        let config = AppConfig {
            name: String::new(),
            ..AppConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(AppError::EmptyField { field: "name" })
        ));
        let config = AppConfig {
            locality: "eu\nwest".to_owned(),
            ..AppConfig::default()
        };
        let err = config.validate().expect_err("newline must be rejected");
        assert!(err.to_string().contains("x-weft-locality"), "{err}");
    }

    #[test]
    fn mode_round_trips() {
        for mode in [Mode::Http, Mode::TcpEcho] {
            assert_eq!(mode.to_string().parse::<Mode>().ok(), Some(mode));
        }
        assert_eq!("TCP_ECHO".parse::<Mode>().ok(), Some(Mode::TcpEcho));
        assert!("grpc".parse::<Mode>().is_err());
    }
}
