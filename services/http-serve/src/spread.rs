//! Which of [`serve_on_threads`](crate::serve_on_threads)' threads take new connections: the first
//! always does; each other thread only while the one before it is busy. Connections then gather
//! on as few threads as the load needs, as a thread with more to do sleeps less often between two
//! requests, and each sleep and wake costs CPU of its own. Under wrk, the gateway used 31 µs of CPU
//! per proxied GET with its connections on one thread and 46 µs with them spread over two.
//!
//! Busy is the share of the last [`SAMPLE`] a thread ran on a core, as the kernel counts it
//! (`/proc/thread-self/schedstat`, opened by each thread). Time spent waiting for a core does not
//! count: on a machine whose cores are all taken, a second thread would wait as long, and only add
//! sleeps and wakes.
//! (Counted, under wrk on this project's 2-core machines, it opened the second thread and the
//! gateway used 39 to 43 µs per GET; not counted, 28 to 29.) A thread opens to new connections
//! when the one before it was busy at least half of the last sample, and closes again below a
//! quarter ([`Thresholds::DEFAULT`]).
//!
//! Connections accepted while the load was light stay where they are when it grows: a thread busy
//! 90% of the time while the next one is not busy is asked to hand a connection over. It then
//! answers one request with `Connection: close` (HTTP/1), and the client's next connection is
//! accepted by a thread with room, at most one per sample.
//!
//! Where the kernel does not tell (no `/proc`, no schedstat), every thread accepts at all times.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often a thread waiting for its turn looks at how busy the one before it is.
pub(crate) const SAMPLE: Duration = Duration::from_millis(25);

/// Shares of a sample a thread is busy, by which the next one takes connections or not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    /// The thread before must be this busy for the next one to take connections.
    pub(crate) open_at: f64,
    /// Below this, the next thread stops taking connections (it keeps those it has).
    pub(crate) close_below: f64,
    /// A thread this busy hands connections over to the next one while that one is busy less
    /// than `open_at`.
    pub(crate) hot: f64,
}

impl Thresholds {
    pub(crate) const DEFAULT: Self = Self {
        open_at: 0.5,
        close_below: 0.25,
        hot: 0.9,
    };
}

/// What the serving threads know of each other.
pub(crate) struct Threads {
    threads: Box<[Thread]>,
    thresholds: Thresholds,
}

#[derive(Default)]
struct Thread {
    /// The file where the kernel counts the thread's time, open once it has started; `None`
    /// inside when the kernel does not tell. Each read from its start gives the figures anew.
    schedstat: OnceLock<Option<File>>,
    /// Set by the next thread: close a connection after its next answer.
    hand_over: AtomicBool,
}

impl Threads {
    pub(crate) fn new(count: usize, thresholds: Thresholds) -> Arc<Self> {
        Arc::new(Self {
            threads: (0..count).map(|_| Thread::default()).collect(),
            thresholds,
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.threads.len()
    }

    /// Called by serving thread `index` as it starts, on that thread: the file it opens is this
    /// thread's, whichever thread reads it later.
    pub(crate) fn register(&self, index: usize) {
        let schedstat = File::open("/proc/thread-self/schedstat").ok();
        let _ = self.threads[index].schedstat.set(schedstat);
    }

    /// Nanoseconds thread `index` has run on a core since it started (schedstat's first field).
    fn ran(&self, index: usize) -> Ran {
        let Some(file) = self.threads[index].schedstat.get() else {
            return Ran::NotStarted;
        };
        // Three numbers: the time run, the time waited for a core, the times run.
        let mut text = [0; 96];
        file.as_ref()
            .and_then(|file| file.read_at(&mut text, 0).ok())
            .and_then(|read| std::str::from_utf8(&text[..read]).ok())
            .and_then(|text| text.split_ascii_whitespace().next()?.parse().ok())
            .map_or(Ran::Unknown, Ran::Nanoseconds)
    }

    /// Whether thread `index` should close the connection of the request it is answering, to hand
    /// it over to a thread with room: true once per ask.
    pub(crate) fn hand_over(&self, index: usize) -> bool {
        let ask = &self.threads[index].hand_over;
        ask.load(Ordering::Relaxed) && ask.swap(false, Ordering::Relaxed)
    }
}

/// How long a thread has run, as far as is known.
enum Ran {
    /// The thread has not registered yet.
    NotStarted,
    /// The kernel does not tell.
    Unknown,
    Nanoseconds(u64),
}

/// Whether a thread other than the first takes connections now (see the module's doc).
pub(crate) struct Gate {
    threads: Arc<Threads>,
    index: usize,
    open: bool,
    /// When the last sample was taken, and the time the thread before and this one had run.
    last: Option<(Instant, u64, u64)>,
}

impl Gate {
    /// The gate of thread `index`; none for the first, which always takes connections.
    pub(crate) fn new(threads: Arc<Threads>, index: usize) -> Option<Self> {
        (index > 0).then_some(Self {
            threads,
            index,
            open: false,
            last: None,
        })
    }

    /// Whether the thread takes connections, from a sample taken at most [`SAMPLE`] ago.
    pub(crate) fn open(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|(at, ..)| now - at < SAMPLE) {
            return self.open;
        }
        let (before, own) = match (
            self.threads.ran(self.index - 1),
            self.threads.ran(self.index),
        ) {
            (Ran::Nanoseconds(before), Ran::Nanoseconds(own)) => (before, own),
            // The thread before is still starting: it has room.
            (Ran::NotStarted, _) | (_, Ran::NotStarted) => return false,
            // Nothing to tell by: every thread accepts, as without this gate.
            (Ran::Unknown, _) | (_, Ran::Unknown) => {
                self.open = true;
                self.last = None;
                return true;
            }
        };
        if let Some((at, before_then, own_then)) = self.last {
            let elapsed = (now - at).as_nanos() as f64;
            let busy_before = before.saturating_sub(before_then) as f64 / elapsed;
            let busy_own = own.saturating_sub(own_then) as f64 / elapsed;
            let thresholds = self.threads.thresholds;
            self.open = busy_before
                >= if self.open {
                    thresholds.close_below
                } else {
                    thresholds.open_at
                };
            if busy_before >= thresholds.hot && busy_own < thresholds.open_at {
                self.threads.threads[self.index - 1]
                    .hand_over
                    .store(true, Ordering::Relaxed);
            }
        }
        self.last = Some((now, before, own));
        self.open
    }
}
