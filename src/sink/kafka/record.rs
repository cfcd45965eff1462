//! One event as the spool keeps it for Kafka: the JSON and what Kafka keys
//! and headers on, read back without copying. Two layouts: the current one
//! (V2) and the first (V1, postcard), still read so an upgrade replays an
//! old spool.

use serde::Deserialize;

use crate::event::EncodedEvent;

#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: &'a str,
    pub key: &'a str,
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub json: &'a [u8],
}

/// First byte of a record in the current layout. Earlier spools hold
/// postcard records, which start with the length of the type name (under
/// 128), so they can never begin with it.
const RECORD_V2: u8 = 0xFF;

/// The first layout.
#[derive(Deserialize)]
pub struct RecordV1 {
    kind: String,
    key: String,
    tenant: String,
    event_id: String,
    json: Vec<u8>,
}

impl RecordV1 {
    pub fn as_record(&self) -> Record<'_> {
        Record {
            kind: &self.kind,
            key: &self.key,
            tenant: &self.tenant,
            event_id: &self.event_id,
            json: &self.json,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable spool record: {0}")]
pub struct RecordError(&'static str);

/// A payload read back: borrowed in the current layout, owned in the first.
pub enum Decoded<'a> {
    V2(Record<'a>),
    V1(RecordV1),
}

impl Decoded<'_> {
    pub fn record(&self) -> Record<'_> {
        match self {
            Decoded::V2(r) => Record { ..*r },
            Decoded::V1(old) => old.as_record(),
        }
    }
}

/// Reads a payload in either layout.
pub fn decode_any(payload: &[u8]) -> Result<Decoded<'_>, RecordError> {
    match Record::decode(payload) {
        Ok(r) => Ok(Decoded::V2(r)),
        Err(e) => postcard::from_bytes::<RecordV1>(payload).map(Decoded::V1).map_err(|_| e),
    }
}

impl<'a> Record<'a> {
    /// `0xFF`, then type, key, tenant and event id each as a little-endian
    /// u16 length and its bytes, then the JSON to the end.
    pub fn encode(event: &EncodedEvent) -> Vec<u8> {
        let mut id = [0; 40];
        let fields = [event.kind.as_str(), event.message_id, event.tenant, event.event_id.as_str(&mut id)];
        Self::encode_parts(fields, event.json)
    }

    /// The same layout for any payload: `[type, key, tenant, id]` and the
    /// body (a hit record goes to the hits topic this way).
    pub fn encode_parts(fields: [&str; 4], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + fields.iter().map(|f| f.len()).sum::<usize>() + body.len());
        out.push(RECORD_V2);
        for field in fields {
            // Message ids and tenants are bounded far below this by the token size.
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
        }
        out.extend_from_slice(body);
        out
    }

    pub fn decode(payload: &'a [u8]) -> Result<Record<'a>, RecordError> {
        let Some((&RECORD_V2, mut rest)) = payload.split_first() else {
            return Err(RecordError("unknown layout"));
        };
        let mut field = || -> Result<&'a str, RecordError> {
            let (len, tail) = rest.split_first_chunk::<2>().ok_or(RecordError("truncated"))?;
            let len = usize::from(u16::from_le_bytes(*len));
            let (text, tail) = tail.split_at_checked(len).ok_or(RecordError("truncated"))?;
            rest = tail;
            std::str::from_utf8(text).map_err(|_| RecordError("field is not UTF-8"))
        };
        let (kind, key, tenant, event_id) = (field()?, field()?, field()?, field()?);
        Ok(Record { kind, key, tenant, event_id, json: rest })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::event::{EventType, Prefixed};

    pub fn event(json: &str) -> EncodedEvent<'_> {
        EncodedEvent {
            event_id: Prefixed::event("01KAZ4T1ZH8Q6M1J3N2V5X7Y9B".parse().unwrap()),
            kind: EventType::Clicked,
            message_id: "msg-ü-1",
            tenant: "acme",
            json: json.as_bytes(),
        }
    }
    #[test]
    fn records_read_back_as_written() {
        for json in ["{\"a\":1}", "", "{\"ua\":\"Mozilla/5.0 \\u00e9\"}"] {
            let payload = Record::encode(&event(json));
            let record = Record::decode(&payload).unwrap();
            assert_eq!(
                record,
                Record {
                    kind: "email.clicked",
                    key: "msg-ü-1",
                    tenant: "acme",
                    event_id: "evt_01KAZ4T1ZH8Q6M1J3N2V5X7Y9B",
                    json: json.as_bytes(),
                }
            );
        }
    }

    #[test]
    fn first_layout_records_are_told_apart_and_still_read() {
        #[derive(serde::Serialize)]
        struct Old<'a> {
            kind: &'a str,
            key: &'a str,
            tenant: &'a str,
            event_id: &'a str,
            json: Vec<u8>,
        }
        let old = postcard::to_allocvec(&Old {
            kind: "email.opened",
            key: "m",
            tenant: "",
            event_id: "evt_x",
            json: b"{}".to_vec(),
        })
        .unwrap();
        assert!(Record::decode(&old).is_err(), "an old record is not mistaken for the new layout");
        let read: RecordV1 = postcard::from_bytes(&old).unwrap();
        assert_eq!(
            (read.kind.as_str(), read.key.as_str(), read.json.as_slice()),
            ("email.opened", "m", &b"{}"[..])
        );
    }

    #[test]
    fn damaged_records_are_refused_not_misread() {
        let good = Record::encode(&event("{}"));
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", vec![]),
            ("other layout byte", [&[0x0C][..], &good[1..]].concat()),
            ("cut inside a length", good[..2].to_vec()),
            ("cut inside a field", good[..8].to_vec()),
            ("field not UTF-8", [&[RECORD_V2, 2, 0, 0xC3, 0x28][..], &[0, 0, 0, 0, 0, 0][..]].concat()),
        ];
        for (name, payload) in cases {
            assert!(Record::decode(&payload).is_err(), "{name}");
        }
    }
}
