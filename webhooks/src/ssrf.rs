//! SSRF guard: endpoint URLs are checked, resolved once, and every resolved address must be
//! public (or allow-listed by the operator) before anything connects.
//!
//! Endpoint URLs come from API callers, so without this guard the gateway would POST to
//! whatever they name: its own admin port on 127.0.0.1, the cloud metadata service at
//! 169.254.169.254, a database on the private network. Three rules close that:
//!
//! - the check is on resolved addresses, not on the host text (`localhost`, `127.1`, a DNS
//!   name pointing at 10.0.0.5 and IPv4-mapped IPv6 all end up as addresses);
//! - if *any* resolved address is forbidden the endpoint is refused, so a name answering
//!   both a public and a private address cannot win half the time;
//! - [`resolve_and_check`] returns the checked addresses and the client connects to exactly
//!   those ([`crate::deliver`] never resolves), so there is no second lookup a short-TTL
//!   record could answer differently (DNS rebinding).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use hyper::Uri;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

/// What kind of address an IP is, as far as webhook delivery cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrClass {
    /// Globally routable unicast: webhooks may go here.
    Public,
    /// 127.0.0.0/8, ::1: this machine.
    Loopback,
    /// 0.0.0.0/8, ::: "this host" (Linux connects 0.0.0.0 to the local host).
    Unspecified,
    /// 10/8, 172.16/12, 192.168/16 (RFC 1918) and the local-use NAT64 prefix 64:ff9b:1::/48.
    Private,
    /// 100.64.0.0/10: carrier-grade NAT shared space (RFC 6598), also cloud-internal.
    SharedCgnat,
    /// 169.254.0.0/16, fe80::/10: link-local, never routed.
    LinkLocal,
    /// fc00::/7: IPv6 unique local (the IPv6 private ranges).
    UniqueLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20: examples only.
    Documentation,
    /// 198.18.0.0/15, 2001:2::/48: benchmarking networks.
    Benchmarking,
    /// Cloud instance metadata: 169.254.169.254 and fd00:ec2::254 (AWS IPv6), the classic
    /// SSRF target (credentials of the machine's role).
    Metadata,
    /// Other special-purpose space: 240/4, 192.0.0/24, 192.88.99/24, the IETF IPv6 protocol
    /// block 2001::/23 (Teredo among it), deprecated site-local fec0::/10, and everything
    /// outside IPv6 global unicast 2000::/3.
    Reserved,
}

impl AddrClass {
    /// Whether webhooks may be delivered to such an address without an allow-list entry.
    pub fn is_public(self) -> bool {
        self == AddrClass::Public
    }

