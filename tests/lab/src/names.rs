//! Names the lab derives from a lab name: its state directory, bridge, veths and nftables tables.
//! Everything the lab creates on the host is named from the lab name alone, so `down` can find it
//! after a crash without reading any state, and two labs never share a name. Interface names fit
//! in IFNAMSIZ (15 characters); the lab id never contains '-', so "kdl-ID-" is an unambiguous prefix.

use sha2::{Digest, Sha256};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Highest node index; keeps veth names within [`IFNAME_MAX`].
pub const MAX_NODE_INDEX: u32 = 99;

/// A lab name that is not allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid lab name {name:?}: use 1 to 32 characters of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct InvalidName {
    pub name: String,
}

/// Checks a lab name: 1..=32 of `[a-z0-9-]`, not starting with '-'.
pub fn validate_lab_name(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            name: name.to_string(),
        })
    }
}

/// The short id used in host-side names: the name itself when it is at most 8 characters without
/// '-', otherwise up to 3 of its letters/digits followed by 5 hex digits of its sha256.
pub fn lab_id(name: &str) -> String {
    if name.len() <= 8 && !name.contains('-') {
        return name.to_string();
    }
    let head: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(3)
        .collect();
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{head}{}", &digest[..5])
}

/// The lab's bridge: `kdl-ID`.
pub fn bridge(name: &str) -> String {
    format!("kdl-{}", lab_id(name))
}

/// Prefix of every host-side veth of the lab: `kdl-ID-`.
pub fn veth_prefix(name: &str) -> String {
    format!("kdl-{}-", lab_id(name))
}

/// Host-side veth of node number `index`: `kdl-ID-N`.
pub fn veth(name: &str, index: u32) -> String {
    format!("{}{index}", veth_prefix(name))
}

/// The lab's nftables tables (one `inet`, one `bridge`) share this name.
pub fn nft_table(name: &str) -> String {
    format!("kubedna_lab_{}", lab_id(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_differ() {
        for n in [
            "a",
            "dev",
            "abcdefgh",
            "abcdefghi",
            "my-lab",
            "x-1",
            &"z".repeat(32),
        ] {
            validate_lab_name(n).unwrap_or_else(|e| panic!("{e}"));
            assert!(bridge(n).len() <= IFNAME_MAX, "{}", bridge(n));
            assert!(veth(n, MAX_NODE_INDEX).len() <= IFNAME_MAX);
            assert!(!lab_id(n).contains('-'));
        }
        assert_ne!(bridge("a-1"), veth("a", 1));
        assert_ne!(lab_id("lab-one"), lab_id("lab-two"));
    }

    #[test]
    fn rejects_bad_names() {
        for n in ["", "-x", "Upper", "a_b", "a/b", &"z".repeat(33)] {
            assert!(validate_lab_name(n).is_err(), "{n}");
        }
    }
}
