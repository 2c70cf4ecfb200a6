//! Users and claim tokens in JetStream KV (see [`super`] for the keys).
//!
//! A user's record is written by compare-and-set on the revision this
//! store last read or wrote, and a new user's sign-in index (WCA account or
//! development name) is created only where absent: a second node creating
//! the same user, or writing over a change it has not seen, is refused
//! rather than lost. A claim token is created with a TTL that ends when it
//! expires, and redeemed by a compare-and-set on its revision, so it works
//! once even if two nodes try it at once. A write NATS kept without this
//! store hearing so (a lost acknowledgement, NATS gone between a new
//! user's index and their record) is recognised and gone on from, never
//! mistaken for a change made elsewhere.
//!
//! The changes of one [`UserStore::apply`] are made one after the other,
//! in the order the token actor gives them (the user first, then the claim
//! issued or redeemed). A failure part way leaves the ones before it kept,
//! which that order makes harmless: a user changed without their claim
//! issued, or a token kept whose claim was not redeemed (it is handed out
//! by no one, and the claim still works).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{entries, unavailable, Nats, MARKER_TTL};
use crate::ids::UserId;
use crate::secrets::TokenHash;
use crate::store::journal::epoch_ms;
use crate::store::{
    ClaimRecord, Identity, StoreError, StoreFuture, UserChange, UserRecord, UserState, UserStore,
};

