//! Who may subscribe to and publish on what (PROTOCOL.md, "Auth" and "Channels").
//!
//! Owns: the subscribe/publish rules and the delivery-time guard for private channels.
//! Must not touch: sockets, tokens (it sees already-verified claims). Runs on: any thread.
//!
//! Two layers keep `user.{id}` private: subscribing to another user's private channel by
//! name (or to `user.*`/`user.>`) is refused, and [`may_receive`] filters every delivery
//! on a private channel, so a broad pattern like `>` or `*.bob` can never leak one.
//! Publishing to another user's private channel needs a `pub` claim that covers it (a
//! direct message the application chose to allow).
//!
//! `chans` and `pub` entries are validated when the token is accepted (see
//! `transport::http::authenticate`): an invalid entry never reaches these checks.

use crate::channel::{covers, PRES_TOKEN, SYS_TOKEN, USER_TOKEN};

/// The verified identity of a connection, as far as permissions go.
pub struct Principal<'a> {
    /// JWT `sub`; `None` for an anonymous connection.
    pub user: Option<&'a str>,
    /// JWT `chans`: patterns the connection may subscribe to (absent: everything public).
    pub chans: Option<&'a [String]>,
    /// JWT `pub`: patterns it may publish to (absent: no publishing).
    pub pubs: Option<&'a [String]>,
    /// Node setting: may clients subscribe to `$sys.*`?
    pub sys_allowed: bool,
    /// With `sys_allowed`: may anonymous connections too? True when the node has no JWT
    /// secret, where every connection is anonymous and turning `sys_subscribe` on can only
    /// mean "let the dashboard in" (docs/protocol-notes.md).
    pub sys_anonymous: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    pub code: u16,
    pub msg: String,
}

fn denied(msg: impl Into<String>) -> Result<(), Denied> {
    Err(Denied { code: 403, msg: msg.into() })
}

/// May this connection subscribe to `pattern` (already syntax-checked)?
pub fn check_subscribe(p: &Principal, pattern: &str) -> Result<(), Denied> {
    let mut tokens = pattern.split('.');
    let first = tokens.next().unwrap_or("");
    let second = tokens.next();
    if first == PRES_TOKEN {
        return denied("$pres.* channels are internal; subscribe to the channel with \"presence\":true to get its join/leave frames");
    }
    if first == crate::channel::PUSHER_TOKEN {
        return denied("$pusher.* channels belong to Pusher apps; connect with a Pusher client to /app/{key}");
    }
    if first == SYS_TOKEN {
        if p.user.is_none() && !(p.sys_allowed && p.sys_anonymous) {
            return denied("anonymous connections may not subscribe to $sys.* channels; connect with a token");
        }
        if !p.sys_allowed {
            return denied("$sys.* channels are not open to clients on this node (server setting sys_subscribe)");
        }
    }
    if first == USER_TOKEN {
        if let Some(owner) = second {
            match p.user {
                None => return denied("anonymous connections may not subscribe to private user.* channels"),
                Some(_) if owner == "*" || owner == ">" => {
                    return denied(format!("{pattern} would reach other users' private channels; subscribe to user.{{your id}} instead"));
                }
                Some(me) if me == owner => return Ok(()),
                Some(_) => return denied(format!("user.{owner} is private to user {owner}")),
            }
        }
    }
    match p.chans {
        Some(chans) if !chans.iter().any(|allowed| covers(allowed, pattern)) => {
            denied(format!("your token's chans claim does not allow {pattern}"))
        }
        _ => Ok(()),
    }
}

/// May this connection publish on `channel` (already syntax-checked, no wildcards)?
pub fn check_publish(p: &Principal, channel: &str) -> Result<(), Denied> {
    if channel.split('.').next() == Some(SYS_TOKEN) {
        return denied("$sys.* channels are published by the server only");
    }
    if channel.split('.').next() == Some(PRES_TOKEN) {
        return denied("$pres.* channels are published by the server only (presence join/leave frames)");
    }
    if p.user.is_none() {
        return denied("anonymous connections may not publish; connect with a token that has a pub claim");
    }
    match p.pubs {
        None => denied("your token has no pub claim, so it may not publish"),
        Some(pubs) if pubs.iter().any(|allowed| covers(allowed, channel)) => Ok(()),
        Some(_) => denied(format!("your token's pub claim does not allow {channel}")),
    }
}

