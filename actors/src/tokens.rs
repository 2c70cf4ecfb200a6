//! The token actor: users, their access tokens, and one-time claim tokens.
//!
//! HTTP handlers ask it to sign a WCA account (or a development user) in,
//! to redeem a claim token and to authenticate an access token. Everything it hands out is in its
//! [`UserStore`] before the answer leaves; tokens are kept there only as
//! hashes, and access tokens also sealed (see [`secrets`]).
//!
//! [`secrets`]: crate::secrets

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;

use crate::health::CheckWritable;
use crate::ids::{AccessToken, ClaimToken, DevName, PublicUserInfo, UserId};
use crate::metrics::Metrics;
use crate::secrets::{SealingKey, TokenHash};
use crate::store::journal::epoch_ms;
use crate::store::{
    ClaimRecord, Identity, StoreError, UserChange, UserRecord, UserState, UserStore,
};

/// How often expired claim tokens are forgotten.
const CLAIM_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Access tokens a user may hold at once (one per sign-in whose sealed copy
/// could not be opened, e.g. after the WCA secret was rotated); the oldest
/// stops working beyond this.
pub const MAX_TOKENS_PER_USER: usize = 16;

/// What the WCA says of the account that signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WcaProfile {
    /// The WCA account number, which never changes.
    pub account_id: u64,
    /// The WCA ID (e.g. `2015ABCD01`), if the account has one.
    pub wca_id: Option<String>,
    /// The person's name on the WCA.
    pub name: String,
}

/// Why the token actor refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The access token belongs to nobody.
    InvalidAccessToken,
    /// The claim token is unknown, already redeemed, or expired.
    InvalidClaimToken,
    /// The change could not be kept; nothing was handed out.
    Storage(StoreError),
}

/// A signed-in user, as an access token identifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    /// The user's ID.
    pub id: UserId,
    /// What anyone may see of them.
    pub info: PublicUserInfo,
}

/// Finds or creates the user of a WCA account, refreshes their name and WCA
/// ID, and issues a claim token for them.
#[derive(Message, Debug)]
#[rtype(result = "Result<ClaimToken, TokenError>")]
pub struct SignIn {
    /// The account the WCA vouched for.
    pub profile: WcaProfile,
}

/// Finds or creates the development user of this name and issues a claim
/// token for them, as [`SignIn`] does for a WCA account. The user has no WCA
/// ID and is shown as `"<name> (unverified)"`; the HTTP layer offers this
/// only where the development sign-in is on.
#[derive(Message, Debug)]
#[rtype(result = "Result<ClaimToken, TokenError>")]
pub struct DevSignIn {
    /// The name they sign in with, which finds them again next time.
    pub name: DevName,
}

/// Redeems a claim token for the user's access token.
#[derive(Message, Debug)]
#[rtype(result = "Result<Claimed, TokenError>")]
pub struct RedeemClaim {
    /// The token from the sign-in redirect.
    pub claim_token: ClaimToken,
}

/// What redeeming a claim token gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The user's access token (the same on every sign-in).
    pub access_token: AccessToken,
    /// The user's public info.
    pub user: PublicUserInfo,
}

/// Finds the user an access token belongs to.
#[derive(Message, Debug)]
#[rtype(result = "Result<AuthenticatedUser, TokenError>")]
pub struct Authenticate {
    /// The token, as the client sent it.
    pub access_token: AccessToken,
}

/// The public info of each of these users, in order.
#[derive(Message, Debug)]
#[rtype(result = "Vec<PublicUserInfo>")]
pub struct LookupUsers {
    /// User IDs; an unknown one is shown as an unknown user.
    pub user_ids: Vec<UserId>,
}

/// Asks to be told of every change to a user's public info from now on
/// (a name or WCA ID refreshed at sign-in), so that what is shown of them
/// elsewhere stays current.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchUsers {
    /// Where each [`UserUpdated`] goes.
    pub watcher: Recipient<UserUpdated>,
}

/// A user's public info changed; sent to every [`WatchUsers`] watcher once
/// the change is kept.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct UserUpdated {
    /// The user's public info as it is now.
    pub info: PublicUserInfo,
}

fn public(user: &UserRecord) -> PublicUserInfo {
    PublicUserInfo::new(&user.id, user.wca_id.as_deref(), &user.name)
}

/// Owns users, access tokens and claim tokens, kept in a [`UserStore`].
pub struct TokenActor {
    /// Users by ID.
    users: HashMap<UserId, UserRecord>,
    /// User IDs by access token hash. Looking a token up by its hash leaks
    /// nothing through timing about the tokens that exist.
    by_token: HashMap<TokenHash, UserId>,
    /// User IDs by what they sign in with: a WCA account number, or a
    /// development user's name.
    by_identity: HashMap<Identity, UserId>,
    /// Unredeemed claim tokens by hash.
    claims: HashMap<TokenHash, ClaimRecord>,
    /// How long a claim token may wait to be redeemed.
    claim_ttl: Duration,
    /// Where every change is kept before it is answered.
    store: Box<dyn UserStore + Send>,
    /// Seals access tokens at rest.
    key: SealingKey,
    /// Told of every change to a user's public info.
    watchers: Vec<Recipient<UserUpdated>>,
    /// Where the time of each durable write is counted.
    metrics: Arc<Metrics>,
}

