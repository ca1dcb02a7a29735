//! HTTP/1.1 message handling for the front: request parsing and responses.

pub mod request;
pub mod response;

/// Fuzz entry point: feeds `data` to the request parser as one buffer and in
/// small chunks (as a slow client would send it), answering each complete request
/// as the front would. Never panics.
pub fn fuzz_parse_request(data: &[u8]) {
    let limits = request::Limits {
        header_max: 16 * 1024,
        body_max: 64 * 1024,
    };
    let mut buf: &[u8] = data;
    // Whole buffer, pipelined requests one after another.
    while let Ok(request::Parsed::Complete(req, used)) = request::parse_request(buf, limits) {
        let _ = req.keep_alive();
        let _ = req.query_param("channel_id");
        let _ = req.header("origin");
        buf = &buf[used.max(1).min(buf.len())..];
    }
    // Growing prefixes: every split point a slow client could produce.
    for end in (0..=data.len().min(4096)).step_by(7) {
        let _ = request::parse_request(&data[..end], limits);
    }
}
