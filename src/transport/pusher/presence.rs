//! Pusher presence channels: members are users (`user_id` + `user_info` from the signed
//! `channel_data`), and `member_added` / `member_removed` fire on a user's first and last
//! socket in the channel across the cluster.
//!
//! The presence engine underneath is per connection: a subscriber joins the channel's
//! presence set (`session::presence::Join::Member`; Redis holds every node's entries) and
//! every node publishes a `join`/`leave` frame per connection on `$pres.{channel}` (NATS),
//! carrying `info` for Pusher channels. Each shard keeps, per presence channel that has a
//! subscriber here, a member list of users and their sockets (node number, connection
//! id), started from the store's member list and kept by those frames; it turns a frame
//! that adds a user's first socket or removes its last one into the Pusher event for its
//! local subscribers. So every node says the same, without a per-user lock in Redis.
//!
//! Order: a subscriber's `$pres` interest is confirmed live on NATS with its `sub`
//! before the list is fetched, and frames that arrive while the fetch is out wait for its
//! answer (bounded: past `SEED_FRAMES_MAX` the fetch is made again), so no change falls
//! between the list and the frames. Sockets are keyed by (node, connection), so a frame
//! the list already holds changes nothing.
//!
//! A node that dies sends no `leave` frames: its members vanish from Redis when its
//! heartbeat key expires (`presence_ttl`). So with Redis each list is checked against the
//! store every `pusher_presence_recheck` (30 s): frames that arrive meanwhile are noted
//! as for a first fetch, and the users the store no longer has (or newly has) get their
//! `member_removed` (`member_added`), counted in `ringcast_pusher_presence_corrections_total`.
//!
//! Owns: the shard's member lists (in `Shard::wire_shared`), `subscription_succeeded`'s
//! presence data, member events. Runs on: the shard holding the subscribers.

use super::{channel_name, event_frame, json_string, metrics, subscription_error};
use crate::config::pusher::{USER_ID_BYTES_MAX, USER_INFO_BYTES_MAX};
use crate::fanout::{node_number, ConnRef, Delivery};
use crate::presence::PresenceError;
use crate::protocol::ws;
use crate::session::{self, Op};
use crate::shard::{Conn, Shard, WireMember};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Frames held while a shard's member list of a channel is being fetched; past it the
/// fetch is made again (counted in `ringcast_pusher_presence_queries_total`).
pub const SEED_FRAMES_MAX: usize = 4_096;
/// Fetches of one list in a row before its waiting subscribers are refused (503).
pub const SEED_ATTEMPTS_MAX: u32 = 3;

/// One user in a presence channel: its sockets anywhere in the cluster.
struct Member {
    /// (node number, connection id).
    sockets: Vec<(u32, u64)>,
    info: Option<Box<RawValue>>,
}

/// A shard's view of one presence channel.
#[derive(Default)]
struct Roster {
    users: HashMap<Arc<str>, Member>,
    /// Local subscribers that got `subscription_succeeded` (member events go to them).
    ready: Vec<ConnRef>,
    /// Some while the member list is being fetched.
    seeding: Option<Seeding>,
    /// Some while the list is being checked against the store: the frames since the
    /// check's query (None again past `SEED_FRAMES_MAX`: this check is skipped).
    recheck: Option<Vec<Change>>,
    /// The periodic check's token (Redis only): its task ends when the list (and this)
    /// goes, even if a new list of the channel is made before it wakes.
    checker: Option<Rc<()>>,
}

#[derive(Default)]
struct Seeding {
    /// Local subscribers waiting for the list to answer their subscribe.
    waiting: Vec<ConnRef>,
    /// Frames that arrived meanwhile, applied after the list.
    frames: Vec<Change>,
    overflowed: bool,
    attempts: u32,
}

/// One `join`/`leave` frame.
#[derive(Debug, Clone)]
struct Change {
    joined: bool,
    user: Arc<str>,
    node: u32,
    conn: u64,
    info: Option<Box<RawValue>>,
}

