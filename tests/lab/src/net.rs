//! The lab network on the host: the subnet and its overlap check against host routes, the bridge
//! without uplink, per-node network namespaces and veths, the nftables tables that keep lab traffic
//! off every other interface and implement partitions and loss, and tc netem for delay (or,
//! without netem, a netfilter queue: see [`crate::delay`]). It must never add a route, NAT or
//! forwarding path out of the machine: the only rules it writes drop or delay traffic.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cmd::{self, CmdError};

/// Errors of the lab network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid subnet {input:?}: {reason} (example: 198.18.0.0/24)")]
    BadSubnet { input: String, reason: &'static str },
    #[error("subnet {subnet} overlaps the host route {route:?}; pick another with --subnet (for example 198.18.1.0/24)")]
    Overlap { subnet: Subnet, route: String },
    #[error("could not read the host routes")]
    Routes(#[source] CmdError),
    #[error("unexpected output from `{command}`")]
    Parse {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so `delay` cannot work here; `loss` does not need it")]
    NoNetem,
    #[error(transparent)]
    Delay(#[from] crate::delay::DelayError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// An IPv4 network: an aligned address and a prefix length between 8 and 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Usable host addresses (network and broadcast excluded).
    pub fn host_count(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))) - 2
    }

    /// The `n`-th host address (1-based), if the subnet has it.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        (n >= 1 && n <= self.host_count()).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// Whether two networks share any address.
    pub fn overlaps(&self, other_net: Ipv4Addr, other_prefix: u8) -> bool {
        let p = self.prefix.min(other_prefix);
        let m = Self::mask(p);
        u32::from(self.network) & m == u32::from(other_net) & m
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.overlaps(addr, 32)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetError;
    fn from_str(input: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::BadSubnet {
            input: input.to_string(),
            reason,
        };
        let (addr, prefix) = input
            .split_once('/')
            .ok_or_else(|| bad("missing /PREFIX"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("prefix must be between 8 and 30"));
        }
        if u32::from(network) & !Self::mask(prefix) != 0 {
            return Err(bad("host bits are set; give the network address"));
        }
        Ok(Subnet { network, prefix })
    }
}

impl TryFrom<String> for Subnet {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

#[derive(Debug, Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
}

/// Refuses `subnet` if any host route (all tables, the default route excepted) or local address
/// overlaps it.
pub fn check_no_overlap(subnet: &Subnet) -> Result<(), NetError> {
    let args = ["-j", "-4", "route", "show", "table", "all"];
    let out = cmd::run("ip", &args).map_err(NetError::Routes)?;
    let routes: Vec<Route> = serde_json::from_str(&out).map_err(|source| NetError::Parse {
        command: cmd::display("ip", &args),
        source,
    })?;
    for r in routes {
        if r.dst == "default" {
            continue;
        }
        let (addr, prefix) = match r.dst.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().unwrap_or(32)),
            None => (r.dst.as_str(), 32),
        };
        let Ok(addr) = addr.parse::<Ipv4Addr>() else {
            continue;
        };
        if subnet.overlaps(addr, prefix) {
            let dev = r.dev.map(|d| format!(" dev {d}")).unwrap_or_default();
            return Err(NetError::Overlap {
                subnet: *subnet,
                route: format!("{}{dev}", r.dst),
            });
        }
    }
    Ok(())
}

/// Whether a network interface of that name exists on the host.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Host interfaces whose name starts with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Creates the bridge with the first host address of the subnet, no uplink, IPv6 off.
pub fn create_bridge(bridge: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    cmd::run("ip", &["link", "add", bridge, "type", "bridge"])?;
    // No router advertisements or SLAAC on the lab bridge: lab traffic is IPv4 on the lab subnet.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"),
        "1",
    );
    // Multicast discovery beacons must reach every port. With IGMP snooping on and no querier
    // on the bridge, forwarding depends on the bridge having learnt group members from their
    // reports (a report sent before the port was forwarding is lost): flood instead, as a plain
    // L2 segment without snooping switches does.
    let _ = std::fs::write(
        format!("/sys/class/net/{bridge}/bridge/multicast_snooping"),
        "0",
    );
    let cidr = format!("{addr}/{prefix}");
    cmd::run("ip", &["addr", "add", &cidr, "dev", bridge])?;
    cmd::run("ip", &["link", "set", bridge, "up"])?;
    Ok(())
}

/// Sets a link up or down (a powered-off node's NIC has no carrier).
pub fn set_link(name: &str, up: bool) -> Result<(), NetError> {
    cmd::run("ip", &["link", "set", name, if up { "up" } else { "down" }])?;
    Ok(())
}

