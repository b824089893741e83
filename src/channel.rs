//! Channel names, wildcard matching and the subscription index.
//!
//! Owns: the channel/pattern syntax of PROTOCOL.md ("Channels"), NATS-style matching
//! (`*` = exactly one token, `>` = one or more remaining tokens), pattern subsumption
//! ([`covers`], used for JWT `chans`/`pub` checks) and [`SubIndex`], the per-thread
//! token trie that answers "who is subscribed to this channel?" on every publish.
//!
//! Must not touch: sockets, clocks, threads, the runtime. Everything here is pure and
//! `!Sync`-agnostic; a `SubIndex` lives on one thread (a shard, or the bridge) and is
//! never shared.
//!
//! The `$` rule (as in NATS for `$`-subjects): a pattern whose first token is a wildcard
//! never matches a channel whose first token starts with `$` (`$sys`, `$pres`). So `>` or
//! `*.metrics` never see server channels; a client must name `$sys` explicitly, and
//! `$pres` (presence frames) is subscribed to by the server only.
//!
//! Functions that take a pattern or channel assume it was validated
//! ([`validate_pattern`] / [`validate_channel`]); on invalid input they do not panic but
//! their answer is unspecified. The exception is [`SubIndex::insert`], which asserts,
//! because a malformed pattern in the trie would corrupt `for_each_pattern`.

use std::collections::HashMap as StdHashMap;

/// The index's maps: foldhash with a per-process random seed. Channel names come from
/// untrusted clients, so the hash must be keyed (an unkeyed one, Fx, would let a client
/// flood a shard's index with colliding names); foldhash is keyed like std's SipHash and
/// hashes a short name several times faster, which the match path of every publish pays.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
use std::fmt;
use std::str::Split;

/// Longest channel or pattern, in bytes. Why 200: long enough for
/// `tenant.project.device-uuid.sensor.metric` style names, short enough that a NATS
/// subject with our prefix stays well under NATS's practical limits and that
/// validation and hashing stay trivially cheap on the publish path.
pub const CHANNEL_BYTES_MAX: usize = 200;

/// Most tokens in a channel or pattern. Why 16: bounds trie depth (and so the recursion
/// depth and the on-stack token array of [`SubIndex::for_each_match`]); real hierarchies
/// rarely exceed 6.
pub const CHANNEL_TOKENS_MAX: usize = 16;

/// The reserved first token of server-published channels.
pub const SYS_TOKEN: &str = "$sys";

/// The reserved first token of the internal presence channels `$pres.{channel}`, which
/// carry `join`/`leave` frames; only the server subscribes to them.
pub const PRES_TOKEN: &str = "$pres";

/// The reserved first token of Pusher apps' channels `$pusher.{app id}.{encoded name}`
/// (`transport::pusher`): only Pusher connections of that app subscribe to them, only the
/// server publishes there.
pub const PUSHER_TOKEN: &str = "$pusher";

/// Is `token` (a first token) a server channel's (`$sys`, `$pres`)?
#[inline]
pub fn is_server_token(token: &str) -> bool {
    token.starts_with('$')
}

/// The first token of private channels `user.{sub}(.…)`.
pub const USER_TOKEN: &str = "user";

