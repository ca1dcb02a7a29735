//! Fuzzes the HTTP/1.1 request parser of the signaling front (`prism::http`): any
//! bytes from a socket must give a request, "need more", or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = prism::http::fuzz_parse_request(data);
});
