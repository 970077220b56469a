//! Who a member is on the wire.
//!
//! Owns [`NodeId`], the identity foca tracks: the node's mesh address plus a generation that grows
//! each time the node has to rejoin after being declared down. It must stay small (it is in every
//! packet header) and carry no metadata: that travels separately, see [`crate::meta`].

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A member identity: mesh address and rejoin generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// The address the node's mesh socket is reached at.
    pub addr: SocketAddr,
    /// Bumped when the node rejoins after being declared down (foca's auto-rejoin).
    pub generation: u16,
}

impl NodeId {
    /// Generation 0 of the node at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            generation: 0,
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.generation)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.generation)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            addr: self.addr,
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Serial-number arithmetic, so a wrapped generation still wins.
        let ahead = self.generation.wrapping_sub(adversary.generation);
        ahead != 0 && ahead < u16::MAX / 2
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    #[test]
    fn renewed_identity_wins_even_across_wrap() {
        let a = NodeId::new(SocketAddr::from(([198, 18, 0, 1], 7946)));
        let b = a.renew().expect("renews");
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        let top = NodeId {
            generation: u16::MAX,
            ..a
        };
        let wrapped = top.renew().expect("renews");
        assert_eq!(wrapped.generation, 0);
        assert!(wrapped.win_addr_conflict(&top));
    }
}