/// What a change did to the list: the event its local subscribers get.
enum Event {
    Added { user: Arc<str>, info: Option<Box<RawValue>> },
    Removed { user: Arc<str> },
}

type Rosters = HashMap<Box<str>, Roster>;

/// The shard's member lists (made on first use).
fn with_rosters<R>(shard: &Shard, f: impl FnOnce(&mut Rosters) -> R) -> R {
    let mut slot = shard.wire_shared.borrow_mut();
    let any = slot.get_or_insert_with(|| Box::new(Rosters::new()));
    let rosters = any.downcast_mut::<Rosters>().expect("Shard::wire_shared holds the Pusher member lists");
    f(rosters)
}

impl Roster {
    fn apply(&mut self, change: Change, bound: usize) -> Option<Event> {
        if change.joined {
            if let Some(member) = self.users.get_mut(&change.user) {
                if !member.sockets.contains(&(change.node, change.conn)) {
                    member.sockets.push((change.node, change.conn));
                }
                return None;
            }
            if self.users.len() >= bound {
                // Only a race past the subscribe-time check gets here; the list stays bounded.
                return None;
            }
            let info = change.info.clone();
            self.users.insert(change.user.clone(), Member { sockets: vec![(change.node, change.conn)], info: change.info });
            return Some(Event::Added { user: change.user, info });
        }
        let member = self.users.get_mut(&change.user)?;
        member.sockets.retain(|s| *s != (change.node, change.conn));
        if !member.sockets.is_empty() {
            return None;
        }
        self.users.remove(&change.user);
        Some(Event::Removed { user: change.user })
    }

    /// `{"presence":{"ids":[..],"hash":{id:info},"count":n}}`.
    fn presence_data(&self) -> String {
        let mut ids = String::from("[");
        let mut hash = String::from("{");
        for (i, (user, member)) in self.users.iter().enumerate() {
            if i > 0 {
                ids.push(',');
                hash.push(',');
            }
            let id = json_string(user);
            ids.push_str(&id);
            hash.push_str(&id);
            hash.push(':');
            hash.push_str(member.info.as_deref().map_or("null", RawValue::get));
        }
        ids.push(']');
        hash.push('}');
        format!("{{\"presence\":{{\"ids\":{ids},\"hash\":{hash},\"count\":{}}}}}", self.users.len())
    }
}

#[derive(Deserialize)]
struct ChannelData<'a> {
    #[serde(borrow)]
    user_id: &'a RawValue,
    #[serde(borrow, default)]
    user_info: Option<&'a RawValue>,
}

/// The member a presence subscribe's `channel_data` names: `user_id` (a string, or a
/// number as Laravel sends it, kept as its digits) and `user_info` (any JSON, ≤ 1 KB).
pub fn parse_member(channel_data: &str) -> Result<(Arc<str>, Option<Box<RawValue>>), String> {
    let data: ChannelData = serde_json::from_str(channel_data).map_err(|e| format!("channel_data must be a JSON object with user_id: {e}"))?;
    let raw = data.user_id.get();
    let user: String = if raw.starts_with('"') {
        serde_json::from_str(raw).map_err(|e| e.to_string())?
    } else if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        raw.to_owned()
    } else {
        return Err("channel_data.user_id must be a string or an integer".into());
    };
    if user.is_empty() || user.len() > USER_ID_BYTES_MAX {
        return Err(format!("channel_data.user_id must be 1 to {USER_ID_BYTES_MAX} bytes"));
    }
    let info = match data.user_info {
        Some(info) if info.get().len() > USER_INFO_BYTES_MAX => {
            return Err(format!("channel_data.user_info is {} bytes, over {USER_INFO_BYTES_MAX}", info.get().len()));
        }
        Some(info) if info.get() != "null" => Some(info.to_owned()),
        _ => None,
    };
    Ok((user.into(), info))
}

