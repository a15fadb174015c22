//! The group's members: who they are, adding and removing them (through the leader), and
//! the role each plays.

use super::*;

/// Voters a group grows to; further members stay learners (raft's quorum gains nothing from
/// more, and every write waits for a majority of them).
pub(crate) const MAX_VOTERS: usize = 5;

/// One member of the group, as [`Store::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its raft id.
    pub id: NodeId,
    /// Its peer listener's address.
    pub addr: String,
    /// Its API server's URL (empty when it has none).
    pub api: String,
    /// What it is in the group.
    pub role: Role,
    /// The last log index it holds: this member's applied index for itself; for others, the
    /// index replicated to them (known on the leader only).
    pub matched: Option<u64>,
}

/// A member's part in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Leads: proposes every write.
    Leader,
    /// Votes and replicates.
    Follower,
    /// Replicates without a vote.
    Learner,
}

/// A refused membership change as a store error.
pub(crate) fn membership_refused(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Membership(e.to_string())
        }
        e => Error::Fatal(Box::new(e)),
    }
}

/// Runs a membership change, again while one made before is still committing (raft takes
/// one change at a time; an earlier leader's may still be in flight), for up to 30 seconds.
pub(crate) async fn one_change<T, F, Fut>(change: F) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, Node>>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match change().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(membership_refused(e)),
        }
    }
}

impl Store {
    /// Adds member `id` to the group: as a learner first, answered once it has caught up (the
    /// log, or a snapshot when the log behind it is purged), then as a voter while the group
    /// has fewer than five. A follower asks the leader to do it. Adding a member again with
    /// the same addresses succeeds and changes nothing.
    ///
    /// # Errors
    /// [`Error::Membership`] when the id is taken by another address; [`Error::NotLeader`]
    /// when no leader takes the change; [`Error::Fatal`] when it fails.
    pub async fn add_member(&self, id: NodeId, node: Node) -> Result<(), Error> {
        let node = &node;
        let add = self.with_leader(|leader| async move {
            if leader == self.id {
                self.add_member_here(id, node.clone()).await
            } else {
                let addr = self
                    .peer_addr(leader)
                    .ok_or(Error::NotLeader { leader: None })?;
                self.network.add_member(&addr, id, node).await
            }
        });
        tokio::time::timeout(network::CATCH_UP_TIMEOUT, add)
            .await
            .map_err(|_| Error::Timeout(network::CATCH_UP_TIMEOUT))?
    }

    /// [`Store::add_member`] on the leader.
    pub(crate) async fn add_member_here(&self, id: NodeId, node: Node) -> Result<(), Error> {
        let existing = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&id).cloned()
        };
        if let Some(existing) = existing
            && existing != node
        {
            return Err(Error::Membership(format!(
                "member {id} is already {existing}"
            )));
        }
        let _one_at_a_time = self.membership.lock().await;
        one_change(|| self.raft.add_learner(id, node.clone(), true)).await?;
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        tracing::debug!(id, voters, "learner caught up");
        if voters < MAX_VOTERS {
            one_change(|| {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Removes member `id` from the group (a voter stops voting and leaves with it); a
    /// follower asks the leader to do it. The last voter cannot be removed.
    ///
    /// # Errors
    /// [`Error::Membership`] when `id` is not a member or is the last voter;
    /// [`Error::NotLeader`] when no leader takes the change; [`Error::Fatal`] when it fails.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        let remove = self.with_leader(|leader| async move {
            if leader == self.id {
                self.remove_member_here(id).await
            } else {
                let addr = self
                    .peer_addr(leader)
                    .ok_or(Error::NotLeader { leader: None })?;
                self.network.remove_member(&addr, id).await
            }
        });
        tokio::time::timeout(self.write_timeout, remove)
            .await
            .map_err(|_| Error::Timeout(self.write_timeout))?
    }

    /// [`Store::remove_member`] on the leader.
    pub(crate) async fn remove_member_here(&self, id: NodeId) -> Result<(), Error> {
        let _one_at_a_time = self.membership.lock().await;
        let (known, voters) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&id).is_some(),
                membership
                    .voter_ids()
                    .collect::<std::collections::BTreeSet<_>>(),
            )
        };
        if !known {
            return Err(Error::Membership(format!("{id} is not a member")));
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Error::Membership(format!(
                    "{id} is the last voter; the group would have no quorum"
                )));
            }
            one_change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
            })
            .await?;
        } else {
            one_change(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Whether this member leads the group now.
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader, when it is another member.
    pub(crate) fn leader_elsewhere(&self) -> Option<NodeId> {
        // (The metrics guard must not live across an await: raft's core would block on it.)
        let current = self.raft.metrics().borrow().current_leader;
        current.filter(|l| *l != self.id)
    }

    /// The group's members, by id, as the leader knows them (it alone knows how far each has
    /// replicated); as this member knows them when the leader cannot be asked.
    pub async fn members(&self) -> Vec<Member> {
        if let Some(leader) = self.leader_elsewhere()
            && let Some(addr) = self.peer_addr(leader)
        {
            match self.network.members(&addr).await {
                Ok(members) => return members,
                Err(e) => tracing::debug!(error = %e, "the leader's view of the members"),
            }
        }
        self.members_here()
    }

    /// The group's members as this member knows them, by id.
    pub fn members_here(&self) -> Vec<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                api: node.api.clone(),
                role: if m.current_leader == Some(*id) {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                },
                matched: if *id == self.id {
                    m.last_applied.map(|l| l.index)
                } else {
                    matched.get(id).copied().flatten().map(|l| l.index)
                },
            })
            .collect()
    }

    /// The peer address of member `id`, from the current membership.
    pub(crate) fn peer_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }
}
