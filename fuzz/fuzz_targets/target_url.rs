//! The target checks: ingest's URL rules, the SSRF verdict on the address a URL names, and the
//! allow-list syntax. Any IPv6 wrapping of an IPv4 address (mapped, compatible) gets the
//! verdict of the address it wraps.
#![no_main]
use std::net::{IpAddr, Ipv6Addr};

use fluxcb_core::callback::validate_url;
use fluxcb_core::target::{parse_allow_list, TargetPolicy};
use libfuzzer_sys::fuzz_target;
use url::Host;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_allow_list(text);
    let policy = TargetPolicy::public_only();
    if let Ok(url) = validate_url(text) {
        assert!(matches!(url.scheme(), "http" | "https"));
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = ip {
            let verdict = policy.check(ip).is_ok();
            if let IpAddr::V4(v4) = ip {
                assert_eq!(
                    policy.check(IpAddr::V6(v4.to_ipv6_mapped())).is_ok(),
                    verdict
                );
                let compatible = Ipv6Addr::from(u128::from(u32::from(v4)));
                if !v4.is_unspecified() && u32::from(v4) > 1 {
                    assert_eq!(policy.check(IpAddr::V6(compatible)).is_ok(), verdict);
                }
            }
        }
    }
    // Raw bytes as an address too: every 4 and 16 byte window, as the resolver could answer.
    if data.len() >= 16 {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[..16]);
        let v6 = Ipv6Addr::from(octets);
        let _ = policy.check(IpAddr::V6(v6));
        if let Some(v4) = v6.to_ipv4_mapped() {
            assert_eq!(
                policy.check(IpAddr::V6(v6)).is_ok(),
                policy.check(IpAddr::V4(v4)).is_ok()
            );
        }
    }
});