/// Deletes a link if it exists.
pub fn delete_link(name: &str) -> Result<(), NetError> {
    if link_exists(name) {
        let out = cmd::output("ip", &["link", "del", name], None)?;
        // A veth also vanishes on its own when its peer's namespace is torn down.
        if !out.success() && link_exists(name) {
            out.check()?;
        }
    }
    Ok(())
}

/// Creates a veth pair: `host_end` on the host, attached to `bridge`; `eth0` inside the network
/// namespace bound at `netns`, with `addr/prefix`, and a default route only via the bridge address
/// (which forwards nowhere: see [`install_firewall`]).
pub fn create_node_link(
    bridge: &str,
    host_end: &str,
    netns: &Path,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    let ns = netns.to_string_lossy();
    cmd::run(
        "ip",
        &[
            "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    cmd::run("ip", &["link", "set", host_end, "master", bridge, "up"])?;
    let cidr = format!("{addr}/{prefix}");
    let gw = gateway.to_string();
    in_netns(netns, &["ip", "link", "set", "lo", "up"])?;
    in_netns(netns, &["ip", "addr", "add", &cidr, "dev", "eth0"])?;
    in_netns(netns, &["ip", "link", "set", "eth0", "up"])?;
    in_netns(
        netns,
        &["ip", "route", "add", "default", "via", &gw, "dev", "eth0"],
    )?;
    Ok(())
}

/// Runs a command in the network namespace bound at `netns` (and only that namespace).
pub fn in_netns(netns: &Path, argv: &[&str]) -> Result<String, CmdError> {
    let flag = format!("--net={}", netns.display());
    let mut args = vec![flag.as_str(), "--"];
    args.extend_from_slice(argv);
    cmd::run("nsenter", &args)
}

/// Writes the lab's two nftables tables, replacing them if present:
/// `inet TABLE` drops every routed packet into or out of the bridge (the lab never reaches another
/// interface, whatever the host's `ip_forward`); `bridge TABLE` holds the partition rules.
pub fn install_firewall(table: &str, bridge: &str) -> Result<(), NetError> {
    let script = format!(
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             iifname \"{bridge}\" oifname != \"{bridge}\" drop\n\
             oifname \"{bridge}\" iifname != \"{bridge}\" drop\n\
           }}\n\
         }}\n\
         table bridge {table} {{}}\n\
         delete table bridge {table}\n\
         table bridge {table} {{\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
           }}\n\
           chain loss {{\n\
           }}\n\
           chain loss_forward {{\n\
             type filter hook forward priority 10; policy accept;\n\
             jump loss\n\
           }}\n\
           chain loss_input {{\n\
             type filter hook input priority 10; policy accept;\n\
             jump loss\n\
           }}\n\
           chain loss_output {{\n\
             type filter hook output priority 10; policy accept;\n\
             jump loss\n\
           }}\n\
         }}\n"
    );
    nft_script(&script)
}

/// Removes the lab's nftables tables if present.
pub fn remove_firewall(table: &str) -> Result<(), NetError> {
    for family in ["inet", "bridge"] {
        let script = format!("table {family} {table} {{}}\ndelete table {family} {table}\n");
        nft_script(&script)?;
    }
    Ok(())
}

/// Whether one of the lab's nftables tables exists.
pub fn firewall_exists(table: &str) -> bool {
    ["inet", "bridge"].iter().any(|family| {
        cmd::output("nft", &["list", "table", family, table], None)
            .map(|o| o.success())
            .unwrap_or(false)
    })
}

/// Replaces the partition rules: frames between any two ports of different groups are dropped
/// (both directions, ARP included). An empty list heals.
pub fn set_partitions(table: &str, groups: &[Vec<String>]) -> Result<(), NetError> {
    let mut script = format!("flush chain bridge {table} forward\n");
    for (i, a) in groups.iter().enumerate() {
        for (j, b) in groups.iter().enumerate() {
            if i == j {
                continue;
            }
            for pa in a {
                for pb in b {
                    script.push_str(&format!(
                        "add rule bridge {table} forward iifname \"{pa}\" oifname \"{pb}\" drop\n"
                    ));
                }
            }
        }
    }
    nft_script(&script)
}

fn nft_script(script: &str) -> Result<(), NetError> {
    use std::io::Write;
    let mut file = tempfile_in_run()?;
    file.1
        .write_all(script.as_bytes())
        .map_err(|source| CmdError::Spawn {
            command: "nft -f (write script)".into(),
            source,
        })?;
    let path = file.0.to_string_lossy().into_owned();
    let res = cmd::run("nft", &["-f", &path]);
    let _ = std::fs::remove_file(&file.0);
    res?;
    Ok(())
}

