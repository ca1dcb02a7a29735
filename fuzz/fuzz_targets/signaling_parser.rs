//! Fuzzes the signaling parser: any text frame must give `Ok` or `Err`, never a panic.
//! Non-UTF-8 input is skipped because the WebSocket layer never passes it on.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = prism::protocol::parse_client_message(text);
    }
});
