//! Pusher signatures: channel auth (`auth` in `pusher:subscribe`), user sign-in, and the
//! HTTP API's request signing (`auth_signature`, `body_md5`), all HMAC-SHA256 with the
//! app's secret, hex-encoded (`../shared/PUSHER.md`, the pusher/docs auth reference).
//!
//! Owns: building the signed strings and checking signatures in constant time. Must not
//! touch: sockets, the session. Runs on: any thread.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far an API call's `auth_timestamp` may be from now (the docs: 600 s).
pub const TIMESTAMP_SKEW_SECONDS: u64 = 600;

fn mac(secret: &str, message: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    for part in message {
        mac.update(part);
    }
    mac
}

/// hex(HMAC-SHA256(secret, message)).
pub fn sign_hex(secret: &str, message: &[&[u8]]) -> String {
    hex(&mac(secret, message).finalize().into_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// Whether `signature_hex` is HMAC-SHA256(secret, message), compared in constant time.
pub fn verify_hex(secret: &str, message: &[&[u8]], signature_hex: &str) -> bool {
    match unhex(signature_hex) {
        Some(bytes) => mac(secret, message).verify_slice(&bytes).is_ok(),
        None => false,
    }
}

/// Why a channel `auth` was refused (the text of `pusher:subscription_error`).
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRefused {
    Missing,
    WrongKey,
    BadSignature,
}

impl AuthRefused {
    pub fn message(&self) -> &'static str {
        match self {
            AuthRefused::Missing => "this channel needs auth: sign it on your backend (authorizeChannel) and send {key}:{signature}",
            AuthRefused::WrongKey => "auth is signed for another app key",
            AuthRefused::BadSignature => "invalid signature: expected HMAC-SHA256 of socket_id:channel (presence: socket_id:channel:channel_data) with the app secret",
        }
    }
}

/// Checks `auth` = `"{key}:" + hex(HMAC(secret, socket_id:channel[:channel_data]))`, over
/// the raw `channel_data` string as received (libraries differ in JSON spacing).
pub fn check_channel_auth(key: &str, secret: &str, auth: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> Result<(), AuthRefused> {
    if auth.is_empty() {
        return Err(AuthRefused::Missing);
    }
    let Some((given_key, signature)) = auth.split_once(':') else { return Err(AuthRefused::BadSignature) };
    if given_key != key {
        return Err(AuthRefused::WrongKey);
    }
    let ok = match channel_data {
        Some(data) => verify_hex(secret, &[socket_id.as_bytes(), b":", channel.as_bytes(), b":", data.as_bytes()], signature),
        None => verify_hex(secret, &[socket_id.as_bytes(), b":", channel.as_bytes()], signature),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthRefused::BadSignature)
    }
}

/// `pusher:signin`: `auth` over `socket_id::user::user_data`.
pub fn check_signin(key: &str, secret: &str, auth: &str, socket_id: &str, user_data: &str) -> Result<(), AuthRefused> {
    let Some((given_key, signature)) = auth.split_once(':') else { return Err(AuthRefused::BadSignature) };
    if given_key != key {
        return Err(AuthRefused::WrongKey);
    }
    if verify_hex(secret, &[socket_id.as_bytes(), b"::user::", user_data.as_bytes()], signature) {
        Ok(())
    } else {
        Err(AuthRefused::BadSignature)
    }
}

/// Why an HTTP API request was refused: the status and what to fix.
#[derive(Debug)]
pub struct ApiRefused {
    pub status: u16,
    pub msg: String,
}

fn refused(status: u16, msg: impl Into<String>) -> ApiRefused {
    ApiRefused { status, msg: msg.into() }
}

/// Checks a signed HTTP API request: `auth_key` is the app's, `auth_timestamp` within
/// ±600 s of `now_unix`, `body_md5` matches a non-empty body, and `auth_signature` is
/// HMAC(secret, `METHOD\nPATH\nQS`) where QS is every other parameter, keys lower-cased and
/// sorted, `k=v` joined by `&`, values as decoded (the libraries sign before escaping).
/// A `body_md5` on a bodiless GET is tolerated (the Python library sends one).
pub fn check_api_request(key: &str, secret: &str, method: &str, path: &str, query: &str, body: &[u8], now_unix: u64) -> Result<(), ApiRefused> {
    let mut params: Vec<(String, String)> = Vec::new();
    let mut signature = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (crate::protocol::http::percent_decode(&k.replace('+', " ")), crate::protocol::http::percent_decode(&v.replace('+', " ")));
        if k == "auth_signature" {
            signature = Some(v);
        } else {
            params.push((k.to_ascii_lowercase(), v));
        }
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let Some(signature) = signature else { return Err(refused(401, "missing auth_signature: sign the request with the app secret (a Pusher server library does)")) };
    match get("auth_key") {
        None => return Err(refused(401, "missing auth_key")),
        Some(k) if k != key => return Err(refused(401, "auth_key is not this app's key")),
        Some(_) => {}
    }
    let Some(timestamp) = get("auth_timestamp").and_then(|t| t.parse::<u64>().ok()) else {
        return Err(refused(401, "missing or bad auth_timestamp (seconds since the Unix epoch)"));
    };
    if timestamp.abs_diff(now_unix) > TIMESTAMP_SKEW_SECONDS {
        return Err(refused(401, format!("auth_timestamp {timestamp} is more than {TIMESTAMP_SKEW_SECONDS}s from the server's clock ({now_unix}); check the clocks")));
    }
    if !body.is_empty() {
        let want = hex(&md5_digest(body));
        match get("body_md5") {
            None => return Err(refused(401, "missing body_md5 (hex MD5 of the body)")),
            Some(given) if !given.eq_ignore_ascii_case(&want) => return Err(refused(401, "body_md5 does not match the body")),
            Some(_) => {}
        }
    }
    params.sort();
    let mut qs = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            qs.push('&');
        }
        qs.push_str(k);
        qs.push('=');
        qs.push_str(v);
    }
    if verify_hex(secret, &[method.as_bytes(), b"\n", path.as_bytes(), b"\n", qs.as_bytes()], &signature) {
        Ok(())
    } else {
        Err(refused(401, "invalid auth_signature: expected hex HMAC-SHA256 of METHOD\\nPATH\\nQUERY (sorted, without auth_signature) with the app secret"))
    }
}

