//! HTTP/1.1 for the WebSocket handshake, long-poll and the server API: one request out of
//! a byte buffer under named limits, the RFC 6455 upgrade checks, and response bytes.
//!
//! Owns: request parsing (heads via `httparse`, `Content-Length` bodies), the upgrade
//! handshake, status lines and error bodies. Does not own: sockets, timeouts, routing or
//! auth decisions (it only extracts the bearer / `?token=` value). Pure functions, run on
//! the shard thread that owns the connection.
//!
//! A partial request is `Ok(Parsed::Incomplete)`, not an error. The limits are enforced on
//! partial input too, so a peer cannot make a connection buffer an endless head, and the
//! body limit is decided from `Content-Length` before the body arrives.
//! Not supported, by choice: chunked request bodies (501), HTTP/2, pipelining beyond
//! returning `consumed` (the caller keeps the rest of the buffer).

use base64::Engine as _;

use super::ops::escape_json_str_into;

/// Bounds on one request. Defaults explain each number.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Request line without its CRLF; over it → 414.
    pub request_line_bytes_max: usize,
    /// Header fields; over it → 431.
    pub header_count_max: usize,
    /// Request line + headers + the blank line; over it → 431.
    pub head_bytes_max: usize,
    /// `Content-Length` body; over it → 413 (decided from the header alone).
    pub body_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // A path plus `?token=<JWT>`: JWTs with a few claims and a `chans` list run
            // 0.3..4 KiB. 8 KiB is the line limit nginx and most proxies use, so a request
            // that passed the proxy also passes here.
            request_line_bytes_max: 8 * 1024,
            // Browsers send 10..20 headers, proxies add a handful of X-Forwarded-*; 64
            // leaves room for both and keeps the header slot array on the stack.
            header_count_max: 64,
            // Request line plus cookies (the dashboard shares an origin with apps that set
            // them). Twice the line limit, and bounds what one connection buffers before
            // we know what it wants.
            head_bytes_max: 16 * 1024,
            // Bodies are JSON: /api/publish, /api/notify, long-poll frames. 1 MiB is far
            // above any sane message and caps what one request pins in memory.
            body_bytes_max: 1024 * 1024,
        }
    }
}

/// A request we refuse: send [`error_response`] and, for parse errors, close (the byte
/// stream can no longer be framed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub msg: &'static str,
}

impl HttpError {
    const fn new(status: u16, msg: &'static str) -> Self {
        HttpError { status, msg }
    }

    /// Headers the response for this error must carry (RFC 6455 §4.4: a 426 names the
    /// WebSocket version we speak).
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status {
            426 => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.msg)
    }
}

impl std::error::Error for HttpError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Head,
    Options,
    Other,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The target up to `?` (no percent-decoding; routes are plain ASCII).
    pub path: String,
    /// Everything after the first `?`, raw; decode with [`Request::query_param`].
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// In arrival order, names lowercased, values trimmed (non-UTF-8 bytes replaced).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this one's response.
    pub keep_alive: bool,
}

impl Request {
    /// The first header with this (lowercase) name.
    pub fn header(&self, lowercase_name: &str) -> Option<&str> {
        debug_assert!(!lowercase_name.bytes().any(|b| b.is_ascii_uppercase()));
        self.headers
            .iter()
            .find(|(name, _)| name == lowercase_name)
            .map(|(_, value)| value.as_str())
    }

    /// True when any header with this name has `token` in its comma-separated list
    /// (case-insensitive), e.g. `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, lowercase_name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(name, _)| name == lowercase_name)
            .flat_map(|(_, value)| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    }

    /// The first query parameter with this name, percent-decoded with `+` as space.
    /// Invalid `%` escapes are kept literally; invalid UTF-8 is replaced.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }
}

#[derive(Debug)]
pub enum Parsed {
    /// Need more bytes; nothing was consumed.
    Incomplete,
    /// One request; the next one (pipelined) starts at `buf[consumed..]`.
    Complete { request: Request, consumed: usize },
}

