//! Where things run: [`Locality`], one type for the whole mesh (registry,
//! node proxies, waypoints), with its parse and the distance endpoint
//! choice ranks by.

use std::fmt;

/// A failure domain: `region/zone/subzone`, each part optional from the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// Region, e.g. `eu-west`.
    pub region: String,
    /// Zone within the region, e.g. `eu-west-1a`.
    pub zone: String,
    /// Subzone within the zone, e.g. `rack-7`.
    pub subzone: String,
}

impl Locality {
    /// Parses `region[/zone[/subzone]]`; the empty string is "no locality".
    pub fn parse(s: &str) -> Result<Locality, String> {
        if s.is_empty() {
            return Ok(Locality::default());
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(format!(
                "{s:?} has {} parts; a locality is region/zone/subzone",
                parts.len()
            ));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "{s:?} has an empty part; a locality is region/zone/subzone"
            ));
        }
        let get = |i: usize| parts.get(i).map_or(String::new(), |p| (*p).to_owned());
        Ok(Locality {
            region: get(0),
            zone: get(1),
            subzone: get(2),
        })
    }

    /// Whether no part is set.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// How far `other` is (lower is closer): 0 same subzone, 1 same zone,
    /// 2 same region, 3 elsewhere or unknown.
    pub fn distance(&self, other: &Locality) -> u8 {
        if self.region.is_empty() || self.region != other.region {
            3
        } else if self.zone.is_empty() || self.zone != other.zone {
            2
        } else if self.subzone != other.subzone {
            1
        } else {
            0
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        for part in [&self.zone, &self.subzone] {
            if !part.is_empty() {
                write!(f, "/{part}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_table() {
        let cases = [
            ("", ("", "", "")),
            ("eu", ("eu", "", "")),
            ("eu/eu-1a", ("eu", "eu-1a", "")),
            ("eu/eu-1a/rack-7", ("eu", "eu-1a", "rack-7")),
        ];
        for (input, (r, z, s)) in cases {
            let l = Locality::parse(input).expect(input);
            assert_eq!(
                (l.region.as_str(), l.zone.as_str(), l.subzone.as_str()),
                (r, z, s)
            );
            assert_eq!(l.to_string(), input);
        }
        for bad in ["eu//x", "/eu", "a/b/c/d", "eu/"] {
            assert!(Locality::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn distance_ranks_subzone_zone_region() {
        let here = Locality::parse("eu/a/1").expect("locality");
        for (other, want) in [
            ("eu/a/1", 0),
            ("eu/a/2", 1),
            ("eu/b", 2),
            ("us/c", 3),
            ("", 3),
        ] {
            let there = Locality::parse(other).expect("locality");
            assert_eq!(here.distance(&there), want, "{other}");
        }
        assert_eq!(Locality::default().distance(&here), 3, "unknown is far");
    }
}
