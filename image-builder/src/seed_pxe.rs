//! Seeds for many PXE-booted machines: every node of a cluster description that names its NIC's
//! MAC (`nodes[].mac`) gets its own NoCloud seed directory named as iPXE spells that MAC
//! (`${mac:hexhyp}`, lower case: `52-54-00-12-34-56/`), which is where `boot.ipxe` points
//! cloud-init (`ds=nocloud-net;s=${base-url}/seed/${mac:hexhyp}/`). An HTTP server serves the
//! tree as it is; a MAC without a directory is a machine nobody described, and it must be refused,
//! never given a default seed (a default would hand the cluster secret to any machine that boots
//! on the wire). This module only renders and writes; it never serves and never prints a seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::seed::{self, ClusterSeed, Seed, SeedError};

/// A unicast Ethernet address, as the node's NIC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl Mac {
    /// Accepts `52:54:00:12:34:56` or `52-54-00-12-34-56`, either case. Refuses group
    /// (multicast/broadcast) and all-zero addresses: no NIC boots with those.
    pub fn parse(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let sep_ok = !(s.contains(':') && s.contains('-'));
        let mut b = [0u8; 6];
        let ok = sep_ok
            && parts.len() == 6
            && parts
                .iter()
                .zip(b.iter_mut())
                .all(|(p, o)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *o = v).is_ok());
        if !ok {
            return Err(format!(
                "{s:?} is not a MAC address (six hex octets: 52:54:00:12:34:56)"
            ));
        }
        if b[0] & 1 == 1 {
            return Err(format!(
                "{s:?} is a group (multicast) address; use the NIC's own unicast MAC"
            ));
        }
        if b == [0; 6] {
            return Err(format!("{s:?} is the all-zero address"));
        }
        Ok(Mac(b))
    }

    /// The form NICs report and network-config matches: lower-case hex octets joined by colons.
    pub fn colon(&self) -> String {
        self.hexhyp().replace('-', ":")
    }

    /// iPXE's `${mac:hexhyp}`: lower-case hex octets joined by hyphens.
    pub fn hexhyp(&self) -> String {
        self.0
            .iter()
            .map(|o| format!("{o:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// Checks every `nodes[].mac` (shape, unicast, no MAC twice); called from the cluster
/// validation so a bad MAC is refused whatever the command.
pub(crate) fn validate_macs(c: &ClusterSeed) -> Result<(), (String, String)> {
    let mut seen: BTreeMap<Mac, &str> = BTreeMap::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let Some(m) = &n.mac else { continue };
        let field = format!("nodes[{i}].mac");
        let mac = Mac::parse(m).map_err(|e| (field.clone(), e))?;
        if let Some(other) = seen.insert(mac, &n.name) {
            return Err((
                field,
                format!(
                    "{m} is also the MAC of {other:?}; each machine boots its own seed, so each \
                     needs its own MAC"
                ),
            ));
        }
    }
    Ok(())
}

/// The seed layout of a whole cluster: MAC directory name → (node name, seed). Every node
/// must name its MAC: a PXE layout that silently left a node out would make that machine boot
/// unseeded (refused) with no hint why.
pub fn layout(
    cluster: &ClusterSeed,
    cluster_path: &Path,
) -> Result<BTreeMap<String, (String, Seed)>, SeedError> {
    let mut out = BTreeMap::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let Some(m) = &n.mac else {
            return Err(SeedError::Invalid {
                path: cluster_path.to_path_buf(),
                field: format!("nodes[{i}].mac"),
                message: format!(
                    "node {:?} has no mac; a PXE seed layout names each machine's directory by \
                     its NIC's MAC (add `mac: 52:54:00:..`)",
                    n.name
                ),
            });
        };
        let mac = Mac::parse(m).map_err(|message| SeedError::Invalid {
            path: cluster_path.to_path_buf(),
            field: format!("nodes[{i}].mac"),
            message,
        })?;
        let s = seed::render(cluster, cluster_path, &n.name)?;
        out.insert(mac.hexhyp(), (n.name.clone(), s));
    }
    Ok(out)
}

/// Writes the layout into `dir`, replacing what was there as a whole: a machine removed from
/// the description must lose its seed, so nothing of an older layout survives. The new tree is
/// written beside `dir` and renamed into place.
pub fn write_layout(
    layout: &BTreeMap<String, (String, Seed)>,
    dir: &Path,
) -> Result<(), SeedError> {
    let w = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SeedError::Write { path, source }
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "seed".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(w(parent))?;
    let partial: PathBuf = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let old: PathBuf = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    for (mac, (_, s)) in layout {
        seed::write_dir(s, &partial.join(mac))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(w(dir))?;
    }
    std::fs::rename(&partial, dir).map_err(w(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(w(&old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_by_table() {
        let table: &[(&str, Result<&str, &str>)] = &[
            ("52:54:00:12:34:56", Ok("52-54-00-12-34-56")),
            ("52-54-00-AB-cd-EF", Ok("52-54-00-ab-cd-ef")),
            ("02:00:00:00:00:01", Ok("02-00-00-00-00-01")),
            ("52:54:00:12:34", Err("not a MAC")),
            ("52:54:00:12:34:56:78", Err("not a MAC")),
            ("52:54-00:12:34:56", Err("not a MAC")),
            ("52:54:00:12:34:5g", Err("not a MAC")),
            ("525:4:00:12:34:56", Err("not a MAC")),
            ("", Err("not a MAC")),
            ("01:00:5e:00:00:01", Err("group")),
            ("ff:ff:ff:ff:ff:ff", Err("group")),
            ("00:00:00:00:00:00", Err("all-zero")),
        ];
        for (input, want) in table {
            match (Mac::parse(input), want) {
                (Ok(m), Ok(h)) => assert_eq!(m.hexhyp(), *h, "{input}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }
}