/// Header slots kept on the stack; a larger `header_count_max` allocates them.
const HEADER_SLOTS_STACK: usize = 64;

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<Parsed, HttpError> {
    check_request_line(buf, limits.request_line_bytes_max)?;

    let mut stack_slots = [httparse::EMPTY_HEADER; HEADER_SLOTS_STACK];
    let mut heap_slots;
    let slots: &mut [httparse::Header<'_>] = if limits.header_count_max <= HEADER_SLOTS_STACK {
        &mut stack_slots[..limits.header_count_max]
    } else {
        heap_slots = vec![httparse::EMPTY_HEADER; limits.header_count_max];
        &mut heap_slots
    };
    let mut head = httparse::Request::new(slots);
    // A head must end within `head_bytes_max`: parsing only that window bounds the work,
    // and a window that is full but unfinished is a head that is too large.
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let head_len = match head.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if window.len() >= limits.head_bytes_max => {
            return Err(HttpError::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(error) => return Err(map_httparse_error(error)),
    };

    let mut request = request_from_head(&head);
    check_framing(&buf[..head_len], &request)?;
    let body_len = body_length(&request, limits)?;
    let Some(consumed) = head_len
        .checked_add(body_len)
        .filter(|&end| end <= buf.len())
    else {
        return Ok(Parsed::Incomplete);
    };
    request.body = buf[head_len..consumed].to_vec();
    Ok(Parsed::Complete { request, consumed })
}

/// 414 as soon as the first line is known to be too long, complete or not.
fn check_request_line(buf: &[u8], request_line_bytes_max: usize) -> Result<(), HttpError> {
    const TOO_LONG: HttpError = HttpError::new(414, "request line too long");
    // The line plus its CRLF fits in this window when it is within the limit.
    let window = &buf[..buf.len().min(request_line_bytes_max.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let line_len = if newline > 0 && window[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if line_len > request_line_bytes_max {
                return Err(TOO_LONG);
            }
            Ok(())
        }
        None if window.len() >= request_line_bytes_max.saturating_add(2) => Err(TOO_LONG),
        None => Ok(()),
    }
}

/// What httparse tolerates but a proxy in front may read differently (RFC 9112 §2.2,
/// §3.2): a bare LF line ending, and an HTTP/1.1 request without exactly one `Host`. Where
/// two parsers disagree on where a request ends or which host it is for, requests can be
/// smuggled past the proxy's rules; refusing both ends the disagreement.
fn check_framing(head: &[u8], request: &Request) -> Result<(), HttpError> {
    let bare_lf = head.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
    if bare_lf {
        return Err(HttpError::new(400, "line endings must be CRLF (bare LF refused)"));
    }
    match request.headers.iter().filter(|(name, _)| name == "host").count() {
        0 if request.version_minor >= 1 => Err(HttpError::new(400, "an HTTP/1.1 request must carry a Host header")),
        0 | 1 => Ok(()),
        _ => Err(HttpError::new(400, "more than one Host header")),
    }
}

/// Rewrites a response built for keep-alive to say `Connection: close`, for a request that
/// asked to close (the caller closes after writing it).
pub fn set_connection_close(response: &mut Vec<u8>) {
    const KEEP: &[u8] = b"\r\nConnection: keep-alive\r\n";
    const CLOSE: &[u8] = b"\r\nConnection: close\r\n";
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |i| i + 2);
    if let Some(at) = response[..head_end].windows(KEEP.len()).position(|w| w == KEEP) {
        response.splice(at..at + KEEP.len(), CLOSE.iter().copied());
    }
}

fn map_httparse_error(error: httparse::Error) -> HttpError {
    match error {
        httparse::Error::TooManyHeaders => HttpError::new(431, "too many header fields"),
        httparse::Error::Version => HttpError::new(505, "HTTP version not supported; use HTTP/1.1"),
        httparse::Error::HeaderName => HttpError::new(400, "invalid header name"),
        httparse::Error::HeaderValue => HttpError::new(400, "invalid header value"),
        httparse::Error::NewLine => HttpError::new(400, "invalid line ending"),
        httparse::Error::Token => HttpError::new(400, "invalid request line"),
        _ => HttpError::new(400, "malformed request"),
    }
}

fn request_from_head(head: &httparse::Request<'_, '_>) -> Request {
    // httparse returned Complete: method, path and version are set.
    let method = match head.method.expect("complete head has a method") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let target = head.path.expect("complete head has a target");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let version_minor = head.version.expect("complete head has a version");
    let headers = head
        .headers
        .iter()
        .map(|header| {
            let value = String::from_utf8_lossy(header.value).trim().to_owned();
            (header.name.to_ascii_lowercase(), value)
        })
        .collect();
    let mut request = Request {
        method,
        path,
        query,
        version_minor,
        headers,
        body: Vec::new(),
        keep_alive: false,
    };
    request.keep_alive = if version_minor == 0 {
        request.header_has_token("connection", "keep-alive")
    } else {
        !request.header_has_token("connection", "close")
    };
    request
}

/// The body length from `Content-Length` (0 when absent), checked against the limit.
fn body_length(request: &Request, limits: &HttpLimits) -> Result<usize, HttpError> {
    if request.header("transfer-encoding").is_some() {
        return Err(HttpError::new(
            501,
            "Transfer-Encoding (chunked) request bodies are not supported; send Content-Length",
        ));
    }
    let mut length: Option<u64> = None;
    let values = request
        .headers
        .iter()
        .filter(|(name, _)| name == "content-length");
    // `Content-Length: 5, 5` and repeated equal headers are allowed (RFC 9110 §8.6).
    for item in values.flat_map(|(_, value)| value.split(',')) {
        let item = item.trim();
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::new(400, "invalid Content-Length"));
        }
        let parsed: u64 = item
            .parse()
            .map_err(|_| HttpError::new(400, "invalid Content-Length"))?;
        if length.is_some_and(|seen| seen != parsed) {
            return Err(HttpError::new(400, "conflicting Content-Length headers"));
        }
        length = Some(parsed);
    }
    let length = length.unwrap_or(0);
    if length > limits.body_bytes_max as u64 {
        return Err(HttpError::new(413, "request body too large"));
    }
    Ok(length as usize)
}

