//! The shipper's state machine through the producer seam, with no broker:
//! a scripted producer plays the brokers (up, down, a full queue, failed
//! deliveries, a fenced producer), and a real spool on disk holds the
//! events. Each test drives the shipper turn by turn until what it waits
//! for happens (or a bound on turns, never on the clock, is passed).

use std::sync::Mutex;
use std::sync::mpsc::{self, SyncSender};

use super::*;
use crate::sink::kafka::KafkaSetupError;
use crate::sink::spool::{Spool, SpoolSettings};

/// The brokers as the scripted producer plays them.
#[derive(Debug, Default)]
struct Brokers {
    /// Down: records are taken but no report comes back.
    down: bool,
    /// How many records the producer may hold unreported.
    queue: Option<usize>,
    /// The next this many deliveries fail.
    failing: usize,
    /// Every delivery fails until the producer is renewed.
    fenced: bool,
    held: Vec<(u64, String)>,
    /// Delivered record keys (message ids, one per event here), in order of delivery.
    delivered: Vec<String>,
    renewals: usize,
    refused_full: usize,
}

#[derive(Debug, Clone, Default)]
struct Scripted(Arc<Mutex<Brokers>>);

impl Scripted {
    fn with(&self, f: impl FnOnce(&mut Brokers)) {
        f(&mut self.0.lock().unwrap());
    }
    fn delivered(&self) -> Vec<String> {
        self.0.lock().unwrap().delivered.clone()
    }
}

impl Producer for Scripted {
    fn send(&mut self, out: Outgoing<'_>) -> Result<(), Refusal> {
        let mut b = self.0.lock().unwrap();
        if b.queue.is_some_and(|q| b.held.len() >= q) {
            b.refused_full += 1;
            return Err(Refusal::QueueFull);
        }
        b.held.push((out.at, out.record.key.to_owned()));
        Ok(())
    }

    fn reports(&mut self, into: &mut Vec<Report>) {
        let mut b = self.0.lock().unwrap();
        if b.down {
            return;
        }
        for (at, id) in std::mem::take(&mut b.held) {
            let outcome = if b.fenced {
                Err("Broker: Producer attempted an operation with an old epoch (ProducerFenced)".into())
            } else if b.failing > 0 {
                b.failing -= 1;
                Err("Local: Message timed out".into())
            } else {
                b.delivered.push(id);
                Ok(())
            };
            into.push(Report { at, outcome });
        }
    }

    fn flush(&mut self, _: Duration) {}

    fn renew(&mut self) -> Result<(), KafkaSetupError> {
        let mut b = self.0.lock().unwrap();
        b.renewals += 1;
        b.fenced = false;
        b.held.clear(); // the old client's queue is purged
        Ok(())
    }
}

/// A spool, a shipper over the scripted brokers, and the live hand-off.
struct Rig {
    _dir: tempfile::TempDir,
    spool: Spool,
    live: SyncSender<Shipment>,
    incoming: Receiver<Shipment>,
    shipper: Shipper<Scripted>,
    brokers: Scripted,
    stats: Arc<KafkaStats>,
    written: Vec<String>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let settings = KafkaSettings {
            brokers: "scripted".into(),
            topic: "waymark.events".into(),
            topic_per_type: false,
            properties: Vec::new(),
            flush_timeout: Duration::ZERO,
            spool_dir: dir.path().join("spool"),
            spool: SpoolSettings { segment_bytes: 4096, ..SpoolSettings::default() },
        };
        let spool = Spool::open(&settings.spool_dir, settings.spool).unwrap();
        let ledger = spool.ledger().clone();
        let (cursor, _) = ledger.cursor().unwrap();
        let brokers = Scripted::default();
        let stats = Arc::new(KafkaStats::default());
        let state = Arc::new(KafkaState::new(ledger.clone()));
        let mut shipper = Shipper::new(settings, brokers.clone(), ledger, state, stats.clone(), cursor);
        shipper.backoff = Duration::from_millis(1);
        let (live, incoming) = mpsc::sync_channel(LIVE_QUEUE);
        Rig { _dir: dir, spool, live, incoming, shipper, brokers, stats, written: Vec::new() }
    }

    /// Spools `n` events; hands them over live unless `gap`.
    fn publish(&mut self, n: usize, gap: bool) {
        self.append(n, gap);
        self.spool.flush().unwrap();
    }

    /// Like [`Rig::publish`], leaving the records in the spool's memory
    /// (as between flushes, or while the disk refuses).
    fn append(&mut self, n: usize, gap: bool) {
        for _ in 0..n {
            let id = format!("evt_{:04}", self.written.len());
            let json = format!("{{\"event_id\":\"{id}\"}}");
            let event = crate::event::EncodedEvent { message_id: &id, ..record::tests::event(&json) };
            let payload = Bytes::from(record::Record::encode(&event));
            let at = self.spool.append(&payload).unwrap();
            if !gap {
                self.live.try_send(Shipment { at, next: self.spool.end(), payload }).unwrap();
            }
            self.written.push(id);
        }
    }

    /// Turns until `done`, at most 5000 turns.
    fn until(&mut self, what: &str, done: impl Fn(&Rig) -> bool) {
        for _ in 0..5000 {
            if done(self) {
                return;
            }
            self.shipper.turn(&self.incoming);
        }
        panic!("never happened: {what}; delivered {:?}", self.brokers.delivered());
    }

    fn all_delivered(&mut self) {
        let n = self.written.len();
        self.until("every event delivered", |r| {
            let d = r.brokers.delivered();
            d.len() >= n && r.shipper.caught_up()
        });
    }

    /// Delivered ids without repeats, in first-delivery order.
    fn distinct(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.brokers.delivered().into_iter().filter(|id| seen.insert(id.clone())).collect()
    }

    fn cursor_after_finish(&mut self) -> u64 {
        self.shipper.finish();
        self.spool.ledger().stored_cursor()
    }
}

