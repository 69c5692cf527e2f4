//! Where a run's connections and request loops run: a latency-bound run (one
//! request loop) on a current-thread runtime on a thread of its own, any other
//! run on the caller's multi-thread runtime.
//!
//! On the multi-thread runtime one call hops between workers: the request
//! loop's task, tonic's buffer worker and hyper's connection task are each
//! woken on whichever worker is free, and waking a parked worker is a futex
//! and an interrupt to an idle CPU. A lone client paid that on every call,
//! which made ringkv-bench's lone put slower than an independent client's on
//! the same server. On one thread a call's wake-ups are queue pushes. Many
//! clients keep the multi-thread runtime: spread over one current-thread
//! runtime per CPU they lost throughput (no work stealing), see
//! docs/benchmarks.md.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::BenchError;

/// Where tasks go; dropping a `Placement` that owns a thread stops it and
/// drops every task still on it (the connections with them).
pub enum Placement {
    /// The runtime `Placement::spawn` is called on.
    Caller,
    /// A current-thread runtime on its own thread.
    OwnThread(OwnThread),
}

pub struct OwnThread {
    handle: Handle,
    /// Sent (or dropped) to end the thread's `block_on`.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Placement {
    /// For a run of `clients` request loops: one loop is latency-bound and
    /// gets a thread of its own; more share the caller's runtime.
    pub fn for_clients(clients: usize) -> Result<Placement, BenchError> {
        if latency_bound(clients) {
            let own = OwnThread::start()
                .map_err(|error| BenchError::Internal(format!("cannot start the request thread: {error}")))?;
            Ok(Placement::OwnThread(own))
        } else {
            Ok(Placement::Caller)
        }
    }

    /// Runs `future` here and waits for it: in the caller's own task, or on
    /// the thread. Connections opened in it keep their tasks where it ran.
    pub async fn run<F>(&self, future: F) -> Result<F::Output, BenchError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Placement::Caller => Ok(future.await),
            Placement::OwnThread(own) => own
                .handle
                .spawn(future)
                .await
                .map_err(|error| BenchError::Internal(format!("a task on the request thread failed: {error}"))),
        }
    }

    /// Spawns `future` here: a request loop spawned where its connection was
    /// opened sends on it without leaving the thread.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Placement::Caller => tokio::spawn(future),
            Placement::OwnThread(own) => own.handle.spawn(future),
        }
    }
}

impl OwnThread {
    fn start() -> std::io::Result<OwnThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ringkv-bench-client".into())
            .spawn(move || {
                // Either a stop or the sender's drop ends it.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(OwnThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread only waits for the stop; it ends at once.
            let _ = thread.join();
        }
    }
}

/// A run whose every call waits for the one before: its numbers are latency,
/// and each hop between threads adds to them.
fn latency_bound(clients: usize) -> bool {
    clients == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::ThreadId;

    fn thread_of(placement: &Placement) -> ThreadId {
        let runtime = Builder::new_multi_thread().worker_threads(1).build().unwrap();
        runtime
            .block_on(async { placement.spawn(async { std::thread::current().id() }).await })
            .unwrap()
    }

    #[test]
    fn only_a_lone_client_is_latency_bound() {
        assert!(latency_bound(1));
        assert!(!latency_bound(2));
        assert!(!latency_bound(1000));
    }

    #[test]
    fn a_lone_client_runs_everything_on_one_thread_of_its_own() {
        let placement = Placement::for_clients(1).unwrap();
        let first = thread_of(&placement);
        assert_eq!(
            thread_of(&placement),
            first,
            "the connection and the loop share a thread"
        );
        assert_ne!(first, std::thread::current().id());
    }

    #[test]
    fn many_clients_run_on_the_callers_runtime() {
        let placement = Placement::for_clients(10).unwrap();
        assert!(matches!(placement, Placement::Caller));
        let runtime = Builder::new_current_thread().build().unwrap();
        let (here, there) = runtime.block_on(async {
            let there = placement.spawn(async { std::thread::current().id() }).await.unwrap();
            (std::thread::current().id(), there)
        });
        assert_eq!(here, there, "a current-thread caller runs the task itself");
    }

    #[test]
    fn run_waits_for_the_future_where_it_runs() {
        let runtime = Builder::new_current_thread().build().unwrap();
        let here = std::thread::current().id();
        let own = Placement::for_clients(1).unwrap();
        let caller = Placement::for_clients(2).unwrap();
        let (on_own, on_caller) = runtime.block_on(async {
            let on_own = own.run(async { std::thread::current().id() }).await.unwrap();
            let on_caller = caller.run(async { std::thread::current().id() }).await.unwrap();
            (on_own, on_caller)
        });
        assert_ne!(on_own, here, "a lone client's connection is opened on its thread");
        assert_eq!(on_own, thread_of(&own), "and its loop runs there too");
        assert_eq!(on_caller, here, "many clients connect in the caller's task");
    }

    #[test]
    fn dropping_its_thread_drops_what_still_runs_there() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let placement = Placement::for_clients(1).unwrap();
        let guard = SetOnDrop(Arc::clone(&dropped));
        let _task = placement.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        assert!(!dropped.load(Ordering::SeqCst));
        drop(placement);
        assert!(dropped.load(Ordering::SeqCst), "a task left running was not dropped");
    }
}
