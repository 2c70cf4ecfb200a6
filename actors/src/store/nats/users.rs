//! Users and claim tokens in JetStream KV (see [`super`] for the keys).
//!
//! A user's record is written by compare-and-set on the revision this
//! store last read or wrote, and a new user's sign-in index (WCA account or
//! development name) is created only where absent: a second node creating
//! the same user, or writing over a change it has not seen, is refused
//! rather than lost, and told what is kept instead ([`Applied::Stale`]), so
//! the token actor makes its change again on that. A claim token is created
//! with a TTL that ends when it expires, and redeemed by a compare-and-set
//! on its revision, so it works once even if two nodes try it at once. A
//! write NATS kept without this store hearing so (a lost acknowledgement,
//! NATS gone between a new user's index and their record) is recognised
//! and gone on from, never mistaken for a change made elsewhere.
//!
//! Each access token's hash also has an index key, `token.<hash>`, naming
//! its user, so a node that has not yet heard of a token another node
//! handed out finds it with two reads ([`UserStore::find_token`]).
//!
//! Other nodes' changes come in through two KV watches, one per bucket,
//! from where [`UserStore::load`] read up to ([`UserStore::follow`]). The
//! watches are ordered consumers, which async-nats re-creates from the
//! last revision seen after a reconnect (NATS restarted included); one that
//! fails all the same is made again from there, so nothing is missed and
//! nothing needs reading twice. Every user record handed to the token actor
//! (loaded, followed, found, or read back after a refused write) is checked
//! against the revision last handed over, on the actor's thread as it takes
//! it in: the actor never goes back to an older version, and the revision
//! a compare-and-set expects, taken as the change is handed over, is that
//! of the version the change was made from.
//!
//! The changes of one [`UserStore::apply`] are made one after the other,
//! in the order the token actor gives them (the user first, then the claim
//! issued or redeemed). A failure part way leaves the ones before it kept,
//! which that order makes harmless: a user changed without their claim
//! issued, or a token kept whose claim was not redeemed (it is handed out
//! by no one, and the claim still works).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};

use super::{entries, unavailable, Nats, MARKER_TTL, REQUEST_TIMEOUT};
use crate::ids::UserId;
use crate::secrets::TokenHash;
use crate::store::journal::epoch_ms;
use crate::store::{
    Applied, ClaimRecord, Identity, StoreError, StoreFuture, UserChange, UserFeed, UserNews,
    UserRecord, UserState, UserStore,
};

/// How long a sign-in waits for the record of a user whose sign-in index
/// another node has just created: that node is between its two writes,
/// each of which takes at most [`REQUEST_TIMEOUT`]. An index older than
/// this whose record is missing was left by a node that went away, and is
/// taken over.
const HALF_MADE_WAIT: Duration = Duration::from_secs(REQUEST_TIMEOUT.as_secs() + 1);
/// How often that wait reads the record again.
const HALF_MADE_POLL: Duration = Duration::from_millis(50);
/// How long a failed watch waits before it is made again.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);
/// How long a redeemed claim token is remembered as gone when when it
/// expires is not known: longer than any claim token lives by default.
const GONE_CLAIM_MEMORY: Duration = Duration::from_secs(3600);

/// The key of a user's record.
fn user_key(id: &UserId) -> String {
    format!("user.{id}")
}

/// The key of the index entry that finds a user by an access token's hash.
fn token_key(hash: &TokenHash) -> String {
    format!("token.{}", hash.as_str())
}

/// The key of the index entry that finds a user by what they sign in with.
/// A development name may be any Unicode: it goes in as hex, which keys
/// allow and which cannot collide.
pub fn identity_key(identity: &Identity) -> String {
    match identity {
        Identity::Wca { wca_account } => format!("wca.{wca_account}"),
        Identity::Dev { dev_name } => {
            let hex: String = dev_name
                .as_str()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("dev.{hex}")
        }
    }
}