/// Whether a new member may join `internal` as `user`, as far as this shard knows (its
/// list, if it has one); Err: the refusal.
pub fn admits(shard: &Shard, internal: &str, user: &str) -> Result<(), String> {
    let max = shard.node.config.pusher.presence_members_max;
    with_rosters(shard, |rosters| match rosters.get(internal) {
        Some(roster) if roster.seeding.is_none() && roster.users.len() >= max && !roster.users.contains_key(user) => Err(over_limit(max)),
        _ => Ok(()),
    })
}

fn over_limit(max: usize) -> String {
    format!("presence channel is full: {max} members (pusher_max_presence_members)")
}

/// The connection's membership of `internal`, if it joined it.
fn membership(conn: &Conn, internal: &str) -> Option<(Arc<str>, Option<Box<RawValue>>)> {
    let st = conn.state.borrow();
    let member = st.wire_state.as_ref()?.members.iter().find(|m| &*m.channel == internal)?;
    Some((member.user.clone(), member.info.clone()))
}

/// Remembers that the connection joins `internal` as `user` (before its `sub`).
pub fn remember(conn: &Conn, internal: &str, user: Arc<str>, info: Option<Box<RawValue>>) {
    let mut st = conn.state.borrow_mut();
    let members = &mut st.wire_state.get_or_insert_with(Default::default).members;
    members.retain(|m| &*m.channel != internal);
    members.push(WireMember { channel: internal.into(), user, info });
}

/// The `user_id` the connection has in presence channel `internal` (client events carry it).
pub fn user_in(conn: &Conn, internal: &str) -> Option<Arc<str>> {
    membership(conn, internal).map(|(user, _)| user)
}

/// The connection's `sub` of presence channel `internal` is live: answer it from the
/// shard's member list, or fetch the list first.
pub fn subscribed(shard: &Shard, conn: &Conn, app: u16, internal: &str) {
    let Some((user, info)) = membership(conn, internal) else {
        // It left the channel before its `sub` was confirmed (a re-subscribe remembers
        // the membership again first): nothing to answer.
        return;
    };
    let here = node_number(&shard.node.config.node);
    let target = ConnRef { slot: conn.slot, conn: conn.id };
    let bound = shard.node.config.pusher.presence_members_max;
    enum Next {
        Seed,
        Wait,
        Answer(Option<Event>, String),
        Full,
    }
    let next = with_rosters(shard, |rosters| {
        let roster = rosters.entry(internal.into()).or_insert_with(|| {
            if let Some(m) = metrics(shard, app) {
                m.presence_lists.inc();
            }
            Roster::default()
        });
        if let Some(seeding) = &mut roster.seeding {
            seeding.waiting.push(target);
            return Next::Wait;
        }
        if roster.users.is_empty() && roster.ready.is_empty() {
            roster.seeding = Some(Seeding { waiting: vec![target], ..Default::default() });
            return Next::Seed;
        }
        if !roster.users.contains_key(&user) && roster.users.len() >= bound {
            return Next::Full;
        }
        let event = roster.apply(Change { joined: true, user, node: here, conn: conn.id, info }, bound);
        roster.ready.retain(|r| *r != target);
        roster.ready.push(target);
        Next::Answer(event, roster.presence_data())
    });
    match next {
        Next::Seed => seed(shard.rc(), app, internal.into()),
        Next::Wait => {}
        Next::Full => refuse(shard, conn, app, internal, "LimitReached", &over_limit(bound), 403),
        Next::Answer(event, data) => {
            if let Some(event) = event {
                broadcast(shard, app, internal, &event, Some(conn.id));
            }
            succeed(shard, conn, internal, &data);
        }
    }
}

fn succeed(shard: &Shard, conn: &Conn, internal: &str, data: &str) {
    let name = channel_name(internal).unwrap_or_default();
    super::send(shard, conn, &event_frame("pusher_internal:subscription_succeeded", Some(&name), data));
}

