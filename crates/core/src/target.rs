//! Which IP addresses a delivery may dial: the SSRF policy.
//!
//! Callback URLs come from tenants, so without this check a tenant could make the
//! service call its own loopback admin ports, the cloud metadata endpoint or anything
//! else on the private network. Hostnames are not checked here on purpose: DNS can
//! change between validation and connect (rebinding), so the connector calls
//! [`TargetPolicy::check`] for every address it is about to dial, and this module only
//! has to classify [`IpAddr`] values.
//!
//! The rules follow the IANA IPv4 and IPv6 special-purpose address registries, erring
//! towards blocking: a webhook receiver never legitimately lives on an anycast relay,
//! a documentation prefix or a not-yet-allocated range, and an operator who really
//! needs one can allow-list it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// The set of addresses deliveries may dial: every public address, plus the
/// operator's allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    allow: Vec<IpNet>,
}

impl TargetPolicy {
    /// Only publicly routable addresses.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses plus `allow`, which wins over every block rule (for
    /// receivers on a private network, or local testing).
    pub fn with_allowed(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// Ok if the address may be dialled.
    ///
    /// For IPv6 forms that carry an IPv4 address (mapped, compatible, translated,
    /// NAT64) the embedded IPv4 is what the packets end up reaching, so it is what gets
    /// classified. The allow-list is matched against the address as given *and*
    /// against the embedded IPv4: an operator who allows `127.0.0.0/8` means "loopback
    /// may be reached", whichever spelling the resolver hands back, and listing every
    /// IPv6 wrapping of a range would be unreasonable to expect.
    pub fn check(&self, ip: IpAddr) -> Result<(), BlockedAddress> {
        if self.is_allow_listed(ip) {
            return Ok(());
        }
        let verdict = match ip {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => match classify_v6(v6) {
                V6Class::Public => None,
                V6Class::Blocked(reason) => Some(reason),
                V6Class::Embeds(v4) if self.is_allow_listed(IpAddr::V4(v4)) => None,
                V6Class::Embeds(v4) => classify_v4(v4),
            },
        };
        match verdict {
            None => Ok(()),
            Some(reason) => Err(BlockedAddress { ip, reason }),
        }
    }

    fn is_allow_listed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// Why an address may not be dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockReason {
    /// `0.0.0.0` or `::`; Linux and others connect these to the local host.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`.
    ThisNetwork,
    Loopback,
    /// RFC 1918.
    Private,
    /// Includes `169.254.169.254`, the cloud metadata service.
    LinkLocal,
    /// `100.64.0.0/10`, carrier-grade NAT.
    SharedCgnat,
    Multicast,
    Broadcast,
    Documentation,
    /// Not allocated for global unicast (IPv4 `240/4`, IPv6 outside `2000::/3`).
    Reserved,
    Benchmarking,
    /// IPv6 `fc00::/7`.
    UniqueLocal,
    /// IPv6 `fec0::/10`, deprecated but still non-global.
    SiteLocal,
    /// IPv4 `192.0.0.0/24` and IPv6 `2001::/23`.
    IetfProtocol,
    /// IPv6 `2001::/32`; tunnels to an IPv4 server and client of its own.
    Teredo,
    /// IPv4 `192.88.99.0/24` and IPv6 `2002::/16`.
    SixToFour,
    /// IPv6 `100::/64`.
    Discard,
    /// IPv6 `64:ff9b:1::/48` in a shape whose embedded IPv4 cannot be located.
    AmbiguousNat64,
}

impl BlockReason {
    /// Stable snake_case code, suitable for logs, metrics and API errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::ThisNetwork => "this_network",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::SharedCgnat => "shared_cgnat",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
            Self::Benchmarking => "benchmarking",
            Self::UniqueLocal => "unique_local",
            Self::SiteLocal => "site_local",
            Self::IetfProtocol => "ietf_protocol",
            Self::Teredo => "teredo",
            Self::SixToFour => "six_to_four",
            Self::Discard => "discard",
            Self::AmbiguousNat64 => "ambiguous_nat64",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address the policy refuses, with the address as it was given (not unwrapped),
/// so logs show what the resolver actually returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is not a public address ({reason})")]
pub struct BlockedAddress {
    pub ip: IpAddr,
    pub reason: BlockReason,
}

/// Parses an allow-list such as `"10.0.0.0/8, 192.168.1.5, fd00::/8"`.
///
/// A bare address means just that host. Host bits in a CIDR are dropped
/// (`10.1.2.3/8` is `10.0.0.0/8`), matching how the range would be read aloud.
/// Empty entries between commas are rejected rather than skipped: they usually mean a
/// templated value expanded to nothing, and silently allowing less than intended is
/// hard to notice.
pub fn parse_allow_list(s: &str) -> Result<Vec<IpNet>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .enumerate()
        .map(|(i, raw)| {
            let entry = raw.trim();
            if entry.is_empty() {
                return Err(format!(
                    "allow-list entry {} is empty (stray comma?)",
                    i + 1
                ));
            }
            if let Ok(net) = IpNet::from_str(entry) {
                return Ok(net.trunc());
            }
            IpAddr::from_str(entry).map(IpNet::from).map_err(|_| {
                format!("allow-list entry {entry:?} is not an IP address or CIDR block")
            })
        })
        .collect()
}

/// `None` if public.
fn classify_v4(ip: Ipv4Addr) -> Option<BlockReason> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        _ if ip.is_unspecified() => BlockReason::Unspecified,
        _ if ip.is_broadcast() => BlockReason::Broadcast,
        (0, _, _) => BlockReason::ThisNetwork,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => BlockReason::Private,
        (100, 64..=127, _) => BlockReason::SharedCgnat,
        (127, _, _) => BlockReason::Loopback,
        (169, 254, _) => BlockReason::LinkLocal,
        // IANA lists 192.0.0.9 and .10 (PCP and TURN anycast) as global, but no webhook
        // receiver lives there, so the whole /24 goes.
        (192, 0, 0) => BlockReason::IetfProtocol,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => BlockReason::Documentation,
        (192, 88, 99) => BlockReason::SixToFour,
        (198, 18..=19, _) => BlockReason::Benchmarking,
        (224..=239, _, _) => BlockReason::Multicast,
        (240..=255, _, _) => BlockReason::Reserved,
        _ => return None,
    };
    Some(reason)
}

