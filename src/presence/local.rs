//! This node's presence, as the shards reported it: the source of truth the backend
//! (memory or Redis) is a projection of. A Redis outage loses nothing here, and on
//! recovery every live entry is written again from this state.
//!
//! Owns: connection → (user, joined channels), user → live identified connections.
//! Runs on: the bridge thread only.

use super::Op;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

struct LocalConn {
    user: Option<Arc<str>>,
    /// Counted in `users` (a `Connect` arrived for it).
    online: bool,
    /// (channel, member JSON) for every channel joined with presence.
    joined: Vec<(Arc<str>, Arc<str>)>,
}

/// What one change did, for the backend and the `join`/`leave` frames.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub ops: Vec<Op>,
    /// (channel, user, conn, joined?) for a frame on `$pres.{channel}`.
    pub frames: Vec<(Arc<str>, Option<Arc<str>>, u64, bool)>,
    /// A user whose local connection count went from 0 to 1.
    pub came_online: Option<Arc<str>>,
}

#[derive(Default)]
pub struct LocalState {
    conns: HashMap<u64, LocalConn>,
    users: HashMap<Arc<str>, u32>,
    members: usize,
    /// channel → members on this node.
    channels: HashMap<Arc<str>, u32>,
}

impl LocalState {
    pub fn members(&self) -> usize {
        self.members
    }

    pub fn online_users(&self) -> usize {
        self.users.len()
    }

    /// Members of `channel` on this node now.
    pub fn channel_members(&self, channel: &str) -> u32 {
        self.channels.get(channel).copied().unwrap_or(0)
    }

    fn channel_left(&mut self, channel: &str) {
        if let Some(count) = self.channels.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                self.channels.remove(channel);
            }
        }
    }

    pub fn connect(&mut self, conn: u64, user: Arc<str>) -> Applied {
        let mut applied = Applied::default();
        let entry = self.conns.entry(conn).or_insert_with(|| LocalConn { user: Some(user.clone()), online: false, joined: Vec::new() });
        if entry.online {
            return applied;
        }
        entry.online = true;
        entry.user = Some(user.clone());
        let count = self.users.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            applied.came_online = Some(user.clone());
        }
        applied.ops.push(Op::Online { user, conn });
        applied
    }

    /// Joins `channel`; `member` is built only when the connection was not in it yet.
    pub fn join(&mut self, channel: Arc<str>, conn: u64, user: Option<Arc<str>>, member: impl FnOnce() -> Arc<str>) -> Applied {
        let mut applied = Applied::default();
        let entry = self.conns.entry(conn).or_insert_with(|| LocalConn { user: user.clone(), online: false, joined: Vec::new() });
        if entry.joined.iter().any(|(c, _)| *c == channel) {
            return applied;
        }
        let member = member();
        entry.joined.push((channel.clone(), member.clone()));
        self.members += 1;
        *self.channels.entry(channel.clone()).or_insert(0) += 1;
        applied.frames.push((channel.clone(), entry.user.clone(), conn, true));
        applied.ops.push(Op::Join { channel, conn, member });
        applied
    }

    pub fn leave(&mut self, channel: &str, conn: u64) -> Applied {
        let mut applied = Applied::default();
        let Some(entry) = self.conns.get_mut(&conn) else { return applied };
        let Some(position) = entry.joined.iter().position(|(c, _)| &**c == channel) else { return applied };
        let (channel, _) = entry.joined.swap_remove(position);
        self.members -= 1;
        let user = entry.user.clone();
        let drop_conn = !entry.online && entry.joined.is_empty();
        self.channel_left(&channel);
        applied.frames.push((channel.clone(), user, conn, false));
        applied.ops.push(Op::Leave { channel, conn });
        if drop_conn {
            self.conns.remove(&conn);
        }
        applied
    }

    /// The connection is gone: it leaves every channel and, if identified, goes offline.
    pub fn disconnect(&mut self, conn: u64) -> Applied {
        let mut applied = Applied::default();
        let Some(entry) = self.conns.remove(&conn) else { return applied };
        for (channel, _) in entry.joined {
            self.members -= 1;
            self.channel_left(&channel);
            applied.frames.push((channel.clone(), entry.user.clone(), conn, false));
            applied.ops.push(Op::Leave { channel, conn });
        }
        if let (true, Some(user)) = (entry.online, entry.user) {
            if let Some(count) = self.users.get_mut(&user) {
                *count -= 1;
                if *count == 0 {
                    self.users.remove(&user);
                }
            }
            applied.ops.push(Op::Offline { user, conn });
        }
        applied
    }

    /// Every live entry as a write, for a full resync after the backend lost them.
    pub fn snapshot(&self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(self.conns.len() + self.members);
        for (conn, entry) in &self.conns {
            if let (true, Some(user)) = (entry.online, &entry.user) {
                ops.push(Op::Online { user: user.clone(), conn: *conn });
            }
            for (channel, member) in &entry.joined {
                ops.push(Op::Join { channel: channel.clone(), conn: *conn, member: member.clone() });
            }
        }
        ops
    }
}