/// Refuses a presence subscribe after the `sub` was made: the error, and the
/// subscription (and its membership) undone.
fn refuse(shard: &Shard, conn: &Conn, app: u16, internal: &str, kind: &str, error: &str, status: u16) {
    if let Some(m) = metrics(shard, app) {
        m.presence_refused.inc();
    }
    let name = channel_name(internal).unwrap_or_default();
    subscription_error(shard, conn, &name, kind, error, status);
    let shard = shard.rc();
    if let Some(conn) = shard.conn_at(ConnRef { slot: conn.slot, conn: conn.id }) {
        leave(&shard, &conn, internal);
        session::handle(&shard, &conn, Op::Unsub { id: None, ch: internal });
    }
}

/// Fetches `internal`'s member list from the presence store (every node's members) and
/// answers the subscribers waiting for it.
fn seed(shard: Rc<Shard>, app: u16, internal: Box<str>) {
    if let Some(m) = metrics(&shard, app) {
        m.presence_queries.inc();
    }
    monoio::spawn(async move {
        let answer = session::presence::members(&shard, &internal).await;
        seeded(&shard, app, &internal, answer);
        shard.flush_dirty();
    });
}

fn seeded(shard: &Rc<Shard>, app: u16, internal: &str, answer: Result<Vec<Arc<str>>, PresenceError>) {
    let bound = shard.node.config.pusher.presence_members_max;
    enum Next {
        Gone,
        Again,
        Failed(Vec<ConnRef>, String),
        Answer(Vec<ConnRef>, String, Vec<ConnRef>, Option<std::rc::Weak<()>>),
    }
    let next = with_rosters(shard, |rosters| {
        let Some(roster) = rosters.get_mut(internal) else { return Next::Gone };
        let Some(mut seeding) = roster.seeding.take() else { return Next::Gone };
        let members = match answer {
            Ok(members) => members,
            Err(e) => {
                let waiting = std::mem::take(&mut seeding.waiting);
                if roster.ready.is_empty() {
                    remove_list(shard, rosters, internal);
                }
                return Next::Failed(waiting, e.message().to_owned());
            }
        };
        if seeding.overflowed {
            seeding.attempts += 1;
            if seeding.attempts >= SEED_ATTEMPTS_MAX {
                let waiting = std::mem::take(&mut seeding.waiting);
                remove_list(shard, rosters, internal);
                return Next::Failed(waiting, "presence changes arrive faster than this channel's member list can be fetched; retry shortly".into());
            }
            roster.seeding = Some(Seeding { waiting: seeding.waiting, attempts: seeding.attempts, ..Default::default() });
            return Next::Again;
        }
        // The store's list and the frames since, with room for a race past the bound on
        // several nodes (the list stays bounded: twice the bound).
        let fill = bound.saturating_mul(2);
        roster.users.clear();
        for member in members.iter() {
            if let Some(change) = member_change(member) {
                roster.apply(change, fill);
            }
        }
        for change in seeding.frames {
            roster.apply(change, fill);
        }
        // The waiting subscribers' own sockets come out, then go back in one by one within
        // the bound: a user already in (another socket) always fits; a new one only while
        // there is room, else it is refused (its join and leave change nobody's list:
        // a full list takes no new user from a frame). Each admitted subscriber is in the
        // list it is answered with, even if the store answered before its join was written.
        let here = node_number(&shard.node.config.node);
        let waiting: Vec<(ConnRef, Option<(Arc<str>, Option<Box<RawValue>>)>)> =
            seeding.waiting.into_iter().map(|target| (target, shard.conn_at(target).and_then(|conn| membership(&conn, internal)))).collect();
        for (target, member) in &waiting {
            if let Some((user, _)) = member {
                roster.apply(Change { joined: false, user: user.clone(), node: here, conn: target.conn, info: None }, fill);
            }
        }
        let (mut admitted, mut refused) = (Vec::new(), Vec::new());
        for (target, member) in waiting {
            match member {
                Some((user, info)) if roster.users.contains_key(&user) || roster.users.len() < bound => {
                    roster.apply(Change { joined: true, user, node: here, conn: target.conn, info }, fill);
                    admitted.push(target);
                }
                Some(_) => refused.push(target),
                // Gone, or left again meanwhile: nothing to answer.
                None => {}
            }
        }
        roster.ready.extend(admitted.iter().copied());
        let checker = (roster.checker.is_none() && shard.node.presence.backend == "redis").then(|| {
            let token = Rc::new(());
            let weak = Rc::downgrade(&token);
            roster.checker = Some(token);
            weak
        });
        Next::Answer(admitted, roster.presence_data(), refused, checker)
    });
    match next {
        Next::Gone => {}
        Next::Again => seed(shard.clone(), app, internal.into()),
        Next::Failed(waiting, message) => {
            for target in waiting {
                if let Some(conn) = shard.conn_at(target) {
                    refuse(shard, &conn, app, internal, "PresenceUnavailable", &message, 503);
                }
            }
        }
        Next::Answer(admitted, data, refused, checker) => {
            if let Some(token) = checker {
                recheck_periodically(shard.clone(), app, internal.into(), token);
            }
            for target in admitted {
                if let Some(conn) = shard.conn_at(target) {
                    succeed(shard, &conn, internal, &data);
                }
            }
            for target in refused {
                if let Some(conn) = shard.conn_at(target) {
                    refuse(shard, &conn, app, internal, "LimitReached", &over_limit(bound), 403);
                }
            }
        }
    }
}

