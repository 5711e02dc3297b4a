//! One shutdown tree per process: a cancellation token that the one signal handler
//! cancels, a task tracker holding every background task, and a supervisor that restarts
//! a task that ends or panics (with backoff) or, for a task the service cannot live
//! without, stops the service. Readiness reports every task.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// What to do when a supervised task ends before shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Start it again after a backoff (1 s, doubling, at most `MAX_RESTART_DELAY`).
    /// Readiness lists it as restarting meanwhile but stays ready: a loop beside the
    /// service (retries, catch-up, rollups) must not take the service out of rotation.
    Restart,
    /// The service cannot work without it: shut the whole process down, with an error.
    Fatal,
}

const RESTARTS: (&str, &str) = (
    "background_task_restarts_total",
    "background tasks restarted after they ended or panicked",
);

const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// A task's state as readiness reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Running,
    /// Ended or panicked; starts again after a delay.
    Restarting {
        restarts: u32,
        last_error: String,
    },
    /// Ended and brought the service down.
    Failed {
        error: String,
    },
}

#[derive(Clone)]
pub struct Runtime {
    token: CancellationToken,
    tracker: TaskTracker,
    tasks: Arc<Mutex<BTreeMap<&'static str, TaskState>>>,
    fatal: Arc<Mutex<Option<String>>>,
    metrics: Arc<Metrics>,
}

impl Runtime {
    /// The process's runtime, with its one signal handler: SIGTERM or Ctrl-C cancels the
    /// token, and everything that holds it winds down.
    pub fn new(metrics: Arc<Metrics>) -> Runtime {
        let rt = Runtime::without_signals(metrics);
        let token = rt.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = crate::http::shutdown_signal() => token.cancel(),
                () = token.cancelled() => {}
            }
        });
        rt
    }

    /// A runtime that only stops when told to (tests, several services in one process).
    pub fn without_signals(metrics: Arc<Metrics>) -> Runtime {
        Runtime {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            tasks: Arc::default(),
            fatal: Arc::default(),
            metrics,
        }
    }

    /// Cancelled at shutdown.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Runs `make()`'s future as the background task `name`, under supervision. The task
    /// gets a child of the shutdown token and should return once it is cancelled.
    pub fn supervise<F, Fut>(&self, name: &'static str, on_exit: OnExit, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.set(name, TaskState::Running);
        // Zero from the start: "no restarts" reads 0, not no data.
        self.metrics
            .add(RESTARTS.0, RESTARTS.1, &[("task", name)], 0);
        let rt = self.clone();
        self.tracker.spawn(async move {
            let mut delay = FIRST_RESTART_DELAY;
            let mut restarts = 0u32;
            loop {
                let child = rt.token.child_token();
                let ended = tokio::spawn(make(child)).await;
                let cancelled = rt.token.is_cancelled();
                let Some(error) = failure(ended, cancelled, "returned") else {
                    return;
                };
                if on_exit == OnExit::Fatal {
                    rt.fail(name, error);
                    return;
                }
                if cancelled {
                    // Shutting down: nothing is restarted, but a task that failed while
                    // winding down is still said.
                    tracing::warn!(task = name, error = %error, "background task failed while shutting down");
                    return;
                }
                restarts += 1;
                tracing::error!(task = name, error = %error, restarts, retry_in_ms = delay.as_millis() as u64, "background task ended: restarting");
                rt.metrics.inc(RESTARTS.0, RESTARTS.1, &[("task", name)]);
                rt.set(
                    name,
                    TaskState::Restarting {
                        restarts,
                        last_error: error,
                    },
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = rt.token.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
                rt.set(name, TaskState::Running);
            }
        });
    }

    /// Runs `work` as the task `name`, once: the service cannot run without it, so its end
    /// before shutdown (an error, a panic, or a return) shuts the service down.
    pub fn spawn_critical<Fut>(&self, name: &'static str, work: Fut)
    where
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.set(name, TaskState::Running);
        // Zero from the start: "no restarts" reads 0, not no data.
        self.metrics
            .add(RESTARTS.0, RESTARTS.1, &[("task", name)], 0);
        let rt = self.clone();
        self.tracker.spawn(async move {
            let ended = tokio::spawn(work).await;
            if let Some(error) = failure(ended, rt.token.is_cancelled(), "stopped on its own") {
                rt.fail(name, error);
            }
        });
    }

    /// Stops the service with an error: for a supervised task whose failure a restart
    /// cannot mend (a stream it can no longer read, say), which then returns `Ok`.
    pub fn fail(&self, name: &'static str, error: String) {
        tracing::error!(task = name, error = %error, "a task the service cannot run without ended: shutting down");
        self.set(
            name,
            TaskState::Failed {
                error: error.clone(),
            },
        );
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(format!("{name}: {error}"));
        }
        self.token.cancel();
    }

    fn set(&self, name: &'static str, state: TaskState) {
        if let Ok(mut t) = self.tasks.lock() {
            t.insert(name, state);
        }
    }

    /// Every supervised task and its state.
    pub fn tasks(&self) -> BTreeMap<&'static str, TaskState> {
        self.tasks.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Whether the service can take traffic: not shutting down, no task it needs failed.
    pub fn serving(&self) -> bool {
        !self.token.is_cancelled()
            && !self
                .tasks()
                .values()
                .any(|s| matches!(s, TaskState::Failed { .. }))
    }

    /// Waits (at most `grace`) for every task to finish after shutdown. Returns the error
    /// of a fatal task, if one brought the service down.
    pub async fn wait(&self, grace: Duration) -> Result<(), String> {
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        match self.fatal.lock().ok().and_then(|f| f.clone()) {
            Some(e) => Err(e),
            // Abandoned mid-drain (a worker's last commit, say): replay covers it, but the
            // exit status must not say all went well.
            None if !finished => Err(format!(
                "background tasks did not finish within {grace:?} of shutdown"
            )),
            None => Ok(()),
        }
    }
}

