//! The balancer's tests: distances, tiers, policies, outlier ejection.

use super::*;

fn balancer(outlier: Option<OutlierDetection>) -> Balancer {
    let ep = |port: u16, loc: &str| {
        Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Locality::parse(loc).expect("locality"),
        )
    };
    Balancer::new(
        vec![ep(1, "eu/a"), ep(2, "eu/a"), ep(3, "eu/b"), ep(4, "us/c")],
        Locality::parse("eu/a").expect("locality"),
        outlier,
    )
}

fn fail() -> Outcome {
    Outcome::Response {
        status: 503,
        grpc_status: None,
    }
}

#[test]
fn distances() {
    let here = Locality::parse("eu/a/1").expect("locality");
    let cases = [
        ("eu/a/1", 0),
        ("eu/a/2", 1),
        ("eu/b", 2),
        ("us/a/1", 3),
        ("", 3),
    ];
    for (other, want) in cases {
        assert_eq!(
            here.distance(&Locality::parse(other).expect("locality")),
            want,
            "{other}"
        );
    }
}

#[test]
fn least_request_of_two_in_the_closest_tier() {
    let b = balancer(None);
    // Only endpoints 0 and 1 (zone a) are ever chosen.
    for a in 0..10 {
        assert!(b.pick(a, a + 1, None).is_some_and(|i| i < 2));
    }
    let _busy = b.start(0);
    assert_eq!(b.pick(0, 1, None), Some(1), "the less busy of the two");
    assert_eq!(b.pick(1, 0, None), Some(1));
}

/// The shortcut for one tier (no outlier detection, every endpoint
/// as close) chooses as the full path does: the same balancer with
/// outlier detection (nothing ejected) takes the full path.
#[test]
fn one_tier_chooses_as_the_full_path() {
    let zone = |n: u16| {
        (1..=n)
            .map(|p| {
                Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], p)),
                    Locality::parse("eu/a").expect("locality"),
                )
            })
            .collect::<Vec<_>>()
    };
    let here = || Locality::parse("eu/a").expect("locality");
    for policy in [
        Policy::LeastRequest,
        Policy::RoundRobin,
        Policy::Random,
        Policy::Hash,
    ] {
        let short = Balancer::new(zone(5), here(), None).with_policy(policy);
        let full =
            Balancer::new(zone(5), here(), Some(OutlierDetection::default())).with_policy(policy);
        assert!(short.one_tier() && full.one_tier());
        let mut rng = fastrand::Rng::with_seed(7);
        let mut busy = Vec::new();
        for round in 0..300u64 {
            let (a, b) = (rng.usize(..), rng.usize(..));
            let key = (round % 3 == 0).then(|| hash_key(&round.to_be_bytes()));
            let (x, y) = (short.pick(a, b, key), full.pick(a, b, key));
            assert_eq!(x, y, "{policy:?}, round {round}");
            // Some requests stay in flight, so least request has
            // loads to compare.
            if let Some(i) = x.filter(|_| round % 4 == 0) {
                busy.push((short.start(i), full.start(i)));
            }
        }
    }
    // Two zones rank differently: not one tier.
    assert!(!balancer(None).one_tier());
    assert_eq!(
        Balancer::new(Vec::new(), here(), None).pick(0, 0, None),
        None
    );
}

#[test]
fn policies_within_the_tier() {
    let rr = balancer(None).with_policy(Policy::RoundRobin);
    let picks: Vec<Option<usize>> = (0..4).map(|_| rr.pick(0, 0, None)).collect();
    assert_eq!(picks, [Some(0), Some(1), Some(0), Some(1)]);
    let random = balancer(None).with_policy(Policy::Random);
    assert_eq!(random.pick(3, 0, None), Some(1));
    // The same key always lands on the same endpoint; keys spread.
    let hashed = balancer(None).with_policy(Policy::Hash);
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..50u64 {
        let key = hash_key(&user.to_be_bytes());
        let first = hashed.pick(0, 1, Some(key));
        assert_eq!(hashed.pick(1, 0, Some(key)), first);
        seen.extend(first);
    }
    assert_eq!(seen.len(), 2, "both zone-a endpoints get keys");
    // An endpoint that leaves moves only its own keys (ring hash).
    let same_zone = |ports: &[u16]| {
        let eps = ports
            .iter()
            .map(|p| {
                Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], *p)),
                    Locality::parse("eu/a").expect("locality"),
                )
            })
            .collect();
        Balancer::new(eps, Locality::parse("eu/a").expect("locality"), None)
            .with_policy(Policy::Hash)
    };
    let (four, three) = (same_zone(&[1, 2, 3, 4]), same_zone(&[1, 2, 3]));
    let addr_of = |b: &Balancer, k: u64| {
        b.pick(0, 0, Some(hash_key(&k.to_be_bytes())))
            .map(|i| b.endpoints()[i].addr.port())
    };
    let mut moved = 0;
    for k in 0..400u64 {
        let (was, now) = (addr_of(&four, k), addr_of(&three, k));
        if was != Some(4) {
            assert_eq!(was, now, "key {k} moved though its endpoint stayed");
        } else {
            moved += 1;
        }
    }
    assert!(
        (50..150).contains(&moved),
        "{moved} of 400 keys were on the 4th endpoint"
    );
}

