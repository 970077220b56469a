//! Turning a finished root filesystem tree into boot media, without ever mounting anything
//! (our build machines' kernels have no vfat and no iso9660): the reproducible rootfs tarball
//! (GNU tar), the UEFI GPT disk (ESP from `mkfs.vfat` + mtools holding systemd-boot, kernel,
//! initrd and a loader entry; ext4 root from `mkfs.ext4 -d` written at its partition offset;
//! table from `sfdisk` on the file) as raw and qcow2, and the PXE set (kernel, initrd, root
//! squashfs, iPXE script). It never changes the tree it reads.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cmd::{Cmd, CmdError};

const MIB: u64 = 1024 * 1024;
/// ESP size: systemd-boot, one kernel and one initrd (Debian's MODULES=most initrd is ~40 MiB),
/// with room for the next kernel the agent's patching installs.
pub const ESP_MIB: u64 = 256;
/// GPT partition type GUIDs (UEFI spec; the root one is the Discoverable Partitions x86-64 root).
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the root filesystem has no {what} under {dir} (is the kernel package installed?)")]
    NoKernel { what: &'static str, dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Identifiers of one disk, derived from the build inputs so that they are stable across
/// rebuilds (a changed UUID on every build would defeat reproducibility and caching).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskIds {
    pub disk_guid: String,
    pub esp_partuuid: String,
    pub root_partuuid: String,
    pub root_fs_uuid: String,
}

impl DiskIds {
    pub fn derive(seed: &str) -> Self {
        let u = |what: &str| uuid_from(&format!("{seed}/{what}"));
        Self {
            disk_guid: u("disk"),
            esp_partuuid: u("esp"),
            root_partuuid: u("root"),
            root_fs_uuid: u("rootfs"),
        }
    }
}

