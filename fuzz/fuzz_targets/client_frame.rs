//! Client frames (protocol v1 JSON): parsing must never panic, and a frame
//! that parses must survive the checks its type implies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_gateway::fuzzing::{ClientFrame, parse_client_frame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ClientFrame::Send { content, .. }) = parse_client_frame(text) {
        // The content handed to storage is always valid JSON.
        assert!(tern_gateway::fuzzing::is_json(&content), "content is not JSON: {content}");
    }
});
