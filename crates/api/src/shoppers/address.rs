//! The client address of a request: the socket's peer, or, when the peer is a trusted proxy
//! (`trusted_proxies`), the address it forwarded in `X-Forwarded-For` (or `Forwarded: for=`).
//! A client that sends its own `X-Forwarded-For` straight to a host changes nothing.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The load balancers and gateways whose forwarded addresses are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Each entry an address (`10.0.0.7`, `::1`) or a CIDR block (`10.0.0.0/8`). Refuses an
    /// entry that is neither, naming it.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "trusted_proxies: {entry:?} is neither an IP address nor a CIDR \
                             block (such as 10.0.0.0/8)"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address: `peer` itself unless it is trusted; then the right-most address
    /// of `X-Forwarded-For` (or of `Forwarded`'s `for=`) that is not a trusted proxy itself.
    /// A header that cannot be read leaves the peer.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            for hop in value.split(',') {
                match parse_hop(hop) {
                    Some(address) => hops.push(address),
                    None => return peer,
                }
            }
        }
        if hops.is_empty() {
            for value in headers.get_all("forwarded") {
                let Ok(value) = value.to_str() else {
                    return peer;
                };
                for element in value.split(',') {
                    let Some(for_value) = element.split(';').find_map(|pair| {
                        let (name, value) = pair.split_once('=')?;
                        name.trim().eq_ignore_ascii_case("for").then_some(value)
                    }) else {
                        continue;
                    };
                    match parse_hop(for_value) {
                        Some(address) => hops.push(address),
                        None => return peer,
                    }
                }
            }
        }
        hops.iter()
            .rev()
            .map(|a| canonical(*a))
            .find(|a| !self.trusts(*a))
            .or_else(|| hops.first().copied())
            .unwrap_or(peer)
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, from a dual-stack listener) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`, `"[2001:db8::1]"`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(proxies.client_address(stranger, &spoofed), stranger);
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        // The client prepends a lie; the proxy appends what it saw.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 10.9.9.9")]);
        assert_eq!(
            proxies.client_address(lb, &chain),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        let forwarded = headers(&[("forwarded", "for=\"[2001:db8::7]:443\";proto=https")]);
        assert_eq!(
            proxies.client_address("::1".parse().unwrap(), &forwarded),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(proxies.client_address(lb, &garbage), lb);
        assert_eq!(proxies.client_address(lb, &HeaderMap::new()), lb);
    }

    #[test]
    fn refuses_what_is_no_address() {
        let e = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        assert!(TrustedProxies::parse(&["lb.internal".into()]).is_err());
    }
}
