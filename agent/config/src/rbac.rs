//! The mapping from Unix credentials to admin roles. Root (uid 0) is always admin; otherwise the
//! most powerful role whose uids or gids contain the caller wins, and a caller in none gets no
//! role and can do nothing.

use std::collections::BTreeSet;

use kubedna_proto::Role;

/// The uids and gids that hold one role, after user and group names were resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSubjects {
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbacMap {
    pub admin: RoleSubjects,
    pub operator: RoleSubjects,
    pub viewer: RoleSubjects,
}

impl RbacMap {
    /// The role of a caller with this uid and these gids (primary first).
    pub fn role_of(&self, uid: u32, gids: &[u32]) -> Option<Role> {
        if uid == 0 {
            return Some(Role::Admin);
        }
        let holds =
            |s: &RoleSubjects| s.uids.contains(&uid) || gids.iter().any(|g| s.gids.contains(g));
        if holds(&self.admin) {
            Some(Role::Admin)
        } else if holds(&self.operator) {
            Some(Role::Operator)
        } else if holds(&self.viewer) {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}