#[test]
fn live_events_go_out_in_order_and_the_cursor_follows_the_acknowledgements() {
    let mut rig = Rig::new();
    rig.publish(30, false);
    rig.all_delivered();
    assert_eq!(rig.brokers.delivered(), rig.written, "each once, in spool order");
    assert_eq!(rig.cursor_after_finish(), rig.spool.end());
    assert_eq!(rig.stats.delivered.load(Ordering::Relaxed), 30);
}

#[test]
fn an_outage_holds_everything_and_delivers_it_once_the_brokers_answer() {
    let mut rig = Rig::new();
    rig.publish(10, false);
    rig.all_delivered();
    rig.brokers.with(|b| b.down = true);
    rig.publish(40, false);
    for _ in 0..50 {
        rig.shipper.turn(&rig.incoming);
    }
    assert_eq!(rig.brokers.delivered().len(), 10, "nothing acknowledged during the outage");
    let acknowledged = rig.spool.ledger().stored_cursor();
    rig.brokers.with(|b| b.down = false);
    rig.all_delivered();
    assert_eq!(rig.brokers.delivered(), rig.written);
    assert!(rig.cursor_after_finish() > acknowledged);
}

#[test]
fn a_refused_enqueue_is_read_again_from_the_spool_and_nothing_is_skipped() {
    let mut rig = Rig::new();
    rig.brokers.with(|b| {
        b.down = true;
        b.queue = Some(5);
    });
    rig.publish(60, false);
    for _ in 0..30 {
        rig.shipper.turn(&rig.incoming);
    }
    assert!(rig.brokers.0.lock().unwrap().refused_full > 0, "the queue filled");
    rig.brokers.with(|b| b.down = false);
    rig.all_delivered();
    assert_eq!(rig.brokers.delivered(), rig.written, "in order, none skipped, none twice");
    assert!(rig.stats.replayed.load(Ordering::Relaxed) > 0, "the rest came from the spool");
}

#[test]
fn a_failed_delivery_is_sent_again_through_a_fresh_producer() {
    let mut rig = Rig::new();
    rig.brokers.with(|b| b.failing = 3);
    rig.publish(20, false);
    rig.all_delivered();
    let mut distinct = rig.distinct();
    distinct.sort();
    assert_eq!(distinct, rig.written, "every event (order is not kept across a failure)");
    assert!(rig.stats.delivery_errors.load(Ordering::Relaxed) >= 1);
    assert!(rig.brokers.0.lock().unwrap().renewals >= 1);
    assert_eq!(rig.cursor_after_finish(), rig.spool.end());
}

#[test]
fn a_fenced_producer_is_replaced_and_delivery_resumes() {
    let mut rig = Rig::new();
    rig.publish(10, false);
    rig.all_delivered();
    rig.brokers.with(|b| b.fenced = true);
    rig.publish(10, false);
    rig.all_delivered();
    assert_eq!(rig.distinct(), rig.written);
    assert_eq!(rig.brokers.0.lock().unwrap().renewals, 1, "one renewal ends the fencing");
}

