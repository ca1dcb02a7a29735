//! Replays the committed fuzz seed corpora (`fuzz/corpus/<target>/`) through the
//! in-crate functions the fuzz targets wrap, so a plain `cargo test` catches
//! regressions without a fuzzer toolchain.
//!
//! Corpus naming: `ok_*` files must be accepted, `err_*` files must be refused, and
//! any other file (e.g. one a fuzzer added) must merely not panic. One test function
//! per fuzz target; each calls [`replay`] with its directory and a classifier.

use std::path::{Path, PathBuf};

/// What a replayed input did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Refused,
}

/// Feeds every file of `fuzz/corpus/<target>/` to `run` and checks the naming
/// contract; returns how many files were replayed.
fn replay(target: &str, run: impl Fn(&[u8]) -> Outcome) -> usize {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus directory entry is readable").path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in &entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("corpus file names are UTF-8");
        let bytes = std::fs::read(path).expect("corpus file is readable");
        let outcome = run(&bytes);
        if name.starts_with("ok_") {
            assert_eq!(
                outcome,
                Outcome::Accepted,
                "{target}/{name} must be accepted"
            );
        } else if name.starts_with("err_") {
            assert_eq!(outcome, Outcome::Refused, "{target}/{name} must be refused");
        }
    }
    entries.len()
}

#[test]
fn signaling_parser_corpus_replays_as_named() {
    let n = replay("signaling_parser", |bytes| {
        // Same path as the fuzz target: the WebSocket layer refuses non-UTF-8 text
        // frames before the parser sees them, so they count as refused.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Outcome::Refused;
        };
        match prism::protocol::parse_client_message(text) {
            Ok(_) => Outcome::Accepted,
            Err(e) => {
                assert!(!e.message.is_empty(), "an error always says why");
                Outcome::Refused
            }
        }
    });
    assert!(
        n >= 40,
        "the signaling corpus has {n} files; expected at least 40"
    );
}

#[test]
fn http_request_corpus_replays_without_panic() {
    // The HTTP seeds are raw requests of every shape (pipelined, chunked, garbage,
    // oversized); the contract is only that the request path never panics.
    let n = replay("http_request", |bytes| {
        prism::http::fuzz_parse_request(bytes);
        let limits = prism::http::request::Limits {
            header_max: 16 * 1024,
            body_max: 64 * 1024,
        };
        match prism::http::request::parse_request(bytes, limits) {
            Ok(prism::http::request::Parsed::Complete(..)) => Outcome::Accepted,
            _ => Outcome::Refused,
        }
    });
    assert!(
        n >= 15,
        "the http corpus has {n} files; expected at least 15"
    );
}
