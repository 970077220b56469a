//! The values that describe a cluster's Kubernetes side, shared by agent.yaml's `kubernetes:`
//! section and the control-plane engine, so the seam between them carries types, not strings:
//! [`Cidr`] (a network, its prefix in range for its family, no bits set after it), [`Endpoint`]
//! (a [`Host`] and a port; an IPv6 host is bracketed in text, `[fd00::1]:6443`) and
//! [`KubernetesVersion`] (`vMAJOR.MINOR.PATCH`).
//!
//! Each is checked when it is parsed or deserialized, so an invalid value never exists, and
//! prints as the text kubeadm and the config file use. This module does no I/O and resolves no
//! name; which versions the agent supports is the config's policy, not this module's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a text is not a [`Cidr`], [`Host`], [`Endpoint`] or [`KubernetesVersion`]. Each message
/// says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a CIDR: use ADDRESS/PREFIX, such as 10.244.0.0/16 or fd00:10:244::/56")]
    NotCidr(String),
    #[error("{text:?}: a prefix of /{prefix} is longer than an {family} address: use 0 to {max}")]
    PrefixTooLong {
        text: String,
        prefix: u32,
        family: IpFamily,
        max: u8,
    },
    #[error("{text:?} has address bits set after the prefix: use the network, {network}")]
    HostBitsSet { text: String, network: Cidr },
    #[error("{0:?} is not a host: use an IP address or a DNS name such as api.example.net")]
    NotHost(String),
    #[error(
        "{0:?} is not HOST:PORT: use such as 198.18.0.10:6443, [fd00::1]:6443 or \
         api.example.net:6443 (a port of 1 to 65535; an IPv6 address in brackets)"
    )]
    NotEndpoint(String),
    #[error("{0:?} is not a Kubernetes version: use vMAJOR.MINOR.PATCH, such as v1.30.3")]
    NotVersion(String),
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Cidr

/// A network: an address and a prefix length no longer than the family's, with every bit after
/// the prefix zero (`10.244.0.0/16`, never `10.244.1.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`, refused when the prefix is too long or `addr` has bits set
    /// after it.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, ValueError> {
        let text = || format!("{addr}/{prefix}");
        let family = IpFamily::of(addr);
        if prefix > family.bits() {
            return Err(ValueError::PrefixTooLong {
                text: text(),
                prefix: prefix.into(),
                family,
                max: family.bits(),
            });
        }
        let network = Cidr {
            addr: from_bits(family, to_bits(addr) & mask(family, prefix)),
            prefix,
        };
        if network.addr != addr {
            return Err(ValueError::HostBitsSet {
                text: text(),
                network,
            });
        }
        Ok(network)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.addr)
    }

    /// Whether `ip` lies in this network (never, for the other family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let family = self.family();
        IpFamily::of(ip) == family && to_bits(ip) & mask(family, self.prefix) == to_bits(self.addr)
    }

    /// Whether the two networks share an address: one holds the other's first address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(family: IpFamily, bits: u128) -> IpAddr {
    match family {
        // Only ever called with bits of a masked IPv4 address, which fit.
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// The prefix's bits set, within the family's width.
fn mask(family: IpFamily, prefix: u8) -> u128 {
    let width = u32::from(family.bits());
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    match u32::from(prefix) {
        0 => 0,
        p => (all << (width - p)) & all,
    }
}

impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Cidr, ValueError> {
        let bad = || ValueError::NotCidr(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u32 = digits(prefix).ok_or_else(bad)?;
        let family = IpFamily::of(addr);
        let prefix = u8::try_from(prefix)
            .ok()
            .filter(|p| *p <= family.bits())
            .ok_or_else(|| ValueError::PrefixTooLong {
                text: s.to_string(),
                prefix,
                family,
                max: family.bits(),
            })?;
        Cidr::new(addr, prefix).map_err(|e| match e {
            ValueError::HostBitsSet { network, .. } => ValueError::HostBitsSet {
                text: s.to_string(),
                network,
            },
            e => e,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A decimal number of ASCII digits only (`u32::from_str` would take a leading `+`).
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Host and Endpoint

/// An IP address or a DNS name. Prints without brackets (as a certificate SAN, a hosts-file
/// line or `--advertise-address` want it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Host(HostKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostKind {
    Ip(IpAddr),
    /// Lowercase; labels of letters, digits and `-`.
    Name(String),
}

impl Host {
    pub fn ip(ip: IpAddr) -> Host {
        Host(HostKind::Ip(ip))
    }

    /// The address, when the host is one rather than a name.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match &self.0 {
            HostKind::Ip(ip) => Some(*ip),
            HostKind::Name(_) => None,
        }
    }
}

/// A DNS name: 1 to 253 characters, labels of 1 to 63 letters, digits and `-`, neither starting
/// nor ending with `-`, the last not all digits (so a mistyped address is not taken for a name).
fn is_dns_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (1..=253).contains(&s.len())
        && s.split('.').all(label_ok)
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

impl FromStr for Host {
    type Err = ValueError;

    /// An IPv4 or IPv6 address (bare or bracketed), or a DNS name.
    fn from_str(s: &str) -> Result<Host, ValueError> {
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::ip(ip));
        }
        if bare.len() == s.len() && is_dns_name(s) {
            return Ok(Host(HostKind::Name(s.to_ascii_lowercase())));
        }
        Err(ValueError::NotHost(s.to_string()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            HostKind::Ip(ip) => ip.fmt(f),
            HostKind::Name(n) => f.write_str(n),
        }
    }
}

/// A host and a port (1 to 65535): `198.18.0.10:6443`, `[fd00::1]:6443`,
/// `api.demo.kubedna:6443`. Parsed once, never split again: the host of `[fd00::1]:6443` is
/// `fd00::1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: Host,
    port: u16,
}

