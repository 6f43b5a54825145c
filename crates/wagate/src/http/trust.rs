//! Who is calling, and what they may do without the API key.
//!
//! A request is local (trusted without the key) only when it comes straight from this
//! machine: the peer is a loopback address, no proxy forwarded it (no `Forwarded`,
//! `X-Forwarded-For` or `X-Real-IP`), and its `Host` names this machine. A reverse proxy
//! on the same host connects from loopback too, but it forwards headers and public names,
//! so whatever it passes on needs the key. `--allowed-hosts` lists the public names wagate
//! answers to (others get 421, which stops DNS rebinding); `--trusted-proxies` names the
//! proxies whose forwarding headers say who the client is (for logs; never to trust it).
//!
//! State-changing requests are refused when a browser says they come from another site
//! (`Origin`, `Sec-Fetch-Site`), and a POST must be JSON (or carry `X-Wagate-Client`), so
//! no HTML form or `text/plain` fetch of a foreign page can log a session out.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::{header, HeaderMap, Method, StatusCode};

use super::error::ApiError;

/// The header wagate's own clients (the console, the CLI) send on every call, so that a
/// POST without a body is still recognisably not a form.
pub const CLIENT_HEADER: &str = "x-wagate-client";

const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The access rules `wagate serve` runs with.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Required from callers that are not local; without one they get nothing.
    pub api_key: Option<String>,
    /// Public names (`Host` without the port) wagate answers to besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: Vec<Cidr>,
}

/// An address range, `192.0.2.0/24` or `2001:db8::/32` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(address.parse().map_err(|_| format!("'{text}' is not an address or CIDR range"))?);
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| format!("bad prefix in '{text}'"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let (whole, rest) = (usize::from(prefix / 8), prefix % 8);
    if network[..whole] != address[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        network[whole] & mask == address[whole] & mask
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) as the IPv4 address they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Who a request comes from, as far as wagate can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The client's address: the peer, or what a trusted proxy says.
    pub address: IpAddr,
    /// Straight from this machine: trusted without the key.
    pub local: bool,
}

impl Access {
    pub fn caller(&self, peer: IpAddr, headers: &HeaderMap) -> Caller {
        let peer = canonical(peer);
        let forwarded = FORWARDING_HEADERS.iter().any(|name| headers.contains_key(*name));
        let address = match forwarded && self.trusted_proxies.iter().any(|p| p.contains(peer)) {
            true => self.forwarded_client(headers).unwrap_or(peer),
            false => peer,
        };
        let local = peer.is_loopback() && !forwarded && host_of(headers).is_some_and(is_loopback_name);
        Caller { address, local }
    }

    /// The client a trusted proxy names: the right-most address in `X-Forwarded-For` that
    /// is not one of the trusted proxies (earlier entries are the client's own claims).
    fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        let from_chain = hops.iter().rev().copied().find(|hop| !self.trusted_proxies.iter().any(|p| p.contains(*hop)));
        from_chain
            .or_else(|| hops.first().copied())
            .or_else(|| headers.get("x-real-ip")?.to_str().ok()?.trim().parse().ok())
    }

    /// The rule of `/v1`, the compat API and `/metrics`: local callers, or the key.
    pub fn authorize(&self, caller: Caller, headers: &HeaderMap) -> Result<(), ApiError> {
        if caller.local {
            return Ok(());
        }
        let Some(expected) = self.api_key.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the API only answers this machine unless WAGATE_API_KEY is set (requests through a proxy need the key)",
            ));
        };
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match presented.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => Ok(()),
            _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)")),
        }
    }

    /// With `--allowed-hosts`, a `Host` that is neither this machine nor one of those names
    /// is another site's (DNS rebinding): 421.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.allowed_hosts.is_empty() {
            return Ok(());
        }
        let host = host_of(headers);
        if host.is_some_and(|h| is_loopback_name(h) || self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h))) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this gateway does not answer to the host '{}'", host.unwrap_or("")),
        ))
    }
}

