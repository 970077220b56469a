//! The lab's PXE HTTP server: boot artifacts (`kubedna-image build --outputs pxe`: boot.ipxe,
//! vmlinuz, initrd.img, root.squashfs) and each machine's own NoCloud seed by MAC, as laid out
//! by `kubedna-image seed --pxe-dir` (`seed/<mac:hexhyp>/user-data`, ...). It answers ONE
//! request on stdin/stdout, so qemu's user network runs it per guest connection
//! (`guestfwd=tcp:ADDR:80-cmd:kubedna-lab pxe-http --root DIR`): it never listens on a host
//! socket, and with `restrict=on` nothing the guest sends leaves qemu.
//!
//! Which request gets what is decided by [`route`], a pure function: a MAC with no seed
//! directory is refused with 403 and a message naming it; there is no default seed, ever (a
//! default would hand the cluster secret to any machine booting on the wire). Logs name the
//! path and status only, never a seed's contents.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Files cloud-init's NoCloud source may ask for in a seed directory.
const SEED_FILES: &[&str] = &["meta-data", "user-data", "network-config", "vendor-data"];

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the file under the root (relative path, already checked).
    File(PathBuf),
    /// An error status with a plain-text body saying why and what to do.
    Refuse { status: u16, body: String },
}

fn refuse(status: u16, body: String) -> Answer {
    Answer::Refuse { status, body }
}