/// Delivery-time guard: a private channel `user.X(.…)` reaches only user X, whatever
/// pattern matched it.
pub fn may_receive(user: Option<&str>, channel: &str) -> bool {
    match crate::channel::private_owner(channel) {
        Some(owner) => user == Some(owner),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal<'a>(user: Option<&'a str>, chans: Option<&'a [String]>, pubs: Option<&'a [String]>) -> Principal<'a> {
        Principal { user, chans, pubs, sys_allowed: false, sys_anonymous: false }
    }

    #[test]
    fn anonymous_subscriptions() {
        let anon = principal(None, None, None);
        for ok in [">", "a.b", "*.b", "a.*", "chat.>", "user"] {
            assert_eq!(check_subscribe(&anon, ok), Ok(()), "{ok}");
        }
        for no in ["user.bob", "user.*", "user.>", "user.bob.inbox", "$sys.metrics", "$sys.>"] {
            assert_eq!(check_subscribe(&anon, no).unwrap_err().code, 403, "{no}");
        }
    }

    #[test]
    fn private_channels_belong_to_their_user() {
        let alice = principal(Some("alice"), None, None);
        assert_eq!(check_subscribe(&alice, "user.alice"), Ok(()));
        assert_eq!(check_subscribe(&alice, "user.alice.>"), Ok(()));
        let e = check_subscribe(&alice, "user.bob").unwrap_err();
        assert!(e.msg.contains("private to user bob"), "{}", e.msg);
        assert!(check_subscribe(&alice, "user.*").unwrap_err().msg.contains("user.{your id}"));
        assert!(check_subscribe(&alice, "user.>").is_err());
        // Broad patterns are allowed; delivery filters private channels.
        assert_eq!(check_subscribe(&alice, ">"), Ok(()));
        assert_eq!(check_subscribe(&alice, "*.bob"), Ok(()));
        assert!(may_receive(Some("bob"), "user.bob"));
        assert!(may_receive(Some("bob"), "user.bob.inbox"));
        assert!(!may_receive(Some("alice"), "user.bob"));
        assert!(!may_receive(None, "user.bob"));
        assert!(may_receive(None, "chat.lobby"));
        assert!(may_receive(None, "user"));
    }

    #[test]
    fn chans_claim_limits_subscriptions_but_not_the_own_channel() {
        let chans = vec!["chat.>".to_string(), "dev.*.temp".to_string()];
        let p = principal(Some("alice"), Some(&chans), None);
        assert_eq!(check_subscribe(&p, "chat.lobby"), Ok(()));
        assert_eq!(check_subscribe(&p, "chat.*"), Ok(()));
        assert_eq!(check_subscribe(&p, "dev.d1.temp"), Ok(()));
        assert_eq!(check_subscribe(&p, "user.alice"), Ok(()));
        assert!(check_subscribe(&p, "dev.>").unwrap_err().msg.contains("chans"));
        assert!(check_subscribe(&p, ">").is_err());
    }

    #[test]
    fn sys_channels_need_the_node_setting_and_a_user() {
        let mut p = principal(Some("ops"), None, None);
        assert!(check_subscribe(&p, "$sys.metrics").unwrap_err().msg.contains("sys_subscribe"));
        p.sys_allowed = true;
        assert_eq!(check_subscribe(&p, "$sys.metrics"), Ok(()));
        let chans = vec![">".to_string()];
        p.chans = Some(&chans);
        assert!(check_subscribe(&p, "$sys.metrics").is_err(), "`>` in chans does not grant $sys");
        let anon = Principal { user: None, chans: None, pubs: None, sys_allowed: true, sys_anonymous: false };
        assert!(check_subscribe(&anon, "$sys.metrics").is_err());
        let chans = vec!["$sys.>".to_string()];
        p.chans = Some(&chans);
        assert_eq!(check_subscribe(&p, "$sys.metrics"), Ok(()), "a chans entry naming $sys grants it");
    }

    #[test]
    fn without_a_jwt_secret_sys_subscribe_opens_sys_to_anonymous_connections() {
        let open = Principal { user: None, chans: None, pubs: None, sys_allowed: true, sys_anonymous: true };
        assert_eq!(check_subscribe(&open, "$sys.metrics"), Ok(()));
        assert!(check_publish(&open, "$sys.metrics").is_err(), "never publish");
        assert!(check_subscribe(&open, "user.bob").is_err(), "private channels stay private");
        let closed = Principal { sys_allowed: false, ..open };
        assert!(check_subscribe(&closed, "$sys.metrics").is_err(), "sys_subscribe off: nobody");
    }

    #[test]
    fn publishing_needs_a_covering_pub_claim() {
        let pubs = vec!["chat.>".to_string(), "user.bob".to_string()];
        let p = principal(Some("alice"), None, Some(&pubs));
        assert_eq!(check_publish(&p, "chat.lobby"), Ok(()));
        assert_eq!(check_publish(&p, "user.bob"), Ok(()));
        assert!(check_publish(&p, "news.today").unwrap_err().msg.contains("pub claim"));
        assert!(check_publish(&p, "$sys.metrics").unwrap_err().msg.contains("server only"));
        assert!(check_publish(&principal(Some("alice"), None, None), "chat.lobby").unwrap_err().msg.contains("no pub claim"));
        assert!(check_publish(&principal(None, None, Some(&pubs)), "chat.lobby").unwrap_err().msg.contains("anonymous"));
    }
}