/// Refuses what a browser sends on behalf of another site, on every state-changing
/// request: a foreign `Origin` or `Sec-Fetch-Site` (403), and a POST that is not JSON and
/// does not carry [`CLIENT_HEADER`] (415; forms and `text/plain` need no preflight).
pub fn check_not_cross_site(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "cross-site requests are refused"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
        let same = origin_host.zip(host_of_raw(headers)).is_some_and(|(o, h)| o.eq_ignore_ascii_case(h));
        if !same {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "requests from another origin are refused"));
        }
    }
    if *method == Method::POST && !is_json(headers) && !headers.contains_key(CLIENT_HEADER) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON (Content-Type: application/json), or X-Wagate-Client on a request without a body",
        ));
    }
    Ok(())
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(kind) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = kind.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `Host` as sent, port included.
fn host_of_raw(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// `Host` without the port (`[::1]:3000` -> `::1`).
fn host_of(headers: &HeaderMap) -> Option<&str> {
    let host = host_of_raw(headers)?;
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split(']').next();
    }
    Some(host.rsplit_once(':').map_or(host, |(name, port)| match port.parse::<u16>() {
        Ok(_) => name,
        Err(_) => host,
    }))
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| canonical(ip).is_loopback())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn only_a_direct_loopback_request_to_a_loopback_name_is_local() {
        let access = Access::default();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let host = |h| headers(&[("host", h)]);
        for (peer, hdrs, expected) in [
            (local, host("127.0.0.1:3000"), true),
            (local, host("localhost"), true),
            (mapped, host("[::1]:3000"), true),
            (local, host("wa.example.com"), false),
            (local, headers(&[]), false),
            (local, headers(&[("host", "127.0.0.1:3000"), ("x-forwarded-for", "203.0.113.9")]), false),
            (local, headers(&[("host", "localhost"), ("forwarded", "for=203.0.113.9")]), false),
            (local, headers(&[("host", "localhost"), ("x-real-ip", "203.0.113.9")]), false),
            ("192.0.2.7".parse().unwrap(), host("127.0.0.1"), false),
        ] {
            assert_eq!(access.caller(peer, &hdrs).local, expected, "{peer} {hdrs:?}");
        }
    }

    #[test]
    fn others_need_the_key() {
        let remote = Caller { address: "192.0.2.7".parse().unwrap(), local: false };
        let bearer = |k: &str| headers(&[("authorization", k)]);
        let none = Access::default();
        assert_eq!(none.authorize(remote, &bearer("Bearer k")).unwrap_err().status, StatusCode::FORBIDDEN);
        let keyed = Access { api_key: Some("k".into()), ..Default::default() };
        assert!(keyed.authorize(remote, &bearer("Bearer k")).is_ok());
        assert_eq!(keyed.authorize(remote, &bearer("Bearer x")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(keyed.authorize(remote, &bearer("k")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(keyed.authorize(remote, &headers(&[])).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(keyed.authorize(Caller { local: true, ..remote }, &headers(&[])).is_ok());
    }

    #[test]
    fn trusted_proxies_name_the_client_and_ranges_parse() {
        let access = Access { trusted_proxies: vec!["127.0.0.1".parse().unwrap()], ..Default::default() };
        let via = headers(&[("host", "wa.example.com"), ("x-forwarded-for", "6.6.6.6, 203.0.113.9")]);
        let caller = access.caller("127.0.0.1".parse().unwrap(), &via);
        assert_eq!(caller, Caller { address: "203.0.113.9".parse().unwrap(), local: false });
        let untrusted = access.caller("192.0.2.1".parse().unwrap(), &via);
        assert_eq!(untrusted.address, "192.0.2.1".parse::<IpAddr>().unwrap(), "only trusted proxies are believed");
        let range: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!("2001:db8::/32".parse::<Cidr>().unwrap().contains("2001:db8:1::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn allowed_hosts_refuse_other_names() {
        let access = Access { allowed_hosts: vec!["wa.example.com".into()], ..Default::default() };
        assert!(access.check_host(&headers(&[("host", "WA.example.com:443")])).is_ok());
        assert!(access.check_host(&headers(&[("host", "127.0.0.1:3000")])).is_ok());
        let err = access.check_host(&headers(&[("host", "attacker.example")])).unwrap_err();
        assert_eq!(err.status, StatusCode::MISDIRECTED_REQUEST);
        assert!(Access::default().check_host(&headers(&[("host", "attacker.example")])).is_ok());
    }

    #[test]
    fn cross_site_and_non_json_posts_are_refused() {
        let post = Method::POST;
        let json = [("host", "127.0.0.1:3000"), ("content-type", "application/json")];
        assert!(check_not_cross_site(&post, &headers(&json)).is_ok());
        assert!(check_not_cross_site(&Method::GET, &headers(&[("sec-fetch-site", "cross-site")])).is_ok());
        for (hdrs, status) in [
            (vec![("content-type", "text/plain")], StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (vec![("content-type", "application/x-www-form-urlencoded")], StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (vec![], StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (vec![("content-type", "application/json"), ("origin", "https://attacker.example")], StatusCode::FORBIDDEN),
            (vec![("content-type", "application/json"), ("origin", "null")], StatusCode::FORBIDDEN),
            (vec![("content-type", "application/json"), ("sec-fetch-site", "cross-site")], StatusCode::FORBIDDEN),
            (vec![("content-type", "application/json"), ("sec-fetch-site", "same-site")], StatusCode::FORBIDDEN),
        ] {
            let mut all = vec![("host", "127.0.0.1:3000")];
            all.extend(hdrs.iter().copied());
            let err = check_not_cross_site(&post, &headers(&all)).unwrap_err();
            assert_eq!(err.status, status, "{all:?}");
        }
        let same = [("host", "127.0.0.1:3000"), ("origin", "http://127.0.0.1:3000"), (CLIENT_HEADER, "console")];
        assert!(check_not_cross_site(&post, &headers(&same)).is_ok(), "the console's body-less POST");
        let delete = [("host", "127.0.0.1:3000"), ("origin", "https://attacker.example")];
        assert!(check_not_cross_site(&Method::DELETE, &headers(&delete)).is_err());
        assert!(check_not_cross_site(&Method::DELETE, &headers(&delete[..1])).is_ok());
    }
}
