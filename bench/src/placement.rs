//! Where a run's connections and request loops run: on current-thread
//! runtimes, each on a thread of its own; connection `i`, and every request
//! loop that sends on it, on thread `i % threads`.
//!
//! A connection's task and its loops then share one thread: a pass of the
//! connection task reads the replies that came, wakes their loops, and those
//! loops' next requests are queued on the connection before its task runs
//! again, so they leave in one write. On tokio's multi-thread runtime the
//! loops ran on the other worker while the connection task went on, and most
//! requests left in a write of their own; a wake of a parked worker is also a
//! futex and an interrupt to an idle CPU. A lone client (`put-1`) pays those
//! on every call. The cost against the multi-thread runtime is measured in
//! docs/benchmarks.md.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::BenchError;

/// The client threads of one run; dropping it stops them and drops every
/// task still on them (the connections with them).
pub struct Placement {
    threads: Vec<OwnThread>,
}

struct OwnThread {
    handle: Handle,
    /// Sent (or dropped) to end the thread's `block_on`.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Placement {
    /// For a run of `clients` request loops over `conns` connections.
    pub fn for_run(clients: usize, conns: usize) -> Result<Placement, BenchError> {
        let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
        let threads = (0..client_threads(clients, conns, cpus))
            .map(|_| OwnThread::start())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|error| BenchError::Internal(format!("cannot start a client thread: {error}")))?;
        Ok(Placement { threads })
    }

    /// Runs `future` on connection `connection`'s thread and waits for it: a
    /// connection opened in it keeps its task there.
    pub async fn run_on<F>(&self, connection: usize, future: F) -> Result<F::Output, BenchError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_on(connection, future)
            .await
            .map_err(|error| BenchError::Internal(format!("a task on a client thread failed: {error}")))
    }

    /// Spawns `future` on connection `connection`'s thread: a request loop
    /// spawned there sends on that connection without leaving the thread.
    pub fn spawn_on<F>(&self, connection: usize, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.threads[connection % self.threads.len()].handle.spawn(future)
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

/// How many client threads a run of `clients` loops over `conns` connections
/// gets on a machine of `cpus`: one for a lone client, whose every call waits
/// for the one before (its numbers are latency, and a second thread would only
/// add hops); else one per CPU, as the multi-thread runtime had workers, and
/// no more than there are connections to give them.
fn client_threads(clients: usize, conns: usize, cpus: usize) -> usize {
    if clients == 1 {
        1
    } else {
        cpus.min(conns).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::ThreadId;

    fn thread_of(placement: &Placement, connection: usize) -> ThreadId {
        let runtime = Builder::new_current_thread().build().unwrap();
        runtime
            .block_on(placement.run_on(connection, async { std::thread::current().id() }))
            .unwrap()
    }

    #[test]
    fn a_lone_client_gets_one_thread_and_many_one_per_cpu_up_to_the_connections() {
        assert_eq!(client_threads(1, 1, 8), 1);
        assert_eq!(client_threads(1, 4, 8), 1, "a lone client uses one connection");
        assert_eq!(client_threads(1000, 100, 2), 2);
        assert_eq!(client_threads(1000, 100, 1), 1);
        assert_eq!(client_threads(10, 3, 8), 3, "no thread without a connection");
    }

    #[test]
    fn a_connection_and_its_loops_share_a_thread_and_connections_spread_over_the_threads() {
        let placement = Placement::for_run(1000, 100).unwrap();
        let here = std::thread::current().id();
        let threads: Vec<ThreadId> = (0..placement.threads.len()).map(|c| thread_of(&placement, c)).collect();
        for (connection, thread) in threads.iter().enumerate() {
            assert_ne!(*thread, here, "runs on a client thread, not the caller's");
            assert_eq!(thread_of(&placement, connection), *thread, "the same thread every time");
            assert_eq!(
                thread_of(&placement, connection + threads.len()),
                *thread,
                "round-robin"
            );
        }
        for (i, a) in threads.iter().enumerate() {
            assert!(threads[i + 1..].iter().all(|b| b != a), "each thread its own");
        }
        let runtime = Builder::new_current_thread().build().unwrap();
        let spawned = runtime.block_on(async { placement.spawn_on(1, async { std::thread::current().id() }).await });
        assert_eq!(spawned.unwrap(), threads[1 % threads.len()]);
    }

    #[test]
    fn dropping_the_placement_drops_what_still_runs_on_its_threads() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let placement = Placement::for_run(1, 1).unwrap();
        let guard = SetOnDrop(Arc::clone(&dropped));
        let _task = placement.spawn_on(0, async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        assert!(!dropped.load(Ordering::SeqCst));
        drop(placement);
        assert!(dropped.load(Ordering::SeqCst), "a task left running was not dropped");
    }
}
