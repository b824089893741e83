//! Pusher Channels protocol 7 settings as data: the apps a node serves (id, key, secret,
//! switches) and the protocol's bounds (`../shared/PUSHER.md`).
//!
//! Owns: `--pusher-app`, `--pusher-client-events`, `--pusher-activity-timeout` and the
//! `pusher_max_*` bounds. Must not touch: runtime modules. Runs on: the main thread at
//! start-up; cloned into every shard.

use super::value::{error, parse_count, parse_duration, parse_size, ConfigError};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the server tells pusher-js in `connection_established` (`activity_timeout`, s).
pub const ACTIVITY_TIMEOUT_SECONDS: u64 = 120;
/// Event data, as the Pusher docs bound it (10 KB).
pub const EVENT_DATA_BYTES_MAX: usize = 10 * 1024;
/// Channels one `POST /events` may name.
pub const TRIGGER_CHANNELS_MAX: usize = 100;
/// Events one `POST /batch_events` may carry.
pub const BATCH_EVENTS_MAX: usize = 10;
/// Client events (`client-*`) per second per connection; past it the connection is
/// closed with 4301.
pub const CLIENT_EVENTS_PER_SECOND: u32 = 10;
/// A channel name, as the docs bound it.
pub const CHANNEL_NAME_CHARS_MAX: usize = 164;
/// `user_info` in presence `channel_data`.
pub const USER_INFO_BYTES_MAX: usize = 1024;
/// Event names (`POST /events` `name`, client events).
pub const EVENT_NAME_BYTES_MAX: usize = 200;
/// Users in one presence channel, as the docs bound it; past it a subscribe is refused.
pub const PRESENCE_MEMBERS_MAX: usize = 100;
/// How often each shard's list of a presence channel is checked against Redis (a node
/// that died sent no leaves; its members vanish from Redis with its heartbeat key).
pub const PRESENCE_RECHECK_SECONDS: u64 = 30;
/// `user_id` in presence `channel_data` and sign-in `user_data`.
pub const USER_ID_BYTES_MAX: usize = 128;

/// Pusher flags, flattened into `ringcast gateway`.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Pusher Channels protocol 7 (pusher-js, Laravel Echo, Pusher server libraries)")]
pub struct PusherArgs {
    /// Serve a Pusher app: `ID:KEY:SECRET` (ID digits; repeatable, or comma-separated).
    /// Its clients connect to `ws://HOST:PORT/app/KEY?protocol=7`; its backend signs HTTP
    /// API calls to `/apps/ID/…` and channel auth with SECRET. Each app's channels are
    /// its own namespace, on every node. [default: none, Pusher off]
    #[arg(long, env = "RINGCAST_PUSHER_APP", value_name = "ID:KEY:SECRET", value_delimiter = ',')]
    pub pusher_app: Vec<String>,
    /// Let clients of these apps send client events (`client-*` on private and presence
    /// channels, relayed to the channel's other subscribers). [default: false]
    #[arg(long, env = "RINGCAST_PUSHER_CLIENT_EVENTS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub pusher_client_events: Option<String>,
    /// `activity_timeout` told to Pusher clients: a client that hears nothing for this
    /// long sends `pusher:ping`. [default: 120s]
    #[arg(long, env = "RINGCAST_PUSHER_ACTIVITY_TIMEOUT", value_name = "DURATION")]
    pub pusher_activity_timeout: Option<String>,
    /// Largest event `data` (HTTP API and client events); past it 413 or `pusher:error`. [default: 10KiB]
    #[arg(long, env = "RINGCAST_PUSHER_MAX_EVENT_DATA", value_name = "SIZE")]
    pub pusher_max_event_data: Option<String>,
    /// Channels one `POST /apps/ID/events` may name. [default: 100]
    #[arg(long, env = "RINGCAST_PUSHER_MAX_TRIGGER_CHANNELS", value_name = "N")]
    pub pusher_max_trigger_channels: Option<String>,
    /// Events one `POST /apps/ID/batch_events` may carry. [default: 10]
    #[arg(long, env = "RINGCAST_PUSHER_MAX_BATCH_EVENTS", value_name = "N")]
    pub pusher_max_batch_events: Option<String>,
    /// Client events per second per connection; past it the connection is closed with
    /// 4301 (as Pusher does). [default: 10]
    #[arg(long, env = "RINGCAST_PUSHER_CLIENT_EVENT_RATE", value_name = "PER_SECOND")]
    pub pusher_client_event_rate: Option<String>,
    /// Users in one presence channel, across the cluster; a user past it gets
    /// `pusher:subscription_error` (403, LimitReached). Also bounds each shard's member
    /// list of the channel. [default: 100]
    #[arg(long, env = "RINGCAST_PUSHER_MAX_PRESENCE_MEMBERS", value_name = "N")]
    pub pusher_max_presence_members: Option<String>,
    /// With --redis: how often each node checks its presence member lists against Redis,
    /// so members of a node that died (no leaves sent) are removed, with
    /// `member_removed`, once its presence entries expire (presence_ttl). [default: 30s]
    #[arg(long, env = "RINGCAST_PUSHER_PRESENCE_RECHECK", value_name = "DURATION")]
    pub pusher_presence_recheck: Option<String>,
}