enum V6Class {
    Public,
    Blocked(BlockReason),
    /// Traffic ends up at this IPv4 address, so that is what must be judged.
    Embeds(Ipv4Addr),
}

fn classify_v6(ip: Ipv6Addr) -> V6Class {
    use BlockReason::*;

    // Checked before the embedded forms: `::` and `::1` also match the IPv4-compatible
    // prefix, and would otherwise be reported as 0.0.0.0/8 addresses.
    if ip.is_unspecified() {
        return V6Class::Blocked(Unspecified);
    }
    if ip.is_loopback() {
        return V6Class::Blocked(Loopback);
    }
    if let Some(v4) = embedded_ipv4(ip) {
        return V6Class::Embeds(v4);
    }

    let seg = ip.segments();
    let reason = if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        // The local-use NAT64 prefix (RFC 8215) may be split into /48../96 prefixes
        // (RFC 6052), and where the IPv4 sits depends on the operator's prefix length.
        // Reading it from the last 32 bits would be bypassable (e.g. under a /48,
        // 64:ff9b:1:7f00:0:100:808:808 reaches 127.0.0.1), so only the unambiguous
        // `64:ff9b:1::a.b.c.d` shape is unwrapped (in `embedded_ipv4`).
        AmbiguousNat64
    } else if seg[0] & 0xff00 == 0xff00 {
        Multicast
    } else if seg[0] & 0xffc0 == 0xfe80 {
        LinkLocal
    } else if seg[0] & 0xffc0 == 0xfec0 {
        SiteLocal
    } else if seg[0] & 0xfe00 == 0xfc00 {
        UniqueLocal
    } else if seg[..4] == [0x100, 0, 0, 0] {
        Discard
    } else if seg[0] & 0xe000 != 0x2000 {
        // Only 2000::/3 is allocated for global unicast; the special ranges outside it
        // were handled above and everything left is unassigned.
        Reserved
    } else if (seg[0] == 0x2001 && seg[1] == 0x0db8) || seg[0] & 0xfff0 == 0x3ff0 {
        // 2001:db8::/32 and, since RFC 9637, 3fff::/20.
        Documentation
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo embeds both a server IPv4 and an (obfuscated) client IPv4, and traffic
        // goes through a relay we do not control; there is nothing safe to unwrap.
        Teredo
    } else if seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0 {
        Benchmarking
    } else if seg[0] == 0x2001 && seg[1] < 0x200 {
        // The rest of 2001::/23. A few sub-blocks are marked global by IANA (anycast
        // PCP/TURN, AMT, AS112, ORCHIDv2), but none hosts a webhook receiver.
        IetfProtocol
    } else if seg[0] == 0x2002 {
        // 6to4 is deprecated (RFC 7526) and reached through anycast relays: whichever
        // relay is nearest decapsulates towards the embedded IPv4, so even a public
        // embedded address gives no guarantee about where packets go. Real receivers
        // do not use 6to4 addresses any more, so the whole range is blocked rather
        // than unwrapped; the allow-list remains as an escape hatch.
        SixToFour
    } else {
        return V6Class::Public;
    };
    V6Class::Blocked(reason)
}