/// A claim token's value: its hash (the key, again), whose it is and when
/// it expires.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimValue {
    /// The claim token's hash, so a loaded claim need not parse its key.
    hash: TokenHash,
    /// Whose access token it is redeemed for.
    user_id: UserId,
    /// When it stops working, in ms since the Unix epoch; the key's TTL
    /// ends then too, give or take a second.
    expires_ms: u64,
}

/// What this store knows of a claim token.
#[derive(Debug, Clone, Copy)]
struct KnownClaim {
    /// The revision it was created at.
    revision: u64,
    /// When it expires (past which it is forgotten here too).
    expires_ms: u64,
    /// Whether it was redeemed (or expired): a late sight of its creation
    /// must not bring it back.
    gone: bool,
}

/// What this store knows of the revisions it read, wrote and handed over,
/// for its compare-and-sets.
#[derive(Debug, Default)]
struct Revisions {
    /// The revision of each user's record last handed to the token actor
    /// (or written for it): what its next write of that user builds on.
    users: HashMap<UserId, u64>,
    /// Each claim token seen.
    claims: HashMap<TokenHash, KnownClaim>,
    /// The last value written to a user's record that NATS did not
    /// acknowledge: it may have been kept all the same.
    unsure: HashMap<UserId, Bytes>,
    /// Access token hashes whose `token.<hash>` index is written (or that
    /// were kept before there was one, and are loaded by every node).
    indexed: HashSet<TokenHash>,
    /// The users' and the claims' last revision before [`UserStore::load`]
    /// read them: [`UserStore::follow`] goes on after them.
    loaded_up_to: (u64, u64),
}

impl Revisions {
    /// Whether `user` at `revision` may be handed to the token actor: not
    /// older than what it was last given. If so, it is what the actor holds
    /// from now on.
    fn offer(&mut self, user: &UserRecord, revision: u64) -> bool {
        if self
            .users
            .get(&user.id)
            .is_some_and(|known| *known > revision)
        {
            return false;
        }
        self.users.insert(user.id.clone(), revision);
        self.indexed.extend(user.token_hashes.iter().cloned());
        true
    }

    /// Makes `user` at `revision` what the token actor holds from now on,
    /// whatever it held: for what it is given back with a refused write,
    /// which it takes in as it is.
    fn hand_over(&mut self, user: &UserRecord, revision: u64) {
        self.users.insert(user.id.clone(), revision);
        self.indexed.extend(user.token_hashes.iter().cloned());
    }

    /// Whether the claim created at `revision` may be handed over: not
    /// redeemed, nor older than one handed over already.
    fn offer_claim(&mut self, claim: &ClaimRecord, revision: u64) -> bool {
        if let Some(known) = self.claims.get(&claim.hash) {
            if known.gone || known.revision > revision {
                return false;
            }
        }
        self.claims.insert(
            claim.hash.clone(),
            KnownClaim {
                revision,
                expires_ms: claim.expires_ms,
                gone: false,
            },
        );
        true
    }

    /// Remembers the claim token `hash` as redeemed or expired.
    fn claim_gone(&mut self, hash: &TokenHash) {
        let now = epoch_ms(SystemTime::now());
        let remember = u64::try_from(GONE_CLAIM_MEMORY.as_millis()).unwrap_or(u64::MAX);
        let known = self.claims.entry(hash.clone()).or_insert(KnownClaim {
            revision: 0,
            expires_ms: now.saturating_add(remember),
            gone: true,
        });
        known.gone = true;
    }
}

/// What became of one change.
enum Outcome {
    /// It is kept.
    Kept,
    /// It is not: what it was made from changed elsewhere, to this.
    Stale(UserNews, String),
}

/// Users and claim tokens in [`super::USERS_BUCKET`] and [`super::CLAIMS_BUCKET`].
pub struct NatsUsers {
    /// The connection and buckets.
    nats: Nats,
    /// Revisions as last read or written; the futures of calls update them.
    revisions: Arc<Mutex<Revisions>>,
}

impl NatsUsers {
    /// The users kept in `nats`.
    pub fn new(nats: Nats) -> NatsUsers {
        NatsUsers {
            nats,
            revisions: Arc::new(Mutex::new(Revisions::default())),
        }
    }
}

