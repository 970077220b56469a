//! A node's fresh cloud-init for its replacement, rendered from the cluster's user-data template
//! for that role: `{{node_name}}` becomes the node's name, nothing else changes (the template
//! carries the cluster's settings, rendered once by `kubedna-image seed`). A control plane's
//! seed also carries both templates themselves ([`embed_files`]), as `kubedna-image seed` gives
//! them to the first control planes: a replacement control plane can lead, and then replace,
//! like any other. The template is read at each render, so a re-rendered template takes effect
//! without a restart. Refuses a name that is not a DNS label, a template without
//! `{{node_name}}`, and a result over the provider's 32 KiB. Never logs the template or the
//! result: both hold the cluster secret.

use std::path::PathBuf;

use crate::pass::Seeds;
use crate::provider::hetzner::USER_DATA_MAX;
use crate::NodeRole;

/// Where the control planes keep the templates (`user-data.<role>.tmpl`).
pub const TEMPLATE_DIR: &str = "/etc/kubedna/doctor";

#[derive(Debug, Clone)]
pub struct TemplateSeeds {
    pub dir: PathBuf,
}

impl Default for TemplateSeeds {
    fn default() -> Self {
        TemplateSeeds {
            dir: TEMPLATE_DIR.into(),
        }
    }
}

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The file name of a role's template in [`TEMPLATE_DIR`].
pub fn template_name(role: NodeRole) -> String {
    format!("user-data.{role}.tmpl")
}

/// Adds `files` (absolute path, content) to the `write_files:` list of `user_data`, each owned
/// by root, mode 0600, its content base64-encoded so that no byte of it can change the YAML
/// around it. The list must exist (both role templates have one).
pub fn embed_files(user_data: &str, files: &[(String, Vec<u8>)]) -> Result<String, String> {
    const LIST: &str = "\nwrite_files:\n";
    let Some(at) = user_data.find(LIST) else {
        return Err("the user-data has no top-level write_files: list to add files to".into());
    };
    let at = at + LIST.len();
    let mut entries = String::new();
    for (path, content) in files {
        if !path.starts_with('/') || path.contains(['"', '\\', '\n']) {
            return Err(format!("{path:?} is not a plain absolute path"));
        }
        entries.push_str(&format!(
            "  - path: {path}\n    owner: root:root\n    permissions: \"0600\"\n    encoding: b64\n    content: \"{}\"\n",
            base64(content)
        ));
    }
    Ok(format!("{}{entries}{}", &user_data[..at], &user_data[at..]))
}

/// RFC 4648 base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl TemplateSeeds {
    fn template(&self, role: NodeRole) -> Result<String, String> {
        let path = self.dir.join(template_name(role));
        let template = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}): write it from `kubedna-image seed` output on every control plane",
                path.display()
            )
        })?;
        if !template.starts_with("#cloud-config") || !template.contains("{{node_name}}") {
            return Err(format!(
                "{} is not a user-data template: it must start with #cloud-config and contain {{{{node_name}}}}",
                path.display()
            ));
        }
        Ok(template)
    }
}

impl Seeds for TemplateSeeds {
    fn render(&self, node: &str, role: NodeRole) -> Result<String, String> {
        if !dns_label(node) {
            return Err(format!(
                "{node:?} is not a DNS label; cannot name a VM after it"
            ));
        }
        let template = self.template(role)?;
        let mut out = template.replace("{{node_name}}", node);
        if role == NodeRole::ControlPlane {
            // The new control plane can lead: it gets the templates, placeholders intact.
            let mut files = Vec::new();
            for r in [NodeRole::ControlPlane, NodeRole::Worker] {
                let t = self.template(r)?;
                files.push((
                    format!("{TEMPLATE_DIR}/{}", template_name(r)),
                    t.into_bytes(),
                ));
            }
            out = embed_files(&out, &files).map_err(|e| {
                format!(
                    "{}: {e}",
                    self.dir
                        .join(template_name(NodeRole::ControlPlane))
                        .display()
                )
            })?;
        }
        if out.len() > USER_DATA_MAX {
            return Err(format!(
                "the rendered seed of {node} is {} bytes, above the provider's {USER_DATA_MAX}",
                out.len()
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_role_template_and_refuses_what_it_cannot_name() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("user-data.worker.tmpl"),
            "#cloud-config\nhostname: {{node_name}}\n# secret-bearing content\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("user-data.control-plane.tmpl"),
            "#cloud-config\nnope\n",
        )
        .expect("write");
        let s = TemplateSeeds {
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(
            s.render("w-7", NodeRole::Worker).expect("render"),
            "#cloud-config\nhostname: w-7\n# secret-bearing content\n"
        );
        let e = s
            .render("cp-2", NodeRole::ControlPlane)
            .expect_err("no placeholder");
        assert!(e.contains("{{node_name}}") && !e.contains("nope"), "{e}");
        assert!(s.render("W_1", NodeRole::Worker).is_err());
        std::fs::write(
            dir.path().join("user-data.worker.tmpl"),
            format!(
                "#cloud-config\n{{{{node_name}}}}\n{}",
                "x".repeat(USER_DATA_MAX)
            ),
        )
        .expect("write");
        assert!(s
            .render("w-7", NodeRole::Worker)
            .expect_err("too big")
            .contains("32768"));
        let missing = TemplateSeeds {
            dir: dir.path().join("none"),
        };
        assert!(missing
            .render("w-1", NodeRole::Worker)
            .expect_err("missing")
            .contains("kubedna-image seed"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn a_control_plane_seed_carries_both_templates_with_their_placeholders() {
        let dir = tempfile::tempdir().expect("tmp");
        let cp = "#cloud-config\nhostname: {{node_name}}\nwrite_files:\n  - path: /etc/a\n    content: a\nruncmd: []\n";
        let w = "#cloud-config\nhostname: {{node_name}}\nwrite_files: []\n";
        std::fs::write(dir.path().join("user-data.control-plane.tmpl"), cp).expect("write");
        std::fs::write(dir.path().join("user-data.worker.tmpl"), w).expect("write");
        let s = TemplateSeeds {
            dir: dir.path().to_path_buf(),
        };
        let out = s.render("cp-2", NodeRole::ControlPlane).expect("render");
        assert!(out.starts_with("#cloud-config\nhostname: cp-2\nwrite_files:\n  - path: /etc/kubedna/doctor/user-data.control-plane.tmpl\n"), "{out}");
        assert!(
            out.contains(&format!(
                "    encoding: b64\n    content: \"{}\"\n",
                base64(cp.as_bytes())
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("content: \"{}\"", base64(w.as_bytes()))),
            "{out}"
        );
        assert!(
            out.ends_with("  - path: /etc/a\n    content: a\nruncmd: []\n"),
            "{out}"
        );
        assert!(
            !out.contains("{{node_name}}"),
            "placeholders only inside the base64: {out}"
        );
        // A worker's seed carries no templates; a template without a write_files list cannot
        // carry them and is refused with its file named.
        assert!(!s
            .render("w-3", NodeRole::Worker)
            .expect("worker")
            .contains("b64"));
        std::fs::write(
            dir.path().join("user-data.control-plane.tmpl"),
            "#cloud-config\nhostname: {{node_name}}\n",
        )
        .expect("write");
        let e = s
            .render("cp-2", NodeRole::ControlPlane)
            .expect_err("no list");
        assert!(
            e.contains("user-data.control-plane.tmpl") && e.contains("write_files"),
            "{e}"
        );
        assert!(embed_files("#cloud-config\nwrite_files:\n", &[("etc/x".into(), vec![])]).is_err());
    }
}