    /// A short human description for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Unspecified => "unspecified (this host)",
            AddrClass::Private => "private-network",
            AddrClass::SharedCgnat => "carrier-grade NAT (100.64.0.0/10)",
            AddrClass::LinkLocal => "link-local",
            AddrClass::UniqueLocal => "IPv6 unique-local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Documentation => "documentation-range",
            AddrClass::Benchmarking => "benchmarking-range",
            AddrClass::Metadata => "cloud metadata service",
            AddrClass::Reserved => "reserved special-purpose",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// `addr` is inside `net`/`len` (both IPv4, as integers).
fn in4(addr: u32, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    addr & mask == u32::from_be_bytes(net) & mask
}

/// `addr` is inside `net`/`len` (both IPv6, as integers).
fn in6(addr: u128, net: u128, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    addr & mask == net & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let a = u32::from(ip);
    // Most specific first: the metadata address sits inside link-local, broadcast inside 240/4.
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        AddrClass::Metadata
    } else if ip == Ipv4Addr::BROADCAST {
        AddrClass::Broadcast
    } else if in4(a, [0, 0, 0, 0], 8) {
        AddrClass::Unspecified
    } else if in4(a, [127, 0, 0, 0], 8) {
        AddrClass::Loopback
    } else if in4(a, [10, 0, 0, 0], 8) || in4(a, [172, 16, 0, 0], 12) || in4(a, [192, 168, 0, 0], 16) {
        AddrClass::Private
    } else if in4(a, [100, 64, 0, 0], 10) {
        AddrClass::SharedCgnat
    } else if in4(a, [169, 254, 0, 0], 16) {
        AddrClass::LinkLocal
    } else if in4(a, [224, 0, 0, 0], 4) {
        AddrClass::Multicast
    } else if in4(a, [192, 0, 2, 0], 24) || in4(a, [198, 51, 100, 0], 24) || in4(a, [203, 0, 113, 0], 24) {
        AddrClass::Documentation
    } else if in4(a, [198, 18, 0, 0], 15) {
        AddrClass::Benchmarking
    } else if in4(a, [240, 0, 0, 0], 4) || in4(a, [192, 0, 0, 0], 24) || in4(a, [192, 88, 99, 0], 24) {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address in the low 32 bits of `a`.
fn low_v4(a: u128) -> Ipv4Addr {
    Ipv4Addr::from(a as u32)
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let a = u128::from(ip);
    const FD00_EC2_254: u128 = 0xfd00_0ec2_0000_0000_0000_0000_0000_0254;
    if a == FD00_EC2_254 {
        return AddrClass::Metadata;
    }
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    // Forms that carry an IPv4 address which the kernel or a translator will end up
    // talking to: judge the IPv4 address. ::a.b.c.d is the deprecated "IPv4-compatible"
    // form, ::ffff:0:a.b.c.d the SIIT "IPv4-translated" one, 64:ff9b::/96 the NAT64
    // well-known prefix.
    if in6(a, 0xffff_0000_0000, 96)
        || in6(a, 0, 96)
        || in6(a, 0xffff_0000_0000_0000, 96)
        || in6(a, 0x0064_ff9b << 96, 96)
    {
        return classify_v4(low_v4(a));
    }
    // 6to4 (2002::/16) embeds its IPv4 address in bits 16..48.
    if in6(a, 0x2002 << 112, 16) {
        return classify_v4(Ipv4Addr::from((a >> 80) as u32));
    }
    if in6(a, 0x0064_ff9b_0001 << 80, 48) {
        // Local-use NAT64 (RFC 8215): translates into the operator's own networks.
        AddrClass::Private
    } else if in6(a, 0x2001_0002 << 96, 48) {
        AddrClass::Benchmarking
    } else if in6(a, 0x2001_0db8 << 96, 32) || in6(a, 0x3fff << 112, 20) {
        AddrClass::Documentation
    } else if in6(a, 0x2001 << 112, 23) {
        // IETF protocol assignments, Teredo 2001::/32 (its client address is obfuscated
        // IPv4 behind someone's NAT) among them.
        AddrClass::Reserved
    } else if in6(a, 0xfc00 << 112, 7) {
        AddrClass::UniqueLocal
    } else if in6(a, 0xfe80 << 112, 10) {
        AddrClass::LinkLocal
    } else if in6(a, 0xff00 << 112, 8) {
        AddrClass::Multicast
    } else if in6(a, 0x2000 << 112, 3) {
        AddrClass::Public
    } else {
        // Outside global unicast: discard-only 100::/64, site-local fec0::/10, unassigned.
        AddrClass::Reserved
    }
}

/// Classifies an address. IPv6 forms that embed an IPv4 address (IPv4-mapped
/// `::ffff:0:0/96`, IPv4-compatible `::/96`, SIIT `::ffff:0:0:0/96`, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`) get the class of the embedded IPv4 address.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Why a CIDR was refused: whoever wrote the configuration; not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address/prefix` or a bare address.
    #[error("{0:?} is not a CIDR (address/prefix, e.g. 10.1.0.0/16 or fd12::/64)")]
    Syntax(String),
    /// Prefix longer than the address.
    #[error("{0:?}: prefix length is longer than the address (max 32 for IPv4, 128 for IPv6)")]
    Prefix(String),
    /// Bits set after the prefix (`10.1.2.3/16`): probably a typo, and ambiguous.
    #[error("{given:?} has host bits set; the network is {network}")]
    HostBits {
        /// As written.
        given: String,
        /// What was probably meant.
        network: Cidr,
    },
}

/// An IP network (`10.0.0.0/8`, `fd12:3456::/48`) for the operator's allow-list.
///
/// An IPv4 network also matches IPv4-mapped IPv6 addresses of that network, since those
/// connect to the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; host bits after the prefix must be zero.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let given = || format!("{addr}/{prefix}");
        if prefix > max {
            return Err(CidrError::Prefix(given()));
        }
        let network = Cidr {
            addr: mask(addr, prefix),
            prefix,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits {
                given: given(),
                network,
            });
        }
        Ok(network)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => in4(u32::from(a), n.octets(), self.prefix.into()),
            (IpAddr::V6(n), IpAddr::V6(a)) => in6(u128::from(a), u128::from(n), self.prefix.into()),
            _ => false,
        }
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `address/prefix`, or a bare address meaning that one address.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // Digits only: u8's parser would take "+8".
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let addr: IpAddr = a.parse().map_err(|_| syntax())?;
                let prefix: u8 = p.parse().map_err(|_| CidrError::Prefix(s.to_owned()))?;
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| syntax())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Cidr, CidrError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What the operator lets webhooks reach beyond public HTTPS addresses.
///
/// Default: https only, public addresses only. Both knobs exist for deployments whose
/// receivers live inside the operator's own network (and for tests on 127.0.0.1); they are
/// operator configuration, never per-endpoint settings an API caller could change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Accept `http://` endpoints (payloads then travel in clear; the signature still
    /// protects their integrity). Default false.
    pub allow_http: bool,
    /// Networks allowed whatever their class (e.g. `10.20.0.0/16` for an internal
    /// receiver). An entry wins over every class, metadata included: allow-list narrowly.
    /// Default empty.
    pub allow: Vec<Cidr>,
}