/// A version-4-shaped UUID from the SHA-256 of `s`.
pub fn uuid_from(s: &str) -> String {
    let mut b: [u8; 16] = [0; 16];
    b.copy_from_slice(&Sha256::digest(s.as_bytes())[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Newest `vmlinuz-*` and matching `initrd.img-*` in the tree's /boot.
pub fn kernel_and_initrd(rootfs: &Path) -> Result<(PathBuf, PathBuf), DiskError> {
    let boot = rootfs.join("boot");
    let mut kernels: Vec<String> = std::fs::read_dir(&boot)
        .map_err(io(&boot))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    let Some(k) = kernels.pop() else {
        return Err(DiskError::NoKernel {
            what: "vmlinuz-*",
            dir: boot,
        });
    };
    let version = k.trim_start_matches("vmlinuz-");
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.exists() {
        return Err(DiskError::NoKernel {
            what: "initrd.img-* matching the kernel",
            dir: boot,
        });
    }
    Ok((boot.join(&k), initrd))
}

/// Writes `rootfs` as a tarball whose bytes depend only on the tree's content: entries sorted
/// by name, every mtime set to `epoch`, numeric owners only, no atime/ctime, stable pax names.
pub fn write_tarball(rootfs: &Path, out: &Path, epoch: u64) -> Result<(), DiskError> {
    Cmd::new("tar")
        .arg("--create")
        .arg("--file")
        .arg(out)
        .arg("--directory")
        .arg(rootfs)
        .args([
            "--sort=name",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--one-file-system",
        ])
        .arg(format!("--mtime=@{epoch}"))
        .arg(".")
        .env("LC_ALL", "C")
        .run()?;
    Ok(())
}

/// Bytes of regular files and directories in `dir` (what `mkfs.ext4 -d` has to hold).
pub fn tree_size(dir: &Path) -> Result<u64, DiskError> {
    let out = Cmd::new("du")
        .args(["--summarize", "--bytes", "--one-file-system"])
        .arg(dir)
        .run_text()?;
    Ok(out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// What the disk step needs.
#[derive(Debug)]
pub struct DiskInput<'a> {
    pub rootfs: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub systemd_boot: &'a Path,
    pub ids: &'a DiskIds,
    pub title: &'a str,
    pub epoch: u64,
    pub work: &'a Path,
}

/// Builds `out_raw` (GPT: ESP + ext4 root, sized to the tree plus headroom; cloud-init grows
/// the root to the real disk on first boot). Returns the raw size in bytes.
pub fn write_disk(input: &DiskInput<'_>, out_raw: &Path) -> Result<u64, DiskError> {
    let used = tree_size(input.rootfs)?;
    // ext4 metadata, reserved blocks and first-boot writes: 25% plus 512 MiB, whole MiB.
    let root_mib = (used + used / 4) / MIB + 512;
    let esp_start = MIB;
    let root_start = esp_start + ESP_MIB * MIB;
    // 1 MiB after the root for the backup GPT.
    let total = root_start + root_mib * MIB + MIB;

    let esp = input.work.join("esp.img");
    write_esp(input, &esp)?;

    {
        let f = File::create(out_raw).map_err(io(out_raw))?;
        f.set_len(total).map_err(io(out_raw))?;
    }
    let table = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\
         start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"ESP\"\n\
         start={}, size={}, type={ROOT_TYPE}, uuid={}, name=\"root\"\n",
        input.ids.disk_guid,
        esp_start / 512,
        ESP_MIB * MIB / 512,
        input.ids.esp_partuuid,
        root_start / 512,
        root_mib * MIB / 512,
        input.ids.root_partuuid,
    );
    let script = input.work.join("sfdisk.script");
    std::fs::write(&script, &table).map_err(io(&script))?;
    // sfdisk reads its script on stdin; give it the file through a tiny redirect-free route.
    Cmd::new("sfdisk")
        .args([
            "--no-reread",
            "--no-tell-kernel",
            "--quiet",
            "--wipe",
            "never",
        ])
        .arg(out_raw)
        .stdin_file(&script)
        .run()?;

    copy_into(&esp, out_raw, esp_start)?;

    Cmd::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "kubedna-root",
            "-U",
            &input.ids.root_fs_uuid,
        ])
        .arg("-E")
        .arg(format!(
            "offset={root_start},nodiscard,hash_seed={}",
            input.ids.root_fs_uuid
        ))
        .arg("-d")
        .arg(input.rootfs)
        .arg(out_raw)
        .arg(format!("{}k", root_mib * 1024))
        .env("E2FSPROGS_FAKE_TIME", input.epoch.to_string())
        .run()?;
    Ok(total)
}

fn write_esp(input: &DiskInput<'_>, esp: &Path) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(esp);
    Cmd::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-n", "ESP", "--invariant"])
        .arg(esp)
        .arg((ESP_MIB * 1024).to_string())
        .run()?;
    let m = |args: &[&str]| -> Result<(), DiskError> {
        Cmd::new(args[0])
            .arg("-i")
            .arg(esp)
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1")
            .run()?;
        Ok(())
    };
    m(&[
        "mmd",
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/systemd",
        "::/loader",
        "::/loader/entries",
        "::/kubedna",
    ])?;
    let loader = input.work.join("loader.conf");
    std::fs::write(&loader, "default kubedna.conf\ntimeout 0\neditor no\n").map_err(io(&loader))?;
    let entry = input.work.join("kubedna.conf");
    std::fs::write(
        &entry,
        format!(
            "title {}\nlinux /kubedna/vmlinuz\ninitrd /kubedna/initrd.img\n\
             options root=PARTUUID={} rw console=tty0 console=ttyS0,115200n8\n",
            input.title, input.ids.root_partuuid
        ),
    )
    .map_err(io(&entry))?;
    let copy = |from: &Path, to: &str| -> Result<(), DiskError> {
        Cmd::new("mcopy")
            .arg("-i")
            .arg(esp)
            .arg("-m")
            .arg(from)
            .arg(to)
            .env("MTOOLS_SKIP_CHECK", "1")
            .run()?;
        Ok(())
    };
    copy(input.systemd_boot, "::/EFI/BOOT/BOOTX64.EFI")?;
    copy(input.systemd_boot, "::/EFI/systemd/systemd-bootx64.efi")?;
    copy(&loader, "::/loader/loader.conf")?;
    copy(&entry, "::/loader/entries/kubedna.conf")?;
    copy(input.kernel, "::/kubedna/vmlinuz")?;
    copy(input.initrd, "::/kubedna/initrd.img")?;
    Ok(())
}

fn copy_into(from: &Path, to: &Path, offset: u64) -> Result<(), DiskError> {
    let mut src = File::open(from).map_err(io(from))?;
    let mut dst = OpenOptions::new().write(true).open(to).map_err(io(to))?;
    dst.seek(SeekFrom::Start(offset)).map_err(io(to))?;
    std::io::copy(&mut src, &mut dst).map_err(io(to))?;
    Ok(())
}

/// `qemu-img convert` raw → qcow2; `compress` uses zstd clusters (about a third of the size,
/// tens of seconds more).
pub fn write_qcow2(raw: &Path, qcow2: &Path, compress: bool) -> Result<(), DiskError> {
    let mut cmd = Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]);
    if compress {
        cmd = cmd.args(["-c", "-o", "compression_type=zstd"]);
    }
    cmd.arg(raw).arg(qcow2).run()?;
    Ok(())
}