impl Endpoint {
    /// `None` for port 0, which no server listens on.
    pub fn new(host: Host, port: u16) -> Option<Endpoint> {
        (port != 0).then_some(Endpoint { host, port })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint in a URL such as `https://[fd00::1]:2379/path`: the text between the
    /// scheme's `://` and the first `/` after it. `None` when that is not `HOST:PORT`.
    pub fn in_url(url: &str) -> Option<Endpoint> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        rest.split('/').next()?.parse().ok()
    }
}

impl FromStr for Endpoint {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Endpoint, ValueError> {
        let bad = || ValueError::NotEndpoint(s.to_string());
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let (ip, port) = rest.split_once("]:").ok_or_else(bad)?;
                let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
                (Host::ip(IpAddr::V6(ip)), port)
            }
            None => {
                let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
                // An unbracketed IPv6 address: its last group would pass for a port.
                if host.contains(':') || host.starts_with('[') {
                    return Err(bad());
                }
                (host.parse::<Host>().map_err(|_| bad())?, port)
            }
        };
        let port = digits(port)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(bad)?;
        Endpoint::new(host, port).ok_or_else(bad)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.as_ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KubernetesVersion

/// A Kubernetes release, `vMAJOR.MINOR.PATCH` (no pre-release or build suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubernetesVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubernetesVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> KubernetesVersion {
        KubernetesVersion {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for KubernetesVersion {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<KubernetesVersion, ValueError> {
        let bad = || ValueError::NotVersion(s.to_string());
        let parts: Vec<u32> = s
            .strip_prefix('v')
            .ok_or_else(bad)?
            .split('.')
            .map(|p| digits(p).ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [major, minor, patch] => Ok(KubernetesVersion::new(major, minor, patch)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

// ---------------------------------------------------------------------------------------------
// As strings in YAML and JSON, checked on the way in.

macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(Cidr, Host, Endpoint, KubernetesVersion);

#[cfg(test)]
mod tests {
    use super::*;

    /// (text, Ok(what it prints as) or Err(a word the refusal holds))
    #[test]
    fn cidrs_by_table() {
        let cases: [(&str, Result<&str, &str>); 16] = [
            ("10.244.0.0/16", Ok("10.244.0.0/16")),
            ("10.96.0.0/12", Ok("10.96.0.0/12")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("198.18.0.7/32", Ok("198.18.0.7/32")),
            ("fd00:10:244::/56", Ok("fd00:10:244::/56")),
            ("FD00:0:0::/48", Ok("fd00::/48")),
            ("::/0", Ok("::/0")),
            ("10.244.1.0/16", Err("use the network, 10.244.0.0/16")),
            ("fd00::1/64", Err("use the network, fd00::/64")),
            (
                "10.244.0.0/33",
                Err("longer than an IPv4 address: use 0 to 32"),
            ),
            (
                "fd00::/129",
                Err("longer than an IPv6 address: use 0 to 128"),
            ),
            ("10.244.0.0/999999999999", Err("not a CIDR")),
            ("10.244.0.0", Err("not a CIDR")),
            ("10.244.0.0/+8", Err("not a CIDR")),
            ("10.244.0/16", Err("not a CIDR")),
            ("pods/16", Err("not a CIDR")),
        ];
        for (text, want) in cases {
            match (text.parse::<Cidr>(), want) {
                (Ok(c), Ok(shown)) => assert_eq!(c.to_string(), shown, "{text}"),
                (Err(e), Err(word)) => assert!(e.to_string().contains(word), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// (a, b, overlap)
    #[test]
    fn overlaps_by_table() {
        let cases = [
            ("10.244.0.0/16", "10.96.0.0/12", false),
            ("10.0.0.0/8", "10.96.0.0/12", true),
            ("10.96.0.0/12", "10.0.0.0/8", true),
            ("10.96.0.0/12", "10.96.0.0/12", true),
            ("10.96.0.0/12", "10.112.0.0/12", false),
            ("0.0.0.0/0", "192.168.0.0/16", true),
            ("fd00::/48", "fd00:0:0:1::/64", true),
            ("fd00::/48", "fd01::/48", false),
            ("0.0.0.0/0", "::/0", false),
        ];
        for (a, b, want) in cases {
            let (a, b): (Cidr, Cidr) = (a.parse().expect("a"), b.parse().expect("b"));
            assert_eq!(a.overlaps(&b), want, "{a} and {b}");
        }
    }

    /// (text, Ok((host as printed, port, printed back)) or Err(()))
    #[test]
    fn endpoints_by_table_ipv4_ipv6_and_names() {
        type Want = Result<(&'static str, u16, &'static str), ()>;
        let cases: [(&str, Want); 17] = [
            (
                "198.18.0.10:6443",
                Ok(("198.18.0.10", 6443, "198.18.0.10:6443")),
            ),
            ("[fd00::1]:6443", Ok(("fd00::1", 6443, "[fd00::1]:6443"))),
            ("[FD00:0::10]:443", Ok(("fd00::10", 443, "[fd00::10]:443"))),
            (
                "api.demo.kubedna:6443",
                Ok(("api.demo.kubedna", 6443, "api.demo.kubedna:6443")),
            ),
            (
                "API.Example.NET:1",
                Ok(("api.example.net", 1, "api.example.net:1")),
            ),
            (
                "localhost:65535",
                Ok(("localhost", 65535, "localhost:65535")),
            ),
            ("fd00::1:6443", Err(())),
            ("[fd00::1]", Err(())),
            ("[fd00::1]6443", Err(())),
            ("[198.18.0.10]:6443", Err(())),
            ("198.18.0.10", Err(())),
            ("198.18.0.10:0", Err(())),
            ("198.18.0.10:65536", Err(())),
            ("198.18.0.10:+80", Err(())),
            ("198.18.0.300:6443", Err(())),
            ("api_server:6443", Err(())),
            (":6443", Err(())),
        ];
        for (text, want) in cases {
            match (text.parse::<Endpoint>(), want) {
                (Ok(e), Ok((host, port, shown))) => {
                    assert_eq!(e.host().to_string(), host, "{text}");
                    assert_eq!(e.port(), port, "{text}");
                    assert_eq!(e.to_string(), shown, "{text}");
                    assert_eq!(shown.parse::<Endpoint>().as_ref(), Ok(&e), "{text}");
                }
                (Err(e), Err(())) => {
                    assert!(e.to_string().contains("[fd00::1]:6443"), "{text}: {e}")
                }
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// (url, the host in it)
    #[test]
    fn endpoints_in_urls() {
        let cases = [
            ("https://127.0.0.3:2380", Some("127.0.0.3")),
            ("https://cp-1.lab.kubedna:2379", Some("cp-1.lab.kubedna")),
            ("https://[fd00::3]:2379", Some("fd00::3")),
            ("https://[fd00::3]:2379/health", Some("fd00::3")),
            ("https://cp-1.lab.kubedna", None),
        ];
        for (url, want) in cases {
            let got = Endpoint::in_url(url).map(|e| e.host().to_string());
            assert_eq!(got.as_deref(), want, "{url}");
        }
        let ip = Endpoint::in_url("https://[fd00::3]:2379").and_then(|e| e.host().as_ip());
        assert_eq!(ip, Some("fd00::3".parse().expect("ip")));
    }

    #[test]
    fn versions_by_table() {
        let good = [
            ("v1.30.3", (1, 30, 3)),
            ("v1.30.10", (1, 30, 10)),
            ("v2.0.0", (2, 0, 0)),
        ];
        for (text, (major, minor, patch)) in good {
            let v: KubernetesVersion = text.parse().expect(text);
            assert_eq!(v, KubernetesVersion::new(major, minor, patch));
            assert_eq!(v.to_string(), text);
        }
        for bad in [
            "1.30.3",
            "v1.30",
            "v1.30.3.1",
            "v1.30.3-rc.1",
            "v1.x.3",
            "v1..3",
            "v+1.30.3",
            "",
        ] {
            let e = bad.parse::<KubernetesVersion>().expect_err(bad);
            assert!(e.to_string().contains("vMAJOR.MINOR.PATCH"), "{bad}: {e}");
        }
    }

    #[test]
    fn values_travel_as_their_text() {
        let e: Endpoint = serde_json::from_str("\"[fd00::1]:6443\"").expect("endpoint");
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            "\"[fd00::1]:6443\""
        );
        let c: Cidr = serde_json::from_str("\"10.96.0.0/12\"").expect("cidr");
        assert_eq!(serde_json::to_string(&c).expect("json"), "\"10.96.0.0/12\"");
        let err = serde_json::from_str::<Cidr>("\"10.96.0.1/12\"").expect_err("host bits");
        assert!(err.to_string().contains("10.96.0.0/12"), "{err}");
    }
}
