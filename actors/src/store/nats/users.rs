//! Users and claim tokens in JetStream KV (see [`super`] for the keys).
//!
//! A user's record is written by compare-and-set on the revision this
//! store last read or wrote, and a new user's sign-in index (WCA account or
//! development name) is created only where absent: a second node creating
//! the same user, or writing over a change it has not seen, is refused
//! rather than lost. A claim token is created with a TTL that ends when it
//! expires, and redeemed by a compare-and-set on its revision, so it works
//! once even if two nodes try it at once.
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
    hash: TokenHash,
    user_id: UserId,
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
        Some(revision) => nats
            .users
            .update(user_key(&user.id), value.into(), revision)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => {
                    StoreError::Failed(format!("user {} was changed elsewhere meanwhile", user.id))
                }
                _ => unavailable("cannot write a user", e),
            })?,
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

/// Makes the index of `user`'s identity point at them: created if absent,
/// fine if it does already, refused if it points at someone else.
async fn claim_identity(nats: &Nats, user: &UserRecord) -> Result<(), StoreError> {
    let key = identity_key(&user.identity);
    let id = Bytes::copy_from_slice(user.id.as_str().as_bytes());
    match nats.users.create(&key, id.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
            let current = nats
                .users
                .get(&key)
                .await
                .map_err(|e| unavailable("cannot read a user index", e))?;
            if current.as_ref() == Some(&id) {
                Ok(())
            } else {
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
        }
        Err(e) => Err(unavailable("cannot write a user index", e)),
    }
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
