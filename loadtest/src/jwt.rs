//! HS256 JSON Web Tokens for client connections (`notify`: one user per connection).
//!
//! Owns: encoding `{"alg":"HS256","typ":"JWT"}`.`{"sub":..,"exp":..}` and its signature
//! (RFC 7519 / RFC 7515, base64url without padding). Pure bytes; the worker builds one
//! token per connection attempt, so no token is held per idle connection.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The JOSE header every token carries, pre-encoded.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// An HS256 token for user `sub` expiring at `exp` (seconds since the Unix epoch).
pub fn hs256(secret: &[u8], sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": exp}).to_string();
    let mut token = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(token.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    token.push('.');
    token.push_str(&signature);
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_hs256_and_token_matches_a_known_vector() {
        assert_eq!(URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap(), br#"{"alg":"HS256","typ":"JWT"}"#);
        let t = hs256(b"s3cret", "u1", 2_000_000_000);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims, serde_json::json!({"sub": "u1", "exp": 2_000_000_000u64}));
        // Recomputed independently: HMAC-SHA256 over "header.claims" with the secret.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert!(mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).is_ok());
        assert_ne!(hs256(b"other", "u1", 2_000_000_000), t, "the secret matters");
        // No characters that would need escaping in a query string.
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
}
