//! Envoy's response flags, as the `response_flags` label and the access
//! log carry them: one [`Flag`] per cause, and [`Flags`], the set a
//! request or connection collected. A set is written in Envoy's fixed
//! order, comma-separated (`DI,UF`), `-` when empty.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// One response flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Flag {
    /// `UH`: no healthy upstream host.
    NoHealthyUpstream,
    /// `UF`: upstream connection failure.
    UpstreamFailure,
    /// `UO`: upstream overflow (circuit breaker open).
    UpstreamOverflow,
    /// `NR`: no route configured.
    NoRoute,
    /// `URX`: upstream retry limit exceeded.
    RetryLimitExceeded,
    /// `UT`: upstream request timeout.
    UpstreamTimeout,
    /// `UR`: upstream connection reset.
    UpstreamReset,
    /// `DC`: downstream connection termination.
    DownstreamTermination,
    /// `DPE`: the downstream request had an HTTP protocol error.
    DownstreamProtocolError,
    /// `DI`: the request was delayed by fault injection.
    DelayInjected,
    /// `FI`: the request was aborted by fault injection.
    FaultInjected,
    /// `RL`: rate limited.
    RateLimited,
    /// `UAEX`: denied by the external authorization service.
    ExtAuthzDenied,
    /// `RBAC`: denied by an authorization policy (L7).
    RbacDenied,
    /// `DENY`: denied by an authorization policy at L4 (ztunnel's flag).
    Denied,
}

impl Flag {
    /// Every flag, in the order a set is written.
    pub const ALL: [Flag; 15] = [
        Flag::NoHealthyUpstream,
        Flag::UpstreamFailure,
        Flag::UpstreamOverflow,
        Flag::NoRoute,
        Flag::RetryLimitExceeded,
        Flag::UpstreamTimeout,
        Flag::UpstreamReset,
        Flag::DownstreamTermination,
        Flag::DownstreamProtocolError,
        Flag::DelayInjected,
        Flag::FaultInjected,
        Flag::RateLimited,
        Flag::ExtAuthzDenied,
        Flag::RbacDenied,
        Flag::Denied,
    ];

    /// Envoy's short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamFailure => "UF",
            Flag::UpstreamOverflow => "UO",
            Flag::NoRoute => "NR",
            Flag::RetryLimitExceeded => "URX",
            Flag::UpstreamTimeout => "UT",
            Flag::UpstreamReset => "UR",
            Flag::DownstreamTermination => "DC",
            Flag::DownstreamProtocolError => "DPE",
            Flag::DelayInjected => "DI",
            Flag::FaultInjected => "FI",
            Flag::RateLimited => "RL",
            Flag::ExtAuthzDenied => "UAEX",
            Flag::RbacDenied => "RBAC",
            Flag::Denied => "DENY",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

/// The flags one request or connection collected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    /// No flag (`-`).
    pub const NONE: Flags = Flags(0);

    /// Adds `flag`; the ones already set stay.
    pub fn insert(&mut self, flag: Flag) {
        self.0 |= flag.bit();
    }

    /// Whether `flag` is set.
    pub fn contains(self, flag: Flag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The label value: `-`, one flag's name, or several comma-separated
    /// in Envoy's order. Combinations are few (a request collects at most
    /// a handful); each is built once and kept for the process's life, so
    /// labels stay `&'static str`.
    pub fn as_str(self) -> &'static str {
        if self.0 == 0 {
            return "-";
        }
        if self.0.is_power_of_two() {
            return Flag::ALL[self.0.trailing_zeros() as usize].as_str();
        }
        static SETS: OnceLock<Mutex<HashMap<u16, &'static str>>> = OnceLock::new();
        let mut sets = SETS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sets.entry(self.0).or_insert_with(|| {
            let names: Vec<&str> = Flag::ALL
                .iter()
                .filter(|f| self.contains(**f))
                .map(|f| f.as_str())
                .collect();
            Box::leak(names.join(",").into_boxed_str())
        })
    }
}

impl From<Flag> for Flags {
    fn from(flag: Flag) -> Flags {
        Flags(flag.bit())
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_written_in_envoys_order() {
        let mut flags = Flags::NONE;
        assert_eq!(flags.as_str(), "-");
        flags.insert(Flag::UpstreamFailure);
        assert_eq!(flags.as_str(), "UF");
        // A delay injected before the upstream failed is not lost.
        flags.insert(Flag::DelayInjected);
        assert_eq!(flags.as_str(), "UF,DI");
        assert!(flags.contains(Flag::DelayInjected) && !flags.contains(Flag::RateLimited));
        for flag in Flag::ALL {
            assert_eq!(Flags::from(flag).as_str(), flag.as_str());
        }
        assert_eq!(Flags::from(Flag::Denied).to_string(), "DENY");
    }
}
