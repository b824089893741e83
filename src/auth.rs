//! Who is connecting: HS256 JWTs for clients, a shared API key for backends.
//!
//! Owns: token verification and the claims ringcast reads. Must not touch: sockets.
//! Runs on: any thread (the verifier is built once and shared read-only).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Clock skew tolerated on `exp` and `nbf`, in seconds: hosts drift, but a token must not
/// live on much past its expiry, nor start much before its `nbf`.
pub const JWT_LEEWAY_SECONDS: u64 = 5;

/// The claims ringcast reads (PROTOCOL.md, Auth).
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    /// Required; a token without it is refused (`AuthError::MissingExp`).
    #[serde(default)]
    pub exp: u64,
    pub chans: Option<Vec<String>>,
    #[serde(rename = "pub")]
    pub pubs: Option<Vec<String>>,
    pub info: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(String),
    BadSignature,
    Expired,
    MissingExp,
    BadAlgorithm,
    /// `nbf` is still in the future (beyond the leeway).
    NotYetValid,
    /// `--jwt-audience` is set and the token's `aud` is missing or does not name it.
    WrongAudience,
    /// `--jwt-issuer` is set and the token's `iss` is missing or another.
    WrongIssuer,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => write!(f, "a token is required: pass ?token=<JWT> or Authorization: Bearer <JWT>"),
            AuthError::Malformed(why) => write!(f, "the token is not a valid JWT ({why})"),
            AuthError::BadSignature => write!(f, "the token's signature does not match this server's secret"),
            AuthError::Expired => write!(f, "the token has expired: get a fresh one and reconnect"),
            AuthError::MissingExp => write!(f, "the token has no exp claim, which is required"),
            AuthError::BadAlgorithm => write!(f, "the token must be signed with HS256"),
            AuthError::NotYetValid => write!(f, "the token is not valid yet (its nbf is in the future): check the clocks, or use it later"),
            AuthError::WrongAudience => write!(f, "the token's aud claim must name this service (server setting jwt_audience)"),
            AuthError::WrongIssuer => write!(f, "the token's iss claim must be the configured issuer (server setting jwt_issuer)"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Verifies client tokens against one HS256 secret.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    /// A verifier that checks signature, `exp` and `nbf` (when present) only.
    pub fn new(secret: &[u8]) -> JwtVerifier {
        JwtVerifier::with_claims(secret, None, None)
    }

    /// With `audience` / `issuer`, tokens must also carry that `aud` (one of its values) /
    /// `iss`; a token without the claim is refused like one with another value.
    pub fn with_claims(secret: &[u8], audience: Option<&str>, issuer: Option<&str>) -> JwtVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECONDS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        JwtVerifier { key: DecodingKey::from_secret(secret), validation }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) if data.claims.exp == 0 => Err(AuthError::MissingExp),
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingExp,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
                _ => AuthError::Malformed(e.to_string()),
            }),
        }
    }
}

/// Compares in time independent of where the strings differ.
pub fn api_key_matches(presented: &str, configured: &str) -> bool {
    let (a, b) = (presented.as_bytes(), configured.as_bytes());
    let mut difference = (a.len() != b.len()) as u8;
    for i in 0..b.len() {
        difference |= a.get(i).copied().unwrap_or(0) ^ b[i];
    }
    difference == 0
}

/// Signs claims with HS256. For tests, examples and the load-test harness; production
/// tokens come from the application's own auth service.
pub fn sign_hs256_for_tests(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn valid_token_yields_claims() {
        let token = sign_hs256_for_tests(b"s", &json!({"sub": "alice", "exp": now() + 60, "chans": ["a.>"], "pub": ["a.b"], "info": {"name": "Al"}}));
        let claims = JwtVerifier::new(b"s").verify(&token).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.chans, Some(vec!["a.>".to_string()]));
        assert_eq!(claims.pubs, Some(vec!["a.b".to_string()]));
        assert_eq!(claims.info.unwrap().get(), r#"{"name":"Al"}"#);
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let verifier = JwtVerifier::new(b"s");
        let expired = sign_hs256_for_tests(b"s", &json!({"sub": "a", "exp": now() - 60}));
        assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);
        let other = sign_hs256_for_tests(b"other", &json!({"sub": "a", "exp": now() + 60}));
        assert_eq!(verifier.verify(&other).unwrap_err(), AuthError::BadSignature);
        let no_exp = sign_hs256_for_tests(b"s", &json!({"sub": "a"}));
        assert_eq!(verifier.verify(&no_exp).unwrap_err(), AuthError::MissingExp);
        assert!(matches!(verifier.verify("abc.def").unwrap_err(), AuthError::Malformed(_)));
        // alg "none": header {"alg":"none","typ":"JWT"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(verifier.verify(none).is_err());
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let verifier = JwtVerifier::new(b"s");
        let later = sign_hs256_for_tests(b"s", &json!({"sub": "a", "exp": now() + 600, "nbf": now() + 120}));
        assert_eq!(verifier.verify(&later).unwrap_err(), AuthError::NotYetValid);
        let within_leeway = sign_hs256_for_tests(b"s", &json!({"sub": "a", "exp": now() + 600, "nbf": now() + 2}));
        assert!(verifier.verify(&within_leeway).is_ok());
        let started = sign_hs256_for_tests(b"s", &json!({"sub": "a", "exp": now() + 600, "nbf": now() - 10}));
        assert!(verifier.verify(&started).is_ok());
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let verifier = JwtVerifier::with_claims(b"s", Some("rt"), Some("auth.example"));
        let token = |claims: serde_json::Value| sign_hs256_for_tests(b"s", &claims);
        let exp = now() + 600;
        assert!(verifier.verify(&token(json!({"exp": exp, "aud": "rt", "iss": "auth.example"}))).is_ok());
        assert!(verifier.verify(&token(json!({"exp": exp, "aud": ["other", "rt"], "iss": "auth.example"}))).is_ok());
        assert_eq!(verifier.verify(&token(json!({"exp": exp, "aud": "other", "iss": "auth.example"}))).unwrap_err(), AuthError::WrongAudience);
        assert_eq!(verifier.verify(&token(json!({"exp": exp, "iss": "auth.example"}))).unwrap_err(), AuthError::WrongAudience);
        assert_eq!(verifier.verify(&token(json!({"exp": exp, "aud": "rt", "iss": "evil"}))).unwrap_err(), AuthError::WrongIssuer);
        assert_eq!(verifier.verify(&token(json!({"exp": exp, "aud": "rt"}))).unwrap_err(), AuthError::WrongIssuer);
        // Unset: aud and iss are not looked at.
        assert!(JwtVerifier::new(b"s").verify(&token(json!({"exp": exp, "aud": "any", "iss": "any"}))).is_ok());
    }

    #[test]
    fn api_key_comparison() {
        assert!(api_key_matches("key", "key"));
        assert!(!api_key_matches("kex", "key"));
        assert!(!api_key_matches("ke", "key"));
        assert!(!api_key_matches("keyy", "key"));
        assert!(!api_key_matches("", "key"));
    }
}