impl Policy {
    /// `Ok` if webhooks may connect to `ip`, else the class that forbids it.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), AddrClass> {
        let class = classify(ip);
        if class.is_public() || self.allow.iter().any(|c| c.contains(ip)) {
            Ok(())
        } else {
            Err(class)
        }
    }
}

/// Why an endpoint was refused or could not be resolved. Every variant except
/// [`SsrfError::Resolve`] and [`SsrfError::NoAddress`] is the endpoint owner's to fix (a
/// different URL), or the operator's (the [`Policy`]); retrying does not help.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// Not an absolute `scheme://host/…` URL.
    #[error(
        "endpoint URL is not a valid absolute URL (https://host[:port]/path); the endpoint owner must fix it"
    )]
    InvalidUrl,
    /// Not https (or http when the policy allows it).
    #[error(
        "endpoint URL scheme {scheme:?} is not allowed: webhooks go to https:// URLs{}; the endpoint owner must fix it",
        if *allow_http { " or http://" } else { "" }
    )]
    Scheme {
        /// The scheme given (empty if none).
        scheme: String,
        /// Whether http was allowed at the time.
        allow_http: bool,
    },
    /// `user:password@host`: credentials in URLs end up in logs and proxies.
    #[error(
        "endpoint URL carries credentials (user@ or user:password@); verify the webhook signature instead; the endpoint owner must remove them"
    )]
    Userinfo,
    /// The host is not a DNS name or IP literal a TLS certificate could name.
    #[error(
        "endpoint URL host {host:?} is not a valid DNS name or IP address; the endpoint owner must fix it"
    )]
    InvalidHost {
        /// The host as written.
        host: String,
    },
    /// Port 0 or beyond 65535.
    #[error("endpoint URL port is not in 1..=65535; the endpoint owner must fix it")]
    Port,
    /// A resolved (or literal) address is not public and not allow-listed.
    #[error(
        "endpoint host {host} is {addr}, a {class} address; webhooks only go to public addresses (the endpoint owner must use a public URL, or the operator must allow-list the network); not retried"
    )]
    Forbidden {
        /// The URL's host.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// Why it is forbidden.
        class: AddrClass,
    },
    /// Name resolution failed (NXDOMAIN, no resolver reachable, …); may be temporary.
    #[error("resolving endpoint host {host}: {source}; retried later")]
    Resolve {
        /// The URL's host.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The name resolved, but to nothing; may be temporary.
    #[error("endpoint host {host} resolved to no address; retried later")]
    NoAddress {
        /// The URL's host.
        host: String,
    },
}

impl SsrfError {
    /// Whether trying again later may succeed (only resolution failures: DNS changes).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SsrfError::Resolve { .. } | SsrfError::NoAddress { .. })
    }
}

/// The host part of an endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lowercased, without a trailing dot.
    Name(String),
    /// An IP literal (IPv6 without brackets).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A checked endpoint URL: scheme allowed, no credentials, a valid host and port.
///
/// `Debug` and `Display` show only `scheme://host:port` (the origin): paths and queries
/// often carry the receiver's own token.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    https: bool,
    host: Host,
    port: u16,
    /// `Host` header value: the authority as written (host and optional port).
    authority: String,
    /// Request target in origin form (`/path?query`).
    path_and_query: String,
}