/// Locks `revisions`; a panic elsewhere while it was held left nothing half
/// done that a revision could not be read back from.
fn lock(revisions: &Mutex<Revisions>) -> std::sync::MutexGuard<'_, Revisions> {
    revisions
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The TTL of a claim token expiring at `expires_ms`: whole seconds (as
/// JetStream counts them), rounded up, at least one.
fn claim_ttl(expires_ms: u64) -> Duration {
    let left = expires_ms.saturating_sub(epoch_ms(SystemTime::now()));
    Duration::from_secs(left.div_ceil(1000).max(1))
}

/// Whether `entry` holds a value rather than marking a deleted key (a
/// purge, or a TTL run out).
fn live(entry: &kv::Entry) -> bool {
    entry.operation == Operation::Put && !entry.value.is_empty()
}

/// The user kept under `key`, with its revision and value as kept.
async fn read_user(nats: &Nats, key: &str) -> Result<Option<(UserRecord, u64, Bytes)>, StoreError> {
    let entry = nats
        .users
        .entry(key)
        .await
        .map_err(|e| unavailable("cannot read a user", e))?;
    let Some(entry) = entry.filter(live) else {
        return Ok(None);
    };
    let user = serde_json::from_slice(&entry.value)
        .map_err(|e| StoreError::Failed(format!("NATS: {key} is not a user: {e}")))?;
    Ok(Some((user, entry.revision, entry.value)))
}

/// Writes `user`, made from the version of them at revision `base` (as
/// the store knew it when the change was handed over), or new.
async fn put_user(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
    base: Option<u64>,
) -> Result<Outcome, StoreError> {
    let value: Bytes = serde_json::to_vec(user)
        .map_err(|e| StoreError::Failed(e.to_string()))?
        .into();
    match base {
        Some(revision) => {
            index_tokens(nats, revisions, user).await?;
            update_user(nats, revisions, user, value, revision).await
        }
        None => {
            if let Some(stale) = claim_identity(nats, revisions, user).await? {
                return Ok(stale);
            }
            index_tokens(nats, revisions, user).await?;
            create_user(nats, revisions, user, value).await
        }
    }
}

/// Writes the `token.<hash>` index of each of `user`'s access tokens that
/// has none yet, before the record that makes the token valid: a token is
/// handed out only once both are kept, so any node finds it from then on.
/// An index left behind by a token dropped since (the oldest beyond the
/// limit) is harmless: a lookup checks the record it names.
async fn index_tokens(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
) -> Result<(), StoreError> {
    let new: Vec<TokenHash> = {
        let revisions = lock(revisions);
        user.token_hashes
            .iter()
            .filter(|hash| !revisions.indexed.contains(*hash))
            .cloned()
            .collect()
    };
    let id = Bytes::copy_from_slice(user.id.as_str().as_bytes());
    for hash in new {
        nats.users
            .put(token_key(&hash), id.clone())
            .await
            .map_err(|e| unavailable("cannot write an access token index", e))?;
        lock(revisions).indexed.insert(hash);
    }
    Ok(())
}

/// Creates `user`'s record, new. If it is there already, that is this very
/// write kept without its acknowledgement, or (told as stale) a record
/// written elsewhere.
async fn create_user(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
    value: Bytes,
) -> Result<Outcome, StoreError> {
    let key = user_key(&user.id);
    match nats.users.create(&key, value.clone()).await {
        Ok(revision) => {
            lock(revisions).users.insert(user.id.clone(), revision);
            return Ok(Outcome::Kept);
        }
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(unavailable("cannot write a user", e)),
    }
    let Some((current, revision, kept)) = read_user(nats, &key).await? else {
        return Err(StoreError::Unavailable(format!("{key} changed meanwhile")));
    };
    lock(revisions).hand_over(&current, revision);
    if kept == value {
        return Ok(Outcome::Kept);
    }
    Ok(Outcome::Stale(
        UserNews::User(current),
        format!("user {} exists already", user.id),
    ))
}

/// Writes `value` over `user`'s record at `revision`. If the record moved
/// on to a value this store wrote without hearing back (its acknowledgement
/// was lost, or NATS went away before it came), the write goes on from
/// there; if it moved on to `value` itself, that is this write, done. Any
/// other value is a change made elsewhere, which is not written over but
/// told as stale.
async fn update_user(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
    value: Bytes,
    revision: u64,
) -> Result<Outcome, StoreError> {
    let key = user_key(&user.id);
    let mut revision = revision;
    for _ in 0..2 {
        match nats.users.update(&key, value.clone(), revision).await {
            Ok(revision) => {
                let mut revisions = lock(revisions);
                revisions.unsure.remove(&user.id);
                revisions.users.insert(user.id.clone(), revision);
                return Ok(Outcome::Kept);
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => {
                lock(revisions).unsure.insert(user.id.clone(), value);
                return Err(unavailable("cannot write a user", e));
            }
        }
        let Some((current, current_revision, kept)) = read_user(nats, &key).await? else {
            return Err(StoreError::Unavailable(format!("{key} vanished")));
        };
        let mut revisions = lock(revisions);
        if kept == value {
            revisions.unsure.remove(&user.id);
            revisions.users.insert(user.id.clone(), current_revision);
            return Ok(Outcome::Kept);
        }
        if revisions.unsure.get(&user.id) != Some(&kept) {
            revisions.unsure.remove(&user.id);
            revisions.hand_over(&current, current_revision);
            return Ok(Outcome::Stale(
                UserNews::User(current),
                format!("user {} was changed elsewhere meanwhile", user.id),
            ));
        }
        revision = current_revision;
    }
    Err(StoreError::Unavailable(format!(
        "user {} keeps changing meanwhile",
        user.id
    )))
}

/// Makes the index of `user`'s identity point at them: created if absent,
/// fine if it does already. If it points at someone else, that user (as
/// kept) is who signs in, told as stale. An index pointing at a user whose
/// record is not there is another node between its two writes, waited for
/// (up to [`HALF_MADE_WAIT`] after the index was made), or a node that
/// went away there (NATS, or itself), taken over by compare-and-set.
async fn claim_identity(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
) -> Result<Option<Outcome>, StoreError> {
    let key = identity_key(&user.identity);
    let id = Bytes::copy_from_slice(user.id.as_str().as_bytes());
    match nats.users.create(&key, id.clone()).await {
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(unavailable("cannot write a user index", e)),
    }
    let read = |e| unavailable("cannot read a user index", e);
    let waited = Instant::now();
    loop {
        let Some(current) = nats.users.entry(&key).await.map_err(read)?.filter(live) else {
            return Err(StoreError::Unavailable(format!("{key} changed meanwhile")));
        };
        if current.value == id {
            return Ok(None);
        }
        let owner = String::from_utf8_lossy(&current.value).into_owned();
        if let Some((record, revision, _)) = read_user(nats, &format!("user.{owner}")).await? {
            log::info!(
                "{} signs in as user {owner}, made on another node",
                user.identity
            );
            lock(revisions).hand_over(&record, revision);
            return Ok(Some(Outcome::Stale(
                UserNews::User(record),
                format!("{} belongs to user {owner}", user.identity),
            )));
        }
        let made_ms =
            u64::try_from(current.created.unix_timestamp_nanos() / 1_000_000).unwrap_or_default();
        let age = Duration::from_millis(epoch_ms(SystemTime::now()).saturating_sub(made_ms));
        if age < HALF_MADE_WAIT && waited.elapsed() < HALF_MADE_WAIT {
            actix::clock::sleep(HALF_MADE_POLL).await;
            continue;
        }
        log::warn!(
            "{} pointed at user {owner}, who was never written; now at {}",
            user.identity,
            user.id
        );
        match nats.users.update(&key, id.clone(), current.revision).await {
            Ok(_) => return Ok(None),
            // Taken meanwhile, by someone whose record may be there now.
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(unavailable("cannot write a user index", e)),
        }
        if waited.elapsed() > 2 * HALF_MADE_WAIT {
            return Err(StoreError::Unavailable(format!("{key} keeps changing")));
        }
    }
}

async fn put_claim(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    claim: &ClaimRecord,
) -> Result<Outcome, StoreError> {
    let value = serde_json::to_vec(&ClaimValue {
        hash: claim.hash.clone(),
        user_id: claim.user_id.clone(),
        expires_ms: claim.expires_ms,
    })
    .map_err(|e| StoreError::Failed(e.to_string()))?;
    let revision = nats
        .claims
        .create_with_ttl(
            claim.hash.as_str(),
            value.into(),
            claim_ttl(claim.expires_ms),
        )
        .await
        .map_err(|e| unavailable("cannot write a claim token", e))?;
    let mut revisions = lock(revisions);
    let now = epoch_ms(SystemTime::now());
    revisions.claims.retain(|_, known| known.expires_ms > now);
    revisions.offer_claim(claim, revision);
    Ok(Outcome::Kept)
}

/// The claim token kept under `hash`, unexpired, with its revision.
async fn read_claim(
    nats: &Nats,
    hash: &TokenHash,
) -> Result<Option<(ClaimRecord, u64)>, StoreError> {
    let entry = nats
        .claims
        .entry(hash.as_str())
        .await
        .map_err(|e| unavailable("cannot read a claim token", e))?;
    let Some(entry) = entry.filter(live) else {
        return Ok(None);
    };
    let Ok(claim) = serde_json::from_slice::<ClaimValue>(&entry.value) else {
        log::warn!("NATS: claim {} is unreadable", hash.as_str());
        return Ok(None);
    };
    if claim.expires_ms <= epoch_ms(SystemTime::now()) {
        return Ok(None);
    }
    let claim = ClaimRecord {
        hash: claim.hash,
        user_id: claim.user_id,
        expires_ms: claim.expires_ms,
    };
    Ok(Some((claim, entry.revision)))
}

async fn remove_claim(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    hash: &TokenHash,
) -> Result<Outcome, StoreError> {
    let gone = |why: &str| {
        Ok(Outcome::Stale(
            UserNews::ClaimGone(hash.clone()),
            why.to_owned(),
        ))
    };
    let known = lock(revisions).claims.get(hash).copied();
    let revision = match known {
        Some(known) if known.gone => return gone("the claim token was redeemed already"),
        Some(known) => known.revision,
        None => match read_claim(nats, hash).await? {
            Some((_, revision)) => revision,
            None => {
                lock(revisions).claim_gone(hash);
                return gone("the claim token is gone");
            }
        },
    };
    let purged = nats
        .claims
        .purge_expect_revision_with_ttl(hash.as_str(), revision, MARKER_TTL)
        .await;
    match purged {
        Ok(()) => {
            lock(revisions).claim_gone(hash);
            Ok(Outcome::Kept)
        }
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
            lock(revisions).claim_gone(hash);
            gone("the claim token was redeemed elsewhere")
        }
        Err(e) => Err(unavailable("cannot redeem a claim token", e)),
    }
}

/// The revision of the last message in `bucket`'s stream.
async fn last_revision(bucket: &kv::Store) -> Result<u64, StoreError> {
    let info = bucket
        .stream
        .get_info()
        .await
        .map_err(|e| unavailable("cannot read a bucket's state", e))?;
    Ok(info.state.last_sequence)
}

/// Every entry of `bucket` after revision `after`, in order, for as long
/// as it is polled. The watch is made again from the last entry seen if it
/// fails or ends; each wait for NATS to come back is [`FOLLOW_RETRY`].
fn watch(bucket: kv::Store, after: u64) -> impl futures_util::Stream<Item = kv::Entry> {
    struct Following {
        bucket: kv::Store,
        next: u64,
        watch: Option<kv::Watch>,
    }
    let following = Following {
        bucket,
        next: after + 1,
        watch: None,
    };
    futures_util::stream::unfold(following, |mut following| async move {
        loop {
            let watch = match following.watch.as_mut() {
                Some(watch) => watch,
                None => match following
                    .bucket
                    .watch_all_from_revision(following.next)
                    .await
                {
                    Ok(watch) => following.watch.insert(watch),
                    Err(e) => {
                        log::warn!(
                            "NATS: cannot follow {}: {e}; trying again",
                            following.bucket.name
                        );
                        actix::clock::sleep(FOLLOW_RETRY).await;
                        continue;
                    }
                },
            };
            match watch.next().await {
                Some(Ok(entry)) => {
                    following.next = entry.revision + 1;
                    return Some((entry, following));
                }
                Some(Err(e)) => log::warn!(
                    "NATS: following {} failed: {e}; following again from revision {}",
                    following.bucket.name,
                    following.next
                ),
                None => log::warn!(
                    "NATS: following {} stopped; following again from revision {}",
                    following.bucket.name,
                    following.next
                ),
            }
            following.watch = None;
            actix::clock::sleep(FOLLOW_RETRY).await;
        }
    })
}

/// What a users' bucket entry tells the token actor, if anything new: a
/// user's record (index keys are not news of their own).
fn user_news(revisions: &Mutex<Revisions>, entry: kv::Entry) -> Option<UserNews> {
    entry.key.strip_prefix("user.")?;
    if !live(&entry) {
        return None;
    }
    let user: UserRecord = match serde_json::from_slice(&entry.value) {
        Ok(user) => user,
        Err(e) => {
            log::warn!("NATS: {} is not a user ({e}); skipped", entry.key);
            return None;
        }
    };
    lock(revisions)
        .offer(&user, entry.revision)
        .then_some(UserNews::User(user))
}

/// What a claims' bucket entry tells the token actor, if anything new: a
/// claim token issued, or one redeemed or expired.
fn claim_news(revisions: &Mutex<Revisions>, entry: kv::Entry) -> Option<UserNews> {
    let hash = TokenHash::deserialize(entry.key.as_str().into_deserializer())
        .map_err(|e: serde::de::value::Error| e)
        .ok()?;
    if !live(&entry) {
        lock(revisions).claim_gone(&hash);
        return Some(UserNews::ClaimGone(hash));
    }
    let Ok(claim) = serde_json::from_slice::<ClaimValue>(&entry.value) else {
        log::warn!("NATS: claim {} is unreadable; skipped", entry.key);
        return None;
    };
    if claim.expires_ms <= epoch_ms(SystemTime::now()) {
        return None;
    }
    let claim = ClaimRecord {
        hash: claim.hash,
        user_id: claim.user_id,
        expires_ms: claim.expires_ms,
    };
    lock(revisions)
        .offer_claim(&claim, entry.revision)
        .then_some(UserNews::Claim(claim))
}

impl UserStore for NatsUsers {
    fn load(&mut self) -> StoreFuture<UserState> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        Box::pin(async move {
            nats.connected()?;
            // Read before the entries: what changes while they are read is
            // followed afterwards, at worst twice, never not at all.
            let up_to = (
                last_revision(&nats.users).await?,
                last_revision(&nats.claims).await?,
            );
            let mut state = UserState::default();
            for (key, value, revision) in entries(&nats.users, "user.").await? {
                match serde_json::from_slice::<UserRecord>(&value) {
                    Ok(user) => {
                        lock(&revisions).offer(&user, revision);
                        state.users.push(user);
                    }
                    Err(e) => log::warn!("NATS: {key} is not a user ({e}); skipped"),
                }
            }
            let now = epoch_ms(SystemTime::now());
            for (key, value, revision) in entries(&nats.claims, "").await? {
                let Ok(claim) = serde_json::from_slice::<ClaimValue>(&value) else {
                    log::warn!("NATS: claim {key} is unreadable; skipped");
                    continue;
                };
                if claim.expires_ms <= now {
                    continue;
                }
                let claim = ClaimRecord {
                    hash: claim.hash,
                    user_id: claim.user_id,
                    expires_ms: claim.expires_ms,
                };
                lock(&revisions).offer_claim(&claim, revision);
                state.claims.push(claim);
            }
            lock(&revisions).loaded_up_to = up_to;
            log::info!(
                "NATS: {} users, {} unexpired claim tokens",
                state.users.len(),
                state.claims.len()
            );
            Ok(state)
        })
    }

    fn apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<()> {
        let applied = self.try_apply(changes);
        Box::pin(async move {
            match applied.await? {
                Applied::Kept => Ok(()),
                Applied::Stale { why, .. } => Err(StoreError::Failed(why)),
            }
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn try_apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<Applied> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        // What each user's change was made from is what the actor holds
        // now, as it hands the change over; by the time the write goes
        // out, the feed may have told it of a newer version, which the
        // write must not be taken for having seen.
        let bases: HashMap<UserId, Option<u64>> = {
            let known = lock(&revisions);
            changes
                .iter()
                .filter_map(|change| match change {
                    UserChange::PutUser(user) => {
                        Some((user.id.clone(), known.users.get(&user.id).copied()))
                    }
                    _ => None,
                })
                .collect()
        };
        Box::pin(async move {
            nats.connected()?;
            for (done, change) in changes.iter().enumerate() {
                let outcome = match change {
                    UserChange::PutUser(user) => {
                        let base = bases.get(&user.id).copied().flatten();
                        put_user(&nats, &revisions, user, base).await?
                    }
                    UserChange::PutClaim(claim) => put_claim(&nats, &revisions, claim).await?,
                    UserChange::RemoveClaim(hash) => remove_claim(&nats, &revisions, hash).await?,
                };
                if let Outcome::Stale(news, why) = outcome {
                    return Ok(Applied::Stale {
                        kept: done,
                        news,
                        why,
                    });
                }
            }
            Ok(Applied::Kept)
        })
    }

    fn follow(&mut self) -> Option<UserFeed> {
        let (users_after, claims_after) = lock(&self.revisions).loaded_up_to;
        let revisions = Arc::clone(&self.revisions);
        let users = watch(self.nats.users.clone(), users_after)
            .filter_map(move |entry| std::future::ready(user_news(&revisions, entry)));
        let revisions = Arc::clone(&self.revisions);
        let claims = watch(self.nats.claims.clone(), claims_after)
            .filter_map(move |entry| std::future::ready(claim_news(&revisions, entry)));
        Some(Box::pin(futures_util::stream::select(users, claims)))
    }

    fn find_user(&mut self, id: &UserId) -> StoreFuture<Option<UserRecord>> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        let key = user_key(id);
        Box::pin(async move {
            nats.connected()?;
            let Some((user, revision, _)) = read_user(&nats, &key).await? else {
                return Ok(None);
            };
            Ok(lock(&revisions).offer(&user, revision).then_some(user))
        })
    }

    fn find_token(&mut self, hash: &TokenHash) -> StoreFuture<Option<UserRecord>> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        let hash = hash.clone();
        Box::pin(async move {
            nats.connected()?;
            let owner = nats
                .users
                .get(token_key(&hash))
                .await
                .map_err(|e| unavailable("cannot read an access token index", e))?;
            let Some(owner) = owner.filter(|owner| !owner.is_empty()) else {
                return Ok(None);
            };
            let key = format!("user.{}", String::from_utf8_lossy(&owner));
            let Some((user, revision, _)) = read_user(&nats, &key).await? else {
                return Ok(None);
            };
            if !user.token_hashes.contains(&hash) {
                return Ok(None);
            }
            Ok(lock(&revisions).offer(&user, revision).then_some(user))
        })
    }

    fn find_claim(&mut self, hash: &TokenHash) -> StoreFuture<Option<ClaimRecord>> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        let hash = hash.clone();
        Box::pin(async move {
            nats.connected()?;
            let Some((claim, revision)) = read_claim(&nats, &hash).await? else {
                return Ok(None);
            };
            Ok(lock(&revisions)
                .offer_claim(&claim, revision)
                .then_some(claim))
        })
    }

    fn check_writable(&mut self) -> StoreFuture<()> {
        let nats = self.nats.clone();
        Box::pin(async move { nats.check().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DevName;
    use crate::testkit::NatsServer;

    fn ana(account: u64) -> UserRecord {
        UserRecord {
            id: UserId::random(),
            identity: Identity::Wca {
                wca_account: account,
            },
            wca_id: None,
            name: "Ana".to_owned(),
            token_hashes: Vec::new(),
            sealed_token: None,
        }
    }

    /// NATS went away between a new user's index and their record: the
    /// next sign-in (a new user ID) takes the index over.
    #[actix::test]
    async fn an_index_left_by_a_half_made_user_is_taken_over() {
        let Some(server) = NatsServer::start("users-half") else {
            return;
        };
        let nats = Nats::connect(&server.url()).await.unwrap();
        let never_written = UserId::random();
        let user = ana(5);
        let key = identity_key(&user.identity);
        nats.users
            .create(&key, never_written.as_str().as_bytes().to_vec().into())
            .await
            .unwrap();
        let mut users = NatsUsers::new(nats.clone());
        users
            .apply(vec![UserChange::PutUser(user.clone())])
            .await
            .unwrap();
        let indexed = nats.users.get(&key).await.unwrap().unwrap();
        assert_eq!(&indexed[..], user.id.as_str().as_bytes());
        let loaded = NatsUsers::new(nats).load().await.unwrap().users;
        assert_eq!(loaded, vec![user]);
    }

    /// A write kept by NATS whose acknowledgement never came: the next
    /// change to that user goes on from it rather than being refused.
    #[actix::test]
    async fn a_write_kept_without_its_acknowledgement_is_written_over() {
        let Some(server) = NatsServer::start("users-lost-ack") else {
            return;
        };
        let nats = Nats::connect(&server.url()).await.unwrap();
        let mut users = NatsUsers::new(nats.clone());
        let first = ana(6);
        users
            .apply(vec![UserChange::PutUser(first.clone())])
            .await
            .unwrap();
        // What the lost write was, kept by NATS behind the store's back.
        let mut lost = first.clone();
        lost.name = "Ana (lost)".to_owned();
        let lost_value: Bytes = serde_json::to_vec(&lost).unwrap().into();
        nats.users
            .put(user_key(&first.id), lost_value.clone())
            .await
            .unwrap();
        lock(&users.revisions)
            .unsure
            .insert(first.id.clone(), lost_value);
        let mut next = first.clone();
        next.name = "Ana (next)".to_owned();
        users
            .apply(vec![UserChange::PutUser(next.clone())])
            .await
            .unwrap();
        let loaded = NatsUsers::new(nats.clone()).load().await.unwrap().users;
        assert_eq!(loaded, vec![next.clone()]);
        // A change it did not make is still not written over.
        let mut elsewhere = next.clone();
        elsewhere.name = "Ana (elsewhere)".to_owned();
        nats.users
            .put(
                user_key(&first.id),
                serde_json::to_vec(&elsewhere).unwrap().into(),
            )
            .await
            .unwrap();
        let refused = users.apply(vec![UserChange::PutUser(first)]).await;
        assert!(matches!(refused, Err(StoreError::Failed(_))), "{refused:?}");
    }

    #[test]
    fn identity_keys_are_valid_keys_and_never_collide() {
        let wca = identity_key(&Identity::Wca { wca_account: 42 });
        assert_eq!(wca, "wca.42");
        let dev = |name: &str| {
            identity_key(&Identity::Dev {
                dev_name: DevName::parse(name).unwrap(),
            })
        };
        assert_eq!(dev("42"), "dev.3432");
        assert_eq!(dev("Zoë"), "dev.5a6fc3ab");
        assert_ne!(dev("a.b"), dev("a b"));
        for key in [wca, dev("Zoë Ünal"), dev(". / > *")] {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)),
                "{key}"
            );
        }
    }

    #[test]
    fn claim_ttls_are_whole_seconds_rounded_up() {
        let now = epoch_ms(SystemTime::now());
        assert_eq!(claim_ttl(now + 600_000), Duration::from_secs(600));
        assert_eq!(claim_ttl(now + 1), Duration::from_secs(1));
        assert_eq!(claim_ttl(now.saturating_sub(5_000)), Duration::from_secs(1));
    }
}