/// Checks `internal`'s list against the store every `pusher_presence_recheck` while the
/// list exists (one task per list; it ends with the list).
fn recheck_periodically(shard: Rc<Shard>, app: u16, internal: Box<str>, token: std::rc::Weak<()>) {
    let every = shard.node.config.pusher.presence_recheck;
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(every).await;
            if token.upgrade().is_none() {
                return;
            }
            let started = with_rosters(&shard, |rosters| match rosters.get_mut(&*internal) {
                Some(roster) if roster.seeding.is_none() => {
                    roster.recheck = Some(Vec::new());
                    Some(true)
                }
                Some(_) => Some(false),
                None => None,
            });
            match started {
                None => return,
                Some(false) => continue,
                Some(true) => {}
            }
            if let Some(m) = metrics(&shard, app) {
                m.presence_queries.inc();
            }
            let answer = session::presence::members(&shard, &internal).await;
            rechecked(&shard, app, &internal, answer);
            shard.flush_dirty();
        }
    });
}

/// The store's answer to a check: the users it has (with the frames since applied)
/// become the list, and the differences are announced.
fn rechecked(shard: &Rc<Shard>, app: u16, internal: &str, answer: Result<Vec<Arc<str>>, PresenceError>) {
    let bound = shard.node.config.pusher.presence_members_max;
    let events = with_rosters(shard, |rosters| {
        let roster = rosters.get_mut(internal)?;
        let noted = roster.recheck.take()?;
        // Store unavailable: keep the list as the frames made it; the next check retries.
        let members = answer.ok()?;
        let mut fresh = Roster::default();
        let fill = bound.saturating_mul(2);
        for member in members.iter() {
            if let Some(change) = member_change(member) {
                fresh.apply(change, fill);
            }
        }
        for change in noted {
            fresh.apply(change, fill);
        }
        let mut events = Vec::new();
        for user in roster.users.keys() {
            if !fresh.users.contains_key(user) {
                events.push(Event::Removed { user: user.clone() });
            }
        }
        for (user, member) in &fresh.users {
            if !roster.users.contains_key(user) {
                events.push(Event::Added { user: user.clone(), info: member.info.clone() });
            }
        }
        roster.users = fresh.users;
        Some(events)
    });
    let events = events.unwrap_or_default();
    if let Some(m) = metrics(shard, app) {
        m.presence_corrections.add(events.len() as u64);
    }
    for event in events {
        let (Event::Removed { user } | Event::Added { user, .. }) = &event;
        tracing::info!(channel = internal, user = &**user, "presence list corrected from the store (a missed join/leave, or a node that died)");
        broadcast(shard, app, internal, &event, None);
    }
}

