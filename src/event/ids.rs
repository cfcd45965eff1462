//! Event ids, all derived from the id of the hit that caused them, so the
//! same hit judged twice (a judge restarted, a partition handed to another
//! judge) gives the same events under the same ids, and a consumer that
//! de-duplicates on `event_id` counts each once.
//!
//! - The hit's own event: the hit id itself.
//! - The open a click back-fills: the hit id with its last random bit
//!   flipped (as waymark has always made it).
//! - A reclassification: the hit id's time, and 80 bits of SHA-256 over the
//!   hit id, a tag and the withdrawn event's id.
//!
//! Derived ids keep the hit's millisecond, so they sort with it.

use ulid::Ulid;

use crate::classify::Withdrawn;
use crate::hit::HitId;

/// The id of the event a hit itself produces.
pub fn of_hit(hit: HitId) -> Ulid {
    hit.0
}

/// The id of the open a click back-filled.
pub fn backfill(hit: HitId) -> Ulid {
    Ulid::from_parts(hit.0.timestamp_ms(), hit.0.random() ^ 1)
}

/// The id of the event `withdrawn` names.
pub fn withdrawn(w: &Withdrawn) -> Ulid {
    if w.backfill { backfill(w.hit) } else { of_hit(w.hit) }
}

/// The id of the reclassification that `hit` causes for `original`.
pub fn reclassification(hit: HitId, original: Ulid) -> Ulid {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"waymark.reclassification\0");
    ctx.update(&hit.0.to_bytes());
    ctx.update(&original.to_bytes());
    let digest = ctx.finish();
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest.as_ref()[..10]);
    Ulid::from_parts(hit.0.timestamp_ms(), u128::from_be_bytes(random))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Kind;

    #[test]
    fn ids_derive_from_the_hit_and_nothing_else() {
        let hit = HitId(Ulid::from_string("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B").unwrap());
        let other = HitId(Ulid::from_string("01KAZ4T1ZH8Q6M1J3N2V5X7Y9C").unwrap());
        assert_eq!(of_hit(hit), hit.0);
        assert_ne!(backfill(hit), of_hit(hit));
        assert_eq!(backfill(hit).timestamp_ms(), hit.0.timestamp_ms());
        let w = Withdrawn { hit, kind: Kind::Open, backfill: true };
        assert_eq!(withdrawn(&w), backfill(hit));
        let r = reclassification(other, withdrawn(&w));
        assert_eq!(r, reclassification(other, withdrawn(&w)), "deterministic");
        assert_ne!(r, reclassification(other, of_hit(hit)));
        assert_ne!(r, reclassification(hit, withdrawn(&w)));
        assert_eq!(r.timestamp_ms(), other.0.timestamp_ms());
        // Written down, so a change to the derivation is a deliberate one.
        assert_eq!(backfill(hit).to_string(), "01KAZ4T1ZH8Q6M1J3N2V5X7Y9A");
    }
}
