//! Whether a PXE-booted machine installs the node image to its local disk (issue 15), as a
//! pure decision: observed facts in (what was asked on the kernel command line, how the system
//! booted, what the disk holds, whether the served image matched its checksum), one step out.
//! The rules: nothing is installed unless asked; an installed system never reinstalls itself;
//! a disk that holds anything (our install or someone else's partitions) is never wiped
//! without the explicit wipe flag; a served image whose SHA-256 does not match its pin stops
//! the install before the disk is touched. This follows Ubuntu autoinstall's convention that a
//! destructive install needs an explicit word on the kernel command line (`autoinstall`), here
//! `kubedna.install=DISK` and, to overwrite, `kubedna.install.wipe=1`.
//!
//! This module decides only; it never opens a disk. It is the specification of the installer
//! the image ships (`image-builder/layer/usr/lib/kubedna/kubedna-install`, a shell script run
//! in the live system, where no Rust binary of ours exists yet), which implements the same
//! rules step by step; the lab test (`tests/lab/tests/pxe.rs`) checks them on a real machine.
//! Change both together.

/// What the kernel command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `kubedna.install=/dev/vda`: the whole disk to install to.
    pub disk: String,
    /// `kubedna.install.wipe=1`: overwrite a disk that already holds partitions.
    pub wipe: bool,
}

/// Reads `kubedna.install=` and `kubedna.install.wipe=` from `/proc/cmdline`'s text. Only
/// whole-disk device paths under /dev/ are accepted; a wipe flag without a disk is an error
/// (it would otherwise be silently ignored, and the operator would believe the disk wiped).
pub fn parse_cmdline(cmdline: &str) -> Result<Option<Request>, String> {
    let mut disk = None;
    let mut wipe = None;
    for arg in cmdline.split_whitespace() {
        if let Some(v) = arg.strip_prefix("kubedna.install=") {
            if !v.starts_with("/dev/") || v.contains("..") || v.len() <= "/dev/".len() {
                return Err(format!(
                    "kubedna.install={v}: must name a whole disk under /dev/ (kubedna.install=/dev/vda)"
                ));
            }
            disk = Some(v.to_string());
        } else if let Some(v) = arg.strip_prefix("kubedna.install.wipe=") {
            wipe = Some(match v {
                "1" | "yes" | "true" => true,
                "0" | "no" | "false" => false,
                _ => {
                    return Err(format!(
                        "kubedna.install.wipe={v}: must be 1 or 0 (yes/no, true/false)"
                    ))
                }
            });
        }
    }
    match (disk, wipe) {
        (Some(disk), wipe) => Ok(Some(Request {
            disk,
            wipe: wipe.unwrap_or(false),
        })),
        (None, Some(_)) => Err(
            "kubedna.install.wipe= without kubedna.install=DISK: name the disk to install to"
                .into(),
        ),
        (None, None) => Ok(None),
    }
}

/// How the running system booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booted {
    /// From the network (live-boot's root in RAM).
    Live,
    /// From a local disk.
    Disk,
}

/// What the target disk holds, read before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskState {
    Missing,
    /// No partition table, no filesystem signature.
    Blank,
    /// Our GPT layout (the `disk` output's ESP and root partition types and labels).
    Installed,
    /// Anything else: another OS, data, an unknown partition table.
    Foreign,
}

/// Whether the served image matched its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Match,
    Mismatch {
        file: String,
        expected: String,
        actual: String,
    },
}

/// The one step to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No install asked: run as the live node.
    RunLive,
    /// An installed system booted from its disk: nothing to do, ever.
    Nothing,
    /// Write the image to the disk.
    Install { disk: String },
    /// The disk already holds this node: reboot into it instead of reinstalling.
    RebootToDisk { disk: String },
    /// Do not touch the disk; say why and what to do (shown on the console).
    Refuse { reason: String },
}

