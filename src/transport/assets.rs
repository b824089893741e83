//! The files the gateway serves itself: the live dashboard (`GET /`) and the browser
//! client (`GET /ringcast.js`), compiled into the binary so a node needs no files, no
//! build step and no network to show them.
//!
//! Owns: the embedded bytes, their content types, cache headers and ETags. Must not
//! touch: sockets (it returns response bytes). Runs on: the shard serving the request.
//!
//! Caching: both answer `If-None-Match` with 304. The page is `no-cache` (revalidated on
//! every load, so an upgraded node shows its new dashboard at once); the client is
//! cacheable for [`CLIENT_MAX_AGE_SECONDS`], short enough that pages pick up a new
//! version within minutes of an upgrade.

use crate::protocol::http::{self as h, Request};

/// The dashboard: one HTML file with its style inline, and its script.
pub const DASHBOARD_HTML: &[u8] = include_bytes!("../../assets/dashboard.html");
/// The dashboard's script: a file of its own, so the CSP needs no `'unsafe-inline'` for
/// scripts (a forged feed value that slipped into markup still could not run).
pub const DASHBOARD_JS: &[u8] = include_bytes!("../../assets/dashboard.js");
/// The browser client, exactly the file the npm package ships.
pub const RINGCAST_JS: &[u8] = include_bytes!("../../clients/js/ringcast.js");

/// How long a browser may reuse `/ringcast.js` without asking again.
pub const CLIENT_MAX_AGE_SECONDS: u32 = 300;

/// The page loads only its own scripts (`/dashboard.js`, `/ringcast.js`; no inline script)
/// and talks only to its own origin (WebSocket and long-poll): nothing from anywhere else.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// FNV-1a, 64 bit, at compile time: an ETag that changes whenever the bytes do.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const DASHBOARD_HASH: u64 = fnv1a(DASHBOARD_HTML);
const RINGCAST_JS_HASH: u64 = fnv1a(RINGCAST_JS);
const DASHBOARD_JS_HASH: u64 = fnv1a(DASHBOARD_JS);

struct Asset {
    body: &'static [u8],
    hash: u64,
    content_type: &'static str,
    cache_control: String,
    csp: Option<&'static str>,
}

fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/index.html" => Some(Asset {
            body: DASHBOARD_HTML,
            hash: DASHBOARD_HASH,
            content_type: "text/html; charset=utf-8",
            cache_control: "no-cache".into(),
            csp: Some(DASHBOARD_CSP),
        }),
        "/dashboard.js" => Some(Asset {
            body: DASHBOARD_JS,
            hash: DASHBOARD_JS_HASH,
            content_type: "text/javascript; charset=utf-8",
            // Revalidated like the page, so page and script always match.
            cache_control: "no-cache".into(),
            csp: None,
        }),
        "/ringcast.js" => Some(Asset {
            body: RINGCAST_JS,
            hash: RINGCAST_JS_HASH,
            content_type: "text/javascript; charset=utf-8",
            cache_control: format!("public, max-age={CLIENT_MAX_AGE_SECONDS}"),
            csp: None,
        }),
        _ => None,
    }
}

/// True for the paths this module serves.
pub fn serves(path: &str) -> bool {
    asset(path).is_some()
}

/// The full response for a GET/HEAD of an asset path (see [`serves`]): 200 with the
/// bytes, or 304 when the client's `If-None-Match` names the current version.
pub fn respond(request: &Request) -> Vec<u8> {
    let Some(asset) = asset(&request.path) else {
        return h::json_error(404, "no such asset", &[], true);
    };
    let etag = format!("\"{}-{:016x}\"", env!("CARGO_PKG_VERSION"), asset.hash);
    let mut headers: Vec<(&str, &str)> = vec![
        ("ETag", &etag),
        ("Cache-Control", &asset.cache_control),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ];
    if let Some(csp) = asset.csp {
        headers.push(("Content-Security-Policy", csp));
    }
    if matches_etag(request.header("if-none-match"), &etag) {
        return h::response(304, "", b"", &headers, true);
    }
    h::response(200, asset.content_type, asset.body, &headers, true)
}

/// `If-None-Match: "a", W/"b"` or `*` (RFC 9110 §13.1.2, weak comparison).
fn matches_etag(header: Option<&str>, etag: &str) -> bool {
    header.is_some_and(|value| value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_and_look_right() {
        let html = std::str::from_utf8(DASHBOARD_HTML).unwrap();
        assert!(html.starts_with("<!doctype html>"), "the dashboard is an HTML5 page");
        assert!(html.contains("/ringcast.js") && html.contains("/dashboard.js"), "it loads the client and its script");
        assert!(!html.contains("<script>"), "no inline script: the CSP refuses it");
        let script = std::str::from_utf8(DASHBOARD_JS).unwrap();
        assert!(script.contains("$sys.metrics"), "it subscribes to the feed");
        assert!(!script.contains("innerHTML"), "feed data is rendered as text only");
        for text in [html, script] {
            assert!(!text.contains("http://") && !text.contains("https://"), "no external resources: operators may be offline");
        }
        let js = std::str::from_utf8(RINGCAST_JS).unwrap();
        assert!(js.contains("function connect"), "the client is the real one");
    }

    #[test]
    fn etags_compare_weakly() {
        assert!(matches_etag(Some("\"x\""), "\"x\""));
        assert!(matches_etag(Some("W/\"x\", \"y\""), "\"x\""));
        assert!(matches_etag(Some("*"), "\"x\""));
        assert!(!matches_etag(Some("\"y\""), "\"x\""));
        assert!(!matches_etag(None, "\"x\""));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