/// Whether `s` is a MAC as iPXE's `${mac:hexhyp}` spells it (`52-54-00-12-34-56`).
fn is_hexhyp(s: &str) -> bool {
    s.len() == 17
        && s.split('-').count() == 6
        && s.split('-').all(|o| {
            o.len() == 2
                && o.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Decides the answer to `method target` (the request line's first two words). Served tree:
/// `/kubedna/<file>` (the PXE artifacts, any plain file name) and
/// `/kubedna/seed/<mac>/<seed file>`, the latter only for a MAC in `known_macs` (the seed
/// directories present). Everything else is refused.
pub fn route(method: &str, target: &str, known_macs: &BTreeSet<String>) -> Answer {
    if method != "GET" && method != "HEAD" {
        return refuse(
            405,
            format!("{method} not allowed: this server only serves GET\n"),
        );
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let plain =
        |p: &str| !p.is_empty() && !p.starts_with('.') && !p.contains('\\') && !p.contains('%');
    match parts.as_slice() {
        ["kubedna", "seed", mac, file] => {
            if !is_hexhyp(mac) {
                return refuse(
                    404,
                    format!("{mac:?} is not a MAC as iPXE's ${{mac:hexhyp}} writes it\n"),
                );
            }
            if !known_macs.contains(*mac) {
                return refuse(
                    403,
                    format!(
                        "no seed for MAC {mac}: this machine is not in the cluster description. \
                         Add it (nodes[].mac) and rerun `kubedna-image seed --pxe-dir`; no \
                         default seed is served\n"
                    ),
                );
            }
            if !SEED_FILES.contains(file) {
                return refuse(404, format!("a seed has no {file:?}\n"));
            }
            Answer::File(PathBuf::from(format!("kubedna/seed/{mac}/{file}")))
        }
        ["kubedna", file] if plain(file) && *file != "seed" => {
            Answer::File(PathBuf::from(format!("kubedna/{file}")))
        }
        _ => refuse(404, format!("nothing at {path:?}\n")),
    }
}

/// The seed directories present under `root/kubedna/seed/`.
pub fn known_macs(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("kubedna/seed"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_hexhyp(n))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads one request from `input`, answers it on `output` from `root`, and returns the log line
/// (method, path, status, bytes).
pub fn serve_one(
    root: &Path,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> std::io::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if input.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut answer = route(method, target, &known_macs(root));
    if let Answer::File(rel) = &answer {
        if !root.join(rel).is_file() {
            answer = refuse(404, format!("no {} here\n", rel.display()));
        }
    }
    let status_line = |s: u16| match s {
        200 => "200 OK",
        403 => "403 Forbidden",
        405 => "405 Method Not Allowed",
        _ => "404 Not Found",
    };
    let (status, len) = match &answer {
        Answer::File(rel) => {
            let mut f = std::fs::File::open(root.join(rel))?;
            let len = f.metadata()?.len();
            write!(
                output,
                "HTTP/1.0 {}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                status_line(200)
            )?;
            if method != "HEAD" {
                std::io::copy(&mut f, output)?;
            }
            (200, len)
        }
        Answer::Refuse { status, body } => {
            write!(
                output,
                "HTTP/1.0 {}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                status_line(*status),
                body.len()
            )?;
            (*status, body.len() as u64)
        }
    };
    output.flush()?;
    Ok(format!(
        "pxe-http: {method} {target} -> {status} ({len} bytes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_table() {
        let known: BTreeSet<String> = ["52-54-00-12-34-56".to_string()].into();
        let file = |p: &str| Answer::File(PathBuf::from(p));
        let table: &[(&str, &str, Result<Answer, u16>)] = &[
            ("GET", "/kubedna/boot.ipxe", Ok(file("kubedna/boot.ipxe"))),
            ("GET", "/kubedna/vmlinuz", Ok(file("kubedna/vmlinuz"))),
            (
                "HEAD",
                "/kubedna/root.squashfs",
                Ok(file("kubedna/root.squashfs")),
            ),
            (
                "GET",
                "/kubedna/initrd.img?x=1",
                Ok(file("kubedna/initrd.img")),
            ),
            (
                "GET",
                "/kubedna/seed/52-54-00-12-34-56/user-data",
                Ok(file("kubedna/seed/52-54-00-12-34-56/user-data")),
            ),
            (
                "GET",
                "/kubedna/seed/52-54-00-12-34-56/meta-data",
                Ok(file("kubedna/seed/52-54-00-12-34-56/meta-data")),
            ),
            // An unknown machine: refused, never a default seed.
            ("GET", "/kubedna/seed/52-54-00-00-00-99/user-data", Err(403)),
            ("GET", "/kubedna/seed/52-54-00-00-00-99/meta-data", Err(403)),
            // iPXE writes lower case; anything else is not a MAC directory.
            ("GET", "/kubedna/seed/52-54-00-12-34-5G/user-data", Err(404)),
            ("GET", "/kubedna/seed/52:54:00:12:34:56/user-data", Err(404)),
            ("GET", "/kubedna/seed/52-54-00-12-34-56/../../x", Err(404)),
            ("GET", "/kubedna/seed/52-54-00-12-34-56/secret", Err(404)),
            ("GET", "/kubedna/seed/", Err(404)),
            ("GET", "/kubedna/seed", Err(404)),
            ("GET", "/kubedna/../etc/passwd", Err(404)),
            ("GET", "/kubedna/.hidden", Err(404)),
            ("GET", "/kubedna/a%2f..", Err(404)),
            ("GET", "/etc/passwd", Err(404)),
            ("GET", "/", Err(404)),
            ("POST", "/kubedna/boot.ipxe", Err(405)),
        ];
        for (m, t, want) in table {
            let got = route(m, t, &known);
            match (&got, want) {
                (a, Ok(w)) => assert_eq!(a, w, "{m} {t}"),
                (Answer::Refuse { status, .. }, Err(s)) => assert_eq!(status, s, "{m} {t}"),
                (a, Err(s)) => panic!("{m} {t}: got {a:?}, want {s}"),
            }
        }
    }

    #[test]
    fn a_refusal_names_the_mac_and_what_to_do() {
        let Answer::Refuse { status, body } = route(
            "GET",
            "/kubedna/seed/52-54-00-00-00-99/user-data",
            &BTreeSet::new(),
        ) else {
            panic!("served an unknown MAC");
        };
        assert_eq!(status, 403);
        assert!(body.contains("52-54-00-00-00-99"), "{body}");
        assert!(body.contains("nodes[].mac"), "{body}");
    }

    #[test]
    fn serves_one_request_from_a_tree() {
        let dir = tempfile::tempdir().expect("tmp");
        let seed = dir.path().join("kubedna/seed/52-54-00-12-34-56");
        std::fs::create_dir_all(&seed).expect("mkdir");
        std::fs::write(seed.join("meta-data"), "instance-id: x\n").expect("write");
        std::fs::create_dir_all(dir.path().join("kubedna/seed/not-a-mac")).expect("mkdir");
        assert_eq!(
            known_macs(dir.path()),
            ["52-54-00-12-34-56".to_string()].into()
        );
        let ask = |req: &str| {
            let mut out = Vec::new();
            let log = serve_one(dir.path(), &mut req.as_bytes(), &mut out).expect("serve");
            (String::from_utf8(out).expect("utf8"), log)
        };
        let (out, log) =
            ask("GET /kubedna/seed/52-54-00-12-34-56/meta-data HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\ninstance-id: x\n"), "{out}");
        assert!(log.ends_with("-> 200 (15 bytes)"), "{log}");
        let (out, _) = ask("GET /kubedna/seed/52-54-00-12-34-56/user-data HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.0 404"), "{out}");
        let (out, log) = ask("GET /kubedna/seed/52-54-00-00-00-99/user-data HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.0 403 Forbidden\r\n"), "{out}");
        assert!(log.contains("-> 403"), "{log}");
    }
}
