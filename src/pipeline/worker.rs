//! One judge thread: drains its queue in batches, judges each hit, and
//! settles the unsubscribes waiting to be durable once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Handle;
use super::judge::checked;
use super::{Durability, Job, NotDurable, Stats};
use crate::sink::Sink;

/// The sink every judge thread publishes to, one at a time.
pub type SharedSink = Arc<Mutex<Box<dyn Sink>>>;

/// The shared sink, taken. A judge thread that panicked while publishing
/// leaves the sink as it was between two calls: still usable by the others.
pub fn lock(sink: &SharedSink) -> MutexGuard<'_, Box<dyn Sink>> {
    sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Worker {
    /// Judges each hit, or forwards it to judges elsewhere.
    pub judge: Box<dyn Handle>,
    pub sink: SharedSink,
    pub stats: Arc<Stats>,
    pub stop: Arc<AtomicBool>,
    /// Unsubscribes handled since the last sync, and whether their events
    /// were all taken by the sink.
    pub waiting: Vec<(Durability, bool)>,
}

/// How often an idle pipeline looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Most hits handled before looking at flush and stop again.
const BATCH: usize = 4096;
/// Pause between batches while busy: adds at most this to an event's delay.
const NAP: Duration = Duration::from_micros(500);
/// Quiet time after which the thread blocks instead of napping.
const QUIET: Duration = Duration::from_millis(100);

impl Worker {
    pub fn run(mut self, rx: mpsc::Receiver<Job>, flush_interval: Duration) {
        let mut next_flush = Instant::now() + flush_interval;
        let mut idle_since = Instant::now();
        loop {
            // Under load, drain in batches and nap between them instead of
            // blocking in recv: a blocked receiver makes every try_send on
            // the edge a wake-up (a futex call and a context switch per
            // hit). Only after a quiet spell does the thread block again.
            let mut took = 0;
            while took < BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        self.take(job);
                        took += 1;
                    }
                    Err(_) => break,
                }
            }
            if took > 0 {
                idle_since = Instant::now();
                if took < BATCH {
                    std::thread::sleep(NAP);
                }
            } else if idle_since.elapsed() < QUIET {
                std::thread::sleep(NAP);
            } else {
                let wait = next_flush.saturating_duration_since(Instant::now()).min(STOP_POLL);
                match rx.recv_timeout(wait) {
                    Ok(job) => {
                        self.take(job);
                        idle_since = Instant::now();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.settle();
            if self.stop.load(Ordering::Relaxed) {
                while let Ok(job) = rx.try_recv() {
                    self.take(job);
                }
                self.settle();
                break;
            }
            if Instant::now() >= next_flush {
                checked(&self.stats, self.sink().flush());
                next_flush = Instant::now() + flush_interval;
            }
        }
    }

    fn sink(&self) -> MutexGuard<'_, Box<dyn Sink>> {
        lock(&self.sink)
    }

    fn take(&mut self, job: Job) {
        let (hit, done) = match job {
            Job::Hit(hit) => (hit, None),
            Job::Durable(hit, done) => (hit, Some(done)),
        };
        let taken = {
            let mut sink = lock(&self.sink);
            self.judge.handle(&hit, &mut **sink)
        };
        if let Some(done) = done {
            self.waiting.push((done, taken));
        }
    }

    /// Makes what the waiting unsubscribes published durable, once for all
    /// of them, and tells each whether it is.
    fn settle(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let synced = match self.sink().sync() {
            Ok(()) => Ok(()),
            Err(e) => {
                let why = e.to_string();
                checked(&self.stats, Err(e));
                Err(why)
            }
        };
        for (done, taken) in self.waiting.drain(..) {
            let outcome = match (&synced, taken) {
                (Err(e), _) => Err(NotDurable::Sink(e.clone())),
                (Ok(()), false) => Err(NotDurable::Sink("the sink refused the event".into())),
                (Ok(()), true) => Ok(()),
            };
            let _ = done.send(outcome);
        }
    }
}