/// The key of a user's record.
fn user_key(id: &UserId) -> String {
    format!("user.{id}")
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

/// What this store knows of the revisions it read and wrote, for its
/// compare-and-sets.
#[derive(Debug, Default)]
struct Revisions {
    /// Each user's record.
    users: HashMap<UserId, u64>,
    /// Each unredeemed claim token's, with when it expires (past which it
    /// is forgotten here too).
    claims: HashMap<TokenHash, (u64, u64)>,
    /// The last value written to a user's record that NATS did not
    /// acknowledge: it may have been kept all the same.
    unsure: HashMap<UserId, Bytes>,
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

async fn put_user(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
) -> Result<(), StoreError> {
    let value = serde_json::to_vec(user).map_err(|e| StoreError::Failed(e.to_string()))?;
    let known = lock(revisions).users.get(&user.id).copied();
    let revision = match known {
        Some(revision) => update_user(nats, revisions, user, value.into(), revision).await?,
        None => {
            claim_identity(nats, user).await?;
            nats.users
                .create(user_key(&user.id), value.into())
                .await
                .map_err(|e| match e.kind() {
                    CreateErrorKind::AlreadyExists => {
                        StoreError::Failed(format!("user {} exists already", user.id))
                    }
                    _ => unavailable("cannot write a user", e),
                })?
        }
    };
    lock(revisions).users.insert(user.id.clone(), revision);
    Ok(())
}

/// Writes `value` over `user`'s record at `revision`. If the record moved
/// on to a value this store wrote without hearing back (its acknowledgement
/// was lost, or NATS went away before it came), the write goes on from
/// there; if it moved on to `value` itself, that is this write, done. Any
/// other value is a change made elsewhere, which is not written over.
async fn update_user(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    user: &UserRecord,
    value: Bytes,
    revision: u64,
) -> Result<u64, StoreError> {
    let key = user_key(&user.id);
    let mut revision = revision;
    for _ in 0..2 {
        let failed = match nats.users.update(&key, value.clone(), revision).await {
            Ok(revision) => {
                lock(revisions).unsure.remove(&user.id);
                return Ok(revision);
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => e,
            Err(e) => {
                lock(revisions).unsure.insert(user.id.clone(), value);
                return Err(unavailable("cannot write a user", e));
            }
        };
        let current = nats
            .users
            .entry(&key)
            .await
            .map_err(|e| unavailable("cannot read a user", e))?;
        let Some(current) = current else {
            return Err(unavailable("cannot write a user", failed));
        };
        if current.value == value {
            lock(revisions).unsure.remove(&user.id);
            return Ok(current.revision);
        }
        if lock(revisions).unsure.get(&user.id) != Some(&current.value) {
            break;
        }
        revision = current.revision;
    }
    Err(StoreError::Failed(format!(
        "user {} was changed elsewhere meanwhile",
        user.id
    )))
}

/// Makes the index of `user`'s identity point at them: created if absent,
/// fine if it does already, refused if it points at someone else. An index
/// left pointing at a user whose record was never written (NATS went away
/// between the two writes) is taken over, by compare-and-set.
async fn claim_identity(nats: &Nats, user: &UserRecord) -> Result<(), StoreError> {
    let key = identity_key(&user.identity);
    let id = Bytes::copy_from_slice(user.id.as_str().as_bytes());
    match nats.users.create(&key, id.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(unavailable("cannot write a user index", e)),
    }
    let read = |e| unavailable("cannot read a user index", e);
    let Some(current) = nats.users.entry(&key).await.map_err(read)? else {
        return Err(StoreError::Unavailable(format!("{key} changed meanwhile")));
    };
    if current.value == id {
        return Ok(());
    }
    let owner = std::str::from_utf8(&current.value).unwrap_or_default();
    let owner_record = nats
        .users
        .get(format!("user.{owner}"))
        .await
        .map_err(read)?;
    if owner_record.is_none() {
        log::warn!(
            "{} pointed at user {owner}, who was never written; now at {}",
            user.identity,
            user.id
        );
        return match nats.users.update(&key, id, current.revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(StoreError::Failed(
                format!("{} was taken meanwhile", user.identity),
            )),
            Err(e) => Err(unavailable("cannot write a user index", e)),
        };
    }
    log::error!(
        "{} signs in as another user already: user {} not created",
        user.identity,
        user.id
    );
    Err(StoreError::Failed(format!(
        "{} belongs to another user",
        user.identity
    )))
}

async fn put_claim(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    claim: &ClaimRecord,
) -> Result<(), StoreError> {
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
    revisions.claims.retain(|_, (_, expires)| *expires > now);
    revisions
        .claims
        .insert(claim.hash.clone(), (revision, claim.expires_ms));
    Ok(())
}

async fn remove_claim(
    nats: &Nats,
    revisions: &Mutex<Revisions>,
    hash: &TokenHash,
) -> Result<(), StoreError> {
    let known = lock(revisions)
        .claims
        .get(hash)
        .map(|(revision, _)| *revision);
    let key = hash.as_str();
    let purged = match known {
        Some(revision) => {
            nats.claims
                .purge_expect_revision_with_ttl(key, revision, MARKER_TTL)
                .await
        }
        None => nats.claims.purge_with_ttl(key, MARKER_TTL).await,
    };
    purged.map_err(|e| match e.kind() {
        UpdateErrorKind::WrongLastRevision => {
            StoreError::Failed("the claim token was redeemed elsewhere".to_owned())
        }
        _ => unavailable("cannot redeem a claim token", e),
    })?;
    lock(revisions).claims.remove(hash);
    Ok(())
}

impl UserStore for NatsUsers {
    fn load(&mut self) -> StoreFuture<UserState> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        Box::pin(async move {
            nats.connected()?;
            let mut state = UserState::default();
            for (key, value, revision) in entries(&nats.users, "user.").await? {
                match serde_json::from_slice::<UserRecord>(&value) {
                    Ok(user) => {
                        lock(&revisions).users.insert(user.id.clone(), revision);
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
                let hash = claim.hash;
                if claim.expires_ms <= now {
                    continue;
                }
                lock(&revisions)
                    .claims
                    .insert(hash.clone(), (revision, claim.expires_ms));
                state.claims.push(ClaimRecord {
                    hash,
                    user_id: claim.user_id,
                    expires_ms: claim.expires_ms,
                });
            }
            log::info!(
                "NATS: {} users, {} unexpired claim tokens",
                state.users.len(),
                state.claims.len()
            );
            Ok(state)
        })
    }

    fn apply(&mut self, changes: Vec<UserChange>) -> StoreFuture<()> {
        let nats = self.nats.clone();
        let revisions = Arc::clone(&self.revisions);
        Box::pin(async move {
            nats.connected()?;
            for change in &changes {
                match change {
                    UserChange::PutUser(user) => put_user(&nats, &revisions, user).await?,
                    UserChange::PutClaim(claim) => put_claim(&nats, &revisions, claim).await?,
                    UserChange::RemoveClaim(hash) => remove_claim(&nats, &revisions, hash).await?,
                }
            }
            Ok(())
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