pub fn md5_digest(body: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn channel_auth_vector_from_the_docs() {
        let sig = sign_hex(SECRET, &[b"1234.1234:private-foobar"]);
        assert_eq!(sig, "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        let auth = format!("{KEY}:{sig}");
        assert_eq!(check_channel_auth(KEY, SECRET, &auth, "1234.1234", "private-foobar", None), Ok(()));
        assert_eq!(check_channel_auth(KEY, SECRET, &auth, "1234.1235", "private-foobar", None), Err(AuthRefused::BadSignature));
        assert_eq!(check_channel_auth("other", SECRET, &auth, "1234.1234", "private-foobar", None), Err(AuthRefused::WrongKey));
        assert_eq!(check_channel_auth(KEY, SECRET, "", "1234.1234", "private-foobar", None), Err(AuthRefused::Missing));
        assert_eq!(check_channel_auth(KEY, SECRET, &format!("{KEY}:zz"), "1234.1234", "private-foobar", None), Err(AuthRefused::BadSignature));
    }

    #[test]
    fn presence_auth_is_over_the_raw_channel_data() {
        let data = r#"{"user_id": "10", "user_info": {"name": "Mr. Pusher"}}"#;
        let sig = sign_hex(SECRET, &[b"1234.1234:presence-foobar:", data.as_bytes()]);
        let auth = format!("{KEY}:{sig}");
        assert_eq!(check_channel_auth(KEY, SECRET, &auth, "1234.1234", "presence-foobar", Some(data)), Ok(()));
        let respaced = r#"{"user_id":"10","user_info":{"name":"Mr. Pusher"}}"#;
        assert!(check_channel_auth(KEY, SECRET, &auth, "1234.1234", "presence-foobar", Some(respaced)).is_err());
    }

    #[test]
    fn signin_vector_from_the_docs() {
        let sig = sign_hex(SECRET, &[b"1234.1234::user::", br#"{"id":"12345"}"#]);
        assert_eq!(sig, "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba");
        assert!(check_signin(KEY, SECRET, &format!("{KEY}:{sig}"), "1234.1234", r#"{"id":"12345"}"#).is_ok());
    }

    #[test]
    fn api_signature_vector_from_the_docs() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(hex(&md5_digest(body)), "ec365a775a4cd0599faeb73354201b6f");
        let to_sign = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        let sig = sign_hex(SECRET, &[to_sign.as_bytes()]);
        assert_eq!(sig, "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c");
        // The query as a library sends it: any order, signature last.
        let query = format!("auth_timestamp=1353088179&auth_key={KEY}&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_version=1.0&auth_signature={sig}");
        assert!(check_api_request(KEY, SECRET, "POST", "/apps/3/events", &query, body, 1353088179 + 100).is_ok());
        let stale = check_api_request(KEY, SECRET, "POST", "/apps/3/events", &query, body, 1353088179 + 601).unwrap_err();
        assert!(stale.msg.contains("clock"), "{}", stale.msg);
        let tampered = check_api_request(KEY, SECRET, "POST", "/apps/3/events", &query, b"{}", 1353088179).unwrap_err();
        assert!(tampered.msg.contains("body_md5"), "{}", tampered.msg);
        let wrong_path = check_api_request(KEY, SECRET, "POST", "/apps/4/events", &query, body, 1353088179).unwrap_err();
        assert!(wrong_path.msg.contains("auth_signature"), "{}", wrong_path.msg);
        assert_eq!(check_api_request(KEY, SECRET, "POST", "/apps/3/events", "auth_key=x", body, 0).unwrap_err().status, 401);
    }
}
