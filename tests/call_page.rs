//! The call page over real sockets: served at `/` in dev mode with its assets, at
//! `call_page_path` when configured, not at all when `call_page` is off.

#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use common::TestServer;

fn body_text(r: &common::RawResponse) -> String {
    String::from_utf8(r.body.clone()).expect("UTF-8 body")
}

#[test]
fn dev_mode_serves_the_page_and_its_assets_at_the_root() {
    let srv = TestServer::start();
    let http = srv.http();
    let page = http.send("GET", "/", None, None, &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    assert!(body_text(&page).contains("<script type=\"module\" src=\"/web/app.js\">"));

    // A query string does not change the route (the page reads ?channel=&user=&join=).
    let with_query = http.send("GET", "/?channel=lobby&user=a&join=1", None, None, &[]);
    assert_eq!(with_query.status, 200);

    for (path, ty, needle) in [
        (
            "/web/prism.js",
            "text/javascript",
            "export class PrismClient",
        ),
        ("/web/app.js", "text/javascript", "import { PrismClient"),
        ("/web/style.css", "text/css", ".tile.speaking"),
    ] {
        let r = http.send("GET", path, None, None, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ty), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(body_text(&r).contains(needle), "{path}");
    }

    let missing = http.send("GET", "/web/nope.js", None, None, &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    let post = http.send("POST", "/", None, None, &[]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
}

#[test]
fn a_configured_path_moves_the_page_and_off_removes_it() {
    let srv = TestServer::with_env(&[("PRISM_CALL_PAGE_PATH", "/call")]);
    let http = srv.http();
    assert_eq!(http.send("GET", "/call", None, None, &[]).status, 200);
    assert_eq!(
        http.send("GET", "/web/prism.js", None, None, &[]).status,
        200
    );
    assert_eq!(http.send("GET", "/", None, None, &[]).status, 404);
    drop(srv);

    let off = TestServer::with_env(&[("PRISM_CALL_PAGE", "false")]);
    let http = off.http();
    for path in ["/", "/web/app.js", "/web/prism.js"] {
        let r = http.send("GET", path, None, None, &[]);
        assert_eq!(r.status, 404, "{path}");
    }
    // The API is unaffected.
    assert_eq!(http.get("/healthz", None).0, 200);
}
