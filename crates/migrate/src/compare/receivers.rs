//! Receivers that would behave differently once fluxcb sends: hosts whose addresses fluxcb's
//! SSRF policy refuses (legacy had no such check), hosts that answer with redirects (legacy
//! followed them, fluxcb does not), and URLs in schemes fluxcb cannot send to.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fluxcb_core::target::TargetPolicy;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use url::{Host, Url};

/// Legacy ids kept per host as examples.
const SAMPLE_IDS: usize = 5;
/// Host names resolved at once.
const RESOLVING: usize = 16;
pub const BLOCKED_HINT: &str = "allow-list it (FLUXCB_ALLOW_PRIVATE_TARGETS) before the shadow run";
pub const REDIRECT_NOTE: &str = "answers with redirects, which fluxcb does not follow (legacy did)";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockedAddress {
    pub ip: IpAddr,
    pub reason: String,
}

/// A host some of whose addresses fluxcb refuses to dial: it refuses the host then.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockedHost {
    pub host: String,
    pub rows: u64,
    pub sample_ids: Vec<i64>,
    pub addresses: Vec<BlockedAddress>,
    pub hint: &'static str,
}

/// A host that did not resolve here (within the timeout): nothing to check, and neither system
/// could reach it from this machine. Informational.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnresolvableHost {
    pub host: String,
    pub rows: u64,
    pub sample_ids: Vec<i64>,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnsupportedScheme {
    pub scheme: String,
    pub host: String,
    pub rows: u64,
    pub sample_ids: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RedirectingHost {
    pub host: String,
    /// fluxcb's callbacks (with a legacy id) whose latest answer was a 3xx.
    pub callbacks: u64,
    pub status_codes: Vec<u16>,
    pub sample_legacy_ids: Vec<i64>,
    pub note: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReceiversReport {
    /// Distinct http(s) hosts in the legacy table.
    pub hosts_checked: u64,
    pub blocked: Vec<BlockedHost>,
    pub redirecting: Vec<RedirectingHost>,
    pub unsupported_scheme: Vec<UnsupportedScheme>,
    pub unresolvable: Vec<UnresolvableHost>,
}

#[derive(Default)]
struct Seen {
    port: u16,
    rows: u64,
    sample_ids: Vec<i64>,
}

impl Seen {
    fn add(&mut self, id: i64) {
        self.rows += 1;
        if self.sample_ids.len() < SAMPLE_IDS {
            self.sample_ids.push(id);
        }
    }
}

/// The legacy table's destinations, gathered row by row, then checked once per host.
#[derive(Default)]
pub struct Receivers {
    hosts: BTreeMap<String, Seen>,
    schemes: BTreeMap<(String, String), Seen>,
    redirects: BTreeMap<String, (Seen, Vec<u16>)>,
}

impl Receivers {
    /// One legacy row's URL (one that does not parse is the import's business: the row is
    /// reported as missing).
    pub fn observe_row(&mut self, id: i64, url: &str) {
        let Ok(url) = Url::parse(url) else { return };
        let host = url.host_str().unwrap_or_default().to_owned();
        if matches!(url.scheme(), "http" | "https") {
            let seen = self.hosts.entry(host).or_default();
            seen.port = url.port_or_known_default().unwrap_or(80);
            seen.add(id);
        } else {
            self.schemes
                .entry((url.scheme().to_owned(), host))
                .or_default()
                .add(id);
        }
    }

    /// A callback fluxcb delivers whose latest answer was `status` (a 3xx).
    pub fn observe_redirect(&mut self, legacy_id: i64, url: &Url, status: u16) {
        let (seen, codes) = self
            .redirects
            .entry(url.host_str().unwrap_or_default().to_owned())
            .or_default();
        seen.add(legacy_id);
        if !codes.contains(&status) {
            codes.push(status);
            codes.sort_unstable();
        }
    }

    /// Resolves every host (`timeout` each, a few at a time) and checks every address as
    /// fluxcb's connector does: one refused address refuses the host.
    pub async fn check(self, policy: &TargetPolicy, timeout: Duration) -> ReceiversReport {
        let mut report = ReceiversReport {
            hosts_checked: self.hosts.len() as u64,
            ..ReceiversReport::default()
        };
        let checked: Vec<(String, Seen, Result<Vec<IpAddr>, String>)> = stream::iter(self.hosts)
            .map(|(host, seen)| async move {
                let addresses = resolve(&host, seen.port, timeout).await;
                (host, seen, addresses)
            })
            .buffered(RESOLVING)
            .collect()
            .await;
        for (host, seen, addresses) in checked {
            match addresses {
                Ok(addresses) => {
                    let blocked: Vec<BlockedAddress> = addresses
                        .into_iter()
                        .filter_map(|ip| policy.check(ip).err())
                        .map(|b| BlockedAddress {
                            ip: b.ip,
                            reason: b.reason.as_str().to_owned(),
                        })
                        .collect();
                    if !blocked.is_empty() {
                        report.blocked.push(BlockedHost {
                            host,
                            rows: seen.rows,
                            sample_ids: seen.sample_ids,
                            addresses: blocked,
                            hint: BLOCKED_HINT,
                        });
                    }
                }
                Err(error) => report.unresolvable.push(UnresolvableHost {
                    host,
                    rows: seen.rows,
                    sample_ids: seen.sample_ids,
                    error,
                }),
            }
        }
        report.unsupported_scheme = self
            .schemes
            .into_iter()
            .map(|((scheme, host), seen)| UnsupportedScheme {
                scheme,
                host,
                rows: seen.rows,
                sample_ids: seen.sample_ids,
            })
            .collect();
        report.redirecting = self
            .redirects
            .into_iter()
            .map(|(host, (seen, status_codes))| RedirectingHost {
                host,
                callbacks: seen.rows,
                status_codes,
                sample_legacy_ids: seen.sample_ids,
                note: REDIRECT_NOTE,
            })
            .collect();
        report
    }
}

/// The addresses fluxcb would consider for `host`: an IP literal as it is, a name through the
/// system resolver.
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    match Host::parse(host) {
        Ok(Host::Ipv4(ip)) => return Ok(vec![IpAddr::V4(ip)]),
        Ok(Host::Ipv6(ip)) => return Ok(vec![IpAddr::V6(ip)]),
        _ => {}
    }
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a: SocketAddr| a.ip()).collect();
            ips.sort_unstable();
            ips.dedup();
            if ips.is_empty() {
                Err("no addresses".into())
            } else {
                Ok(ips)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_blocked_unless_allowed_and_unknown_names_are_their_own_kind() {
        let mut r = Receivers::default();
        r.observe_row(1, "http://127.0.0.1:9/x");
        r.observe_row(2, "http://127.0.0.1:9/y");
        r.observe_row(3, "http://[::1]/z");
        r.observe_row(4, "https://hooks.receiver.invalid/a");
        r.observe_row(5, "ftp://files.receiver.invalid/f");
        r.observe_row(6, "not a url");
        let report = r
            .check(&TargetPolicy::public_only(), Duration::from_secs(2))
            .await;
        assert_eq!(report.hosts_checked, 3);
        let blocked: Vec<_> = report
            .blocked
            .iter()
            .map(|b| (b.host.as_str(), b.rows, b.addresses[0].reason.as_str()))
            .collect();
        assert_eq!(
            blocked,
            [("127.0.0.1", 2, "loopback"), ("[::1]", 1, "loopback")]
        );
        assert_eq!(report.unresolvable.len(), 1);
        assert_eq!(report.unresolvable[0].host, "hooks.receiver.invalid");
        assert_eq!(report.unsupported_scheme.len(), 1);
        assert_eq!(report.unsupported_scheme[0].scheme, "ftp");

        let mut r = Receivers::default();
        r.observe_row(1, "http://127.0.0.1:9/x");
        let allowed = TargetPolicy::with_allowed(vec!["127.0.0.0/8".parse().unwrap()]);
        let report = r.check(&allowed, Duration::from_secs(2)).await;
        assert_eq!(report.blocked, []);
    }

    #[tokio::test]
    async fn redirecting_hosts_are_grouped_with_their_codes() {
        let mut r = Receivers::default();
        let url = Url::parse("https://moved.receiver.invalid/x").unwrap();
        r.observe_redirect(1, &url, 302);
        r.observe_redirect(2, &url, 301);
        r.observe_redirect(3, &url, 302);
        let report = r
            .check(&TargetPolicy::public_only(), Duration::from_secs(1))
            .await;
        assert_eq!(report.redirecting.len(), 1);
        let h = &report.redirecting[0];
        assert_eq!(
            (h.callbacks, h.status_codes.as_slice()),
            (3, &[301, 302][..])
        );
    }
}