/// A member object of the presence store (`{"user","conn","node","info"?}`) as a join.
fn member_change(json: &str) -> Option<Change> {
    change_of(json.as_bytes(), true)
}

/// A `join`/`leave` frame (`{"op","ch","user","conn","node","info"?}`).
fn frame_change(payload: &[u8]) -> Option<Change> {
    change_of(payload, false)
}

/// Both shapes carry `user`, `conn`, `node` and `info`; a frame also says `op`, a stored
/// member (`member`: true) is always in.
fn change_of(json: &[u8], member: bool) -> Option<Change> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        op: Option<std::borrow::Cow<'a, str>>,
        user: Option<String>,
        conn: u64,
        #[serde(borrow)]
        node: std::borrow::Cow<'a, str>,
        #[serde(borrow, default)]
        info: Option<&'a RawValue>,
    }
    let raw: Raw = serde_json::from_slice(json).ok()?;
    let joined = match (member, raw.op.as_deref()) {
        (true, _) | (false, Some("join")) => true,
        (false, Some("leave")) => false,
        _ => return None,
    };
    Some(Change { joined, user: raw.user?.into(), node: node_number(&raw.node), conn: raw.conn, info: raw.info.map(ToOwned::to_owned) })
}

/// A `join`/`leave` frame of a Pusher presence channel reached this shard (the shard's
/// `wire_presence` handler).
pub fn on_frame(shard: &Rc<Shard>, delivery: &Delivery) {
    let Some(internal) = delivery.channel.strip_prefix(crate::presence::PRESENCE_CHANNEL_PREFIX) else { return };
    let Some(change) = ws::server_frame_payload(&delivery.frame).and_then(frame_change) else {
        tracing::warn!(channel = %delivery.channel, "a presence frame that is not a join/leave was ignored");
        return;
    };
    let here = node_number(&shard.node.config.node);
    let exclude = (change.node == here).then_some(change.conn);
    let bound = shard.node.config.pusher.presence_members_max;
    let event = with_rosters(shard, |rosters| {
        let roster = rosters.get_mut(internal)?;
        if let Some(seeding) = &mut roster.seeding {
            if seeding.frames.len() >= SEED_FRAMES_MAX {
                seeding.overflowed = true;
                seeding.frames.clear();
            } else if !seeding.overflowed {
                seeding.frames.push(change);
            }
            return None;
        }
        if let Some(noted) = &mut roster.recheck {
            if noted.len() >= SEED_FRAMES_MAX {
                roster.recheck = None;
            } else {
                noted.push(change.clone());
            }
        }
        roster.apply(change, bound)
    });
    if let Some(event) = event {
        let app = app_index(shard, internal);
        broadcast(shard, app, internal, &event, exclude);
    }
}

/// The index of the app an internal channel belongs to (for its metrics).
fn app_index(shard: &Shard, internal: &str) -> u16 {
    let id = internal.strip_prefix(crate::channel::PUSHER_TOKEN).and_then(|r| r.strip_prefix('.')).and_then(|r| r.split('.').next()).unwrap_or("");
    shard.node.config.pusher.by_id(id).map_or(u16::MAX, |(index, _)| index)
}