impl EndpointUrl {
    /// Parses and checks `url` against `policy`'s scheme rule. Addresses are checked later,
    /// by [`resolve_and_check`], at every delivery: DNS answers change.
    pub fn parse(url: &str, policy: &Policy) -> Result<EndpointUrl, SsrfError> {
        let uri: Uri = url.trim().parse().map_err(|_| SsrfError::InvalidUrl)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if policy.allow_http => false,
            other => {
                return Err(SsrfError::Scheme {
                    scheme: other.unwrap_or("").to_owned(),
                    allow_http: policy.allow_http,
                });
            }
        };
        let authority = uri.authority().ok_or(SsrfError::InvalidUrl)?;
        if authority.as_str().contains('@') {
            return Err(SsrfError::Userinfo);
        }
        let raw_host = authority.host();
        let host = if let Some(inner) = raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let v6: Ipv6Addr = inner.parse().map_err(|_| SsrfError::InvalidHost {
                host: raw_host.to_owned(),
            })?;
            Host::Ip(IpAddr::V6(v6))
        } else if let Ok(v4) = raw_host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else {
            // The rules of a TLS server name: letters, digits, hyphens, dots. Numeric forms
            // the resolver would read as IPv4 (`127.1`, `2130706433`, `0x7f.1`) fail here
            // too, before any lookup.
            let name = raw_host
                .strip_suffix('.')
                .unwrap_or(raw_host)
                .to_ascii_lowercase();
            match ServerName::try_from(name.as_str()) {
                Ok(ServerName::DnsName(_)) if !name.is_empty() => Host::Name(name),
                _ => {
                    return Err(SsrfError::InvalidHost {
                        host: raw_host.to_owned(),
                    });
                }
            }
        };
        // From the text: `Authority::port` reads an out-of-range port as no port at all.
        let port = match authority.as_str()[raw_host.len()..].strip_prefix(':') {
            // An empty port means the default (RFC 3986 §3.2.3).
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(text) => match text.parse::<u16>() {
                // Digits only: Rust's integer parser would take "+1".
                Ok(n) if n != 0 && text.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(SsrfError::Port),
            },
        };
        let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(p) if p.starts_with('/') => p.to_owned(),
            // `https://h?x=1`: the path is empty, the query is not.
            Some(q) => format!("/{q}"),
        };
        Ok(EndpointUrl {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
        })
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host: a name to resolve and the TLS server name, or an IP literal.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (explicit, or 443/80 by scheme).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header value (`host[:port]` as written).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target (`/path?query`).
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndpointUrl").field(&self.to_string()).finish()
    }
}

