//! The agent's tasks, in one place. `app` makes one [`Tasks`] and every module of the daemon
//! spawns through it: its subsystems (admin server, metrics, mesh, engine) and their helpers
//! (event loggers, view keepers, per-request tasks). It is one `JoinSet`, so no task is detached
//! and forgotten: a task that panics is logged with its name when it is reaped, and at shutdown,
//! once the subsystems stopped in order, `app` gives the tasks still running a short grace
//! (`app::STRAGGLERS`), then aborts them and names them in the journal. Libraries (the mesh runtime) keep their own tasks behind their handles.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::{Id, JoinError, JoinSet};

/// The agent's task set; cheap to clone, every clone is the same set.
#[derive(Clone, Default)]
pub struct Tasks(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("running", &self.lock().names.len())
            .finish()
    }
}

/// Resolves to the task's output when it ends, or `None` when it panicked or was aborted.
#[derive(Debug)]
pub struct Done<T>(oneshot::Receiver<T>);

impl<T> Future for Done<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock is held cannot leave the set inconsistent (every step below
        // is a single JoinSet or map call), so a poisoned lock is still a good one.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `fut` as task `name` (a short fixed name, for the journal) on the current runtime.
    pub fn spawn<T, F>(&self, name: &'static str, fut: F) -> Done<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.reap();
        let abort = inner.set.spawn(async move {
            let _ = tx.send(fut.await);
        });
        inner.names.insert(abort.id(), name);
        Done(rx)
    }

    /// How many tasks have not been reaped yet (running, or ended since the last spawn).
    pub fn len(&self) -> usize {
        self.lock().names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for every task, including any spawned meanwhile, until `deadline`; then aborts the
    /// ones left and returns their names (sorted). Called once, at shutdown, after every
    /// subsystem was told to stop.
    pub async fn drain(&self, deadline: Duration) -> Vec<&'static str> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let mut set = std::mem::take(&mut self.lock().set);
            if set.is_empty() {
                return Vec::new();
            }
            loop {
                match tokio::time::timeout_at(until, set.join_next_with_id()).await {
                    Ok(Some(r)) => {
                        self.lock().ended(r);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Aborted tasks end with a cancelled JoinError: those are the ones left.
                        let mut late = std::mem::take(&mut self.lock().set);
                        let mut left = Vec::new();
                        for s in [&mut set, &mut late] {
                            s.abort_all();
                            while let Some(r) = s.join_next_with_id().await {
                                left.extend(self.lock().ended(r));
                            }
                        }
                        left.sort_unstable();
                        return left;
                    }
                }
            }
        }
    }
}

impl Inner {
    /// Collects the tasks that ended since the last call, logging any that panicked.
    fn reap(&mut self) {
        while let Some(r) = self.set.try_join_next_with_id() {
            let _ = self.ended(r);
        }
    }

    /// Forgets an ended task; returns its name when it was aborted (cancelled).
    fn ended(&mut self, r: Result<(Id, ()), JoinError>) -> Option<&'static str> {
        match r {
            Ok((id, ())) => {
                self.names.remove(&id);
                None
            }
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or("?");
                if e.is_panic() {
                    tracing::error!(task = name, "agent task panicked; see the message above");
                }
                e.is_cancelled().then_some(name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn done_carries_the_output_and_a_panic_is_none() {
        let tasks = Tasks::new();
        assert_eq!(tasks.spawn("answer", async { 42 }).await, Some(42));
        let panicked: Done<u8> = tasks.spawn("panics", async { panic!("boom") });
        assert_eq!(panicked.await, None);
        assert!(tasks.drain(Duration::from_secs(5)).await.is_empty());
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn drain_waits_for_tasks_then_aborts_and_names_the_ones_left() {
        let tasks = Tasks::new();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let t = tasks.clone();
        // A task that stops when told, and spawns a helper while stopping.
        let polite = tasks.spawn("polite", async move {
            let _ = stopped.wait_for(|s| *s).await;
            t.spawn("helper", async {});
        });
        let stuck = tasks.spawn("stuck", std::future::pending::<()>());
        let _ = stop.send(true);
        let left = tasks.drain(Duration::from_millis(200)).await;
        assert_eq!(left, vec!["stuck"]);
        assert_eq!(polite.await, Some(()));
        assert_eq!(stuck.await, None);
        assert!(tasks.is_empty(), "{tasks:?}");
    }
}
