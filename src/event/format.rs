//! How events write what they carry: prefixed ids, the dedup key, times in
//! RFC 3339 and meta as a sorted map, each without an allocation.

use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use ulid::Ulid;

use crate::token::{Claims, Kind};

/// An id with a fixed prefix, such as `evt_01K…`: written out when
/// serialized, never allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixed {
    pub prefix: &'static str,
    pub id: Ulid,
}

impl Prefixed {
    pub fn event(id: Ulid) -> Prefixed {
        Prefixed { prefix: "evt_", id }
    }

    /// The id as text, written into `buf`: the longest prefix,
    /// `unsubscribe_`, and a ULID fit.
    pub fn as_str<'b>(&self, buf: &'b mut [u8; 40]) -> &'b str {
        let n = self.prefix.len();
        buf[..n].copy_from_slice(self.prefix.as_bytes());
        let mut id = [0; ulid::ULID_LEN];
        buf[n..n + ulid::ULID_LEN].copy_from_slice(self.id.array_to_str(&mut id).as_bytes());
        std::str::from_utf8(&buf[..n + ulid::ULID_LEN]).expect("ASCII")
    }
}

impl std::fmt::Display for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str(&mut [0; 40]))
    }
}

impl Serialize for Prefixed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str(&mut [0; 40]))
    }
}

/// `dk_` and 20 hex digits; see `dedup_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey([u8; 23]);

impl DedupKey {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl Serialize for DedupKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

pub(super) fn rfc3339<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(format_rfc3339(*at).as_str())
}

/// Meta in key order whatever order the sender gave, the last value of a
/// repeated key winning (as a map built from the pairs would have it).
pub(super) fn sorted_map<S: Serializer>(meta: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut sorted: smallvec::SmallVec<[&(String, String); 8]> = meta.iter().rev().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut map = s.serialize_map(Some(sorted.len()))?;
    for (k, v) in sorted {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// A formatted time: `2026-02-11T22:14:33.481927Z`, on the stack.
pub struct Rfc3339([u8; 27]);

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

/// RFC 3339 in UTC with microseconds, written by hand: the general
/// formatter in `time` was a tenth of the pipeline's cost. Years outside
/// 0000-9999 are clamped, as no hit or send time can carry one.
pub fn format_rfc3339(at: OffsetDateTime) -> Rfc3339 {
    let utc = at.to_offset(time::UtcOffset::UTC);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, utc.year().clamp(0, 9999) as u32);
    put(5, 2, u8::from(utc.month()) as u32);
    put(8, 2, utc.day() as u32);
    put(11, 2, utc.hour() as u32);
    put(14, 2, utc.minute() as u32);
    put(17, 2, utc.second() as u32);
    put(20, 6, utc.microsecond());
    Rfc3339(out)
}

/// The same key for every event that describes the same engagement: one
/// message, kind and link within one repeat-window bucket (unsubscribes:
/// ever). Replicas that each saw a copy of a hit agree on it, so consumers
/// count at most one counted event per key.
pub(super) fn dedup_key(
    claims: &Claims,
    kind: Kind,
    link: Option<u16>,
    at_ms: i64,
    repeat_window_ms: i64,
) -> DedupKey {
    let bucket = match (kind, repeat_window_ms) {
        (Kind::Unsubscribe, _) | (_, 0) => 0,
        (_, window) => at_ms.div_euclid(window),
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in
        [claims.tenant.as_bytes(), b"\0", claims.message_id.as_bytes(), b"\0", kind.as_str().as_bytes()]
    {
        ctx.update(part);
    }
    ctx.update(&link.map_or(-1i32, i32::from).to_be_bytes());
    ctx.update(&bucket.to_be_bytes());
    let digest = ctx.finish();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = *b"dk_00000000000000000000";
    for (i, b) in digest.as_ref()[..10].iter().enumerate() {
        key[3 + 2 * i] = HEX[usize::from(b >> 4)];
        key[4 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    DedupKey(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, format_description};

    #[test]
    fn hand_written_rfc3339_agrees_with_the_time_crate() {
        let reference =
            format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
        for at in [
            datetime!(2026-02-11 22:14:33.481927 UTC),
            datetime!(2024-02-29 00:00:00 UTC),
            datetime!(1999-12-31 23:59:59.999999999 UTC),
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(2026-11-25 01:30:00.000001 +02:00),
            datetime!(0001-01-01 00:00:00.5 UTC),
        ] {
            let utc = at.to_offset(time::UtcOffset::UTC);
            assert_eq!(format_rfc3339(at).as_str(), utc.format(reference).unwrap(), "{at}");
        }
    }

    #[test]
    fn prefixed_ids_read_the_same_written_and_serialized() {
        let id = Ulid::from_string("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B").unwrap();
        let p = Prefixed { prefix: "reclass_", id };
        assert_eq!(p.to_string(), "reclass_01KAZ4T1ZH8Q6M1J3N2V5X7Y9B");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"reclass_01KAZ4T1ZH8Q6M1J3N2V5X7Y9B\"");
        let longest = Prefixed { prefix: "unsubscribe_", id };
        assert_eq!(serde_json::to_string(&longest).unwrap(), format!("\"{longest}\""));
    }

    #[test]
    fn meta_is_written_in_key_order_once_per_key_last_value_winning() {
        #[derive(Serialize)]
        struct M<'a>(#[serde(serialize_with = "sorted_map")] &'a [(String, String)]);
        let meta: Vec<(String, String)> = [("z", "1"), ("a", "2"), ("m", "3"), ("a", "4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(serde_json::to_string(&M(&meta)).unwrap(), r#"{"a":"4","m":"3","z":"1"}"#);
        assert_eq!(serde_json::to_string(&M(&[])).unwrap(), "{}");
    }
}
