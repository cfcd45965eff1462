//! `waymark keygen`: a new random key, printed as `KID:SECRET`.

use time::OffsetDateTime;

use crate::keys::{Key, KeyId};

pub fn run(kid: Option<String>) -> anyhow::Result<()> {
    let kid = kid.unwrap_or_else(|| {
        let today = OffsetDateTime::now_utc().date();
        format!("k{:02}{:02}{:02}", today.year() % 100, today.month() as u8, today.day())
    });
    println!("{}", Key::generate_entry(&KeyId::new(&kid)?));
    Ok(())
}
