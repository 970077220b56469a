//! etcd membership changes, one at a time and never below quorum. A joining control plane holds
//! the cluster's join lock (a lease-bound key, like the leader key) while its member is added as
//! a learner, started, and promoted once in sync. A member is removed only if the voting members
//! left would still have a healthy majority.

use std::collections::BTreeSet;

use etcd_client::MemberAddOptions;

use crate::coord::{CoordError, Coordinator};

/// One etcd member as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

/// Why a removal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveRefused {
    #[error("member {0:x} is not in the cluster")]
    Unknown(u64),
    #[error("removing member {id:x} would leave {healthy_after} healthy of {voters_after} voting members, below the majority of {needed}; bring members back first")]
    WouldLoseQuorum {
        id: u64,
        voters_after: usize,
        healthy_after: usize,
        needed: usize,
    },
    /// etcd's own strict reconfiguration check refused: a voter joined or reconnected less than
    /// its health interval (5 s) ago, or it still sees the dead member as connected. Retry.
    #[error("etcd refused to remove member {id:x} for now ({reason}); it counts a voter as active only after 5 s connected, so retry shortly")]
    EtcdNotReady { id: u64, reason: String },
}

/// Pure check: may `remove` go, given which members are healthy?
pub fn removal_keeps_quorum(
    members: &[MemberInfo],
    remove: u64,
    healthy: &BTreeSet<u64>,
) -> Result<(), RemoveRefused> {
    let target = members
        .iter()
        .find(|m| m.id == remove)
        .ok_or(RemoveRefused::Unknown(remove))?;
    if target.learner {
        return Ok(()); // learners do not vote
    }
    let voters_after: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| !m.learner && m.id != remove)
        .collect();
    let healthy_after = voters_after
        .iter()
        .filter(|m| healthy.contains(&m.id))
        .count();
    let needed = voters_after.len() / 2 + 1;
    if voters_after.is_empty() || healthy_after < needed {
        return Err(RemoveRefused::WouldLoseQuorum {
            id: remove,
            voters_after: voters_after.len(),
            healthy_after,
            needed,
        });
    }
    Ok(())
}

impl Coordinator {
    pub async fn members(&self) -> Result<Vec<MemberInfo>, CoordError> {
        let resp = self
            .client()
            .cluster_client()
            .member_list()
            .await
            .map_err(self.etcd_err("cannot list members"))?;
        Ok(resp
            .members()
            .iter()
            .map(|m| MemberInfo {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                learner: m.is_learner(),
            })
            .collect())
    }

    /// Adds a learner with `peer_url`; returns its id and the member list to start it with.
    pub async fn add_learner(&self, peer_url: &str) -> Result<(u64, Vec<MemberInfo>), CoordError> {
        let resp = self
            .client()
            .cluster_client()
            .member_add(
                [peer_url.to_string()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .map_err(self.etcd_err("cannot add the learner"))?;
        let id = resp.member().map(|m| m.id()).unwrap_or_default();
        Ok((id, self.members().await?))
    }

    /// Promotes a learner; etcd refuses until the learner has caught up with the leader.
    pub async fn promote(&self, id: u64) -> Result<(), CoordError> {
        self.client()
            .cluster_client()
            .member_promote(id)
            .await
            .map_err(self.etcd_err("cannot promote the learner"))?;
        Ok(())
    }

    /// Removes a member if [`removal_keeps_quorum`] allows it.
    pub async fn remove_member(
        &self,
        id: u64,
        healthy: &BTreeSet<u64>,
    ) -> Result<Result<(), RemoveRefused>, CoordError> {
        let members = self.members().await?;
        if let Err(refused) = removal_keeps_quorum(&members, id, healthy) {
            return Ok(Err(refused));
        }
        match self.client().cluster_client().member_remove(id).await {
            Ok(_) => Ok(Ok(())),
            Err(etcd_client::Error::GRpcStatus(status)) if etcd_not_ready(status.message()) => {
                Ok(Err(RemoveRefused::EtcdNotReady {
                    id,
                    reason: status.message().to_string(),
                }))
            }
            Err(e) => Err(self.etcd_err("cannot remove the member")(e)),
        }
    }

    /// [`Coordinator::remove_member`], retried while etcd answers [`RemoveRefused::EtcdNotReady`],
    /// until `within` has passed. Our own quorum refusal is final and returned at once.
    pub async fn remove_member_within(
        &self,
        id: u64,
        healthy: &BTreeSet<u64>,
        within: std::time::Duration,
    ) -> Result<Result<(), RemoveRefused>, CoordError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match self.remove_member(id, healthy).await? {
                Err(RemoveRefused::EtcdNotReady { .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                other => return Ok(other),
            }
        }
    }
}

/// etcd's refusals that clear on their own: `ErrUnhealthy` and `ErrNotEnoughStartedMembers`.
fn etcd_not_ready(message: &str) -> bool {
    message.contains("unhealthy cluster") || message.contains("not enough started members")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("m{id}"),
            peer_urls: vec![],
            client_urls: vec![],
            learner,
        }
    }

    #[test]
    fn removal_is_refused_when_it_would_drop_quorum() {
        let three = [m(1, false), m(2, false), m(3, false)];
        let all: BTreeSet<u64> = [1, 2, 3].into();
        let one_dead: BTreeSet<u64> = [1, 2].into();
        assert_eq!(removal_keeps_quorum(&three, 3, &all), Ok(()));
        assert_eq!(
            removal_keeps_quorum(&three, 3, &one_dead),
            Ok(()),
            "removing the dead one is fine"
        );
        assert!(matches!(
            removal_keeps_quorum(&three, 2, &one_dead),
            Err(RemoveRefused::WouldLoseQuorum {
                healthy_after: 1,
                needed: 2,
                ..
            })
        ));
        assert_eq!(
            removal_keeps_quorum(&[m(1, false), m(2, true)], 2, &[1].into()),
            Ok(()),
            "learners never count"
        );
        assert!(matches!(
            removal_keeps_quorum(&[m(1, false)], 1, &[1].into()),
            Err(RemoveRefused::WouldLoseQuorum { .. })
        ));
        assert_eq!(
            removal_keeps_quorum(&three, 9, &all),
            Err(RemoveRefused::Unknown(9))
        );
    }
}
