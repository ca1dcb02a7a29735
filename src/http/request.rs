//! Incremental HTTP/1.1 request parsing over a connection's read buffer.
//!
//! Owns the limits of the HTTP front: header block size, header count, body size
//! (`Content-Length` only: `Transfer-Encoding` is refused with 501, which no client
//! of this API needs). Pure: bytes in, a parsed [`Request`] or an [`HttpError`] out,
//! never a panic — this is the `http_request` fuzz target's entry point.

use std::fmt;

/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 64;

/// A complete request, owned.
#[derive(Clone)]
pub struct Request {
    /// Upper-case method as sent (`GET`, `POST`, …).
    pub method: String,
    /// Path without the query, percent-encoding kept.
    pub path: String,
    /// Raw query string after `?`, if any.
    pub query: Option<String>,
    /// HTTP minor version (0 or 1).
    pub minor_version: u8,
    /// Header names lower-cased, values as bytes (trimmed by httparse).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (empty when there was none).
    pub body: Vec<u8>,
}

impl fmt::Debug for Request {
    // Headers carry tokens (Authorization): print only their names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Request {
    /// The first header of that (lower-case) name, as UTF-8 text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            return false;
        }
        self.minor_version >= 1 || self.header_has_token("connection", "keep-alive")
    }

    /// A query parameter, percent-decoded; `None` when absent or not valid UTF-8.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == name)
                .then(|| percent_decode(v))
                .flatten()
        })
    }
}

/// Decodes `%XX` escapes and `+` (as space); `None` on a bad escape or bad UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Why a request could not be read. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x, or a malformed request line or header (400).
    Malformed(String),
    /// The header block is larger than allowed (431).
    HeadersTooLarge,
    /// `Content-Length` above the body limit (413).
    BodyTooLarge,
    /// `Transfer-Encoding` bodies are not accepted (501).
    TransferEncoding,
}

impl HttpError {
    /// The status code the client gets.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadersTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::TransferEncoding => 501,
        }
    }

    /// The wire error code.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::Malformed(_) => "bad_request",
            HttpError::HeadersTooLarge => "headers_too_large",
            HttpError::BodyTooLarge => "payload_too_large",
            HttpError::TransferEncoding => "not_implemented",
        }
    }

    /// A human-readable message.
    pub fn message(&self) -> String {
        match self {
            HttpError::Malformed(m) => format!("malformed request: {m}"),
            HttpError::HeadersTooLarge => "request headers too large".into(),
            HttpError::BodyTooLarge => "request body too large".into(),
            HttpError::TransferEncoding => {
                "Transfer-Encoding is not supported; send Content-Length".into()
            }
        }
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest header block, bytes.
    pub header_max: usize,
    /// Largest body, bytes.
    pub body_max: usize,
}

/// Outcome of one parse attempt over the buffered bytes.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed; `headers_done` says whether the header block is complete
    /// (the header timeout stops applying then; the body timeout starts).
    Partial {
        /// The header block has been received.
        headers_done: bool,
    },
    /// A request and the number of bytes of `buf` it used.
    Complete(Request, usize),
}

/// Tries to parse one request from the start of `buf`.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.header_max {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(Parsed::Partial {
                headers_done: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > limits.header_max {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    if !path.starts_with('/') {
        return Err(HttpError::Malformed("request target must be a path".into()));
    }
    let minor_version = req.version.unwrap_or(1);
    let mut content_length: Option<usize> = None;
    let mut owned = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name == "transfer-encoding" {
            return Err(HttpError::TransferEncoding);
        }
        if name == "content-length" {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
            if content_length.is_some_and(|c| c != v) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            content_length = Some(v);
        }
        owned.push((name, h.value.to_vec()));
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.body_max {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Partial { headers_done: true });
    }
    Ok(Parsed::Complete(
        Request {
            method,
            path,
            query,
            minor_version,
            headers: owned,
            body: buf[head_len..total].to_vec(),
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        header_max: 1024,
        body_max: 64,
    };

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, L).unwrap() {
            Parsed::Complete(r, n) => (r, n),
            p => panic!("expected complete, got {p:?}"),
        }
    }

    #[test]
    fn parses_a_get_with_query() {
        let (r, n) =
            complete(b"GET /v1/admin/audit?limit=5&channel_id=ch%5F1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(n, 67);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/admin/audit");
        assert_eq!(r.query_param("limit").as_deref(), Some("5"));
        assert_eq!(r.query_param("channel_id").as_deref(), Some("ch_1"));
        assert_eq!(r.query_param("since"), None);
        assert!(r.keep_alive());
    }

    #[test]
    fn waits_for_the_body_then_completes() {
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(
            parse_request(head, L).unwrap(),
            Parsed::Partial { headers_done: true }
        ));
        let mut full = head.to_vec();
        full.extend_from_slice(b"abcdEXTRA");
        let (r, n) = complete(&full);
        assert_eq!(r.body, b"abcd");
        assert_eq!(n, head.len() + 4);
    }

    #[test]
    fn refuses_what_it_must() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nX: y", L).unwrap(),
            Parsed::Partial {
                headers_done: false
            }
        ));
        // A method token that never ends is refused once past the header limit.
        let big = vec![b'a'; 2000];
        assert_eq!(
            parse_request(&big, L).unwrap_err(),
            HttpError::HeadersTooLarge
        );
        assert!(matches!(
            parse_request(b"G\x01T / HTTP/1.1\r\n\r\n", L),
            Err(HttpError::Malformed(_))
        ));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; 2000]);
        assert_eq!(
            parse_request(&long, L).unwrap_err(),
            HttpError::HeadersTooLarge
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", L).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", L).unwrap_err(),
            HttpError::TransferEncoding
        );
        assert!(matches!(
            parse_request(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                L
            ),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"GET http://x/ HTTP/1.1\r\n\r\n", L),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn connection_header_rules() {
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive());
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive());
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n");
        assert!(r.header_has_token("connection", "upgrade"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