impl TokenActor {
    /// A token actor keeping its users in `store`; it reads them back when
    /// it starts, before it answers anything.
    pub fn new(store: Box<dyn UserStore + Send>, claim_ttl: Duration) -> TokenActor {
        TokenActor {
            users: HashMap::new(),
            by_token: HashMap::new(),
            by_identity: HashMap::new(),
            claims: HashMap::new(),
            claim_ttl,
            store,
            key: SealingKey::random(),
            watchers: Vec::new(),
            metrics: Metrics::new(),
        }
    }

    /// Counts into `metrics` (by default, a set of its own nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> TokenActor {
        self.metrics = metrics;
        self
    }

    /// Seals access tokens with a key derived from `secret` (the WCA client
    /// secret), so a returning user gets the same token across restarts.
    /// Without it, a process-local key is used.
    pub fn with_sealing_secret(mut self, secret: &[u8]) -> TokenActor {
        self.key = SealingKey::from_secret(secret);
        self
    }

    fn install(&mut self, state: UserState) {
        for user in state.users {
            self.index(user);
        }
        for claim in state.claims {
            if self.users.contains_key(&claim.user_id) {
                self.claims.insert(claim.hash.clone(), claim);
            }
        }
        self.sweep_claims();
    }

    /// Makes `user` the current version of that user, token hashes included.
    fn index(&mut self, user: UserRecord) {
        if let Some(old) = self.users.get(&user.id) {
            for hash in &old.token_hashes {
                self.by_token.remove(hash);
            }
        }
        for hash in &user.token_hashes {
            self.by_token.insert(hash.clone(), user.id.clone());
        }
        self.by_identity
            .insert(user.identity.clone(), user.id.clone());
        self.users.insert(user.id.clone(), user);
    }

    fn apply(&mut self, change: UserChange) {
        match change {
            UserChange::PutUser(user) => {
                let before = self.users.get(&user.id).map(public);
                let after = public(&user);
                self.index(user);
                // A new user has nothing shown elsewhere yet.
                if before.is_some_and(|before| before != after) {
                    self.watchers.retain(|watcher| watcher.connected());
                    for watcher in &self.watchers {
                        watcher.do_send(UserUpdated {
                            info: after.clone(),
                        });
                    }
                }
            }
            UserChange::PutClaim(claim) => {
                self.claims.insert(claim.hash.clone(), claim);
            }
            UserChange::RemoveClaim(hash) => {
                self.claims.remove(&hash);
            }
        }
    }

    /// Keeps `changes`, then applies them here and answers `answer`: nothing
    /// is handed out, nor changed in memory, before the store has it.
    fn commit<T: 'static>(
        &mut self,
        changes: Vec<UserChange>,
        answer: T,
    ) -> AtomicResponse<Self, Result<T, TokenError>> {
        let kept = self.store.apply(changes.clone());
        let asked = Instant::now();
        AtomicResponse::new(Box::pin(kept.into_actor(self).map(
            move |kept, actor, _| {
                actor.metrics.state_synced(asked.elapsed());
                kept.map_err(TokenError::Storage)?;
                for change in changes {
                    actor.apply(change);
                }
                Ok(answer)
            },
        )))
    }

    fn sweep_claims(&mut self) {
        let now = epoch_ms(SystemTime::now());
        self.claims.retain(|_, claim| claim.expires_ms > now);
    }

    /// Finds the user of `identity` or creates one, gives them `wca_id` and
    /// `name` (refreshed on every sign-in), and issues a claim token for
    /// them; the change and the claim are kept before it is answered.
    fn sign_in(
        &mut self,
        identity: Identity,
        wca_id: Option<String>,
        name: String,
    ) -> AtomicResponse<Self, Result<ClaimToken, TokenError>> {
        let existing = self
            .by_identity
            .get(&identity)
            .and_then(|id| self.users.get(id));
        let user = match existing {
            Some(user) => UserRecord {
                name,
                wca_id,
                ..user.clone()
            },
            None => UserRecord {
                id: UserId::random(),
                identity,
                wca_id,
                name,
                token_hashes: Vec::new(),
                sealed_token: None,
            },
        };
        let mut changes = Vec::new();
        if existing != Some(&user) {
            if existing.is_none() {
                log::info!("new user {} for {}", user.id, user.identity);
            }
            changes.push(UserChange::PutUser(user.clone()));
        }
        let claim_token = ClaimToken::random();
        let ttl_ms = u64::try_from(self.claim_ttl.as_millis()).unwrap_or(u64::MAX);
        changes.push(UserChange::PutClaim(ClaimRecord {
            hash: TokenHash::of(claim_token.expose()),
            user_id: user.id,
            expires_ms: epoch_ms(SystemTime::now()).saturating_add(ttl_ms),
        }));
        self.commit(changes, claim_token)
    }

    /// The user's access token: the sealed one if it opens and is still
    /// valid; else a new one, with the user changed to keep it (hashed and
    /// sealed), to be committed before the token is handed out.
    fn access_token_for(&self, user: &UserRecord) -> (AccessToken, Option<UserRecord>) {
        let opened = user
            .sealed_token
            .as_ref()
            .and_then(|sealed| self.key.unseal(&user.id, sealed))
            .filter(|token| user.token_hashes.contains(&TokenHash::of(token.expose())));
        if let Some(token) = opened {
            return (token, None);
        }
        let token = AccessToken::random();
        let mut updated = user.clone();
        updated.token_hashes.push(TokenHash::of(token.expose()));
        let excess = updated
            .token_hashes
            .len()
            .saturating_sub(MAX_TOKENS_PER_USER);
        updated.token_hashes.drain(..excess);
        updated.sealed_token = self.key.seal(&user.id, &token);
        (token, Some(updated))
    }
}

