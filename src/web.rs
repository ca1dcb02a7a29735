//! The call page: `web/` (HTML, the protocol client `prism.js`, the UI `app.js`, a
//! stylesheet) embedded into the binary and served when `call_page` is on — the page at
//! `call_page_path` (`/` by default), its assets under [`ASSET_PREFIX`].
//!
//! Everything the page loads comes from Prism itself (no CDN), so its Content Security
//! Policy allows only this origin, plus WebSocket connections for signaling (whose URL
//! is `public_url`'s, which may differ from the address the page was loaded from).
//! Called by `api::route` only; pure data, no I/O.

use crate::http::response::Response;

/// Where the page's assets are served.
pub const ASSET_PREFIX: &str = "/web/";

const INDEX_HTML: &str = include_str!("../web/index.html");
const PRISM_JS: &str = include_str!("../web/prism.js");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; media-src 'self' blob: mediastream:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The page itself.
pub fn page() -> Response {
    with_headers(Response::bytes(
        200,
        "text/html; charset=utf-8",
        INDEX_HTML.as_bytes().to_vec(),
    ))
}

/// An asset by its file name under [`ASSET_PREFIX`], or `None`.
pub fn asset(name: &str) -> Option<Response> {
    let (body, content_type) = match name {
        "prism.js" => (PRISM_JS, "text/javascript; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(with_headers(Response::bytes(
        200,
        content_type,
        body.as_bytes().to_vec(),
    )))
}

fn with_headers(r: Response) -> Response {
    r.with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
        // Camera, microphone and screen capture for this origin only.
        .with_header(
            "Permissions-Policy",
            "camera=(self), microphone=(self), display-capture=(self)",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for asset_ref in ["/web/app.js", "/web/style.css"] {
            assert!(INDEX_HTML.contains(asset_ref), "{asset_ref}");
        }
        // No external URL anywhere: everything comes from Prism itself.
        for text in [INDEX_HTML, PRISM_JS, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(APP_JS.contains("from \"./prism.js\""));
    }

    #[test]
    fn assets_have_their_types_and_unknown_names_are_none() {
        let js = asset("prism.js").unwrap();
        assert!(
            js.headers
                .iter()
                .any(|(k, v)| *k == "Content-Type" && v.starts_with("text/javascript"))
        );
        assert!(asset("style.css").is_some() && asset("app.js").is_some());
        for bad in ["index.html", "", "../Cargo.toml", "prism.js.map"] {
            assert!(asset(bad).is_none(), "{bad}");
        }
        let p = page();
        assert!(
            p.headers
                .iter()
                .any(|(k, _)| *k == "Content-Security-Policy")
        );
    }
}
