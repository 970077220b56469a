//! Tests of [`super`] (qemu.rs).

use super::ssh::shell_quote;
use super::*;

#[test]
fn mac_is_stable_unicast_and_per_node() {
    let a = mac("lab", "cp-1");
    assert_eq!(a, mac("lab", "cp-1"));
    assert_ne!(a, mac("lab", "cp-2"));
    assert_ne!(a, mac("other", "cp-1"));
    assert!(a.starts_with("52:54:00:") && a.len() == 17, "{a}");
}

#[test]
fn network_config_matches_the_mac() {
    let nic = Nic {
        mac: mac("lab", "cp-1"),
        address: Ipv4Addr::new(198, 18, 50, 2),
        prefix: 24,
        gateway: Ipv4Addr::new(198, 18, 50, 1),
    };
    let nc = nic.network_config();
    assert!(nc.contains(&format!("macaddress: \"{}\"", nic.mac)), "{nc}");
    assert!(nc.contains("addresses: [198.18.50.2/24]"), "{nc}");
    assert!(nc.contains("    gateway4: 198.18.50.1\n"), "{nc}");
    assert!(!nc.contains("routes:"), "{nc}");
}

#[test]
fn probe_output_parses() {
    let p = Probe::parse("system=running\nagent=ready\nenabled=enabled\n");
    assert_eq!(
        p,
        Some(Probe {
            system: "running".into(),
            agent: "ready".into(),
            enabled: "enabled".into()
        })
    );
    let p = Probe::parse("system=degraded\nagent=absent\n");
    assert_eq!(p.map(|p| p.agent), Some("absent".into()));
    assert_eq!(Probe::parse("garbage"), None);
}

#[test]
fn remote_words_are_quoted() {
    assert_eq!(shell_quote("systemctl"), "systemctl");
    assert_eq!(shell_quote("a b"), "'a b'");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("$(x)"), "'$(x)'");
}
