//! Conversation ids from clients (acks, history URLs): parsing never panics
//! and only round-trips canonical ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::conversation::{Kind, direct, group, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else { return };
    match parse(id) {
        Some(Kind::Direct(a, b)) => assert_eq!(direct(a, b), id),
        Some(Kind::Group(g)) => assert_eq!(group(g), id),
        None => {}
    }
});