impl Actor for TokenActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `wait`: nothing is answered before the users are back.
        let loaded = self.store.load();
        ctx.wait(
            loaded
                .into_actor(self)
                .map(|loaded, actor, _| match loaded {
                    Ok(state) => actor.install(state),
                    Err(e) => log::error!("cannot read the users back: {e}"),
                }),
        );
        ctx.run_interval(CLAIM_SWEEP_INTERVAL, |actor, _| actor.sweep_claims());
    }
}

impl Handler<SignIn> for TokenActor {
    type Result = AtomicResponse<Self, Result<ClaimToken, TokenError>>;

    fn handle(&mut self, msg: SignIn, _: &mut Self::Context) -> Self::Result {
        let WcaProfile {
            account_id,
            wca_id,
            name,
        } = msg.profile;
        let identity = Identity::Wca {
            wca_account: account_id,
        };
        self.sign_in(identity, wca_id, name)
    }
}

impl Handler<DevSignIn> for TokenActor {
    type Result = AtomicResponse<Self, Result<ClaimToken, TokenError>>;

    fn handle(&mut self, msg: DevSignIn, _: &mut Self::Context) -> Self::Result {
        let name = msg.name.as_str().to_owned();
        self.sign_in(Identity::Dev { dev_name: msg.name }, None, name)
    }
}

impl Handler<RedeemClaim> for TokenActor {
    type Result = AtomicResponse<Self, Result<Claimed, TokenError>>;

    fn handle(&mut self, msg: RedeemClaim, _: &mut Self::Context) -> Self::Result {
        let refused =
            || AtomicResponse::new(Box::pin(fut::ready(Err(TokenError::InvalidClaimToken))));
        let claim_hash = TokenHash::of(msg.claim_token.expose());
        let Some(claim) = self.claims.get(&claim_hash) else {
            return refused();
        };
        if claim.expires_ms <= epoch_ms(SystemTime::now()) {
            self.claims.remove(&claim_hash);
            return refused();
        }
        let Some(user) = self.users.get(&claim.user_id) else {
            return refused();
        };
        let (access_token, updated) = self.access_token_for(user);
        log::info!("user {} claimed access token {access_token}", user.id);
        let claimed = Claimed {
            user: public(user),
            access_token,
        };
        // The new token and the claim's redemption are kept together: a
        // claim token must not work twice, not even across a crash, and
        // must not be used up by a token that was never kept.
        let changes = updated
            .map(UserChange::PutUser)
            .into_iter()
            .chain([UserChange::RemoveClaim(claim_hash)])
            .collect();
        self.commit(changes, claimed)
    }
}

impl Handler<Authenticate> for TokenActor {
    type Result = Result<AuthenticatedUser, TokenError>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        let user = self
            .by_token
            .get(&TokenHash::of(msg.access_token.expose()))
            .and_then(|id| self.users.get(id))
            .ok_or(TokenError::InvalidAccessToken)?;
        Ok(AuthenticatedUser {
            id: user.id.clone(),
            info: public(user),
        })
    }
}

impl Handler<LookupUsers> for TokenActor {
    type Result = Vec<PublicUserInfo>;

    fn handle(&mut self, msg: LookupUsers, _: &mut Self::Context) -> Self::Result {
        msg.user_ids
            .iter()
            .map(|id| match self.users.get(id) {
                Some(user) => public(user),
                None => PublicUserInfo::unknown(id),
            })
            .collect()
    }
}

impl Handler<WatchUsers> for TokenActor {
    type Result = ();

    fn handle(&mut self, msg: WatchUsers, _: &mut Self::Context) {
        self.watchers.push(msg.watcher);
    }
}

impl Handler<CheckWritable> for TokenActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: CheckWritable, _: &mut Self::Context) -> Self::Result {
        self.store.check_writable()
    }
}