impl PusherArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("pusher_app", (!self.pusher_app.is_empty()).then(|| self.pusher_app.join(","))),
            ("pusher_client_events", self.pusher_client_events.clone()),
            ("pusher_activity_timeout", self.pusher_activity_timeout.clone()),
            ("pusher_max_event_data", self.pusher_max_event_data.clone()),
            ("pusher_max_trigger_channels", self.pusher_max_trigger_channels.clone()),
            ("pusher_max_batch_events", self.pusher_max_batch_events.clone()),
            ("pusher_client_event_rate", self.pusher_client_event_rate.clone()),
            ("pusher_max_presence_members", self.pusher_max_presence_members.clone()),
            ("pusher_presence_recheck", self.pusher_presence_recheck.clone()),
            // Config file only (`[[pusher_apps]]` tables, read as JSON text): per-app switches.
            ("pusher_apps", None),
        ]
    }
}

/// One Pusher app.
#[derive(Clone, PartialEq, Eq)]
pub struct PusherApp {
    /// Digits (the server libraries put it in `/apps/{id}/…`).
    pub id: String,
    pub key: String,
    pub secret: String,
    /// Client events (`client-*`) are relayed.
    pub client_events: bool,
    /// Connections of this app one node holds at most; past it `pusher:error` and close
    /// 4004 (over quota). None: only the node's `max_connections`.
    pub max_connections: Option<usize>,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: config is logged at start-up.
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("client_events", &self.client_events)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct PusherConfig {
    pub apps: Vec<PusherApp>,
    pub activity_timeout: Duration,
    pub event_data_bytes_max: usize,
    pub trigger_channels_max: usize,
    pub batch_events_max: usize,
    pub client_events_per_second: u32,
    pub presence_members_max: usize,
    pub presence_recheck: Duration,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            apps: Vec::new(),
            activity_timeout: Duration::from_secs(ACTIVITY_TIMEOUT_SECONDS),
            event_data_bytes_max: EVENT_DATA_BYTES_MAX,
            trigger_channels_max: TRIGGER_CHANNELS_MAX,
            batch_events_max: BATCH_EVENTS_MAX,
            client_events_per_second: CLIENT_EVENTS_PER_SECOND,
            presence_members_max: PRESENCE_MEMBERS_MAX,
            presence_recheck: Duration::from_secs(PRESENCE_RECHECK_SECONDS),
        }
    }
}

impl PusherConfig {
    /// The app whose clients connect with `key`, and its index (the connection keeps it).
    pub fn by_key(&self, key: &str) -> Option<(u16, &PusherApp)> {
        self.apps.iter().enumerate().find(|(_, app)| app.key == key).map(|(i, app)| (i as u16, app))
    }

    /// The app the HTTP API names by id.
    pub fn by_id(&self, id: &str) -> Option<(u16, &PusherApp)> {
        self.apps.iter().enumerate().find(|(_, app)| app.id == id).map(|(i, app)| (i as u16, app))
    }
}