/// Sends a member event to the channel's ready subscribers here (but `exclude`).
fn broadcast(shard: &Shard, app: u16, internal: &str, event: &Event, exclude: Option<u64>) {
    let name = channel_name(internal).unwrap_or_default();
    let json = match event {
        Event::Added { user, info } => {
            let data = format!("{{\"user_id\":{},\"user_info\":{}}}", json_string(user), info.as_deref().map_or("null", RawValue::get));
            event_frame("pusher_internal:member_added", Some(&name), &data)
        }
        Event::Removed { user } => event_frame("pusher_internal:member_removed", Some(&name), &format!("{{\"user_id\":{}}}", json_string(user))),
    };
    let frame: Bytes = ws::encode_text(&json);
    let targets: Vec<ConnRef> = with_rosters(shard, |rosters| rosters.get(internal).map(|r| r.ready.clone()).unwrap_or_default());
    let mut sent = 0u64;
    let mut gone = Vec::new();
    for target in targets {
        match shard.conn_at(target) {
            Some(conn) if Some(conn.id) != exclude => {
                shard.send(&conn, frame.clone());
                sent += 1;
            }
            Some(_) => {}
            None => gone.push(target),
        }
    }
    if !gone.is_empty() {
        with_rosters(shard, |rosters| {
            if let Some(roster) = rosters.get_mut(internal) {
                roster.ready.retain(|r| !gone.contains(r));
            }
        });
    }
    if let Some(m) = metrics(shard, app) {
        m.member_events.add(sent);
    }
}

/// The connection leaves presence channel `internal` here (unsubscribe, refusal): out of
/// the shard's list of subscribers; the list goes when its last one does. Its socket
/// leaves the member list with its `leave` frame, as on every node.
pub fn leave(shard: &Shard, conn: &Conn, internal: &str) {
    let target = ConnRef { slot: conn.slot, conn: conn.id };
    {
        let mut st = conn.state.borrow_mut();
        if let Some(wire) = st.wire_state.as_mut() {
            wire.members.retain(|m| &*m.channel != internal);
        }
    }
    forget(shard, target, internal);
}

fn forget(shard: &Shard, target: ConnRef, internal: &str) {
    with_rosters(shard, |rosters| {
        let Some(roster) = rosters.get_mut(internal) else { return };
        roster.ready.retain(|r| *r != target);
        if let Some(seeding) = &mut roster.seeding {
            seeding.waiting.retain(|r| *r != target);
        }
        let waiting = roster.seeding.as_ref().is_some_and(|s| !s.waiting.is_empty());
        if roster.ready.is_empty() && !waiting {
            remove_list(shard, rosters, internal);
        }
    });
}

/// Drops a channel's list (its last local subscriber went), counted out of
/// `ringcast_pusher_presence_lists`.
fn remove_list(shard: &Shard, rosters: &mut Rosters, internal: &str) {
    if rosters.remove(internal).is_some() {
        if let Some(m) = metrics(shard, app_index(shard, internal)) {
            m.presence_lists.sub(1);
        }
    }
}

