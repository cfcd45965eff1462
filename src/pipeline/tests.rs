//! Durable unsubscribes at the recorder's interface, over scripted sinks.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Receiver;

use super::*;
use crate::classify::Settings;
use crate::event::EncodedEvent;
use crate::keys::{Key, KeyId, KeyRing};
use crate::sink::SinkError;
use crate::token::{Claims, Target};

/// A sink whose publish and sync do what the test says.
struct Scripted {
    /// Publish waits for a message here, when set.
    gate: Option<Arc<Mutex<Receiver<()>>>>,
    refuse: bool,
    sync_fails: bool,
    /// Sync waits this long.
    sync_takes: Duration,
    synced: Arc<AtomicU64>,
}

impl Sink for Scripted {
    fn publish(&mut self, _: &EncodedEvent) -> Result<(), SinkError> {
        if let Some(gate) = &self.gate {
            let _ = gate.lock().unwrap().recv();
        }
        if self.refuse {
            return Err(SinkError::Refused { path: "test".into(), why: "scripted" });
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn sync(&mut self) -> Result<(), SinkError> {
        std::thread::sleep(self.sync_takes);
        if self.sync_fails {
            return Err(SinkError::Io { path: "test".into(), source: std::io::Error::from_raw_os_error(28) });
        }
        self.synced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn sink() -> Scripted {
    Scripted {
        gate: None,
        refuse: false,
        sync_fails: false,
        sync_takes: Duration::ZERO,
        synced: Arc::default(),
    }
}

fn unsubscribe() -> Hit {
    let ring = KeyRing::parse(&Key::generate_entry(&KeyId::new("k1").unwrap())).unwrap();
    let claims = Claims {
        target: Target::Unsubscribe,
        tenant: String::new(),
        message_id: "m-1".into(),
        recipient: None,
        sent_at: 1_700_000_000,
        expires_at: None,
        tags: vec![],
        meta: vec![],
    };
    let token =
        crate::token::open(&ring, &crate::token::seal(&ring, &claims).unwrap(), 1_700_000_100).unwrap();
    let at = time::OffsetDateTime::now_utc();
    Hit {
        id: crate::hit::HitId::mint(at),
        token,
        at,
        method: crate::hit::Method::Post,
        client_ip: None,
        user_agent: None,
    }
}

fn start(sink: Scripted, capacity: usize, within: Duration) -> (Recorder, Pipeline) {
    let classifier = Classifier::new(&Settings::default()).unwrap();
    Pipeline::start(
        classifier,
        Box::new(sink),
        Privacy::default(),
        capacity,
        Duration::from_secs(3600),
        within,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

#[test]
fn an_unsubscribe_is_confirmed_only_after_the_sink_synced_it() {
    let s = sink();
    let synced = s.synced.clone();
    let (recorder, pipeline) = start(s, 16, Duration::from_secs(60));
    let outcome = runtime().block_on(recorder.record_durably(unsubscribe()));
    assert_eq!(outcome, Ok(()));
    assert!(synced.load(Ordering::Relaxed) >= 1, "synced before the confirmation");
    assert_eq!(recorder.stats().unsubscribes_durable.load(Ordering::Relaxed), 1);
    pipeline.finish();
}

#[test]
fn what_cannot_be_made_durable_is_never_confirmed() {
    let rt = runtime();
    let cases: [(&str, Scripted, Duration); 3] = [
        ("a sink that refuses the event", Scripted { refuse: true, ..sink() }, Duration::from_secs(60)),
        ("a sink that cannot sync", Scripted { sync_fails: true, ..sink() }, Duration::from_secs(60)),
        (
            "a sink slower than the bound",
            Scripted { sync_takes: Duration::from_millis(300), ..sink() },
            Duration::from_millis(1),
        ),
    ];
    for (name, s, within) in cases {
        let (recorder, pipeline) = start(s, 16, within);
        let outcome = rt.block_on(recorder.record_durably(unsubscribe()));
        assert!(outcome.is_err(), "{name}: {outcome:?}");
        assert_eq!(recorder.stats().unsubscribes_not_durable.load(Ordering::Relaxed), 1, "{name}");
        pipeline.finish();
    }
}

#[test]
fn a_full_queue_refuses_the_unsubscribe_at_once_and_pixels_never_wait() {
    let (open, gate) = mpsc::channel();
    let s = Scripted { gate: Some(Arc::new(Mutex::new(gate))), ..sink() };
    let (recorder, pipeline) = start(s, 1, Duration::from_secs(60));
    let rt = runtime();
    // The first is taken by the pipeline and held in the sink; the
    // second fills the queue of one.
    let first = recorder.record_durably(unsubscribe());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.stats().recorded.load(Ordering::Relaxed) == 1 && recorder.record(unsubscribe()).is_err() {
        assert!(std::time::Instant::now() < deadline, "the pipeline never took the first hit");
        std::thread::yield_now();
    }
    let refused = rt.block_on(recorder.record_durably(unsubscribe()));
    assert_eq!(refused, Err(NotDurable::Queue(RecordError::Full)));
    assert_eq!(
        recorder.record(unsubscribe()),
        Err(RecordError::Full),
        "a pixel is dropped, not made to wait"
    );
    for _ in 0..4 {
        let _ = open.send(());
    }
    assert_eq!(rt.block_on(first), Ok(()), "the one taken is confirmed once written and synced");
    drop(open);
    pipeline.finish();
}