/// Parses one `ID:KEY:SECRET`.
fn parse_app(text: &str, client_events: bool) -> Result<PusherApp, String> {
    let mut parts = text.trim().splitn(3, ':');
    let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{text:?}: write ID:KEY:SECRET, e.g. 1001:app-key:app-secret"));
    };
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("app id {id:?} must be 1 to 20 digits (the server libraries send it in /apps/ID/…)"));
    }
    let key_ok = |s: &str| !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !key_ok(key) {
        return Err(format!("app key {key:?} must be 1 to 100 of [A-Za-z0-9_-] (it is part of the URL /app/KEY)"));
    }
    if secret.len() < 8 {
        return Err(format!("the secret of app {id} is {} characters; give at least 8 (it signs every auth and API call)", secret.len()));
    }
    Ok(PusherApp { id: id.into(), key: key.into(), secret: secret.into(), client_events, max_connections: None })
}

/// One `[[pusher_apps]]` table of the config file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppTable {
    id: serde_json::Value,
    key: String,
    secret: String,
    /// Default: as `pusher_client_events` says for every app.
    client_events: Option<bool>,
    max_connections: Option<usize>,
}

/// The config file's `[[pusher_apps]]` tables (handed over as JSON text): apps with
/// their own switches.
fn parse_app_tables(json: &str, client_events: bool) -> Result<Vec<PusherApp>, String> {
    let tables: Vec<AppTable> = serde_json::from_str(json).map_err(|e| format!("each [[pusher_apps]] table takes id, key, secret, client_events?, max_connections?: {e}"))?;
    tables
        .into_iter()
        .map(|t| {
            let id = match &t.id {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut app = parse_app(&format!("{id}:{}:{}", t.key, t.secret), t.client_events.unwrap_or(client_events))?;
            if t.max_connections == Some(0) {
                return Err(format!("app {id}: max_connections must be at least 1 (leave it out for no per-app bound)"));
            }
            app.max_connections = t.max_connections;
            Ok(app)
        })
        .collect()
}

pub fn build(values: &BTreeMap<&str, String>) -> Result<PusherConfig, ConfigError> {
    let mut c = PusherConfig::default();
    let client_events = match values.get("pusher_client_events") {
        Some(text) => super::value::parse_bool(text).map_err(|m| error("pusher_client_events", m))?,
        None => false,
    };
    if let Some(text) = values.get("pusher_app") {
        for one in text.split(',').filter(|s| !s.trim().is_empty()) {
            let app = parse_app(one, client_events).map_err(|m| error("pusher_app", m))?;
            if c.apps.iter().any(|a| a.id == app.id || a.key == app.key) {
                return Err(error("pusher_app", format!("app id {} or key {} is given twice; each app needs its own id and key", app.id, app.key)));
            }
            c.apps.push(app);
        }
    }
    if let Some(json) = values.get("pusher_apps") {
        for app in parse_app_tables(json, client_events).map_err(|m| error("pusher_apps", m))? {
            if c.apps.iter().any(|a| a.id == app.id || a.key == app.key) {
                return Err(error("pusher_apps", format!("app id {} or key {} is given twice; each app needs its own id and key", app.id, app.key)));
            }
            c.apps.push(app);
        }
    }
    if c.apps.len() > u16::MAX as usize {
        return Err(error("pusher_app", "more than 65535 apps"));
    }
    if let Some(text) = values.get("pusher_activity_timeout") {
        c.activity_timeout = parse_duration(text).map_err(|m| error("pusher_activity_timeout", m))?;
        if c.activity_timeout < Duration::from_secs(1) {
            return Err(error("pusher_activity_timeout", "must be at least 1s (pusher-js counts it in seconds)"));
        }
    }
    if let Some(text) = values.get("pusher_max_event_data") {
        c.event_data_bytes_max = parse_size(text).map_err(|m| error("pusher_max_event_data", m))?;
    }
    for (key, slot) in [
        ("pusher_max_trigger_channels", &mut c.trigger_channels_max),
        ("pusher_max_batch_events", &mut c.batch_events_max),
        ("pusher_max_presence_members", &mut c.presence_members_max),
    ] {
        if let Some(text) = values.get(key) {
            *slot = parse_count(text).map_err(|m| error(key, m))?;
            if *slot == 0 {
                return Err(error(key, "must be at least 1"));
            }
        }
    }
    if let Some(text) = values.get("pusher_presence_recheck") {
        c.presence_recheck = parse_duration(text).map_err(|m| error("pusher_presence_recheck", m))?;
        if c.presence_recheck < Duration::from_millis(100) {
            return Err(error("pusher_presence_recheck", "must be at least 100ms (each check is a Redis query per channel per shard)"));
        }
    }
    if let Some(text) = values.get("pusher_client_event_rate") {
        c.client_events_per_second = parse_count(text).map_err(|m| error("pusher_client_event_rate", m))?.min(u32::MAX as usize) as u32;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn apps_parse_and_refuse() {
        let c = build(&values(&[("pusher_app", "1:k1:secret-one,22:k2:secret:two"), ("pusher_client_events", "true")])).unwrap();
        assert_eq!(c.apps.len(), 2);
        assert_eq!(c.apps[1].secret, "secret:two", "a secret may hold colons");
        assert!(c.apps[0].client_events);
        assert_eq!(c.by_key("k2").unwrap().0, 1);
        assert_eq!(c.by_id("1").unwrap().1.key, "k1");
        assert!(c.by_key("nope").is_none());
        for bad in ["x:k:secret-123", "1:k", "1:k/y:secret-123", "1:k:short", "1:k:secret-one,1:k9:secret-two"] {
            assert_eq!(build(&values(&[("pusher_app", bad)])).unwrap_err().key, "pusher_app", "{bad}");
        }
        assert!(!format!("{:?}", c.apps[0]).contains("secret-one"), "Debug never prints a secret");
    }

    #[test]
    fn app_tables_carry_per_app_switches() {
        let json = r#"[{"id":5151,"key":"quota","secret":"quota-secret","max_connections":2},{"id":"5152","key":"events","secret":"events-secret","client_events":true}]"#;
        let c = build(&values(&[("pusher_app", "1:k1:secret-one"), ("pusher_apps", json)])).unwrap();
        assert_eq!(c.apps.len(), 3);
        let (_, quota) = c.by_id("5151").unwrap();
        assert_eq!((quota.max_connections, quota.client_events), (Some(2), false), "an integer id is read as its digits");
        let (_, events) = c.by_key("events").unwrap();
        assert_eq!((events.max_connections, events.client_events), (None, true));
        for bad in [
            r#"[{"id":"1","key":"k1","secret":"another-secret"}]"#,
            r#"[{"id":"9","key":"k9","secret":"nine-secret","max_connection":3}]"#,
            r#"[{"id":"9","key":"k9","secret":"nine-secret","max_connections":0}]"#,
            r#"[{"id":"x","key":"k9","secret":"nine-secret"}]"#,
        ] {
            assert_eq!(build(&values(&[("pusher_app", "1:k1:secret-one"), ("pusher_apps", bad)])).unwrap_err().key, "pusher_apps", "{bad}");
        }
    }

    #[test]
    fn bounds() {
        let c = build(&values(&[("pusher_max_event_data", "20KiB"), ("pusher_max_trigger_channels", "5"), ("pusher_activity_timeout", "30s")])).unwrap();
        assert_eq!(c.event_data_bytes_max, 20 * 1024);
        assert_eq!(c.trigger_channels_max, 5);
        assert_eq!(c.activity_timeout, Duration::from_secs(30));
        assert_eq!(build(&values(&[("pusher_max_batch_events", "0")])).unwrap_err().key, "pusher_max_batch_events");
        assert_eq!(build(&values(&[("pusher_activity_timeout", "10ms")])).unwrap_err().key, "pusher_activity_timeout");
        let d = build(&values(&[])).unwrap();
        assert!(d.apps.is_empty());
        assert_eq!((d.event_data_bytes_max, d.trigger_channels_max, d.batch_events_max), (10 * 1024, 100, 10));
    }
}