/// The connection is gone: out of every list it was a subscriber of.
pub fn on_close(shard: &Shard, conn: &Conn) {
    let channels: Vec<Box<str>> = {
        let st = conn.state.borrow();
        match st.wire_state.as_ref() {
            Some(wire) => wire.members.iter().map(|m| m.channel.clone()).collect(),
            None => return,
        }
    };
    let target = ConnRef { slot: conn.slot, conn: conn.id };
    for internal in channels {
        forget(shard, target, &internal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(user: &str, node: u32, conn: u64) -> Change {
        Change { joined: true, user: user.into(), node, conn, info: None }
    }

    fn leave_of(user: &str, node: u32, conn: u64) -> Change {
        Change { joined: false, user: user.into(), node, conn, info: None }
    }

    #[test]
    fn events_fire_on_a_users_first_and_last_socket() {
        let mut roster = Roster::default();
        assert!(matches!(roster.apply(join("ann", 1, 10), 100), Some(Event::Added { .. })));
        assert!(roster.apply(join("ann", 2, 10), 100).is_none(), "a second socket (another node, same conn id)");
        assert!(roster.apply(join("ann", 1, 10), 100).is_none(), "the same socket again (list and frame overlap)");
        assert!(roster.apply(leave_of("ann", 1, 10), 100).is_none(), "one socket left");
        assert!(matches!(roster.apply(leave_of("ann", 2, 10), 100), Some(Event::Removed { .. })));
        assert!(roster.apply(leave_of("ann", 2, 10), 100).is_none(), "a leave twice");
        assert!(roster.users.is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let mut roster = Roster::default();
        assert!(roster.apply(join("a", 1, 1), 2).is_some());
        assert!(roster.apply(join("b", 1, 2), 2).is_some());
        assert!(roster.apply(join("c", 1, 3), 2).is_none(), "past the bound");
        assert_eq!(roster.users.len(), 2);
        assert!(roster.apply(join("a", 1, 4), 2).is_none(), "a known user's socket still counts");
        assert_eq!(roster.users["a"].sockets.len(), 2);
    }

    #[test]
    fn presence_data_is_what_pusher_js_reads() {
        let mut roster = Roster::default();
        roster.apply(Change { joined: true, user: "1".into(), node: 1, conn: 1, info: Some(RawValue::from_string(r#"{"name":"Ann"}"#.into()).unwrap()) }, 9);
        roster.apply(join("b\"2", 1, 2), 9);
        let data: serde_json::Value = serde_json::from_str(&roster.presence_data()).unwrap();
        let presence = &data["presence"];
        assert_eq!(presence["count"], 2);
        let mut ids: Vec<&str> = presence["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["1", "b\"2"]);
        assert_eq!(presence["hash"]["1"]["name"], "Ann");
        assert!(presence["hash"]["b\"2"].is_null());
    }

    #[test]
    fn channel_data_is_read_as_the_libraries_write_it() {
        let (user, info) = parse_member(r#"{"user_id":"u-1","user_info":{"name":"Ann"}}"#).unwrap();
        assert_eq!((&*user, info.unwrap().get()), ("u-1", r#"{"name":"Ann"}"#));
        let (user, info) = parse_member(r#"{"user_id": 42}"#).unwrap();
        assert_eq!((&*user, info.is_none()), ("42", true), "Laravel's integer ids");
        assert!(parse_member(r#"{"user_info":{}}"#).is_err(), "no user_id");
        assert!(parse_member(r#"{"user_id":1.5}"#).is_err());
        assert!(parse_member(r#"{"user_id":""}"#).is_err());
        assert!(parse_member(&format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129))).is_err());
        assert!(parse_member(&format!(r#"{{"user_id":"a","user_info":"{}"}}"#, "x".repeat(1100))).is_err());
        assert!(parse_member("not json").is_err());
    }

    #[test]
    fn frames_and_stored_members_parse() {
        let mut out = Vec::new();
        crate::protocol::ops::presence_change_into(&mut out, true, "$pusher.1.presence-a", Some("ann"), 7, "node-a", Some(r#"{"n":1}"#));
        let change = frame_change(&out).unwrap();
        assert_eq!((change.joined, &*change.user, change.node, change.conn), (true, "ann", node_number("node-a"), 7));
        assert_eq!(change.info.unwrap().get(), r#"{"n":1}"#);
        let mut out = Vec::new();
        crate::protocol::ops::presence_change_into(&mut out, false, "$pusher.1.presence-a", Some("ann"), 7, "node-a", None);
        assert!(!frame_change(&out).unwrap().joined);
        let member = crate::presence::local::member_json(Some("bob"), 9, "node-b", 1, None);
        let change = member_change(&member).unwrap();
        assert_eq!((&*change.user, change.node, change.conn), ("bob", node_number("node-b"), 9));
        assert!(member_change(&crate::presence::local::member_json(None, 9, "node-b", 1, None)).is_none(), "anonymous members are not Pusher members");
    }
}
