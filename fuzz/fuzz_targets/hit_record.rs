//! Reading arbitrary bytes as a hit record never panics, and whatever is
//! read writes back to exactly the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark::hit::record::HitRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = HitRecord::decode(data) {
        let mut again = Vec::new();
        record.encode(&mut again);
        assert_eq!(again, data, "a record read back differently: {record:?}");
    }
});
