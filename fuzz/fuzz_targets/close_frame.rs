//! Close frame payloads from clients: any bytes give a valid answer code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let code = tern_gateway::fuzzing::answer_to_close(data);
    assert!(matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999), "answered with {code}");
});