/// `{"user":..|null,"conn":..,"node":..,"joined":<unix ms>,"info"?:..}`.
pub fn member_json(user: Option<&str>, conn: u64, node: &str, joined_unix_ms: u64, info: Option<&RawValue>) -> Arc<str> {
    let user = match user {
        Some(user) => serde_json::Value::String(user.to_owned()).to_string(),
        None => "null".to_owned(),
    };
    let node = serde_json::Value::String(node.to_owned()).to_string();
    let mut json = format!("{{\"user\":{user},\"conn\":{conn},\"node\":{node},\"joined\":{joined_unix_ms}");
    if let Some(info) = info {
        json.push_str(",\"info\":");
        json.push_str(info.get());
    }
    json.push('}');
    json.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_implies_leaves_and_offline() {
        let mut s = LocalState::default();
        let ann: Arc<str> = "ann".into();
        assert_eq!(s.connect(1, ann.clone()).came_online, Some(ann.clone()));
        assert_eq!(s.connect(2, ann.clone()).came_online, None, "second connection: already online");
        let joined = s.join("room".into(), 1, Some(ann.clone()), || "{}".into());
        assert_eq!(joined.frames, vec![("room".into(), Some(ann.clone()), 1, true)]);
        assert!(s.join("room".into(), 1, Some(ann.clone()), || unreachable!()).ops.is_empty(), "joining twice is one member");
        s.join("anon".into(), 9, None, || "{}".into());
        assert_eq!((s.members(), s.online_users()), (2, 1));
        assert_eq!(s.snapshot().len(), 4);
        let gone = s.disconnect(1);
        assert_eq!(gone.ops.len(), 2);
        assert_eq!(gone.frames, vec![("room".into(), Some(ann.clone()), 1, false)]);
        assert_eq!(s.online_users(), 1);
        s.disconnect(2);
        assert_eq!(s.online_users(), 0);
        assert_eq!(s.leave("anon", 9).frames, vec![("anon".into(), None, 9, false)]);
        assert!(s.snapshot().is_empty() && s.members() == 0);
        assert_eq!(s.channel_members("room") + s.channel_members("anon"), 0, "channel counts follow leaves and disconnects");
    }

    #[test]
    fn channel_members_are_counted_per_channel() {
        let mut s = LocalState::default();
        for conn in 1..=3 {
            s.join("room".into(), conn, None, || "{}".into());
        }
        s.join("room".into(), 3, None, || unreachable!());
        assert_eq!(s.channel_members("room"), 3);
        s.leave("room", 1);
        s.disconnect(2);
        assert_eq!(s.channel_members("room"), 1);
    }

    #[test]
    fn member_json_is_valid() {
        let info = RawValue::from_string("{\"name\":\"Ann\"}".into()).unwrap();
        let json = member_json(Some("a\"b"), 7, "n1", 5, Some(&info));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["user"], "a\"b");
        assert_eq!(v["info"]["name"], "Ann");
        let v: serde_json::Value = serde_json::from_str(&member_json(None, 7, "n1", 5, None)).unwrap();
        assert!(v["user"].is_null());
    }
}
