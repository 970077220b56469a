//! A node's fresh cloud-init for its replacement, rendered from the cluster's user-data template
//! for that role: `{{node_name}}` becomes the node's name, nothing else changes (the template
//! carries the cluster's settings, rendered once by `kubedna-image seed`). The template is read
//! at each render, so a re-rendered template takes effect without a restart. Refuses a name that
//! is not a DNS label, a template without `{{node_name}}`, and a result over the provider's
//! 32 KiB. Never logs the template or the result: both hold the cluster secret.

use std::path::PathBuf;

use crate::pass::Seeds;
use crate::provider::hetzner::USER_DATA_MAX;
use crate::Role;

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

impl Seeds for TemplateSeeds {
    fn render(&self, node: &str, role: Role) -> Result<String, String> {
        if !dns_label(node) {
            return Err(format!(
                "{node:?} is not a DNS label; cannot name a VM after it"
            ));
        }
        let path = self.dir.join(format!("user-data.{role}.tmpl"));
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
        let out = template.replace("{{node_name}}", node);
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
            s.render("w-7", Role::Worker).expect("render"),
            "#cloud-config\nhostname: w-7\n# secret-bearing content\n"
        );
        let e = s
            .render("cp-2", Role::ControlPlane)
            .expect_err("no placeholder");
        assert!(e.contains("{{node_name}}") && !e.contains("nope"), "{e}");
        assert!(s.render("W_1", Role::Worker).is_err());
        std::fs::write(
            dir.path().join("user-data.worker.tmpl"),
            format!(
                "#cloud-config\n{{{{node_name}}}}\n{}",
                "x".repeat(USER_DATA_MAX)
            ),
        )
        .expect("write");
        assert!(s
            .render("w-7", Role::Worker)
            .expect_err("too big")
            .contains("32768"));
        let missing = TemplateSeeds {
            dir: dir.path().join("none"),
        };
        assert!(missing
            .render("w-1", Role::Worker)
            .expect_err("missing")
            .contains("kubedna-image seed"));
    }
}
