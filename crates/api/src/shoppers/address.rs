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

    /// The client's address: `peer` itself unless it is trusted; then, reading the hops of
    /// `X-Forwarded-For` (or of `Forwarded`'s `for=`) from the right, the first one that is
    /// not a trusted proxy itself. Hops to its left are the client's to write and are never
    /// read; a hop that cannot be read before it leaves the nearest trusted proxy's address.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            hops.extend(value.split(','));
        }
        if hops.is_empty() {
            for value in headers.get_all("forwarded") {
                let Ok(value) = value.to_str() else {
                    return peer;
                };
                hops.extend(value.split(',').filter_map(|element| {
                    element.split(';').find_map(|pair| {
                        let (name, value) = pair.split_once('=')?;
                        name.trim().eq_ignore_ascii_case("for").then_some(value)
                    })
                }));
            }
        }
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop).map(canonical) else {
                return nearest;
            };
            if !self.trusts(address) {
                return address;
            }
            nearest = address;
        }
        nearest
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
        // Junk the client writes to the left of its own hop is never read: it does not move
        // the client into the proxy's bucket.
        let junk_left = headers(&[("x-forwarded-for", "unknown, 198.51.100.4, 10.9.9.9")]);
        assert_eq!(
            proxies.client_address(lb, &junk_left),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(proxies.client_address(lb, &HeaderMap::new()), lb);
    }

    #[test]
    fn refuses_what_is_no_address() {
        let e = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        assert!(TrustedProxies::parse(&["lb.internal".into()]).is_err());
    }
}
