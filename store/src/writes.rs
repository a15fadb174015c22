//! The write path: group commit at the proposer, writes and linearizable reads through
//! the leader (forwarded from any member), and what a failed group tells its callers.

use super::*;

/// A command waiting to be proposed, and where its outcome goes.
pub(crate) type Pending = (Command, oneshot::Sender<Result<Outcome, Error>>);

/// [`Config::write_timeout`] unless set.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a member waits to apply a write it forwarded to the leader.
pub(crate) const FORWARD_APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most commands in one raft entry.
pub(crate) const MAX_BATCH: usize = 512;

/// Proposals in flight at once in a group of several members. One at a time is the purest
/// group commit, and what a member alone does (the `bench` program: 16 clients write 40% less
/// with four in flight, from more and smaller fsyncs); but a group then waits a whole
/// replication round trip (leader fsync, follower fsync) per batch, and with a few in flight
/// raft pipelines them (64 clients: 4,940 to 8,103 writes/s on three members).
pub(crate) const IN_FLIGHT: usize = 4;

/// Group commit at the proposer: every command that arrives while [`IN_FLIGHT`] proposals are
/// in flight goes into the next raft entry together, so concurrent writers share one log
/// append, one fsync and one apply transaction.
pub(crate) async fn propose(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let alone = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .nth(1)
            .is_none();
        // Alone, a proposal takes every slot: one at a time.
        let need = if alone { IN_FLIGHT } else { 1 };
        let Ok(slot) = Arc::clone(&slots)
            .acquire_many_owned(u32::try_from(need).unwrap_or(1))
            .await
        else {
            return;
        };
        let mut waiters = Vec::with_capacity(16);
        let mut commands = Vec::with_capacity(16);
        commands.push(first.0);
        waiters.push(first.1);
        while commands.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((c, w)) => {
                    commands.push(c);
                    waiters.push(w);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let batch = commands.len();
            let started = std::time::Instant::now();
            let result = raft.client_write(Proposal { commands }).await;
            drop(slot);
            tracing::debug!(target: "podtrace", batch, micros = started.elapsed().as_micros(), stage = "store committed");
            match result {
                Ok(resp) => {
                    for (w, outcome) in waiters.into_iter().zip(resp.data) {
                        let _ = w.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let leader = match &e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            Some(f.leader_id)
                        }
                        _ => None,
                    };
                    for w in waiters {
                        let _ = w.send(Err(match leader {
                            Some(leader) => Error::NotLeader { leader },
                            None => Error::Fatal(e.to_string().into()),
                        }));
                    }
                }
            }
        });
    }
}

impl Store {
    /// Proposes a command through the leader and waits until it is durable and applied there:
    /// a follower forwards it to the leader over the raft transport (and again to a new
    /// leader, a few times, when leadership moves meanwhile).
    ///
    /// # Errors
    /// [`Error::NotLeader`] when no leader takes it; [`Error::Timeout`] when it is not
    /// committed within [`Config::write_timeout`] (a leader cut off from its majority: the
    /// write may still be applied if it reached one); [`Error::Fatal`] when raft stopped.
    pub async fn write(&self, command: Command) -> Result<Outcome, Error> {
        self.unless_stopped()?;
        let key = command.key().map(str::to_owned);
        let operation = match &command {
            Command::Put {
                precondition: Precondition::Absent,
                ..
            } => "create",
            Command::Put { .. } => "update",
            Command::Delete { .. } => "delete",
            Command::Compact { .. } => "compact",
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.write_timeout, self.write_through_leader(command))
            .await
            .map_err(|_| Error::Timeout(self.write_timeout));
        metrics::observe(
            operation,
            key.as_deref().unwrap_or_default(),
            started.elapsed(),
        );
        let result = result?;
        match self.why_failed(result)? {
            Outcome::Written { revision, value } => Ok(Outcome::Written {
                revision,
                value: self
                    .transform
                    .open(key.as_deref().unwrap_or_default(), value)?,
            }),
            other => Ok(other),
        }
    }

    /// Why raft stopped on its own (a storage failure, such as a full disk), if it did;
    /// `None` while it runs and after a clean shutdown.
    pub fn failure(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Waits until raft stops on a failure of its own ([`Store::failure`]); why. Never
    /// returns for a store that runs until it is shut down.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(why) = self.failure() {
                return why;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    pub(crate) fn unless_stopped(&self) -> Result<(), Error> {
        self.failure()
            .map_or(Ok(()), |why| Err(Error::Stopped(why)))
    }

    /// A fatal error says why, when raft stopped on a failure of its own.
    pub(crate) fn why_failed<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match (result, self.failure()) {
            (Err(Error::Fatal(_)), Some(why)) => Err(Error::Stopped(why)),
            (result, _) => result,
        }
    }