/// Why a task's run counts as a failure, if it does: an error, a panic, or a return
/// (`returned` says how) before shutdown began. A clean return during shutdown is none.
fn failure(
    ended: Result<Result<(), String>, tokio::task::JoinError>,
    cancelled: bool,
    returned: &str,
) -> Option<String> {
    match ended {
        Ok(Ok(())) if cancelled => None,
        Ok(Ok(())) => Some(returned.to_owned()),
        Ok(Err(e)) => Some(e),
        Err(join) if join.is_panic() => Some("panicked".to_owned()),
        Err(join) => Some(join.to_string()),
    }
}

/// Sleeps `every`, or returns false once `token` is cancelled: the pacing of a loop that
/// must stop at shutdown.
pub async fn tick(token: &CancellationToken, every: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(every) => true,
        () = token.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn all_running(rt: &Runtime) -> bool {
        rt.tasks().values().all(|s| *s == TaskState::Running)
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_dies_is_restarted_with_backoff_and_readiness_says_so() {
        let rt = Runtime::without_signals(Arc::default());
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        rt.supervise("flaky", OnExit::Restart, move |token| {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
                token.cancelled().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert!(!all_running(&rt), "{:?}", rt.tasks());
        assert!(matches!(
            rt.tasks()["flaky"],
            TaskState::Restarting { restarts: 1, .. }
        ));
        // 1 s, then 2 s of backoff.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(all_running(&rt), "{:?}", rt.tasks());
        rt.shutdown();
        assert_eq!(rt.wait(Duration::from_secs(5)).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_task_that_ends_brings_the_service_down_with_its_error() {
        let rt = Runtime::without_signals(Arc::default());
        rt.supervise("worker", OnExit::Fatal, |_| async {
            Err("lost the broker".to_owned())
        });
        rt.supervise("loop", OnExit::Restart, |token| async move {
            token.cancelled().await;
            Ok(())
        });
        tokio::time::timeout(Duration::from_secs(1), rt.token().cancelled())
            .await
            .expect("the fatal task cancels the token");
        assert_eq!(
            rt.wait(Duration::from_secs(5)).await,
            Err("worker: lost the broker".to_owned())
        );
        assert!(matches!(rt.tasks()["worker"], TaskState::Failed { .. }));
    }

    /// A restartable task restarts on what a restart mends, and stops the service on what
    /// it cannot.
    #[tokio::test(start_paused = true)]
    async fn a_restartable_task_can_still_stop_the_service_for_good() {
        let rt = Runtime::without_signals(Arc::default());
        let starts = Arc::new(AtomicU32::new(0));
        let (s, inner) = (starts.clone(), rt.clone());
        rt.supervise("worker", OnExit::Restart, move |_| {
            let (n, rt) = (s.fetch_add(1, Ordering::SeqCst), inner.clone());
            async move {
                if n == 0 {
                    return Err("the broker lost an update".to_owned());
                }
                rt.fail("worker", "undecodable records".to_owned());
                Ok(())
            }
        });
        tokio::time::timeout(Duration::from_secs(5), rt.token().cancelled())
            .await
            .expect("the second run stops the service");
        assert_eq!(starts.load(Ordering::SeqCst), 2, "restarted once");
        assert_eq!(
            rt.wait(Duration::from_secs(5)).await,
            Err("worker: undecodable records".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_may_end_at_shutdown_but_not_before() {
        let rt = Runtime::without_signals(Arc::default());
        let token = rt.token();
        rt.spawn_critical("drains", async move {
            token.cancelled().await;
            Ok(())
        });
        rt.shutdown();
        assert_eq!(rt.wait(Duration::from_secs(5)).await, Ok(()));

        let rt = Runtime::without_signals(Arc::default());
        rt.spawn_critical("quits", async { Ok(()) });
        tokio::time::timeout(Duration::from_secs(1), rt.token().cancelled())
            .await
            .expect("ending early cancels the service");
        assert_eq!(
            rt.wait(Duration::from_secs(5)).await,
            Err("quits: stopped on its own".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_tasks_without_restarting_them() {
        let rt = Runtime::without_signals(Arc::default());
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        rt.supervise("loop", OnExit::Restart, move |token| {
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                while tick(&token, Duration::from_secs(1)).await {}
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        rt.shutdown();
        assert_eq!(rt.wait(Duration::from_secs(5)).await, Ok(()));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }
}
