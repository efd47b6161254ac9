//! Property tests of the SSRF policy: however an address is re-encoded — wrapped in one of the
//! IPv6 forms that deliver to IPv4, or spelled in any of the numeric forms URL parsers accept —
//! the verdict is the verdict on the address itself.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fluxcb_core::target::{parse_allow_list, TargetPolicy};
use proptest::prelude::*;

fn blocked(policy: &TargetPolicy, ip: IpAddr) -> bool {
    policy.check(ip).is_err()
}

/// Every IPv6 form that a dual-stack socket or a NAT64 gateway delivers to `v4`.
fn wrappings(v4: Ipv4Addr) -> Vec<Ipv6Addr> {
    let [a, b, c, d] = v4.octets();
    let hi = u16::from_be_bytes([a, b]);
    let lo = u16::from_be_bytes([c, d]);
    vec![
        v4.to_ipv6_mapped(),
        v4.to_ipv6_compatible(),
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, hi, lo),
    ]
}

/// Numeric host spellings the WHATWG URL parser turns into `v4`.
fn spellings(v4: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = v4.octets();
    let n = u32::from(v4);
    vec![
        v4.to_string(),
        n.to_string(),
        format!("0x{n:x}"),
        format!("0{n:o}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
        format!("{a}.{b}.{}", u32::from(c) << 8 | u32::from(d)),
        format!("{a}.{}", n & 0x00ff_ffff),
        format!("{v4}."),
        format!("[::ffff:{v4}]"),
    ]
}

/// Addresses from the blocked IPv4 ranges.
fn blocked_v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(10, b, c, d)),
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(127, b, c, d)),
        any::<[u8; 2]>().prop_map(|[c, d]| Ipv4Addr::new(169, 254, c, d)),
        (16u8..32, any::<[u8; 2]>()).prop_map(|(b, [c, d])| Ipv4Addr::new(172, b, c, d)),
        any::<[u8; 2]>().prop_map(|[c, d]| Ipv4Addr::new(192, 168, c, d)),
        (64u8..128, any::<[u8; 2]>()).prop_map(|(b, [c, d])| Ipv4Addr::new(100, b, c, d)),
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(0, b, c, d)),
        (224u8..=255, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b, c, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn wrapping_an_ipv4_address_never_changes_the_verdict(raw in any::<u32>()) {
        let policy = TargetPolicy::public_only();
        let v4 = Ipv4Addr::from(raw);
        let want = blocked(&policy, IpAddr::V4(v4));
        for v6 in wrappings(v4) {
            prop_assert_eq!(blocked(&policy, IpAddr::V6(v6)), want, "{} as {}", v4, v6);
        }
    }

    #[test]
    fn blocked_ranges_stay_blocked_in_every_wrapping(v4 in blocked_v4()) {
        let policy = TargetPolicy::public_only();
        prop_assert!(blocked(&policy, IpAddr::V4(v4)));
        for v6 in wrappings(v4) {
            prop_assert!(blocked(&policy, IpAddr::V6(v6)), "{} as {}", v4, v6);
        }
    }

    #[test]
    fn every_url_spelling_parses_to_the_address_with_its_verdict(raw in any::<u32>()) {
        let policy = TargetPolicy::public_only();
        let v4 = Ipv4Addr::from(raw);
        let want = blocked(&policy, IpAddr::V4(v4));
        for host in spellings(v4) {
            let url = url::Url::parse(&format!("http://{host}/hook"))
                .map_err(|e| TestCaseError::fail(format!("{host}: {e}")))?;
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
                other => return Err(TestCaseError::fail(format!("{host}: host {other:?}"))),
            };
            prop_assert_eq!(blocked(&policy, ip), want, "{} spelled {}", v4, host);
        }
    }

    #[test]
    fn an_allow_listed_range_is_allowed_in_every_wrapping(c in any::<u8>(), d in any::<u8>()) {
        let policy = TargetPolicy::with_allowed(parse_allow_list("10.20.0.0/16").unwrap());
        let inside = Ipv4Addr::new(10, 20, c, d);
        prop_assert!(!blocked(&policy, IpAddr::V4(inside)));
        for v6 in wrappings(inside) {
            prop_assert!(!blocked(&policy, IpAddr::V6(v6)), "{}", v6);
        }
        let outside = Ipv4Addr::new(10, 21, c, d);
        prop_assert!(blocked(&policy, IpAddr::V4(outside)));
    }
}