    pub(crate) async fn write_through_leader(&self, command: Command) -> Result<Outcome, Error> {
        if self.alone() {
            return self.write_here(command).await;
        }
        let command = &command;
        self.with_leader(|leader| async move {
            if leader == self.id {
                self.write_here(command.clone()).await
            } else {
                self.forward(leader, command).await
            }
        })
        .await
    }

    /// Runs `attempt` against whoever leads (this member or another), waiting out an election
    /// and following "not the leader" answers, until one answers otherwise. Only refusals are
    /// retried (a member that does not lead, a leader that cannot be reached), never a request
    /// whose answer was lost, so nothing is proposed twice. The caller bounds it in time.
    pub(crate) async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut hint: Option<NodeId> = None;
        loop {
            // (The metrics guard must not live across an await: raft's core would block on it.)
            let current = self.raft.metrics().borrow().current_leader;
            let Some(leader) = hint.take().or(current) else {
                let _ = self
                    .raft
                    .wait(Some(Duration::from_millis(500)))
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
                continue;
            };
            match attempt(leader).await {
                Err(Error::NotLeader { leader: next }) => {
                    hint = next.filter(|n| *n != leader);
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// Sends `command` to member `leader` to be written there.
    pub(crate) async fn forward(
        &self,
        leader: NodeId,
        command: &Command,
    ) -> Result<Outcome, Error> {
        let Some(addr) = self.peer_addr(leader) else {
            return Err(Error::NotLeader { leader: None });
        };
        let outcome = self.network.forward(&addr, command).await?;
        // Read-your-writes on this member too: answer once it has applied the write.
        if let Outcome::Written { revision, .. } | Outcome::Compacted { revision } = &outcome
            && !self
                .wait_for_revision(*revision, FORWARD_APPLY_TIMEOUT)
                .await
        {
            return Err(Error::Fatal(
                format!("revision {revision} was written but not applied here in time").into(),
            ));
        }
        Ok(outcome)
    }

    /// Waits until this member has applied every write acknowledged anywhere before the call,
    /// so a read that follows is linearizable (raft's read index: the leader confirms with a
    /// quorum that it still leads; a follower asks the leader over the raft transport).
    ///
    /// # Errors
    /// [`Error::NotLeader`] when no leader can confirm; [`Error::Fatal`] when raft stopped.
    pub async fn linearize(&self) -> Result<(), Error> {
        self.unless_stopped()?;
        let result = tokio::time::timeout(self.write_timeout, self.linearize_through_leader())
            .await
            .map_err(|_| Error::Timeout(self.write_timeout))?;
        self.why_failed(result)
    }

    pub(crate) async fn linearize_through_leader(&self) -> Result<(), Error> {
        let index = self
            .with_leader(|leader| async move {
                if leader == self.id {
                    self.read_index_here().await
                } else {
                    let addr = self
                        .peer_addr(leader)
                        .ok_or(Error::NotLeader { leader: None })?;
                    self.network.read_index(&addr).await
                }
            })
            .await?;
        if let Some(index) = index {
            self.raft
                .wait(Some(FORWARD_APPLY_TIMEOUT))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| Error::Fatal(Box::new(e)))?;
        }
        Ok(())
    }

    /// The read index, when this member leads.
    pub(crate) async fn read_index_here(&self) -> Result<Option<u64>, Error> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_id,
                })
            }
            // Leading, but no majority answers: as good as no leader (a partition).
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(Error::NotLeader { leader: None })
            }
            Err(e) => Err(Error::Fatal(Box::new(e))),
        }
    }

    /// Proposes a command on this member, which must lead.
    ///
    /// # Errors
    /// [`Error::NotLeader`] when another member leads; [`Error::Fatal`] when raft stopped.
    pub(crate) async fn write_here(&self, command: Command) -> Result<Outcome, Error> {
        let (tx, rx) = oneshot::channel();
        self.proposer
            .send((command, tx))
            .await
            .map_err(|_| Error::Fatal("the store is shut down".into()))?;
        rx.await
            .map_err(|_| Error::Fatal("the store is shut down".into()))?
    }
}