/// `%XX` and `+` decoding for query strings.
pub fn percent_decode(input: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = if byte == b'%' {
            let high = bytes.get(index + 1).and_then(|&digit| hex(digit));
            let low = bytes.get(index + 2).and_then(|&digit| hex(digit));
            high.zip(low).map(|(high, low)| high << 4 | low)
        } else {
            None
        };
        match (byte, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                index += 1;
            }
            (other, None) => {
                out.push(other);
                index += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket upgrade (RFC 6455 §4.2).

/// The subprotocol echoed when the client offers it (PROTOCOL.md, Transports).
pub const SUBPROTOCOL: &str = "ringcast.v1";

/// Fixed by RFC 6455 §1.3.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An accepted upgrade: what the 101 response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub accept_key: String,
    /// `Some("ringcast.v1")` when the client offered it; otherwise none is selected.
    pub protocol: Option<&'static str>,
    /// The client offered permessage-deflate in a form the server accepts (RFC 7692); the
    /// caller clears it when compression is off.
    pub deflate: bool,
}

/// Checks a WebSocket opening handshake. Errors are 405 (not GET; add `Allow: GET`),
/// 400 (not an upgrade, bad key, HTTP/1.0) or 426 (version not 13; use
/// [`error_response`] so the response carries `Sec-WebSocket-Version: 13`).
pub fn websocket_upgrade(req: &Request) -> Result<Upgrade, HttpError> {
    if req.method != Method::Get {
        return Err(HttpError::new(405, "WebSocket upgrade requires GET"));
    }
    if req.version_minor < 1 {
        return Err(HttpError::new(400, "WebSocket upgrade requires HTTP/1.1"));
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Err(HttpError::new(
            400,
            "expected an Upgrade: websocket request",
        ));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(HttpError::new(400, "expected Connection: Upgrade"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(HttpError::new(
            426,
            "unsupported Sec-WebSocket-Version; this server speaks 13",
        ));
    }
    let Some(key) = req.header("sec-websocket-key") else {
        return Err(HttpError::new(400, "missing Sec-WebSocket-Key"));
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !decoded.is_ok_and(|nonce| nonce.len() == 16) {
        return Err(HttpError::new(
            400,
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ));
    }
    // Subprotocol names are case-sensitive tokens (RFC 6455 §4.1).
    let offered = req
        .headers
        .iter()
        .filter(|(name, _)| name == "sec-websocket-protocol")
        .flat_map(|(_, value)| value.split(','))
        .any(|item| item.trim() == SUBPROTOCOL);
    let extensions = req.headers.iter().filter(|(name, _)| name == "sec-websocket-extensions").map(|(_, value)| value.as_str());
    Ok(Upgrade {
        accept_key: accept_key(key),
        protocol: offered.then_some(SUBPROTOCOL),
        deflate: super::deflate::accepts_offer(extensions),
    })
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(client_key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(client_key.as_bytes());
    sha1.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// The `101 Switching Protocols` response; WebSocket frames follow it directly.
pub fn upgrade_response(up: &Upgrade) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(up.accept_key.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(protocol) = up.protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if up.deflate {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(super::deflate::RESPONSE.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------
// Responses.

/// A complete response. `Content-Type` is left out when `content_type` is empty; 1xx,
/// 204 and 304 carry neither `Content-Length` nor a body. CR, LF and NUL in header names
/// or values are dropped, so a value derived from input cannot split the response.
/// For a HEAD request, build the GET response and send only the head.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
    keep_alive: bool,
) -> Vec<u8> {
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    debug_assert!(!bodyless || body.is_empty(), "status {status} has no body");
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status_reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !content_type.is_empty() {
        push_header(&mut out, "Content-Type", content_type);
    }
    if !bodyless {
        push_header(&mut out, "Content-Length", &body.len().to_string());
    }
    push_header(
        &mut out,
        "Connection",
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in extra_headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        out.extend_from_slice(body);
    }
    out
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let safe = |b: &u8| !matches!(b, b'\r' | b'\n' | 0);
    out.extend(name.bytes().filter(safe));
    out.extend_from_slice(b": ");
    out.extend(value.bytes().filter(safe));
    out.extend_from_slice(b"\r\n");
}

/// A JSON error response: `{"error":{"code":status,"msg":"..."}}`.
pub fn json_error(
    status: u16,
    msg: &str,
    extra_headers: &[(&str, &str)],
    keep_alive: bool,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(40 + msg.len());
    body.extend_from_slice(b"{\"error\":{\"code\":");
    body.extend_from_slice(status.to_string().as_bytes());
    body.extend_from_slice(b",\"msg\":\"");
    escape_json_str_into(&mut body, msg);
    body.extend_from_slice(b"\"}}");
    response(status, "application/json", &body, extra_headers, keep_alive)
}

/// The JSON error response for an [`HttpError`], with the headers its status requires.
pub fn error_response(error: &HttpError, keep_alive: bool) -> Vec<u8> {
    json_error(error.status, error.msg, error.extra_headers(), keep_alive)
}

pub fn status_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        request_line_bytes_max: 8 * 1024,
        header_count_max: 64,
        head_bytes_max: 16 * 1024,
        body_bytes_max: 1024 * 1024,
    };

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, &LIMITS) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn request(text: &str) -> Request {
        complete(text.as_bytes()).0
    }

    fn status_with(buf: &[u8], limits: &HttpLimits) -> u16 {
        match parse_request(buf, limits) {
            Err(error) => error.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn status(text: &str) -> u16 {
        status_with(text.as_bytes(), &LIMITS)
    }

    const UPGRADE: &str =
        "GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn defaults_match_constants() {
        let limits = HttpLimits::default();
        assert_eq!(limits.request_line_bytes_max, LIMITS.request_line_bytes_max);
        assert_eq!(limits.header_count_max, LIMITS.header_count_max);
        assert_eq!(limits.head_bytes_max, LIMITS.head_bytes_max);
        assert_eq!(limits.body_bytes_max, LIMITS.body_bytes_max);
        assert!(limits.head_bytes_max >= limits.request_line_bytes_max);
    }

    #[test]
    fn get_with_query_and_headers() {
        let (req, consumed) = complete(
            b"GET /poll/abc?ack=3&x=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case:  v \r\n\r\nNEXT",
        );
        assert_eq!(
            consumed,
            b"GET /poll/abc?ack=3&x=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case:  v \r\n\r\n".len()
        );
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/poll/abc");
        assert_eq!(req.query.as_deref(), Some("ack=3&x=1"));
        assert_eq!(req.version_minor, 1);
        assert_eq!(req.header("x-mixed-case"), Some("v"));
        assert_eq!(req.header("host"), Some("h"));
        assert!(req.keep_alive);
        assert!(req.body.is_empty());
        assert_eq!(request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").query, None);
    }

    #[test]
    fn methods() {
        for (text, method) in [
            ("GET", Method::Get),
            ("POST", Method::Post),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("DELETE", Method::Other),
            ("get", Method::Other),
        ] {
            assert_eq!(
                request(&format!("{text} / HTTP/1.1\r\nHost: t\r\n\r\n")).method,
                method
            );
        }
    }

    #[test]
    fn post_body_and_pipelining() {
        let buf = b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\n{\"a\":1}GET / HTTP/1.1\r\nHost: t\r\n\r\n";
        let (req, consumed) = complete(buf);
        assert_eq!(req.body, b"{\"a\":1}");
        let (next, rest) = complete(&buf[consumed..]);
        assert_eq!(next.path, "/");
        assert_eq!(consumed + rest, buf.len());
        // No Content-Length: an empty body.
        assert!(request("POST /poll HTTP/1.1\r\nHost: t\r\n\r\n").body.is_empty());
        // Repeated equal values are one length.
        assert_eq!(
            request("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2, 2\r\ncontent-length: 2\r\n\r\nab").body,
            b"ab"
        );
    }

    #[test]
    fn every_split_point_is_incomplete_then_complete() {
        let text = b"POST /api/notify?x=1 HTTP/1.1\r\nHost: example\r\nContent-Length: 11\r\nAuthorization: Bearer k\r\n\r\n{\"user\":42}";
        for split in 0..text.len() {
            assert!(
                matches!(
                    parse_request(&text[..split], &LIMITS),
                    Ok(Parsed::Incomplete)
                ),
                "split {split}"
            );
        }
        let (req, consumed) = complete(text);
        assert_eq!(consumed, text.len());
        assert_eq!(req.body, b"{\"user\":42}");
        assert_eq!(req.bearer_token(), Some("k"));
        for split in 0..UPGRADE.len() {
            assert!(matches!(
                parse_request(&UPGRADE.as_bytes()[..split], &LIMITS),
                Ok(Parsed::Incomplete)
            ));
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, Close\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert_eq!(request("GET / HTTP/1.0\r\n\r\n").version_minor, 0);
    }

    #[test]
    fn request_line_limit() {
        let limits = HttpLimits {
            request_line_bytes_max: 32,
            ..LIMITS
        };
        let at_limit = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(32 - 14));
        assert!(matches!(
            parse_request(at_limit.as_bytes(), &limits),
            Ok(Parsed::Complete { .. })
        ));
        let over = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(32 - 13));
        assert_eq!(status_with(over.as_bytes(), &limits), 414);
        // Unfinished and already too long: refused before the line ends.
        assert_eq!(
            status_with(format!("GET /{}", "a".repeat(40)).as_bytes(), &limits),
            414
        );
        assert!(matches!(
            parse_request(b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaa", &limits),
            Ok(Parsed::Incomplete)
        ));
        assert_eq!(
            status(&format!(
                "GET /?token={} HTTP/1.1\r\nHost: t\r\n\r\n",
                "a".repeat(9000)
            )),
            414
        );
    }

    #[test]
    fn framing_a_proxy_could_read_differently_is_refused() {
        assert_eq!(status("GET / HTTP/1.1\nHost: t\n\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(request("GET / HTTP/1.0\r\n\r\n").version_minor, 0, "HTTP/1.0 needs no Host");
        let mut response = super::response(200, "text/plain", b"Connection: keep-alive\r\n", &[], true);
        set_connection_close(&mut response);
        let text = String::from_utf8(response).unwrap();
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("Connection: keep-alive\r\n"), "the body is left alone: {text}");
    }

    #[test]
    fn header_count_limit() {
        let limits = HttpLimits {
            header_count_max: 4,
            ..LIMITS
        };
        let three = "GET / HTTP/1.1\r\nHost: t\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(
            parse_request(three.as_bytes(), &limits).map(|p| matches!(p, Parsed::Complete { .. })),
            Ok(true)
        );
        let four = "GET / HTTP/1.1\r\nHost: t\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert_eq!(status_with(four.as_bytes(), &limits), 431);
        // Detected while the head is still arriving.
        assert_eq!(
            status_with(&four.as_bytes()[..four.len() - 2], &limits),
            431
        );
        // Above the stack slots, the slots come from the heap.
        let many = HttpLimits {
            header_count_max: 100,
            ..LIMITS
        };
        let head: String = (0..79).map(|i| format!("h{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: t\r\n{head}\r\n");
        assert!(matches!(
            parse_request(text.as_bytes(), &many),
            Ok(Parsed::Complete { .. })
        ));
        assert_eq!(status(&text), 431);
    }

    #[test]
    fn head_size_limit() {
        let limits = HttpLimits {
            head_bytes_max: 64,
            ..LIMITS
        };
        let fits = format!("GET / HTTP/1.1\r\nHost: t\r\nx: {}\r\n\r\n", "v".repeat(64 - 32));
        assert_eq!(fits.len(), 64);
        assert!(matches!(
            parse_request(fits.as_bytes(), &limits),
            Ok(Parsed::Complete { .. })
        ));
        let over = format!("GET / HTTP/1.1\r\nHost: t\r\nx: {}\r\n\r\n", "v".repeat(64 - 31));
        assert_eq!(status_with(over.as_bytes(), &limits), 431);
        // A head growing with no end is refused once it reaches the limit.
        let endless = format!("GET / HTTP/1.1\r\nHost: t\r\nx: {}", "v".repeat(100));
        assert_eq!(status_with(&endless.as_bytes()[..64], &limits), 431);
        assert!(matches!(
            parse_request(&endless.as_bytes()[..63], &limits),
            Ok(Parsed::Incomplete)
        ));
        // The body does not count toward the head.
        let with_body = format!(
            "POST / HTTP/1.1\r\nHost: t\r\ncontent-length: 100\r\n\r\n{}",
            "b".repeat(100)
        );
        assert!(matches!(
            parse_request(with_body.as_bytes(), &limits),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn body_limit_decided_from_header() {
        let limits = HttpLimits {
            body_bytes_max: 10,
            ..LIMITS
        };
        assert_eq!(
            status_with(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n", &limits),
            413
        );
        let exact = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789";
        assert!(matches!(
            parse_request(exact, &limits),
            Ok(Parsed::Complete { .. })
        ));
        assert!(matches!(
            parse_request(&exact[..exact.len() - 1], &limits),
            Ok(Parsed::Incomplete)
        ));
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            413
        );
    }

    #[test]
    fn bad_content_length_and_transfer_encoding() {
        for value in ["-1", "abc", "", "1.0", "+5", "0x10", "1 2", "5,"] {
            assert_eq!(
                status(&format!(
                    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\n\r\n"
                )),
                400,
                "{value:?}"
            );
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nab"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            501
        );
        let msg = parse_request(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            &LIMITS,
        )
        .unwrap_err()
        .msg;
        assert!(msg.contains("Content-Length"), "{msg}");
    }

    #[test]
    fn malformed_heads() {
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: t\r\nbad header\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: t\r\n: novalue\r\n\r\n"), 400);
        assert_eq!(status("GET\r\n\r\n"), 400);
        assert_eq!(status("\x00\x01\x02 / HTTP/1.1\r\nHost: t\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: t\r\nx: a\rb\r\n\r\n"), 400);
    }

    #[test]
    fn query_params_are_decoded() {
        let req = request(
            "GET /ws?token=a%2Eb&x=1&sp=a+b%20c&bad=%zz%4&flag&e%6Ec=%C3%A9 HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert_eq!(req.query_param("token").as_deref(), Some("a.b"));
        assert_eq!(req.query_param("x").as_deref(), Some("1"));
        assert_eq!(req.query_param("sp").as_deref(), Some("a b c"));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("enc").as_deref(), Some("é"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(
            request("GET /ws HTTP/1.1\r\nHost: t\r\n\r\n").query_param("token"),
            None
        );
        assert_eq!(
            request("GET /ws?t=%FF HTTP/1.1\r\nHost: t\r\n\r\n")
                .query_param("t")
                .as_deref(),
            Some("\u{fffd}")
        );
        assert_eq!(
            request("GET /ws?t=1&t=2 HTTP/1.1\r\nHost: t\r\n\r\n")
                .query_param("t")
                .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn bearer_tokens() {
        let with =
            |value: &str| request(&format!("GET / HTTP/1.1\r\nHost: t\r\nAuthorization: {value}\r\n\r\n"));
        assert_eq!(with("Bearer abc.def").bearer_token(), Some("abc.def"));
        assert_eq!(with("bearer   abc").bearer_token(), Some("abc"));
        assert_eq!(with("Basic abc").bearer_token(), None);
        assert_eq!(with("Bearer").bearer_token(), None);
        assert_eq!(request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").bearer_token(), None);
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_accepted() {
        let up = websocket_upgrade(&request(UPGRADE)).unwrap();
        assert_eq!(
            up,
            Upgrade {
                accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                protocol: None,
                deflate: false,
            }
        );
        let text = String::from_utf8(upgrade_response(&up)).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));
        assert!(text.ends_with("\r\n\r\n"));
        // Token lists and case.
        let mixed = UPGRADE
            .replace("Upgrade: websocket", "Upgrade: foo/1, WebSocket")
            .replace("Connection: Upgrade", "Connection: keep-alive, upgrade");
        assert!(websocket_upgrade(&request(&mixed)).is_ok());
    }

    #[test]
    fn upgrade_subprotocol() {
        let offered = |value: &str| {
            let text = UPGRADE.replace(
                "\r\n\r\n",
                &format!("\r\nSec-WebSocket-Protocol: {value}\r\n\r\n"),
            );
            websocket_upgrade(&request(&text)).unwrap().protocol
        };
        assert_eq!(offered("foo, ringcast.v1"), Some("ringcast.v1"));
        assert_eq!(offered("ringcast.v1"), Some("ringcast.v1"));
        assert_eq!(offered("foo"), None);
        assert_eq!(offered("RINGCAST.V1"), None);
        let up = Upgrade {
            accept_key: "k".into(),
            protocol: Some(SUBPROTOCOL),
            deflate: false,
        };
        let text = String::from_utf8(upgrade_response(&up)).unwrap();
        assert!(text.contains("\r\nSec-WebSocket-Protocol: ringcast.v1\r\n"));
        assert!(!text.contains("Sec-WebSocket-Extensions"));
    }

    #[test]
    fn upgrade_permessage_deflate() {
        let offered = |value: &str| {
            let text = UPGRADE.replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Extensions: {value}\r\n\r\n"));
            websocket_upgrade(&request(&text)).unwrap()
        };
        let up = offered("permessage-deflate; client_max_window_bits");
        assert!(up.deflate);
        let text = String::from_utf8(upgrade_response(&up)).unwrap();
        assert!(text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"), "{text}");
        assert!(!offered("permessage-deflate; server_max_window_bits=9").deflate);
        assert!(!websocket_upgrade(&request(UPGRADE)).unwrap().deflate, "no offer, no extension");
    }

    #[test]
    fn upgrade_refused() {
        let refuse = |text: String| websocket_upgrade(&request(&text)).unwrap_err().status;
        let up = UPGRADE.to_string();
        assert_eq!(
            refuse(up.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
            400
        );
        assert_eq!(
            refuse(up.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==")),
            400
        );
        assert_eq!(
            refuse(up.replace("dGhlIHNhbXBsZSBub25jZQ==", "not base64!!")),
            400
        );
        assert_eq!(refuse(up.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(refuse(up.replace("Sec-WebSocket-Version: 13\r\n", "")), 426);
        assert_eq!(refuse(up.replace("Upgrade: websocket\r\n", "")), 400);
        assert_eq!(
            refuse(up.replace("Upgrade: websocket", "Upgrade: h2c")),
            400
        );
        assert_eq!(
            refuse(up.replace("Connection: Upgrade", "Connection: keep-alive")),
            400
        );
        assert_eq!(refuse(up.replace("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(refuse(up.replacen("GET", "POST", 1)), 405);

        let error =
            websocket_upgrade(&request(&up.replace("Version: 13", "Version: 8"))).unwrap_err();
        let text = String::from_utf8(error_response(&error, false)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    }

    /// Splits a response into (status line, headers, body), checking Content-Length.
    fn split_response(bytes: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let text = bytes;
        let end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&text[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let body = text[end + 4..].to_vec();
        if let Some((_, length)) = headers.iter().find(|(name, _)| name == "Content-Length") {
            assert_eq!(length.parse::<usize>().unwrap(), body.len());
        }
        (status_line, headers, body)
    }

    #[test]
    fn responses() {
        let bytes = response(200, "text/plain", b"ok", &[("X-A", "1")], true);
        let (status_line, headers, body) = split_response(&bytes);
        assert_eq!(status_line, "HTTP/1.1 200 OK");
        assert!(headers.contains(&("Content-Type".into(), "text/plain".into())));
        assert!(headers.contains(&("Connection".into(), "keep-alive".into())));
        assert!(headers.contains(&("X-A".into(), "1".into())));
        assert_eq!(body, b"ok");

        let (status_line, headers, body) = split_response(&response(204, "", b"", &[], false));
        assert_eq!(status_line, "HTTP/1.1 204 No Content");
        assert_eq!(
            headers,
            vec![("Connection".to_string(), "close".to_string())]
        );
        assert!(body.is_empty());

        assert_eq!(
            split_response(&response(599, "", b"", &[], false)).0,
            "HTTP/1.1 599 Unknown"
        );
        for status in [
            200, 202, 400, 401, 403, 404, 405, 409, 411, 413, 414, 426, 429, 431, 501, 503, 505,
        ] {
            assert_ne!(status_reason(status), "Unknown", "{status}");
        }
    }

    #[test]
    fn header_injection_is_stripped() {
        let bytes = response(200, "", b"", &[("Location", "/a\r\nSet-Cookie: x")], false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("\r\nSet-Cookie"));
    }

    #[test]
    fn json_errors_escape() {
        let bytes = json_error(400, "bad \"frame\"\n\\", &[("Retry-After", "1")], false);
        let (status_line, headers, body) = split_response(&bytes);
        assert_eq!(status_line, "HTTP/1.1 400 Bad Request");
        assert!(headers.contains(&("Content-Type".into(), "application/json".into())));
        assert!(headers.contains(&("Retry-After".into(), "1".into())));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error":{"code":400,"msg":"bad \"frame\"\n\\"}})
        );
    }

    /// Cheap stand-in for the fuzz target: random and mutated inputs never panic and never
    /// report more consumed than given.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: [&[u8]; 3] = [
            UPGRADE.as_bytes(),
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.0\r\n\r\n",
        ];
        let alphabet = b"\r\n :,%?=&+GETPOST/HTTP1.0aZ\x00\xff\t";
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % (input.len() + 1);
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < input.len() => input[at] = byte,
                    1 => input.insert(at, byte),
                    _ => input.truncate(at),
                }
            }
            if let Ok(Parsed::Complete { request, consumed }) = parse_request(&input, &LIMITS) {
                assert!(consumed <= input.len());
                let _ = websocket_upgrade(&request);
                let _ = request.query_param("token");
                let _ = request.bearer_token();
            }
        }
    }
}