#[test]
fn events_spooled_but_never_handed_over_are_read_from_the_spool() {
    let mut rig = Rig::new();
    rig.publish(5, false);
    rig.all_delivered();
    // The live queue overflowed: these are only in the spool.
    rig.publish(10, true);
    rig.publish(5, false);
    rig.all_delivered();
    assert_eq!(rig.brokers.delivered(), rig.written, "the gap is filled in order");
    // And the tail of a burst, with nothing after it.
    rig.publish(7, true);
    rig.all_delivered();
    assert_eq!(rig.brokers.delivered(), rig.written);
}

#[test]
fn shutdown_with_a_gap_in_the_held_shipments_ends_and_leaves_the_rest_in_the_spool() {
    let mut rig = Rig::new();
    rig.publish(5, false);
    rig.all_delivered();
    rig.publish(3, true);
    rig.publish(2, false);
    rig.brokers.with(|b| b.down = true);
    let stop = AtomicBool::new(true);
    let Rig { shipper, incoming, spool, .. } = rig;
    shipper.run(incoming, &stop);
    let st = crate::sink::spool::status(spool.dir()).unwrap();
    assert_eq!(st.pending_records, 5, "what was not acknowledged waits for the next start");
}

#[test]
fn a_restart_resumes_from_the_cursor() {
    let mut rig = Rig::new();
    rig.publish(12, false);
    rig.all_delivered();
    rig.cursor_after_finish();
    let dir = rig.spool.dir().to_owned();
    drop(rig.spool);
    // A new run on the same spool: nothing is sent twice.
    let spool = Spool::open(&dir, SpoolSettings::default()).unwrap();
    let ledger = spool.ledger().clone();
    let brokers = Scripted::default();
    let state = Arc::new(KafkaState::new(ledger.clone()));
    let (cursor, _) = ledger.cursor().unwrap();
    let mut shipper =
        Shipper::new(rig.shipper.settings.clone(), brokers.clone(), ledger, state, Arc::default(), cursor);
    let (_live, incoming) = mpsc::sync_channel(1);
    for _ in 0..20 {
        shipper.turn(&incoming);
    }
    assert!(shipper.caught_up());
    assert!(brokers.delivered().is_empty(), "{:?}", brokers.delivered());
}

#[test]
fn a_cursor_that_cannot_move_is_retried_slowly_and_shown_in_readiness() {
    let mut rig = Rig::new();
    // Even root cannot write a file where a directory stands.
    std::fs::create_dir(rig.spool.dir().join("cursor.tmp")).unwrap();
    rig.publish(5, false);
    rig.all_delivered();
    rig.until("a failed cursor move", |r| r.spool.ledger().cursor_failing());
    assert_eq!(rig.shipper.state.reason(), Some(Reason::CursorStuck));
    let failures = || rig.spool.ledger().stats.cursor_failures.load(Ordering::Relaxed);
    let (before, started) = (failures(), Instant::now());
    for _ in 0..400 {
        rig.shipper.turn(&rig.incoming); // at least 5 ms each, with nothing to do
    }
    // Bounded by the time that passed, however slow the machine: once a
    // second (it was every turn, or five times a second).
    let (tried, secs) = (failures() - before, started.elapsed().as_secs());
    assert!(tried <= secs + 1, "{tried} attempts in {secs} s");
    std::fs::remove_dir(rig.spool.dir().join("cursor.tmp")).unwrap();
    rig.until("the cursor moves again", |r| !r.spool.ledger().cursor_failing());
    assert_eq!(rig.shipper.state.reason(), None);
}

#[test]
fn the_cursor_never_moves_past_what_is_on_disk() {
    let mut rig = Rig::new();
    rig.publish(5, false);
    rig.all_delivered();
    let on_disk = rig.spool.ledger().readable_end();
    // Shipped from memory and acknowledged before the spool wrote them.
    rig.append(5, false);
    rig.until("the unwritten ones delivered", |r| r.brokers.delivered().len() == 10);
    assert_eq!(rig.cursor_after_finish(), on_disk, "a crash now leaves a cursor that points at a record");
    rig.spool.flush().unwrap();
    assert_eq!(rig.cursor_after_finish(), rig.spool.end(), "and it follows once they are written");
}