#[test]
fn failover_distribute_and_off() {
    use weft_core::l7::LocalityLb;
    let ep = |port: u16, loc: &str| {
        Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Locality::parse(loc).expect("locality"),
        )
    };
    // Only other regions have endpoints: failover names the one to use.
    let b = Balancer::new(
        vec![ep(1, "us/x"), ep(2, "ap/y")],
        Locality::parse("eu/a").expect("locality"),
        None,
    );
    let b = b.with_locality(LocalityLb {
        failover: vec![("eu".into(), "ap".into())],
        ..LocalityLb::default()
    });
    for a in 0..6 {
        assert_eq!(b.pick(a, a + 1, None), Some(1), "eu fails over to ap");
    }
    // distribute: 80 % stays in zone a, 20 % goes to zone b.
    let d = balancer(None).with_locality(LocalityLb {
        distribute: vec![(
            "eu/a/*".into(),
            vec![("eu/a/*".into(), 80), ("eu/b/*".into(), 20)],
        )],
        ..LocalityLb::default()
    });
    let to_b = (0..100).filter(|a| d.pick(*a, 0, None) == Some(2)).count();
    assert_eq!(to_b, 20);
    // Off: every endpoint is a candidate.
    let off = balancer(None).with_locality(LocalityLb {
        enabled: false,
        ..LocalityLb::default()
    });
    let seen: std::collections::BTreeSet<usize> =
        (0..8).filter_map(|a| off.pick(a, a, None)).collect();
    assert_eq!(seen.len(), 4);
    // failoverPriority ranks replace locality: rank 0 first, then 1.
    let mut far = ep(7, "us/x");
    far.priority = Some(0);
    let mut near = ep(8, "eu/a");
    near.priority = Some(1);
    let ranked = Balancer::new(
        vec![far, near],
        Locality::parse("eu/a").expect("locality"),
        None,
    );
    assert_eq!(ranked.pick(0, 1, None), Some(0));
    // Another cluster comes after this one, however close its zone.
    let mut there = ep(9, "eu/a");
    there.elsewhere = true;
    let home = ep(10, "us/x");
    let clusters = Balancer::new(
        vec![there, home],
        Locality::parse("eu/a").expect("locality"),
        None,
    );
    for a in 0..4 {
        assert_eq!(clusters.pick(a, a + 1, None), Some(1), "own cluster first");
    }
    assert!(locality_matches(
        "eu/*",
        &Locality::parse("eu/a/1").expect("locality")
    ));
    assert!(!locality_matches(
        "eu/b/*",
        &Locality::parse("eu/a/1").expect("locality")
    ));
}

#[tokio::test(start_paused = true)]
async fn ejection_fails_over_and_recovers_with_growing_times() {
    let od = OutlierDetection {
        consecutive_5xx: Some(3),
        consecutive_gateway_errors: None,
        base_ejection_time: Duration::from_secs(10),
        max_ejection_percent: 100,
    };
    let b = balancer(Some(od));
    for i in [0, 1] {
        b.report(i, fail());
        b.report(i, fail());
        assert!(!b.is_ejected(i), "two failures are not enough");
        b.report(i, fail());
        assert!(b.is_ejected(i));
    }
    // Zone a is out: zone b serves.
    assert_eq!(b.pick(0, 1, None), Some(2));
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(
        b.pick(0, 1, None).is_some_and(|i| i < 2),
        "back after the ejection time"
    );
    // A second ejection lasts twice as long.
    for _ in 0..3 {
        b.report(0, fail());
    }
    tokio::time::advance(Duration::from_secs(15)).await;
    assert!(b.is_ejected(0));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(!b.is_ejected(0));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count_and_max_percent_holds() {
    let od = OutlierDetection {
        consecutive_5xx: Some(2),
        max_ejection_percent: 25,
        ..OutlierDetection::default()
    };
    let b = balancer(Some(od));
    b.report(0, fail());
    b.report(
        0,
        Outcome::Response {
            status: 200,
            grpc_status: None,
        },
    );
    b.report(0, fail());
    assert!(!b.is_ejected(0));
    b.report(0, fail());
    assert!(b.is_ejected(0));
    // 25 % of 4 is one endpoint: the second stays in.
    b.report(1, fail());
    b.report(1, fail());
    assert!(!b.is_ejected(1));
}