/// The decision. `checksum` is only consulted when the step would write the disk, and a
/// mismatch wins over everything that would write.
pub fn decide(
    request: Option<&Request>,
    booted: Booted,
    disk: &DiskState,
    checksum: &Checksum,
) -> Step {
    let Some(r) = request else {
        return Step::RunLive;
    };
    if booted == Booted::Disk {
        return Step::Nothing;
    }
    let would_write = match disk {
        DiskState::Missing => {
            return Step::Refuse {
                reason: format!(
                    "kubedna.install={}: no such disk; check the device name (lsblk)",
                    r.disk
                ),
            }
        }
        DiskState::Blank => true,
        DiskState::Installed | DiskState::Foreign => r.wipe,
    };
    if !would_write {
        return match disk {
            DiskState::Installed => Step::RebootToDisk {
                disk: r.disk.clone(),
            },
            _ => Step::Refuse {
                reason: format!(
                    "{} holds partitions that are not a KubeDNA install; not wiping it. Add \
                     kubedna.install.wipe=1 to the kernel command line to overwrite it",
                    r.disk
                ),
            },
        };
    }
    if let Checksum::Mismatch {
        file,
        expected,
        actual,
    } = checksum
    {
        return Step::Refuse {
            reason: format!(
                "{file}: SHA-256 {actual}, expected {expected}; the served image is not the \
                 one pinned, so {} was not touched. Rebuild or re-copy the PXE directory",
                r.disk
            ),
        };
    }
    Step::Install {
        disk: r.disk.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_by_table() {
        let req = |d: &str, wipe| {
            Ok(Some(Request {
                disk: d.into(),
                wipe,
            }))
        };
        let table: &[(&str, Result<Option<Request>, &str>)] = &[
            ("boot=live ip=dhcp", Ok(None)),
            ("boot=live kubedna.install=/dev/vda", req("/dev/vda", false)),
            (
                "kubedna.install=/dev/nvme0n1 kubedna.install.wipe=1",
                req("/dev/nvme0n1", true),
            ),
            (
                "kubedna.install.wipe=yes kubedna.install=/dev/sda",
                req("/dev/sda", true),
            ),
            (
                "kubedna.install=/dev/sda kubedna.install.wipe=0",
                req("/dev/sda", false),
            ),
            ("kubedna.install=vda", Err("whole disk under /dev/")),
            ("kubedna.install=/dev/", Err("whole disk under /dev/")),
            (
                "kubedna.install=/dev/../etc/x",
                Err("whole disk under /dev/"),
            ),
            (
                "kubedna.install=/dev/vda kubedna.install.wipe=maybe",
                Err("must be 1 or 0"),
            ),
            (
                "kubedna.install.wipe=1",
                Err("without kubedna.install=DISK"),
            ),
        ];
        for (line, want) in table {
            match (parse_cmdline(line), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{line}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{line}: {e}"),
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Every combination of the facts, against the rules written out once more.
    #[test]
    fn decisions_over_every_combination() {
        let requests = [
            None,
            Some(Request {
                disk: "/dev/vda".into(),
                wipe: false,
            }),
            Some(Request {
                disk: "/dev/vda".into(),
                wipe: true,
            }),
        ];
        let disks = [
            DiskState::Missing,
            DiskState::Blank,
            DiskState::Installed,
            DiskState::Foreign,
        ];
        let sums = [
            Checksum::Match,
            Checksum::Mismatch {
                file: "root.squashfs".into(),
                expected: "aa".into(),
                actual: "bb".into(),
            },
        ];
        for r in &requests {
            for booted in [Booted::Live, Booted::Disk] {
                for d in &disks {
                    for c in &sums {
                        let step = decide(r.as_ref(), booted, d, c);
                        let case = format!("{r:?} {booted:?} {d:?} {c:?} -> {step:?}");
                        // Never a write without a request, from an installed system, to a
                        // missing disk, with a bad checksum, or over a used disk without wipe.
                        if let Step::Install { .. } = step {
                            let r = r.as_ref().expect("request");
                            assert_eq!(booted, Booted::Live, "{case}");
                            assert_eq!(c, &Checksum::Match, "{case}");
                            assert!(
                                *d == DiskState::Blank || (r.wipe && *d != DiskState::Missing),
                                "{case}"
                            );
                        }
                        // And every case that may write does, once the facts allow it.
                        let may = r.is_some()
                            && booted == Booted::Live
                            && *c == Checksum::Match
                            && (*d == DiskState::Blank
                                || (r.as_ref().is_some_and(|r| r.wipe)
                                    && *d != DiskState::Missing));
                        assert_eq!(may, matches!(step, Step::Install { .. }), "{case}");
                        if r.is_none() {
                            assert_eq!(step, Step::RunLive, "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let r = Request {
            disk: "/dev/vda".into(),
            wipe: false,
        };
        let Step::Refuse { reason } = decide(
            Some(&r),
            Booted::Live,
            &DiskState::Foreign,
            &Checksum::Match,
        ) else {
            panic!("a foreign disk was not refused");
        };
        assert!(reason.contains("kubedna.install.wipe=1"), "{reason}");
        let bad = Checksum::Mismatch {
            file: "root.squashfs".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        let Step::Refuse { reason } = decide(Some(&r), Booted::Live, &DiskState::Blank, &bad)
        else {
            panic!("a bad checksum was not refused");
        };
        assert!(
            reason.contains("root.squashfs") && reason.contains("not touched"),
            "{reason}"
        );
        // A second PXE boot of an installed machine does not reinstall.
        assert_eq!(
            decide(
                Some(&r),
                Booted::Live,
                &DiskState::Installed,
                &Checksum::Match
            ),
            Step::RebootToDisk {
                disk: "/dev/vda".into()
            }
        );
    }
}
