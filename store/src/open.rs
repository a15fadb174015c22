//! Opening a member: its store file and raft log, the checks after a crash, and joining or
//! starting its group.

use super::*;
use crate::writes::{MAX_BATCH, propose};

/// Builds a bare log store and state machine over a fresh database file, for openraft's
/// storage conformance suite (`openraft::testing::Suite`).
///
/// # Errors
/// [`Error::Db`] when the file cannot be created.
pub fn open_storage(path: &std::path::Path) -> Result<(LogStore, StateMachine), Error> {
    let db = Arc::new(Database::create(path)?);
    let feed = watch::Feed::new(16);
    let log = open_log_blocking(&path.with_extension("log"), &db)?;
    Ok((
        log,
        StateMachine::new(
            db,
            feed,
            Arc::new(notify::Sender::new(0)),
            Transform::default(),
        ),
    ))
}

/// Opens the raft log in `dir`; a log that cannot be read is [`Error::Damaged`].
pub(crate) fn open_log_blocking(dir: &std::path::Path, db: &Database) -> Result<LogStore, Error> {
    LogStore::open(dir, db).map_err(|e| Error::Damaged {
        path: dir.to_path_buf(),
        why: e.to_string(),
    })
}

/// Opens the raft log in `dir` (off the async threads: it replays its files).
pub(crate) async fn open_log(dir: PathBuf, db: Arc<Database>) -> Result<LogStore, Error> {
    tokio::task::spawn_blocking(move || open_log_blocking(&dir, &db))
        .await
        .expect("opening the raft log does not panic")
}

/// Refuses a state machine older than the start of the log: what lies between is in neither
/// (a store file restored from an old copy, or rolled back by redb past a damaged commit,
/// after the log was purged).
pub(crate) async fn check_log_covers(
    log: &LogStore,
    sm: &StateMachine,
    data_dir: &std::path::Path,
) -> Result<(), Error> {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    let (applied, _) = sm
        .clone()
        .applied_state()
        .await
        .map_err(|e| Error::Fatal(Box::new(e)))?;
    let purged = log
        .clone()
        .get_log_state()
        .await
        .map_err(|e| Error::Fatal(Box::new(e)))?
        .last_purged_log_id;
    match purged {
        Some(p) if applied.is_none_or(|a| a.index < p.index) => Err(Error::Damaged {
            path: data_dir.join("store.redb"),
            why: format!(
                "it holds the changes up to raft log index {}, but the raft log in {} starts after {}",
                applied.map_or(0, |a| a.index),
                data_dir.join("raft-log").display(),
                p.index
            ),
        }),
        _ => Ok(()),
    }
}

/// A file a clean shutdown leaves beside the store file; without it, the next open checks
/// the whole file.
pub(crate) const CLEAN_MARK: &str = "store.clean";

impl Store {
    /// Opens (or creates) the store in `config.data_dir`, starts its raft member, initializes a
    /// single-member group on first start, and waits until it leads.
    ///
    /// # Errors
    /// [`Error::Db`] when the file cannot be opened (for example, another process holds it).
    pub async fn open(config: Config) -> Result<Store, Error> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::Db(redb::Error::Io(e)))?;
        let path = config.data_dir.join("store.redb");
        let cache = config.cache_bytes;
        let shown = path.clone();
        let clean = config.data_dir.join(CLEAN_MARK);
        let db = tokio::task::spawn_blocking(move || {
            let existed = path.exists();
            let mut db = Database::builder().set_cache_size(cache).create(&path)?;
            // After a crash, every page is checked: the state machine commits without syncing,
            // so redb's own recovery may not read what the crash (or the disk) damaged.
            if existed && std::fs::remove_file(&clean).is_err() {
                db.check_integrity()?;
            }
            Ok::<_, redb::DatabaseError>(db)
        })
        .await
        .expect("open does not panic")
        .map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                Error::Damaged { path: shown, why }
            }
            e => Error::from(e),
        })?;
        let db = Arc::new(db);
        let feed = watch::Feed::new(config.feed_capacity);
        let guard = Arc::new(crate::stepout::SyncGuard::new(
            config.max_sync,
            config
                .failpoints
                .then(|| config.data_dir.join("failpoints").join("slow-sync")),
        ));
        let log = open_log(config.data_dir.join("raft-log"), db.clone())
            .await?
            .guarded(Arc::clone(&guard));
        let published = Arc::new(notify::Sender::new(0));
        let transform = Transform(config.transformer.clone());
        let sm = StateMachine::new(
            db.clone(),
            feed.clone(),
            published.clone(),
            transform.clone(),
        );
        let raft_config = openraft::Config {
            cluster_name: "wasmkube".into(),
            // Followers call an election after 0.15–0.3 s without a heartbeat (three to six
            // beats late); a vote is granted only once the voter's own leader has been silent
            // that long too (the `failover` benchmark measures kill to first write).
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            max_payload_entries: 1024,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Fatal(Box::new(e)))?;
        check_log_covers(&log, &sm, &config.data_dir).await?;
        let network = Network::new(config.peer_tls.clone());
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network.clone(),
            log,
            sm,
        )
        .await
        .map_err(|e| Error::Fatal(Box::new(e)))?;
        let single = config.initial_members.is_empty() && !config.join;
        let members: BTreeMap<NodeId, Node> = if single {
            BTreeMap::from([(config.node_id, config.advertise.clone())])
        } else {
            config.initial_members.clone()
        }
        .into_iter()
        .map(|(id, addr)| {
            let api = if id == config.node_id {
                config.api.clone()
            } else {
                String::new()
            };
            (id, Node { addr, api })
        })
        .collect();
        if !config.join {
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {} // restart
                Err(e) => return Err(Error::Fatal(Box::new(e))),
            }
        }
        tokio::spawn({
            let raft = raft.clone();
            async move { guard.watch(raft).await }
        });
        let (proposer, pending) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(propose(raft.clone(), pending));
        let store = Store {
            id: config.node_id,
            raft,
            network,
            db,
            feed,
            published,
            proposer,
            membership: Arc::default(),
            write_timeout: config.write_timeout,
            transform,
            data_dir: config.data_dir.clone(),
        };
        let current = store.revision().await?;
        store.published.send_modify(|p| *p = (*p).max(current));
        if store.alone() {
            store.ready(Duration::from_secs(60)).await?;
        }
        Ok(store)
    }
}