fn tempfile_in_run() -> Result<(std::path::PathBuf, std::fs::File), NetError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "kubedna-lab-nft-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).map_err(|source| CmdError::Spawn {
        command: format!("create {}", path.display()),
        source,
    })?;
    Ok((path, file))
}

/// Packet loss and delay on a node's link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Netem {
    /// Percentage of frames dropped in each direction, 0..=100 (nftables `numgen random`).
    pub loss_pct: f32,
    /// Delay added in each direction, in milliseconds (tc netem, or the queue helper).
    pub delay_ms: u32,
}

impl Netem {
    pub fn is_clear(&self) -> bool {
        self.loss_pct == 0.0 && self.delay_ms == 0
    }
}

/// Replaces the loss rules: for each `(port, percent)`, frames entering or leaving the bridge
/// through that port are dropped with that probability (so each direction of a node's link loses
/// `percent`). Uses nftables' `numgen random`, which every kernel with nf_tables has.
pub fn set_loss(table: &str, ports: &[(String, f32)]) -> Result<(), NetError> {
    let mut script = format!("flush chain bridge {table} loss\n");
    for (port, pct) in ports {
        // Hundredths of a percent, so fractional percentages work.
        let threshold = (pct * 100.0).round().clamp(0.0, 10_000.0) as u32;
        if threshold == 0 {
            continue;
        }
        let chance = if threshold >= 10_000 {
            String::new()
        } else {
            format!("numgen random mod 10000 < {threshold} ")
        };
        for dir in ["iifname", "oifname"] {
            script.push_str(&format!(
                "add rule bridge {table} loss {dir} \"{port}\" {chance}drop\n"
            ));
        }
    }
    nft_script(&script)
}

/// Sets the delay of a node's link in both directions with tc netem: egress of the host-side veth
/// (towards the node) and of `eth0` inside the node's namespace (from the node). 0 removes it.
/// Without sch_netem (CONFIG_NET_SCH_NETEM) in the kernel, the delay goes through a netfilter
/// queue in the node's namespace instead ([`crate::delay`]; its messages go to `log`).
pub fn set_delay(host_end: &str, netns: &Path, delay_ms: u32, log: &Path) -> Result<(), NetError> {
    match set_netem_delay(host_end, netns, delay_ms) {
        Err(NetError::NoNetem) => Ok(crate::delay::set(netns, delay_ms, log)?),
        // Clearing: also whatever the queue path left (a lab moved between kernels, say).
        Ok(()) if delay_ms == 0 => Ok(crate::delay::set(netns, 0, log)?),
        other => other,
    }
}

fn set_netem_delay(host_end: &str, netns: &Path, delay_ms: u32) -> Result<(), NetError> {
    let delay = format!("{delay_ms}ms");
    let netns_flag = format!("--net={}", netns.display());
    for (dev, inside) in [(host_end, false), ("eth0", true)] {
        let tc: Vec<&str> = if delay_ms == 0 {
            vec!["tc", "qdisc", "del", "dev", dev, "root"]
        } else {
            vec![
                "tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", &delay,
            ]
        };
        let out = if inside {
            let mut full = vec![netns_flag.as_str(), "--"];
            full.extend_from_slice(&tc);
            cmd::output("nsenter", &full, None)?
        } else {
            cmd::output(tc[0], &tc[1..], None)?
        };
        if out.success() {
            continue;
        }
        if delay_ms == 0 {
            // Nothing to delete is what we wanted.
            continue;
        }
        if out.stderr.contains("qdisc kind is unknown") {
            return Err(NetError::NoNetem);
        }
        out.check()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_parsing_and_overlap() {
        let s: Subnet = "198.18.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.host(1), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(s.host(254), Some(Ipv4Addr::new(198, 18, 0, 254)));
        assert_eq!(s.host(255), None);
        assert!(s.overlaps(Ipv4Addr::new(198, 18, 0, 0), 16));
        assert!(s.overlaps(Ipv4Addr::new(198, 18, 0, 77), 32));
        assert!(!s.overlaps(Ipv4Addr::new(198, 18, 1, 0), 24));
        assert!(!s.overlaps(Ipv4Addr::new(192, 0, 2, 0), 24));
        for bad in [
            "198.18.0.1/24",
            "198.18.0.0",
            "198.18.0.0/31",
            "x/24",
            "198.18.0.0/4",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }
}