/// Resolves `url`'s host (once, with the system resolver via [`tokio::net::lookup_host`])
/// and checks every address against `policy`; returns the addresses, in the resolver's
/// order without duplicates, for [`crate::deliver`] to connect to.
///
/// Refuses the endpoint if *any* address is forbidden. An IP-literal host is checked
/// without a lookup. The scheme is checked again, since the policy may have changed since
/// the URL was stored. The lookup has no timeout of its own beyond the resolver's (glibc:
/// 5 s per server and attempt); callers that need a bound wrap this in
/// [`tokio::time::timeout`].
pub async fn resolve_and_check(url: &EndpointUrl, policy: &Policy) -> Result<Vec<SocketAddr>, SsrfError> {
    if !url.https && !policy.allow_http {
        return Err(SsrfError::Scheme {
            scheme: "http".into(),
            allow_http: false,
        });
    }
    let addrs: Vec<SocketAddr> = match &url.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, url.port)],
        Host::Name(name) => {
            let found = tokio::net::lookup_host((name.as_str(), url.port))
                .await
                .map_err(|source| SsrfError::Resolve {
                    host: name.clone(),
                    source,
                })?;
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in found {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            out
        }
    };
    if addrs.is_empty() {
        return Err(SsrfError::NoAddress {
            host: url.host.to_string(),
        });
    }
    for a in &addrs {
        policy.check_addr(a.ip()).map_err(|class| SsrfError::Forbidden {
            host: url.host.to_string(),
            addr: a.ip(),
            class,
        })?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    /// Every range's first and last address, and the neighbours just outside.
    #[test]
    fn ipv4_ranges_and_their_edges() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            ("0.0.0.0", Unspecified),
            ("0.255.255.255", Unspecified),
            ("1.0.0.0", Public),
            ("9.255.255.255", Public),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Public),
            ("100.63.255.255", Public),
            ("100.64.0.0", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.128.0.0", Public),
            ("126.255.255.255", Public),
            ("127.0.0.0", Loopback),
            ("127.0.0.1", Loopback),
            ("127.255.255.255", Loopback),
            ("128.0.0.0", Public),
            ("169.253.255.255", Public),
            ("169.254.0.0", LinkLocal),
            ("169.254.169.253", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.169.255", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.255.0.0", Public),
            ("172.15.255.255", Public),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Public),
            ("191.255.255.255", Public),
            ("192.0.0.0", Reserved),
            ("192.0.0.255", Reserved),
            ("192.0.1.0", Public),
            ("192.0.2.0", Documentation),
            ("192.0.2.255", Documentation),
            ("192.0.3.0", Public),
            ("192.88.98.255", Public),
            ("192.88.99.0", Reserved),
            ("192.88.100.0", Public),
            ("192.167.255.255", Public),
            ("192.168.0.0", Private),
            ("192.168.255.255", Private),
            ("192.169.0.0", Public),
            ("198.17.255.255", Public),
            ("198.18.0.0", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.20.0.0", Public),
            ("198.51.99.255", Public),
            ("198.51.100.0", Documentation),
            ("198.51.100.255", Documentation),
            ("198.51.101.0", Public),
            ("203.0.112.255", Public),
            ("203.0.113.0", Documentation),
            ("203.0.113.255", Documentation),
            ("203.0.114.0", Public),
            ("223.255.255.255", Public),
            ("224.0.0.0", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.0", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
        ];
        for (ip, want) in cases {
            assert_eq!(c(ip), *want, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges_and_embedded_ipv4() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            ("::", Unspecified),
            ("::1", Loopback),
            ("::2", Unspecified), // IPv4-compatible 0.0.0.2
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("::192.168.1.1", Private),
            ("::8.8.8.8", Public),
            ("::ffff:0:10.0.0.1", Private),
            ("::ffff:0:8.8.8.8", Public),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::169.254.169.254", Metadata),
            ("64:ff9b::8.8.8.8", Public),
            ("64:ff9b:1::1", Private),
            ("2002:7f00:0001::", Loopback),
            ("2002:0a00:0001::1", Private),
            ("2002:a9fe:a9fe::", Metadata),
            ("2002:0808:0808::1", Public),
            ("100::", Reserved),
            ("2001::1", Reserved),
            ("2001:1ff:ffff::", Reserved),
            ("2001:200::1", Public),
            ("2001:2::1", Benchmarking),
            ("2001:db8::1", Documentation),
            ("2001:db9::1", Public),
            ("3fff::1", Documentation),
            ("3fff:fff::1", Documentation),
            ("3fff:1000::1", Public),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001::1", Public),
            ("fbff:ffff::1", Reserved),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fd00:ec2::254", Metadata),
            ("fd00:ec2::253", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("fec0::1", Reserved),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("1fff:ffff::1", Reserved),
            ("4000::1", Reserved),
        ];
        for (ip, want) in cases {
            assert_eq!(c(ip), *want, "{ip}");
        }
    }

    proptest! {
        /// Every embedding form gets the class of the IPv4 address it carries.
        #[test]
        fn embedded_ipv4_is_judged_as_ipv4(raw in any::<u32>()) {
            let v4 = Ipv4Addr::from(raw);
            let want = classify(IpAddr::V4(v4));
            let n = u128::from(raw);
            for embedded in [
                u128::from(v4.to_ipv6_mapped()),
                0x0064_ff9b_u128 << 96 | n,
                0xffff_0000_0000_0000_u128 | n,
                (0x2002_u128 << 112) | (n << 80) | 0xdead_beef,
            ] {
                prop_assert_eq!(classify(IpAddr::V6(Ipv6Addr::from(embedded))), want, "{:x}", embedded);
            }
            // IPv4-compatible: all but :: and ::1, which are IPv6's own.
            if raw > 1 {
                prop_assert_eq!(classify(IpAddr::V6(Ipv6Addr::from(n))), want);
            }
        }

        /// Whatever the standard library knows to be non-global is never called public.
        #[test]
        fn std_special_addresses_are_never_public(raw in any::<u32>(), raw6 in any::<u128>()) {
            let v4 = Ipv4Addr::from(raw);
            if v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_multicast()
                || v4.is_broadcast() || v4.is_documentation() || v4.is_unspecified()
            {
                prop_assert_ne!(classify(IpAddr::V4(v4)), AddrClass::Public, "{}", v4);
            }
            let v6 = Ipv6Addr::from(raw6);
            if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()
                || v6.is_unique_local() || v6.is_unicast_link_local()
            {
                prop_assert_ne!(classify(IpAddr::V6(v6)), AddrClass::Public, "{}", v6);
            }
            // Only global unicast can be public.
            if classify(IpAddr::V6(v6)) == AddrClass::Public {
                prop_assert_eq!(raw6 >> 125, 1, "{}", v6);
            }
        }
    }

    /// Densely sampled check against the std predicates over every /16 (cheap: 65 536 ×
    /// a few addresses) so a whole range cannot be missed between proptest's samples.
    #[test]
    fn every_ipv4_slash16_agrees_with_std() {
        for hi in 0u32..=0xffff {
            for lo in [0u32, 1, 0x7fff, 0xfffe, 0xffff] {
                let v4 = Ipv4Addr::from(hi << 16 | lo);
                let special = v4.is_private()
                    || v4.is_loopback()
                    || v4.is_link_local()
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    || v4.is_unspecified();
                if special {
                    assert_ne!(classify(IpAddr::V4(v4)), AddrClass::Public, "{v4}");
                }
            }
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.20.0.0/16".parse().unwrap();
        assert!(net.contains("10.20.255.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.20.0.1".parse().unwrap()));
        assert!(!net.contains("10.21.0.0".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd12:3456::/32".parse().unwrap();
        assert!(v6.contains("fd12:3456:ffff::1".parse().unwrap()));
        assert!(!v6.contains("fd12:3457::1".parse().unwrap()));
        assert!(!v6.contains("10.20.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix(), 0);
        assert!(matches!(
            "10.1.2.3/16".parse::<Cidr>(),
            Err(CidrError::HostBits { network, .. }) if network.to_string() == "10.1.0.0/16"
        ));
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix(_))));
        assert!(matches!("::/129".parse::<Cidr>(), Err(CidrError::Prefix(_))));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "ten/8",
            "10.0.0.0/ 8",
            "10.0.0.0/0008",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn policy_allow_list_wins_over_class() {
        let mut p = Policy::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(p.check_addr(lo), Err(AddrClass::Loopback));
        assert_eq!(p.check_addr("93.184.215.14".parse().unwrap()), Ok(()));
        p.allow.push("127.0.0.0/8".parse().unwrap());
        assert_eq!(p.check_addr(lo), Ok(()));
        assert_eq!(p.check_addr("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check_addr("::1".parse().unwrap()), Err(AddrClass::Loopback));
    }

    #[test]
    fn policy_reads_from_config_text() {
        let p: Policy =
            serde_json::from_str(r#"{"allow_http":true,"allow":["10.0.0.0/8","fd00::/8"]}"#).unwrap();
        assert!(p.allow_http);
        assert_eq!(p.allow.len(), 2);
        assert_eq!(
            serde_json::to_string(&p.allow).unwrap(),
            r#"["10.0.0.0/8","fd00::/8"]"#
        );
        let e = serde_json::from_str::<Policy>(r#"{"allow":["10.0.0.1/8"]}"#).unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
        assert!(serde_json::from_str::<Policy>(r#"{"alow":[]}"#).is_err());
    }

    #[test]
    fn urls_are_checked_and_split() {
        let strict = Policy::default();
        let lax = Policy {
            allow_http: true,
            ..Policy::default()
        };
        let u = EndpointUrl::parse("https://Hooks.Example.COM./in/wa?token=s3cret#frag", &strict).unwrap();
        assert!(u.is_https());
        assert_eq!(u.host(), &Host::Name("hooks.example.com".into()));
        assert_eq!((u.port(), u.path_and_query()), (443, "/in/wa?token=s3cret"));
        assert_eq!(u.to_string(), "https://Hooks.Example.COM.");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = EndpointUrl::parse("https://[2001:db8::1]:8443", &strict).unwrap();
        assert_eq!(u.host(), &Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(
            (u.port(), u.path_and_query(), u.authority()),
            (8443, "/", "[2001:db8::1]:8443")
        );
        let u = EndpointUrl::parse("http://127.0.0.1:9/x", &lax).unwrap();
        assert_eq!((u.is_https(), u.port()), (false, 9));
        assert_eq!(EndpointUrl::parse("http://h", &lax).unwrap().port(), 80);
        assert_eq!(
            EndpointUrl::parse("https://h?x=1", &strict)
                .unwrap()
                .path_and_query(),
            "/?x=1"
        );

        let err = |url: &str, p: &Policy| EndpointUrl::parse(url, p).unwrap_err();
        assert!(matches!(
            err("http://h/", &strict),
            SsrfError::Scheme {
                allow_http: false,
                ..
            }
        ));
        assert!(matches!(err("ftp://h/", &lax), SsrfError::Scheme { .. }));
        assert!(matches!(err("h/x", &strict), SsrfError::InvalidUrl));
        assert!(matches!(err("/x", &strict), SsrfError::Scheme { .. }));
        assert!(matches!(err("https:///x", &strict), SsrfError::InvalidUrl));
        assert!(matches!(err("https://h/a b", &strict), SsrfError::InvalidUrl));
        assert!(matches!(err("https://u:p@h/", &strict), SsrfError::Userinfo));
        assert!(matches!(err("https://u@h/", &strict), SsrfError::Userinfo));
        assert!(matches!(err("https://h:0/", &strict), SsrfError::Port));
        assert!(matches!(err("https://h:99999/", &strict), SsrfError::Port));
        assert!(matches!(err("https://h:+1/", &strict), SsrfError::Port));
        assert_eq!(EndpointUrl::parse("https://h:/", &strict).unwrap().port(), 443);
        // Numeric host forms a resolver would quietly turn into 127.0.0.1.
        for h in ["2130706433", "127.1", "0x7f.1", "0177.0.0.1", "-a.example"] {
            assert!(
                matches!(
                    err(&format!("https://{h}/"), &strict),
                    SsrfError::InvalidHost { .. }
                ),
                "{h}"
            );
        }
        let msg = err("https://u:hunter2@h/", &strict).to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_lookup() {
        let p = Policy::default();
        for (url, class) in [
            ("https://127.0.0.1/", AddrClass::Loopback),
            ("https://169.254.169.254/latest/meta-data", AddrClass::Metadata),
            ("https://[::ffff:10.0.0.1]/", AddrClass::Private),
            ("https://[fd00:ec2::254]/", AddrClass::Metadata),
            ("https://0.0.0.0:8080/", AddrClass::Unspecified),
        ] {
            let u = EndpointUrl::parse(url, &p).unwrap();
            match resolve_and_check(&u, &p).await {
                Err(e @ SsrfError::Forbidden { class: got, .. }) => {
                    assert_eq!(got, class, "{url}");
                    assert!(!e.is_retryable());
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let u = EndpointUrl::parse("https://93.184.215.14:8443/", &p).unwrap();
        assert_eq!(
            resolve_and_check(&u, &p).await.unwrap(),
            vec!["93.184.215.14:8443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_policy_change_to_https_only_refuses_stored_http_urls() {
        let lax = Policy {
            allow_http: true,
            allow: vec!["127.0.0.0/8".parse().unwrap()],
        };
        let u = EndpointUrl::parse("http://127.0.0.1:1/", &lax).unwrap();
        assert!(resolve_and_check(&u, &lax).await.is_ok());
        let strict = Policy {
            allow_http: false,
            ..lax
        };
        assert!(matches!(
            resolve_and_check(&u, &strict).await,
            Err(SsrfError::Scheme { .. })
        ));
    }

    #[tokio::test]
    async fn localhost_is_refused_unless_allow_listed() {
        let mut p = Policy::default();
        let u = EndpointUrl::parse("https://localhost:8443/hook", &p).unwrap();
        match resolve_and_check(&u, &p).await {
            Err(SsrfError::Forbidden { class, host, .. }) => {
                assert_eq!(class, AddrClass::Loopback);
                assert_eq!(host, "localhost");
            }
            other => panic!("{other:?}"),
        }
        // `localhost` may resolve to ::1 as well as 127.0.0.1: both must be allowed.
        p.allow = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let addrs = resolve_and_check(&u, &p).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8443),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn unresolvable_names_are_retryable() {
        let p = Policy::default();
        // .invalid never resolves (RFC 6761).
        let u = EndpointUrl::parse("https://no-such-host.invalid/", &p).unwrap();
        let e = resolve_and_check(&u, &p).await.unwrap_err();
        assert!(
            matches!(e, SsrfError::Resolve { .. } | SsrfError::NoAddress { .. }),
            "{e:?}"
        );
        assert!(e.is_retryable());
    }
}