/// The PXE set in `dir`: vmlinuz, initrd.img, root.squashfs and boot.ipxe.
pub fn write_pxe(
    rootfs: &Path,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    boot_args: &str,
    epoch: u64,
    install: Option<&PxeInstall<'_>>,
) -> Result<(), DiskError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (from, name) in [(kernel, "vmlinuz"), (initrd, "initrd.img")] {
        let to = dir.join(name);
        std::fs::copy(from, &to).map_err(io(&to))?;
    }
    let sq = dir.join("root.squashfs");
    Cmd::new("mksquashfs")
        .arg(rootfs)
        .arg(&sq)
        .args(["-noappend", "-no-progress", "-quiet", "-comp", "zstd"])
        .args(["-Xcompression-level", "6"])
        // mksquashfs takes SOURCE_DATE_EPOCH as both filesystem and file times (and refuses
        // -mkfs-time/-all-time when it is set, as it is in CI).
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run()?;
    // The pins the installer (layer/usr/lib/kubedna/kubedna-install) checks before it touches a
    // disk: the root it booted and the ESP it fetches, with the root PARTUUID the ESP's loader
    // entry boots.
    let mut args = format!("{boot_args} kubedna.sha256.root={}", sha256_file(&sq)?);
    if let Some(i) = install {
        let esp = dir.join("esp.img");
        std::fs::copy(i.esp, &esp).map_err(io(&esp))?;
        args.push_str(&format!(
            " kubedna.sha256.esp={} kubedna.root-partuuid={}",
            sha256_file(&esp)?,
            i.root_partuuid
        ));
    }
    let script = ipxe_script(&args);
    let p = dir.join("boot.ipxe");
    std::fs::write(&p, script).map_err(io(&p))?;
    Ok(())
}

/// What lets a PXE-booted machine install itself to disk: the disk output's ESP image and the
/// root PARTUUID its loader entry boots.
#[derive(Debug)]
pub struct PxeInstall<'a> {
    pub esp: &'a Path,
    pub root_partuuid: &'a str,
}

fn sha256_file(path: &Path) -> Result<String, DiskError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(hex::encode(h.finalize()))
}

/// The iPXE script. `base-url` (where this directory is served) and `seed-url` (a NoCloud seed
/// directory served over HTTP, with trailing slash) are iPXE settings, so one script serves
/// every node: set them in the DHCP options or the chainloading script. The seed is fetched
/// once before the kernel: a machine whose MAC has no seed (the server refuses it) stops here
/// with a message on its console, instead of booting a node that can never join.
pub fn ipxe_script(boot_args: &str) -> String {
    format!(
        "#!ipxe\n\
         # KubeDNA node, PXE boot. Set base-url (this directory, served over HTTP) and\n\
         # seed-url (this node's NoCloud seed directory, trailing slash) before chaining here.\n\
         isset ${{base-url}} || set base-url http://${{next-server}}/kubedna\n\
         isset ${{seed-url}} || set seed-url ${{base-url}}/seed/${{mac:hexhyp}}/\n\
         imgfetch --name kubedna-seed-check ${{seed-url}}meta-data || goto no_seed\n\
         imgfree kubedna-seed-check\n\
         # install-disk (e.g. /dev/vda) makes the machine install itself to that disk.\n\
         set install-arg\n\
         isset ${{install-disk}} || goto boot_kernel\n\
         set install-arg kubedna.install=${{install-disk}}\n\
         :boot_kernel\n\
         kernel ${{base-url}}/vmlinuz initrd=initrd.img {boot_args} ${{install-arg}} ip=dhcp ds=nocloud-net;s=${{seed-url}} console=tty0 console=ttyS0,115200n8\n\
         initrd ${{base-url}}/initrd.img\n\
         boot\n\
         :no_seed\n\
         echo KubeDNA: no seed for MAC ${{mac:hexhyp}} at ${{seed-url}}: not booting.\n\
         echo Add this machine to the cluster description (nodes[].mac) and rerun kubedna-image seed --pxe-dir.\n\
         exit 1\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid_from("x");
        assert_eq!(a, uuid_from("x"));
        assert_ne!(a, uuid_from("y"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn ipxe_script_has_kernel_initrd_and_seed() {
        let s = ipxe_script("boot=live fetch=${base-url}/root.squashfs");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("fetch=${base-url}/root.squashfs"));
        assert!(s.contains("ds=nocloud-net;s=${seed-url}"));
        assert!(s.contains("initrd ${base-url}/initrd.img"));
        // The seed is checked before the kernel is fetched; no seed, no boot.
        let check = s.find("imgfetch").expect("seed check");
        assert!(check < s.find("kernel ").expect("kernel"));
        assert!(s.contains("|| goto no_seed\n"));
        assert!(s.contains("\n:no_seed\n"));
    }
}