/// Why a channel or pattern was rejected. Token indexes are 0-based (Display shows them
/// 1-based, as a person counts); `BadChar::index` is a byte offset into the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    TooLong {
        bytes: usize,
    },
    TooManyTokens {
        tokens: usize,
    },
    EmptyToken {
        index: usize,
    },
    BadChar {
        index: usize,
        ch: char,
    },
    WildcardInChannel,
    FullWildcardNotLast,
    /// `*` or `>` mixed with other characters in one token, e.g. `a.b*`.
    WildcardNotWholeToken {
        index: usize,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => {
                write!(f, "channel is empty; use dot-separated tokens such as \"room.42\"")
            }
            ChannelError::TooLong { bytes } => write!(
                f,
                "channel is {bytes} bytes long; the limit is {CHANNEL_BYTES_MAX} bytes"
            ),
            ChannelError::TooManyTokens { tokens } => write!(
                f,
                "channel has {tokens} dot-separated tokens; the limit is {CHANNEL_TOKENS_MAX}"
            ),
            ChannelError::EmptyToken { index } => write!(
                f,
                "channel token {} is empty (as in \"a..b\", \".a\" or \"a.\"); remove the extra dot",
                index + 1
            ),
            ChannelError::BadChar { index, ch: '$' } => write!(
                f,
                "'$' at byte {index} is only allowed as the whole first token \"$sys\" or \"$pres\" (server channels)"
            ),
            ChannelError::BadChar { index, ch } => write!(
                f,
                "invalid character {ch:?} at byte {index}; tokens may contain only A-Z, a-z, 0-9, '_' and '-'"
            ),
            ChannelError::WildcardInChannel => write!(
                f,
                "wildcards '*' and '>' may only be used when subscribing, not in a channel you publish to"
            ),
            ChannelError::FullWildcardNotLast => write!(
                f,
                "'>' must be the last token (it matches all remaining tokens); use '*' to match exactly one token"
            ),
            ChannelError::WildcardNotWholeToken { index } => write!(
                f,
                "channel token {} mixes '*' or '>' with other characters; a wildcard must be a whole token, as in \"a.*.c\"",
                index + 1
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

/// A concrete channel (no wildcards), as used for publishing.
pub fn validate_channel(ch: &str) -> Result<(), ChannelError> {
    validate(ch, false)
}

/// A subscription pattern: a channel that may also contain `*` tokens and a final `>`.
pub fn validate_pattern(p: &str) -> Result<(), ChannelError> {
    validate(p, true)
}

fn validate(s: &str, wildcards_allowed: bool) -> Result<(), ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > CHANNEL_BYTES_MAX {
        return Err(ChannelError::TooLong { bytes: s.len() });
    }
    let tokens = s.bytes().filter(|&b| b == b'.').count() + 1;
    if tokens > CHANNEL_TOKENS_MAX {
        return Err(ChannelError::TooManyTokens { tokens });
    }
    // `$pres.$pusher.…`: the presence frames of a Pusher app's channel.
    let pres = s.starts_with(PRES_TOKEN) && s.as_bytes().get(PRES_TOKEN.len()) == Some(&b'.');
    let mut start = 0;
    for (index, token) in s.split('.').enumerate() {
        if pres && index == 1 && token == PUSHER_TOKEN {
            start += token.len() + 1;
            continue;
        }
        validate_token(token, index, start, index + 1 == tokens, wildcards_allowed)?;
        start += token.len() + 1;
    }
    Ok(())
}

fn validate_token(
    token: &str,
    index: usize,
    start: usize,
    last: bool,
    wildcards_allowed: bool,
) -> Result<(), ChannelError> {
    match token {
        "" => return Err(ChannelError::EmptyToken { index }),
        "*" | ">" if !wildcards_allowed => return Err(ChannelError::WildcardInChannel),
        ">" if !last => return Err(ChannelError::FullWildcardNotLast),
        "*" | ">" => return Ok(()),
        SYS_TOKEN | PRES_TOKEN | PUSHER_TOKEN if index == 0 => return Ok(()),
        _ => {}
    }
    match token.bytes().position(|b| !is_token_byte(b)) {
        None => Ok(()),
        Some(offset) => {
            let ch = token[offset..].chars().next().unwrap_or('\u{fffd}');
            Err(match ch {
                '*' | '>' if wildcards_allowed => ChannelError::WildcardNotWholeToken { index },
                '*' | '>' => ChannelError::WildcardInChannel,
                _ => ChannelError::BadChar {
                    index: start + offset,
                    ch,
                },
            })
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// One plain token: `[A-Za-z0-9_-]+`. Use it to check that a JWT `sub` can name a
/// private channel `user.{sub}` (a `sub` with a dot or `@` cannot).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= CHANNEL_BYTES_MAX && token.bytes().all(is_token_byte)
}

/// True if the pattern has no `*` or `>` token (it names exactly one channel).
pub fn is_literal(p: &str) -> bool {
    !p.split('.').any(|t| t == "*" || t == ">")
}

/// Does `pattern` match the concrete `channel`? NATS semantics plus the `$sys` rule.
pub fn matches(pattern: &str, channel: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut channel_tokens = channel.split('.');
    let mut first = true;
    loop {
        match (pattern_tokens.next(), channel_tokens.next()) {
            (None, None) => return true,
            (Some(">"), Some(c)) => return !(first && is_server_token(c)),
            (Some("*"), Some(c)) => {
                if first && is_server_token(c) {
                    return false;
                }
            }
            (Some(p), Some(c)) => {
                if p != c {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// Pattern subsumption: true iff every channel that `inner` matches is also matched by
/// `outer`. Exact for valid patterns (including the `$sys` rule), so it can grant
/// permissions: `covers("a.>", "a.*.c")`, `covers("*.b", "a.b")` hold;
/// `covers("a.*", "a.>")` and `covers(">", "$sys.x")` do not.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut outer_tokens = outer.split('.');
    let mut inner_tokens = inner.split('.');
    let mut first = true;
    loop {
        match (outer_tokens.next(), inner_tokens.next()) {
            (None, None) => return true,
            // `>` covers one or more tokens of anything, wildcards included.
            (Some(">"), Some(i)) => return !(first && is_server_token(i)),
            // `*` covers exactly one token: a literal or `*`, never the many of `>`.
            (Some("*"), Some(i)) => {
                if i == ">" || (first && is_server_token(i)) {
                    return false;
                }
            }
            // A literal covers only the same literal.
            (Some(o), Some(i)) => {
                if o != i {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// Pattern overlap: true iff some channel matches both `a` and `b` (the `$sys` rule
/// included). Used to refuse history patterns that share channels, and to find which
/// history pattern a subscription touches.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut a_tokens = a.split('.');
    let mut b_tokens = b.split('.');
    let mut first = true;
    loop {
        match (a_tokens.next(), b_tokens.next()) {
            (None, None) => return true,
            // `>` takes one or more tokens: whatever the other has left, it can match,
            // unless that is a `$sys` channel and the `>` is the first token.
            (Some(">"), Some(t)) | (Some(t), Some(">")) => return !(first && is_server_token(t)),
            (Some("*"), Some(t)) | (Some(t), Some("*")) => {
                if first && is_server_token(t) {
                    return false;
                }
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// The owner of a private channel: `user.alice` and `user.alice.x` → `Some("alice")`;
/// anything else (including plain `user`) → `None`. Meant for concrete channels; for a
/// pattern the second token may come back as `*` or `>`.
pub fn private_owner(channel: &str) -> Option<&str> {
    let mut tokens = channel.split('.');
    if tokens.next() != Some(USER_TOKEN) {
        return None;
    }
    tokens.next().filter(|owner| !owner.is_empty())
}

// ---------------------------------------------------------------------------------------
// Subscription index
// ---------------------------------------------------------------------------------------

/// Outcome of [`SubIndex::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// First key for this pattern: the caller should announce interest upstream.
    NewPattern,
    /// The pattern already had other keys.
    NewKey,
    /// This (pattern, key) pair was already present; nothing changed.
    AlreadyPresent,
}

/// Outcome of [`SubIndex::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remove {
    /// The pattern has no keys left and was pruned: the caller should drop interest.
    LastKey,
    /// Removed; the pattern still has other keys.
    Removed,
    /// This (pattern, key) pair was not in the index.
    NotPresent,
}

/// Subscription index: pattern → set of subscriber keys (`T` is a small `Copy` key, e.g.
/// a connection slot `u32` or a shard id `u16`). A key appears at most once per pattern.
///
/// Literal patterns (no `*` or `>`, most subscriptions) live in one flat map from the
/// whole pattern to its keys: one entry each, whatever its token count (a trie level per
/// token cost ~1 KB of maps per token, so a 16-token name cost ~18 KB; issue 18). Patterns
/// with a wildcard live in a token trie like nats-server's sublist, whose nodes hold
/// literal children in a hash map plus one `*` child; `>` is always last, so its keys sit
/// on the parent node. A match is one lookup of the whole channel plus a walk of the
/// trie's branches that can match (skipped while it is empty), and allocates nothing.
/// Removal prunes empty nodes and shrinks oversized maps, so memory follows the live set,
/// not churn. [`pattern_index_bytes`] estimates what one pattern costs.
///
/// Hashing uses foldhash, randomly keyed per process (see [`HashMap`]): channel names
/// come from untrusted clients, and an unkeyed hash (Fx) would let one client flood a
/// shard's index with colliding names.
pub struct SubIndex<T> {
    /// Literal patterns: the whole pattern → its keys (never an empty set).
    literals: HashMap<Box<str>, KeySet<T>>,
    /// Patterns with a wildcard.
    root: Node<T>,
    patterns: usize,
    entries: usize,
    nodes: usize,
}

struct Node<T> {
    literals: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Keys of the pattern that ends at this node.
    keys: KeySet<T>,
    /// Keys of the pattern that ends at this node followed by `>`.
    full_keys: KeySet<T>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            literals: HashMap::default(),
            star: None,
            keys: KeySet::new(),
            full_keys: KeySet::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.star.is_none()
            && self.keys.list.is_empty()
            && self.full_keys.list.is_empty()
    }
}

/// Up to this many keys a pattern's keys are a plain `Vec` searched linearly (faster
/// than hashing a few `Copy` keys, and no map allocated); above it a position map makes
/// insert/remove O(1) for hot channels with thousands of local subscribers.
const KEYS_LINEAR_MAX: usize = 32;

/// A set of keys kept in a `Vec` for allocation-free, cache-friendly iteration on the
/// match path, with an optional key → position map once it grows past
/// [`KEYS_LINEAR_MAX`]. Removal is `swap_remove`, so order is not stable.
struct KeySet<T> {
    list: Vec<T>,
    // Boxed so the common case (no map) costs one word per set, not a whole HashMap.
    #[allow(clippy::box_collection)]
    // Positions as u32 (a shard holds fewer than 2^32 keys): 8-byte entries instead of
    // 16 for `u32` keys, which halves the map of a channel with 10k subscribers.
    positions: Option<Box<HashMap<T, u32>>>,
}

impl<T> KeySet<T> {
    fn new() -> Self {
        KeySet {
            list: Vec::new(),
            positions: None,
        }
    }
}

impl<T: Copy + Eq + std::hash::Hash> KeySet<T> {
    fn position(&self, key: T) -> Option<usize> {
        match &self.positions {
            Some(map) => map.get(&key).map(|&at| at as usize),
            None => self.list.iter().position(|&k| k == key),
        }
    }

    /// False if already present.
    fn insert(&mut self, key: T) -> bool {
        if self.position(key).is_some() {
            return false;
        }
        self.list.push(key);
        match &mut self.positions {
            Some(map) => {
                map.insert(key, (self.list.len() - 1) as u32);
            }
            None if self.list.len() > KEYS_LINEAR_MAX => {
                let map = self.list.iter().enumerate().map(|(i, &k)| (k, i as u32)).collect();
                self.positions = Some(Box::new(map));
            }
            None => {}
        }
        true
    }

    /// False if absent.
    fn remove(&mut self, key: T) -> bool {
        let Some(at) = self.position(key) else {
            return false;
        };
        self.list.swap_remove(at);
        if let Some(map) = &mut self.positions {
            map.remove(&key);
            if let Some(&moved) = self.list.get(at) {
                map.insert(moved, at as u32);
            }
            // Hysteresis (half the threshold) so a set hovering at the limit does not
            // rebuild its map on every insert/remove.
            if self.list.len() <= KEYS_LINEAR_MAX / 2 {
                self.positions = None;
            }
        }
        shrink_if_sparse_vec(&mut self.list);
        true
    }
}

/// Release capacity once a collection is below a quarter of it, so a burst (a hot
/// channel with 100k subscribers that then leave) does not pin memory forever. The
/// factor 4 keeps the O(n) shrink amortised O(1).
fn shrink_if_sparse_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 64 && v.len() * 4 < v.capacity() {
        v.shrink_to(v.len() * 2);
    }
}

fn shrink_if_sparse_map<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
    if m.is_empty() {
        // A surviving node (it still has keys) with no children: free the table.
        *m = HashMap::default();
    } else if m.capacity() > 64 && m.len() * 4 < m.capacity() {
        m.shrink_to(m.len() * 2);
    }
}

impl<T: Copy + Eq + std::hash::Hash> Default for SubIndex<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq + std::hash::Hash> SubIndex<T> {
    pub fn new() -> Self {
        SubIndex {
            literals: HashMap::default(),
            root: Node::new(),
            patterns: 0,
            entries: 0,
            nodes: 1,
        }
    }

    /// Adds `key` to `pattern`. Panics if `pattern` is not valid ([`validate_pattern`]):
    /// that is a caller bug, and a malformed pattern would corrupt the trie.
    pub fn insert(&mut self, pattern: &str, key: T) -> Insert {
        if let Err(e) = validate_pattern(pattern) {
            panic!(
                "SubIndex::insert: invalid pattern {pattern:?} ({e}); validate before inserting"
            );
        }
        if is_literal(pattern) {
            let added = match self.literals.get_mut(pattern) {
                Some(set) => set.insert(key),
                None => {
                    let mut set = KeySet::new();
                    set.insert(key);
                    self.literals.insert(pattern.into(), set);
                    self.patterns += 1;
                    self.entries += 1;
                    return Insert::NewPattern;
                }
            };
            if !added {
                return Insert::AlreadyPresent;
            }
            self.entries += 1;
            return Insert::NewKey;
        }
        let mut node = &mut self.root;
        let mut full = false;
        for token in pattern.split('.') {
            match token {
                ">" => {
                    full = true;
                    break;
                }
                "*" => {
                    if node.star.is_none() {
                        node.star = Some(Box::new(Node::new()));
                        self.nodes += 1;
                    }
                    node = node.star.as_deref_mut().expect("star child just ensured");
                }
                literal => {
                    if !node.literals.contains_key(literal) {
                        node.literals.insert(literal.into(), Node::new());
                        self.nodes += 1;
                    }
                    node = node
                        .literals
                        .get_mut(literal)
                        .expect("literal child just ensured");
                }
            }
        }
        let set = if full {
            &mut node.full_keys
        } else {
            &mut node.keys
        };
        let was_empty = set.list.is_empty();
        if !set.insert(key) {
            return Insert::AlreadyPresent;
        }
        self.entries += 1;
        if was_empty {
            self.patterns += 1;
            Insert::NewPattern
        } else {
            Insert::NewKey
        }
    }

    /// Removes `key` from `pattern`, pruning trie nodes left empty.
    pub fn remove(&mut self, pattern: &str, key: T) -> Remove {
        let outcome = if is_literal(pattern) {
            match self.literals.get_mut(pattern) {
                None => Remove::NotPresent,
                Some(set) => {
                    let outcome = remove_key(set, key);
                    if outcome == Remove::LastKey {
                        self.literals.remove(pattern);
                        shrink_if_sparse_map(&mut self.literals);
                    }
                    outcome
                }
            }
        } else {
            let mut pruned = 0;
            let outcome = remove_from(&mut self.root, pattern.split('.'), key, &mut pruned);
            self.nodes -= pruned;
            outcome
        };
        match outcome {
            Remove::NotPresent => {}
            Remove::Removed => self.entries -= 1,
            Remove::LastKey => {
                self.entries -= 1;
                self.patterns -= 1;
            }
        }
        outcome
    }

    /// Calls `f` once for every (pattern, key) pair whose pattern matches `channel`.
    /// The SAME key is called more than once when several of its patterns match (say
    /// `room.1` and `room.*`); the caller dedupes (e.g. by a per-publish epoch stamp on
    /// the connection). Order is unspecified. Allocation-free.
    ///
    /// `channel` should be valid ([`validate_channel`]); a channel with more than
    /// [`CHANNEL_TOKENS_MAX`] tokens matches nothing.
    pub fn for_each_match(&self, channel: &str, mut f: impl FnMut(T)) {
        if let Some(set) = self.literals.get(channel) {
            set.list.iter().for_each(|&k| f(k));
        }
        if self.root.is_empty() {
            return;
        }
        let mut tokens: [&str; CHANNEL_TOKENS_MAX] = [""; CHANNEL_TOKENS_MAX];
        let mut count = 0;
        for token in channel.split('.') {
            if count == CHANNEL_TOKENS_MAX {
                return;
            }
            tokens[count] = token;
            count += 1;
        }
        let tokens = &tokens[..count];
        if is_server_token(tokens[0]) {
            // The `$` rule: only patterns spelling `$sys`/`$pres` literally can match,
            // so skip the root's `*` and `>` branches.
            if let Some(child) = self.root.literals.get(tokens[0]) {
                match_from(child, &tokens[1..], &mut f);
            }
        } else {
            match_from(&self.root, tokens, &mut f);
        }
    }

    /// Number of distinct patterns with at least one key.
    pub fn patterns(&self) -> usize {
        self.patterns
    }

    /// Number of (pattern, key) pairs.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Number of nodes of the wildcard patterns' trie, including the root (1 when
    /// empty); for tests and metrics. Literal patterns take no node.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Keys of the literal pattern `channel` (0 when nobody holds it as a literal).
    pub fn literal_keys(&self, channel: &str) -> usize {
        self.literals.get(channel).map_or(0, |set| set.list.len())
    }

    /// Calls `f` with each literal pattern starting with `prefix` and its number of
    /// keys, in unspecified order, until `f` returns false. Walks every literal pattern:
    /// for occasional queries (the Pusher channel list), never the publish path.
    pub fn for_each_literal_prefixed(&self, prefix: &str, mut f: impl FnMut(&str, usize) -> bool) {
        for (pattern, set) in &self.literals {
            if pattern.starts_with(prefix) && !f(pattern, set.list.len()) {
                return;
            }
        }
    }

    /// Calls `f` once per pattern that has keys, in unspecified order (used to
    /// re-announce interest after a broker reconnect). Allocates one reused buffer.
    pub fn for_each_pattern(&self, mut f: impl FnMut(&str)) {
        self.literals.keys().for_each(|pattern| f(pattern));
        let mut buffer = String::with_capacity(CHANNEL_BYTES_MAX);
        walk_patterns(&self.root, &mut buffer, &mut f);
    }
}

/// Estimated heap bytes of one literal pattern's entry in a [`SubIndex`] beyond its name:
/// its slot in the map (boxed name and key set, at the table's load factor), the name's
/// and the key list's allocations with their headers.
pub const INDEX_LITERAL_ENTRY_BYTES: usize = 136;
/// Estimated heap bytes of one trie node of a wildcard pattern: the node inside its
/// parent's (at least four-slot) hash table, and its token's allocation. Measured as
/// ~0.6 KB per token of a unique name in the trie that held every pattern (issue 18).
pub const INDEX_TRIE_NODE_BYTES: usize = 640;

/// What `pattern` costs in one [`SubIndex`] when it is new there, approximately (the
/// node-wide `max_subscription_bytes` bound charges it): a literal pattern its name plus
/// one map entry; a wildcard pattern, at worst, one trie node per token (nodes shared
/// with other patterns are charged again: an over-estimate, never an under-estimate).
pub fn pattern_index_bytes(pattern: &str) -> usize {
    if is_literal(pattern) {
        pattern.len() + INDEX_LITERAL_ENTRY_BYTES
    } else {
        pattern.split('.').count() * INDEX_TRIE_NODE_BYTES + pattern.len()
    }
}

fn match_from<T: Copy>(node: &Node<T>, tokens: &[&str], f: &mut impl FnMut(T)) {
    let Some((token, rest)) = tokens.split_first() else {
        node.keys.list.iter().for_each(|&k| f(k));
        return;
    };
    // `>` on this node needs at least one more token, which `token` is.
    node.full_keys.list.iter().for_each(|&k| f(k));
    if !node.literals.is_empty() {
        if let Some(child) = node.literals.get(*token) {
            match_from(child, rest, f);
        }
    }
    if let Some(child) = &node.star {
        match_from(child, rest, f);
    }
}

fn remove_from<T: Copy + Eq + std::hash::Hash>(
    node: &mut Node<T>,
    mut tokens: Split<'_, char>,
    key: T,
    pruned: &mut usize,
) -> Remove {
    let token = match tokens.next() {
        None => return remove_key(&mut node.keys, key),
        Some(">") if tokens.clone().next().is_none() => {
            return remove_key(&mut node.full_keys, key)
        }
        Some(token) => token,
    };
    if token == "*" {
        let Some(child) = node.star.as_deref_mut() else {
            return Remove::NotPresent;
        };
        let outcome = remove_from(child, tokens, key, pruned);
        if child.is_empty() {
            node.star = None;
            *pruned += 1;
        }
        outcome
    } else {
        let Some(child) = node.literals.get_mut(token) else {
            return Remove::NotPresent;
        };
        let outcome = remove_from(child, tokens, key, pruned);
        if child.is_empty() {
            node.literals.remove(token);
            shrink_if_sparse_map(&mut node.literals);
            *pruned += 1;
        }
        outcome
    }
}

fn remove_key<T: Copy + Eq + std::hash::Hash>(set: &mut KeySet<T>, key: T) -> Remove {
    if !set.remove(key) {
        Remove::NotPresent
    } else if set.list.is_empty() {
        Remove::LastKey
    } else {
        Remove::Removed
    }
}

fn walk_patterns<T>(node: &Node<T>, buffer: &mut String, f: &mut impl FnMut(&str)) {
    if !node.keys.list.is_empty() {
        f(buffer);
    }
    let base = buffer.len();
    let separator = if base == 0 { "" } else { "." };
    if !node.full_keys.list.is_empty() {
        buffer.push_str(separator);
        buffer.push('>');
        f(buffer);
        buffer.truncate(base);
    }
    for (token, child) in &node.literals {
        buffer.push_str(separator);
        buffer.push_str(token);
        walk_patterns(child, buffer, f);
        buffer.truncate(base);
    }
    if let Some(child) = &node.star {
        buffer.push_str(separator);
        buffer.push('*');
        walk_patterns(child, buffer, f);
        buffer.truncate(base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// xorshift64*: deterministic, dependency-free randomness for property loops.
    pub(super) struct Rng(u64);
    impl Rng {
        pub(super) fn new(seed: u64) -> Self {
            Rng(seed | 1)
        }
        pub(super) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(super) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_pattern(rng: &mut Rng, alphabet: &[&str], tokens_max: u64) -> String {
        let count = 1 + rng.below(tokens_max) as usize;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let token = match rng.below(10) {
                0 if i == 0 => SYS_TOKEN,
                1 | 2 => "*",
                3 if i + 1 == count => ">",
                _ => alphabet[rng.below(alphabet.len() as u64) as usize],
            };
            out.push(token);
        }
        out.join(".")
    }

    fn random_channel(rng: &mut Rng, alphabet: &[&str], tokens_max: u64) -> String {
        let count = 1 + rng.below(tokens_max) as usize;
        (0..count)
            .map(|i| match rng.below(8) {
                0 if i == 0 => SYS_TOKEN,
                _ => alphabet[rng.below(alphabet.len() as u64) as usize],
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn pusher_presence_frames_have_a_channel() {
        assert!(validate_channel("$pres.$pusher.4242.presence-room").is_ok());
        assert!(validate_pattern("$pres.$pusher.4242.presence-room").is_ok());
        assert!(validate_channel("$pusher.4242.presence-room").is_ok());
        assert!(validate_channel("$pres.a.$pusher").is_err(), "only as the second token");
        assert!(validate_channel("$sys.$pusher.x").is_err(), "only under $pres");
        assert!(validate_channel("a.$pusher.x").is_err());
        assert!(validate_channel("$presx.$pusher.x").is_err());
        let mut index = SubIndex::new();
        index.insert("$pres.$pusher.1.presence-a", 7u32);
        let mut hits = Vec::new();
        index.for_each_match("$pres.$pusher.1.presence-a", |v| hits.push(v));
        assert_eq!(hits, [7]);
    }

    #[test]
    fn matches_table() {
        let table: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "b", false),
            ("a.b", "a.b", true),
            ("a.b", "a", false),
            ("a", "a.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("*.b", "a.b", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "a", false), // `>` needs at least one token
            ("a.b.>", "a.b", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*.>", "a", false),
            ("*.>", "a.b", true),
            ("a.*.>", "a.b.c", true),
            ("a.*.>", "a.b", false),
            // The $sys rule: a wildcard first token never matches $sys.
            (">", "$sys.metrics", false),
            ("*.metrics", "$sys.metrics", false),
            ("*", "$sys", false),
            ("$sys.>", "$sys.metrics", true),
            ("$sys.*", "$sys.metrics", true),
            ("$sys.metrics", "$sys.metrics", true),
            ("a.>", "a.$sys", true), // only the first token is special (and invalid anyway)
            (">", "$pres.room", false),
            ("*.room", "$pres.room", false),
            ("$pres.room", "$pres.room", true),
            ("user.*", "user.alice", true),
            ("Room", "room", false), // case-sensitive
        ];
        for &(pattern, channel, want) in table {
            assert_eq!(
                matches(pattern, channel),
                want,
                "matches({pattern:?}, {channel:?})"
            );
        }
    }

    #[test]
    fn covers_table() {
        let table: &[(&str, &str, bool)] = &[
            ("a.>", "a.*.c", true),
            ("a.>", "a.>", true),
            ("a.>", "a.b", true),
            ("a.>", "a", false),
            ("a.*", "a.>", false),
            ("a.*", "a.*", true),
            ("a.*", "a.b", true),
            ("*.b", "a.b", true),
            ("a.b", "*.b", false),
            ("a.b", "a.b", true),
            (">", ">", true),
            (">", "*.*.*", true),
            ("*", ">", false),
            (">", "$sys.x", false),
            (">", "$sys.>", false),
            ("*.x", "$sys.x", false),
            ("$sys.>", "$sys.x", true),
            ("$sys.>", ">", false),
            (">", "*.x", true), // `*` first never matches $sys either
            ("*.*", "*.>", false),
            ("a.*.>", "a.b.>", true),
            ("a.*.>", "a.>", false),
            ("user.alice.>", "user.alice", false),
        ];
        for &(outer, inner, want) in table {
            assert_eq!(covers(outer, inner), want, "covers({outer:?}, {inner:?})");
        }
    }

    /// All channels over {a, b, c, $sys(first)} with 1..=max tokens. `c` never occurs in
    /// the generated patterns, so it serves as the "any other token" witness.
    fn all_channels(max: usize) -> Vec<String> {
        let mut out: Vec<Vec<&str>> = vec![vec!["a"], vec!["b"], vec!["c"], vec![SYS_TOKEN]];
        let mut frontier = out.clone();
        for _ in 1..max {
            let mut next = Vec::new();
            for prefix in &frontier {
                for t in ["a", "b", "c"] {
                    let mut v = prefix.clone();
                    v.push(t);
                    next.push(v);
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out.into_iter().map(|v| v.join(".")).collect()
    }

    #[test]
    fn covers_agrees_with_brute_force_subsumption() {
        let channels = all_channels(5);
        let mut rng = Rng::new(7);
        let mut patterns: HashSet<String> = HashSet::new();
        while patterns.len() < 200 {
            // 213 distinct patterns exist over this alphabet
            patterns.insert(random_pattern(&mut rng, &["a", "b"], 4));
        }
        let patterns: Vec<String> = patterns.into_iter().collect();
        let matched: Vec<Vec<bool>> = patterns
            .iter()
            .map(|p| channels.iter().map(|c| matches(p, c)).collect())
            .collect();
        for (oi, outer) in patterns.iter().enumerate() {
            for (ii, inner) in patterns.iter().enumerate() {
                let subset = (0..channels.len()).all(|c| !matched[ii][c] || matched[oi][c]);
                assert_eq!(covers(outer, inner), subset, "covers({outer:?}, {inner:?})");
            }
        }
    }

    #[test]
    fn overlaps_table() {
        let table: &[(&str, &str, bool)] = &[
            ("a.>", "a.b", true),
            ("a.>", "a", false),
            ("a.*", "*.b", true),
            ("a.*", "b.*", false),
            ("a.*", "a.*.c", false),
            ("*.>", "a.b.c", true),
            (">", "$sys.x", false),
            ("*.x", "$sys.*", false),
            ("$sys.>", "$sys.*", true),
            (">", "*", true),
        ];
        for &(a, b, want) in table {
            assert_eq!(overlaps(a, b), want, "overlaps({a:?}, {b:?})");
            assert_eq!(overlaps(b, a), want, "overlaps({b:?}, {a:?})");
        }
    }

    #[test]
    fn overlaps_agrees_with_brute_force() {
        let channels = all_channels(5);
        let mut rng = Rng::new(11);
        let mut patterns: HashSet<String> = HashSet::new();
        while patterns.len() < 150 {
            patterns.insert(random_pattern(&mut rng, &["a", "b"], 4));
        }
        let patterns: Vec<String> = patterns.into_iter().collect();
        for a in &patterns {
            for b in &patterns {
                let witness = channels.iter().any(|c| matches(a, c) && matches(b, c));
                assert_eq!(overlaps(a, b), witness, "overlaps({a:?}, {b:?})");
            }
        }
    }

    #[test]
    fn validation_table() {
        use ChannelError::*;
        type Verdict = Result<(), ChannelError>;
        let long = "a".repeat(CHANNEL_BYTES_MAX + 1);
        let many = vec!["a"; CHANNEL_TOKENS_MAX + 1].join(".");
        let max_tokens = vec!["a"; CHANNEL_TOKENS_MAX].join(".");
        let max_bytes = "a".repeat(CHANNEL_BYTES_MAX);
        let table: &[(&str, Verdict, Verdict)] = &[
            // (input, as channel, as pattern)
            ("room.42", Ok(()), Ok(())),
            ("a_b-C9", Ok(()), Ok(())),
            (&max_tokens, Ok(()), Ok(())),
            (&max_bytes, Ok(()), Ok(())),
            ("", Err(Empty), Err(Empty)),
            (
                &long,
                Err(TooLong { bytes: 201 }),
                Err(TooLong { bytes: 201 }),
            ),
            (
                &many,
                Err(TooManyTokens { tokens: 17 }),
                Err(TooManyTokens { tokens: 17 }),
            ),
            (
                "a..b",
                Err(EmptyToken { index: 1 }),
                Err(EmptyToken { index: 1 }),
            ),
            (
                ".a",
                Err(EmptyToken { index: 0 }),
                Err(EmptyToken { index: 0 }),
            ),
            (
                "a.",
                Err(EmptyToken { index: 1 }),
                Err(EmptyToken { index: 1 }),
            ),
            (
                "a.b c",
                Err(BadChar { index: 3, ch: ' ' }),
                Err(BadChar { index: 3, ch: ' ' }),
            ),
            (
                "a.é",
                Err(BadChar { index: 2, ch: 'é' }),
                Err(BadChar { index: 2, ch: 'é' }),
            ),
            ("a.*", Err(WildcardInChannel), Ok(())),
            ("a.>", Err(WildcardInChannel), Ok(())),
            (">", Err(WildcardInChannel), Ok(())),
            ("a.>.b", Err(WildcardInChannel), Err(FullWildcardNotLast)),
            (
                "a.b*",
                Err(WildcardInChannel),
                Err(WildcardNotWholeToken { index: 1 }),
            ),
            (
                "a>",
                Err(WildcardInChannel),
                Err(WildcardNotWholeToken { index: 0 }),
            ),
            ("$sys", Ok(()), Ok(())),
            ("$sys.metrics", Ok(()), Ok(())),
            ("$sys.>", Err(WildcardInChannel), Ok(())),
            (
                "$system.x",
                Err(BadChar { index: 0, ch: '$' }),
                Err(BadChar { index: 0, ch: '$' }),
            ),
            (
                "a.$sys",
                Err(BadChar { index: 2, ch: '$' }),
                Err(BadChar { index: 2, ch: '$' }),
            ),
        ];
        for (input, channel, pattern) in table {
            assert_eq!(
                &validate_channel(input),
                channel,
                "validate_channel({input:?})"
            );
            assert_eq!(
                &validate_pattern(input),
                pattern,
                "validate_pattern({input:?})"
            );
        }
    }

    #[test]
    fn validation_messages() {
        let message = |s: &str| validate_pattern(s).unwrap_err().to_string();
        assert_eq!(
            message("a..b"),
            "channel token 2 is empty (as in \"a..b\", \".a\" or \"a.\"); remove the extra dot"
        );
        assert!(message("").contains("empty"));
        assert!(message(&"a".repeat(250)).contains("250 bytes long; the limit is 200"));
        assert!(
            message(&vec!["a"; 20].join(".")).contains("20 dot-separated tokens; the limit is 16")
        );
        assert!(message("a.b#").contains("'#' at byte 3"));
        assert!(message("$x").contains("\"$sys\""));
        assert!(message("a.>.b").contains("'>' must be the last token"));
        assert!(message("a.b*").contains("token 2 mixes"));
        let publish = validate_channel("a.*").unwrap_err().to_string();
        assert!(
            publish.contains("only be used when subscribing"),
            "{publish}"
        );
    }

    #[test]
    fn small_helpers() {
        assert!(is_literal("a.b.c"));
        assert!(is_literal("$sys.x"));
        assert!(!is_literal("a.*"));
        assert!(!is_literal(">"));
        assert_eq!(private_owner("user.alice"), Some("alice"));
        assert_eq!(private_owner("user.alice.x.y"), Some("alice"));
        assert_eq!(private_owner("user"), None);
        assert_eq!(private_owner("users.alice"), None);
        assert_eq!(private_owner("room.user.alice"), None);
        assert!(is_valid_token("alice_1-x"));
        assert!(!is_valid_token("alice@example.com"));
        assert!(!is_valid_token("a.b"));
        assert!(!is_valid_token(""));
    }

    fn matched_keys(index: &SubIndex<u32>, channel: &str) -> Vec<u32> {
        let mut keys = Vec::new();
        index.for_each_match(channel, |k| keys.push(k));
        keys.sort_unstable();
        keys
    }

    #[test]
    fn index_insert_remove_outcomes() {
        let mut index = SubIndex::new();
        assert_eq!(index.insert("a.b", 1u32), Insert::NewPattern);
        assert_eq!(index.insert("a.b", 2), Insert::NewKey);
        assert_eq!(index.insert("a.b", 2), Insert::AlreadyPresent);
        assert_eq!(index.insert("a.>", 1), Insert::NewPattern);
        assert_eq!(index.insert("a.*", 3), Insert::NewPattern);
        assert_eq!((index.patterns(), index.entries()), (3, 4));
        assert_eq!(matched_keys(&index, "a.b"), vec![1, 1, 2, 3]); // key 1 twice: documented
        assert_eq!(matched_keys(&index, "a.c"), vec![1, 3]);
        assert_eq!(matched_keys(&index, "a.b.c"), vec![1]);
        assert_eq!(matched_keys(&index, "a"), Vec::<u32>::new());
        assert_eq!(index.remove("a.b", 9), Remove::NotPresent);
        assert_eq!(index.remove("x.y", 1), Remove::NotPresent);
        assert_eq!(index.remove("a.>.b", 1), Remove::NotPresent); // malformed: no harm
        assert_eq!(index.remove("a.b", 1), Remove::Removed);
        assert_eq!(index.remove("a.b", 2), Remove::LastKey);
        assert_eq!(index.remove("a.b", 2), Remove::NotPresent);
        assert_eq!(index.remove("a.>", 1), Remove::LastKey);
        assert_eq!(index.remove("a.*", 3), Remove::LastKey);
        assert_eq!(
            (index.patterns(), index.entries(), index.nodes()),
            (0, 0, 1)
        );
        assert!(index.is_empty());
    }

    #[test]
    fn index_sys_rule_and_long_channels() {
        let mut index = SubIndex::new();
        index.insert(">", 1u32);
        index.insert("*.metrics", 2);
        index.insert("$sys.>", 3);
        index.insert("$sys.metrics", 4);
        index.insert("$sys", 5);
        index.insert("*", 6);
        assert_eq!(matched_keys(&index, "$sys.metrics"), vec![3, 4]);
        assert_eq!(matched_keys(&index, "$sys"), vec![5]);
        assert_eq!(matched_keys(&index, "app.metrics"), vec![1, 2]);
        let too_long = vec!["a"; CHANNEL_TOKENS_MAX + 1].join(".");
        assert_eq!(matched_keys(&index, &too_long), Vec::<u32>::new());
        let longest = vec!["a"; CHANNEL_TOKENS_MAX].join(".");
        assert_eq!(matched_keys(&index, &longest), vec![1]);
    }

    #[test]
    fn index_counts_literals_by_prefix() {
        let mut index = SubIndex::new();
        for (pattern, key) in [("$pusher.1.a", 1u32), ("$pusher.1.a", 2), ("$pusher.1.b", 3), ("$pusher.2.a", 4), ("$pusher.1.>", 5)] {
            index.insert(pattern, key);
        }
        assert_eq!((index.literal_keys("$pusher.1.a"), index.literal_keys("$pusher.1.c")), (2, 0));
        let mut seen = Vec::new();
        index.for_each_literal_prefixed("$pusher.1.", |pattern, keys| {
            seen.push((pattern.to_string(), keys));
            true
        });
        seen.sort();
        assert_eq!(seen, vec![("$pusher.1.a".to_string(), 2), ("$pusher.1.b".to_string(), 1)], "literals only, by prefix");
        let mut calls = 0;
        index.for_each_literal_prefixed("$pusher.", |_, _| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1, "stops when told");
    }

    #[test]
    #[should_panic(expected = "invalid pattern")]
    fn index_insert_rejects_invalid_pattern() {
        SubIndex::new().insert("a.>.b", 1u32);
    }

    #[test]
    fn index_matches_brute_force() {
        let alphabet = ["a", "b", "c", "d"];
        let mut rng = Rng::new(0x5eed);
        for _round in 0..20 {
            let mut index = SubIndex::new();
            let mut model: HashMap<String, HashSet<u32>> = HashMap::default();
            for _ in 0..300 {
                let pattern = random_pattern(&mut rng, &alphabet, 4);
                let key = rng.below(6) as u32;
                let keys = model.entry(pattern.clone()).or_default();
                if rng.below(4) == 0 {
                    let want = if !keys.remove(&key) {
                        Remove::NotPresent
                    } else if keys.is_empty() {
                        Remove::LastKey
                    } else {
                        Remove::Removed
                    };
                    assert_eq!(index.remove(&pattern, key), want, "remove {pattern} {key}");
                } else {
                    let want = if keys.contains(&key) {
                        Insert::AlreadyPresent
                    } else if keys.is_empty() {
                        Insert::NewPattern
                    } else {
                        Insert::NewKey
                    };
                    keys.insert(key);
                    assert_eq!(index.insert(&pattern, key), want, "insert {pattern} {key}");
                }
            }
            model.retain(|_, keys| !keys.is_empty());
            assert_eq!(index.patterns(), model.len());
            assert_eq!(
                index.entries(),
                model.values().map(HashSet::len).sum::<usize>()
            );
            for _ in 0..300 {
                let channel = random_channel(&mut rng, &alphabet, 5);
                let mut want: Vec<u32> = model
                    .iter()
                    .filter(|(p, _)| matches(p, &channel))
                    .flat_map(|(_, keys)| keys.iter().copied())
                    .collect();
                want.sort_unstable();
                assert_eq!(matched_keys(&index, &channel), want, "channel {channel}");
            }
            let mut listed = Vec::new();
            index.for_each_pattern(|p| listed.push(p.to_string()));
            listed.sort();
            let mut expected: Vec<String> = model.keys().cloned().collect();
            expected.sort();
            assert_eq!(listed, expected);
        }
    }

    #[test]
    fn index_prunes_back_to_root_after_churn() {
        let alphabet: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
        let alphabet: Vec<&str> = alphabet.iter().map(String::as_str).collect();
        let mut rng = Rng::new(42);
        let mut index = SubIndex::new();
        let mut live: Vec<(String, u32)> = Vec::new();
        for _ in 0..100_000 {
            let pattern = random_pattern(&mut rng, &alphabet, 6);
            let key = rng.below(8) as u32;
            if index.insert(&pattern, key) != Insert::AlreadyPresent {
                live.push((pattern, key));
            }
        }
        assert!(index.nodes() > 5_000, "nodes {}", index.nodes());
        assert!(index.literals.len() > 5_000, "literal patterns {}", index.literals.len());
        assert_eq!(index.entries(), live.len());
        // Remove in random order (Fisher-Yates).
        for i in (1..live.len()).rev() {
            live.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (pattern, key) in &live {
            assert_ne!(index.remove(pattern, *key), Remove::NotPresent);
        }
        assert_eq!(
            (index.nodes(), index.patterns(), index.entries()),
            (1, 0, 0)
        );
        assert_eq!(index.root.literals.capacity(), 0, "root map shrunk");
        assert_eq!(index.literals.capacity(), 0, "literal map shrunk");
    }

    #[test]
    fn literal_patterns_take_no_trie_node() {
        let mut index = SubIndex::new();
        let long = (0..CHANNEL_TOKENS_MAX).map(|i| format!("t{i}")).collect::<Vec<_>>().join(".");
        assert_eq!(index.insert(&long, 1u32), Insert::NewPattern);
        assert_eq!(index.insert("a.*", 2), Insert::NewPattern);
        assert_eq!(index.nodes(), 3, "root, a, a.*: the 16-token literal took none");
        assert_eq!(matched_keys(&index, &long), vec![1]);
        assert!(pattern_index_bytes(&long) < 2 * INDEX_TRIE_NODE_BYTES, "a literal costs one entry");
        assert_eq!(pattern_index_bytes("a.*"), 2 * INDEX_TRIE_NODE_BYTES + 3);
        assert_eq!(index.remove(&long, 1), Remove::LastKey);
        assert_eq!(index.remove("a.*", 2), Remove::LastKey);
        assert_eq!((index.nodes(), index.patterns()), (1, 0));
    }

    #[test]
    fn index_many_keys_on_one_pattern() {
        let mut index = SubIndex::new();
        for key in 0..1000u32 {
            assert_ne!(index.insert("hot", key), Insert::AlreadyPresent);
        }
        assert_eq!(index.insert("hot", 500), Insert::AlreadyPresent);
        assert_eq!(matched_keys(&index, "hot"), (0..1000).collect::<Vec<_>>());
        for key in (0..1000u32).filter(|k| k % 3 != 0) {
            assert_eq!(index.remove("hot", key), Remove::Removed);
        }
        assert_eq!(index.remove("hot", 1), Remove::NotPresent);
        let want: Vec<u32> = (0..1000).filter(|k| k % 3 == 0).collect();
        assert_eq!(matched_keys(&index, "hot"), want);
        // Cross back below the linear threshold and keep working.
        for &key in &want[..want.len() - 5] {
            assert_eq!(index.remove("hot", key), Remove::Removed);
        }
        assert!(index.literals["hot"].positions.is_none());
        assert_eq!(matched_keys(&index, "hot"), want[want.len() - 5..].to_vec());
        for &key in &want[want.len() - 5..want.len() - 1] {
            assert_eq!(index.remove("hot", key), Remove::Removed);
        }
        assert_eq!(index.remove("hot", 999), Remove::LastKey);
        assert_eq!(index.nodes(), 1);
    }
}
