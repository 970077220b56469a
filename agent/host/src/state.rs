//! The state directory (`/var/lib/kubedna`): created mode 0700, held by one agent at a time
//! through an exclusive lock on `agent.lock`, and holding `node.json`, the node's identity.
//! Every file in it is written with [`crate::atomic::write_atomic`].

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic, AtomicWriteError};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another kubedna-agent already holds {path}: stop it first (systemctl stop kubedna-agent)"
    )]
    Locked { path: PathBuf },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid node state: move it away to start afresh as a new node")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
}

/// The identity of this node's disk. A wiped disk loses it, and so becomes a new node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    pub node_id: String,
    pub created_at: DateTime<Utc>,
    /// How many times an agent has started on this state.
    pub starts: u64,
}

/// An open, locked state directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: Flock<File>,
    pub node: NodeState,
}

impl StateDir {
    /// Opens (creating if needed) and locks `path`, then loads or creates `node.json`.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| StateError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        let lock_path = path.join("agent.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                StateError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                StateError::Lock {
                    path: lock_path.clone(),
                    source: errno.into(),
                }
            }
        })?;

        let node_path = path.join("node.json");
        let mut node = match fs::read(&node_path) {
            Ok(bytes) => serde_json::from_slice::<NodeState>(&bytes).map_err(|source| {
                StateError::Corrupt {
                    path: node_path.clone(),
                    source,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeState {
                node_id: crate::random_hex(16),
                created_at: Utc::now(),
                starts: 0,
            },
            Err(source) => {
                return Err(StateError::Read {
                    path: node_path,
                    source,
                })
            }
        };
        node.starts += 1;
        let mut bytes = serde_json::to_vec_pretty(&node).expect("node state serializes");
        bytes.push(b'\n');
        write_atomic(&node_path, &bytes, 0o600)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: lock,
            node,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restarts_and_one_agent_holds_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state");
        let first = StateDir::open(&p).expect("open");
        let id = first.node.node_id.clone();
        let err = StateDir::open(&p).expect_err("must be refused");
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(first);
        let again = StateDir::open(&p).expect("reopen");
        assert_eq!(again.node.node_id, id);
        assert_eq!(again.node.starts, 2);
    }

    #[test]
    fn corrupt_state_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("node.json"), b"{torn").expect("write");
        let err = StateDir::open(dir.path()).expect_err("must be refused");
        assert!(err.to_string().contains("node.json"), "{err}");
        assert_eq!(
            fs::read(dir.path().join("node.json")).expect("read"),
            b"{torn"
        );
    }
}