/// The IPv4 address inside an IPv6 address that merely wraps one.
///
/// Covers more than [`Ipv6Addr::to_canonical`] (which only knows `::ffff:0:0/96`):
/// a dual-stack socket or a NAT64 gateway delivers all of these forms to IPv4.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let o = ip.octets();
    let low32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let embeds = match seg[..6] {
        // IPv4-mapped ::ffff:a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff] => true,
        // IPv4-compatible ::a.b.c.d (RFC 4291, deprecated) and IPv4-translated
        // ::ffff:0:a.b.c.d (RFC 2765).
        [0, 0, 0, 0, 0, 0] => true,
        [0, 0, 0, 0, 0xffff, 0] => true,
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052), which is always a /96.
        [0x64, 0xff9b, 0, 0, 0, 0] => true,
        // Local-use NAT64 64:ff9b:1::/48 (RFC 8215), only in its /96 shape; see
        // `classify_v6` for why other shapes are not unwrapped.
        [0x64, 0xff9b, 1, 0, 0, 0] => true,
        _ => false,
    };
    embeds.then_some(low32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn reason(policy: &TargetPolicy, s: &str) -> Option<BlockReason> {
        policy.check(ip(s)).err().map(|e| e.reason)
    }

    #[test]
    fn classification_table() {
        use BlockReason::*;
        let cases: &[(&str, Option<BlockReason>)] = &[
            // IPv4 public
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.215.14", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.0.1.1", None),
            ("192.88.98.1", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            // IPv4 blocked
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.1", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.254.0.1", Some(LinkLocal)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.0.0.9", Some(IetfProtocol)),
            ("192.0.2.1", Some(Documentation)),
            ("192.88.99.1", Some(SixToFour)),
            ("192.168.1.1", Some(Private)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("254.255.255.255", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            // IPv6 public
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("2a00:1450:4001:82b::200e", None),
            ("2001:200::1", None),
            // IPv6 blocked
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456:789a::1", Some(UniqueLocal)),
            ("ff02::1", Some(Multicast)),
            ("ff0e::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("100::1", Some(Discard)),
            ("2001::1", Some(Teredo)),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Teredo)),
            ("2001:2::1", Some(Benchmarking)),
            ("2001:10::1", Some(IetfProtocol)),
            ("2001:1ff::1", Some(IetfProtocol)),
            ("2002:c000:0204::1", Some(SixToFour)),
            ("2002:0808:0808::1", Some(SixToFour)),
            ("4000::1", Some(Reserved)),
            ("5f00::1", Some(Reserved)),
            ("64:ff9b:2::1", Some(Reserved)),
            ("64:ff9b:1:7f00:0:100:808:808", Some(AmbiguousNat64)),
            ("64:ff9b:1:ab::808:808", Some(AmbiguousNat64)),
            // IPv6 wrapping an IPv4: the embedded address decides.
            ("::ffff:8.8.8.8", None),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::192.168.0.1", Some(Private)),
            ("::0.0.0.2", Some(ThisNetwork)),
            ("::ffff:0:1.1.1.1", None),
            ("::ffff:0:127.0.0.1", Some(Loopback)),
            ("::ffff:0:172.16.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::169.254.169.254", Some(LinkLocal)),
            ("64:ff9b::100.64.0.1", Some(SharedCgnat)),
            ("64:ff9b:1::8.8.8.8", None),
            ("64:ff9b:1::10.0.0.1", Some(Private)),
        ];
        let policy = TargetPolicy::public_only();
        let mut failures = Vec::new();
        for &(addr, want) in cases {
            let got = reason(&policy, addr);
            if got != want {
                failures.push(format!("{addr}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn error_reports_the_address_as_given() {
        let err = TargetPolicy::public_only()
            .check(ip("::ffff:127.0.0.1"))
            .unwrap_err();
        assert_eq!(err.ip, ip("::ffff:127.0.0.1"));
        assert_eq!(
            err.to_string(),
            "::ffff:127.0.0.1 is not a public address (loopback)"
        );
    }

    #[test]
    fn allow_list_overrides_blocks() {
        let policy = TargetPolicy::with_allowed(
            parse_allow_list("10.1.0.0/16, 127.0.0.0/8, fd00::/8").unwrap(),
        );
        assert_eq!(policy.allowed().len(), 3);
        for ok in [
            "10.1.2.3",
            "127.0.0.1",
            "fd00::1",
            "8.8.8.8",
            // Embedded IPv4 matches the IPv4 entries.
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.1.0.9",
        ] {
            assert_eq!(policy.check(ip(ok)), Ok(()), "{ok}");
        }
        for blocked in [
            "10.2.0.1",
            "169.254.169.254",
            "::1",
            "fc00::1",
            "::ffff:10.2.0.1",
        ] {
            assert!(policy.check(ip(blocked)).is_err(), "{blocked}");
        }
    }

    #[test]
    fn allow_list_matches_the_address_as_given() {
        let policy = TargetPolicy::with_allowed(parse_allow_list("2002::/16, ::1").unwrap());
        assert_eq!(policy.check(ip("2002:0a00:0001::1")), Ok(()));
        assert_eq!(policy.check(ip("::1")), Ok(()));
        assert!(policy.check(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn parse_allow_list_accepts_cidrs_and_bare_addresses() {
        assert_eq!(parse_allow_list(""), Ok(vec![]));
        assert_eq!(parse_allow_list("  "), Ok(vec![]));
        let nets = parse_allow_list(" 10.0.0.0/8 ,192.168.1.5,::1, fd00::/8,10.1.2.3/8").unwrap();
        let want: Vec<IpNet> = [
            "10.0.0.0/8",
            "192.168.1.5/32",
            "::1/128",
            "fd00::/8",
            "10.0.0.0/8",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(nets, want);
    }

    #[test]
    fn parse_allow_list_names_the_bad_entry() {
        let err = parse_allow_list("10.0.0.0/8, nope").unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
        let err = parse_allow_list("10.0.0.0/33").unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        let err = parse_allow_list("10.0.0.0/8,,::1").unwrap_err();
        assert!(err.contains("entry 2"), "{err}");
        let err = parse_allow_list("10.0.0.0/8,").unwrap_err();
        assert!(err.contains("entry 2"), "{err}");
        assert!(parse_allow_list("localhost").is_err());
    }

    #[test]
    fn reason_codes_are_snake_case() {
        use BlockReason::*;
        for r in [
            Unspecified,
            ThisNetwork,
            Loopback,
            Private,
            LinkLocal,
            SharedCgnat,
            Multicast,
            Broadcast,
            Documentation,
            Reserved,
            Benchmarking,
            UniqueLocal,
            SiteLocal,
            IetfProtocol,
            Teredo,
            SixToFour,
            Discard,
            AmbiguousNat64,
        ] {
            let code = r.as_str();
            assert!(
                code.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{code}"
            );
            assert_eq!(r.to_string(), code);
        }
    }

    /// The policy only sees addresses, so it relies on the `url` crate (WHATWG host
    /// parsing) turning every numeric spelling of a host into an IP literal rather
    /// than a domain name that a resolver might interpret differently.
    #[test]
    fn odd_url_spellings_become_blocked_ip_literals() {
        let urls = [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://①②⑦.0.0.1/",
            "http://0x7f.1/",
            "http://017700000001/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/",
            "http://[fe80::1]/",
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
        ];
        let policy = TargetPolicy::public_only();
        for raw in urls {
            let parsed = url::Url::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            let addr = match parsed.host() {
                Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
                Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
                other => panic!("{raw}: host {other:?} is not an IP literal"),
            };
            assert!(policy.check(addr).is_err(), "{raw} ({addr}) was allowed");
        }
    }
}
