//! Who a connection is: the token from `?token=` or `Authorization: Bearer`, verified, into
//! the connection's `Identity` (user, channel grants, presence info, expiry). Every wire
//! that upgrades over HTTP asks here.
//!
//! Owns: reading a request's credentials. Must not touch: sockets. Runs on: the shard
//! that received the request.

use crate::auth::AuthError;
use crate::channel;
use crate::protocol::http::Request;
use crate::shard::{Identity, Shard};

/// Token from `?token=` or `Authorization: Bearer`. With no secret configured every
/// connection is anonymous (local quick start); with one, a token is required unless
/// anonymous access is switched on.
pub fn authenticate(shard: &Shard, request: &Request) -> Result<Option<Box<Identity>>, AuthError> {
    let Some(verifier) = shard.node.jwt.as_ref() else { return Ok(None) };
    let token = request.query_param("token").or_else(|| request.bearer_token().map(str::to_owned));
    let Some(token) = token else {
        return if shard.node.config.allow_anonymous { Ok(None) } else { Err(AuthError::Missing) };
    };
    let claims = verifier.verify(&token)?;
    if let Some(sub) = claims.sub.as_deref() {
        if !channel::is_valid_token(sub) {
            return Err(AuthError::Malformed(format!("sub {sub:?} must be one channel token ([A-Za-z0-9_-]), as it names user.{{sub}}")));
        }
    }
    Ok(Some(Box::new(Identity {
        user: claims.sub,
        chans: claims.chans.map(valid_patterns),
        pubs: claims.pubs.map(valid_patterns),
        info: claims.info,
        expires_unix: claims.exp,
    })))
}

/// Drops claim entries that are not valid patterns: a malformed entry like `a.>.b` must
/// grant nothing rather than something its author did not mean.
fn valid_patterns(mut patterns: Vec<String>) -> Vec<String> {
    patterns.retain(|p| {
        let valid = channel::validate_pattern(p).is_ok();
        if !valid {
            tracing::warn!(pattern = %p, "ignoring an invalid pattern in a token's chans/pub claim");
        }
        valid
    });
    patterns
}

