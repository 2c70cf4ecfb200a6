//! The token actor: users, their access tokens, and one-time claim tokens.
//!
//! HTTP handlers ask it to sign a WCA account (or a development user) in,
//! to redeem a claim token and to authenticate an access token. Everything it hands out is in its
//! [`UserStore`] before the answer leaves; tokens are kept there only as
//! hashes, and access tokens also sealed (see [`secrets`]). In cluster
//! mode the store is shared, and the actor follows what other nodes change
//! there (a sign-in on one node, the claim on another, the token on a
//! third).
//!
//! [`secrets`]: crate::secrets

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;

use crate::health::CheckWritable;
use crate::ids::{AccessToken, ClaimToken, DevName, PublicUserInfo, UserId};
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::secrets::{SealingKey, TokenHash};
use crate::store::journal::epoch_ms;
use crate::store::{
    Applied, ClaimRecord, Identity, StoreError, UserChange, UserNews, UserRecord, UserState,
    UserStore,
};

/// How often expired claim tokens are forgotten.
const CLAIM_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Access tokens a user may hold at once (one per sign-in whose sealed copy
/// could not be opened, e.g. after the WCA secret was rotated); the oldest
/// stops working beyond this.
pub const MAX_TOKENS_PER_USER: usize = 16;
/// How many times a sign-in or a redemption is made in all, each on what
/// another node kept meanwhile, before it fails. Two nodes racing make it
/// in two; more means something keeps writing that user.
const MAX_ATTEMPTS: u32 = 4;
/// Access-token lookups in a shared store that may be under way at once.
/// A token unknown here is asked for (it may be another node's, newer than
/// this node's feed), without holding up the tokens known here; beyond
/// this many at once (a flood of made-up tokens) one is refused unread.
const MAX_TOKEN_LOOKUPS: usize = 16;
/// Claim-token lookups a second in a shared store, and how many may be
/// saved up. A redemption holds the actor while it asks, so lookups are
/// budgeted by time rather than by number at once; beyond the budget an
/// unknown claim token is refused unread (a real one is usually here by
/// its feed before the browser comes back with it).
const CLAIM_LOOKUPS_PER_SEC: f64 = 50.0;
/// See [`CLAIM_LOOKUPS_PER_SEC`].
const CLAIM_LOOKUP_BURST: f64 = 100.0;
/// Hashes of tokens a shared store had nobody for, remembered per kind.
const MAX_MISSES: usize = 4096;

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

/// Token hashes that a shared store was asked for and had nobody for,
/// remembered so that the same bad token sent again is refused without
/// asking again. The oldest go first beyond [`MAX_MISSES`].
///
/// A miss stays true: a token is kept before it is handed out, so nobody
/// presents one that is not kept yet, and a token learnt of afterwards (a
/// feed that was behind) is found in memory, which is asked first.
#[derive(Debug, Default)]
struct Misses {
    /// The hashes.
    hashes: HashSet<TokenHash>,
    /// The same, oldest first.
    order: VecDeque<TokenHash>,
}

impl Misses {
    fn contains(&self, hash: &TokenHash) -> bool {
        self.hashes.contains(hash)
    }

    fn insert(&mut self, hash: TokenHash) {
        if self.hashes.insert(hash.clone()) {
            self.order.push_back(hash);
        }
        while self.order.len() > MAX_MISSES {
            if let Some(oldest) = self.order.pop_front() {
                self.hashes.remove(&oldest);
            }
        }
    }
}

/// A reply the token actor makes up as it goes: a store call, perhaps
/// another after it.
type Reply<T> = ResponseActFuture<TokenActor, Result<T, TokenError>>;

fn answer<T: 'static>(result: Result<T, TokenError>) -> Reply<T> {
    Box::pin(fut::ready(result))
}

/// Owns users, access tokens and claim tokens, kept in a [`UserStore`].
///
/// On a store shared by several nodes, it also takes in what the store's
/// feed tells of other nodes' changes, and asks the store for a token it
/// does not know before refusing it. Its writes are compare-and-sets there:
/// a sign-in or redemption that another node got in before is made again
/// on what that node kept (at most [`MAX_ATTEMPTS`] times).
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
    /// Whether other nodes write to `store` too, so that a token unknown
    /// here may be known there.
    shared: bool,
    /// Access tokens the store had nobody for.
    token_misses: Misses,
    /// Claim tokens the store had nothing for.
    claim_misses: Misses,
    /// Access-token lookups in the store under way, at most
    /// [`MAX_TOKEN_LOOKUPS`].
    token_lookups: usize,
    /// The budget of claim-token lookups in the store.
    claim_lookups: TokenBucket,
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
            shared: store.shared(),
            store,
            token_misses: Misses::default(),
            claim_misses: Misses::default(),
            token_lookups: 0,
            claim_lookups: TokenBucket::new(
                CLAIM_LOOKUPS_PER_SEC,
                CLAIM_LOOKUP_BURST,
                Instant::now(),
            ),
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

    /// Takes `user` in, and tells the watchers if what is shown of them
    /// changed. A user new here is told of too when they come from another
    /// node, where they may be shown already (as the sender of a stream);
    /// one made here has nothing shown anywhere yet.
    fn put_user(&mut self, user: UserRecord, from_elsewhere: bool) {
        let before = self.users.get(&user.id).map(public);
        let after = public(&user);
        self.index(user);
        let changed = match before {
            Some(before) => before != after,
            None => from_elsewhere,
        };
        if changed {
            self.watchers.retain(|watcher| watcher.connected());
            for watcher in &self.watchers {
                watcher.do_send(UserUpdated {
                    info: after.clone(),
                });
            }
        }
    }

    fn apply(&mut self, change: UserChange) {
        match change {
            UserChange::PutUser(user) => self.put_user(user, false),
            UserChange::PutClaim(claim) => {
                self.claims.insert(claim.hash.clone(), claim);
            }
            UserChange::RemoveClaim(hash) => {
                self.claims.remove(&hash);
            }
        }
    }

    /// Takes in what the store tells of a change made elsewhere.
    fn take(&mut self, news: UserNews) {
        match news {
            UserNews::User(user) => self.put_user(user, true),
            UserNews::Claim(claim) => {
                self.claims.insert(claim.hash.clone(), claim);
            }
            UserNews::ClaimGone(hash) => {
                self.claims.remove(&hash);
            }
        }
    }

    /// Keeps `changes`, then applies them here and answers `answer`: nothing
    /// is handed out, nor changed in memory, before the store has it. If
    /// the store refuses them as made from something another node changed
    /// meanwhile, what it has now is taken in and `again` makes the change
    /// anew on it, up to `attempts` in all; a claim token redeemed
    /// elsewhere meanwhile is refused.
    fn commit<T: 'static>(
        &mut self,
        changes: Vec<UserChange>,
        answer: T,
        attempts: u32,
        again: impl FnOnce(&mut Self, u32) -> Reply<T> + 'static,
    ) -> Reply<T> {
        let kept = self.store.try_apply(changes.clone());
        let asked = Instant::now();
        Box::pin(kept.into_actor(self).then(move |kept, actor, _| {
            actor.metrics.state_synced(asked.elapsed());
            let (kept, news, why) = match kept {
                Err(e) => return answer_err(TokenError::Storage(e)),
                Ok(Applied::Kept) => {
                    for change in changes {
                        actor.apply(change);
                    }
                    return self::answer(Ok(answer));
                }
                Ok(Applied::Stale { kept, news, why }) => (kept, news, why),
            };
            for change in changes.into_iter().take(kept) {
                actor.apply(change);
            }
            let claim_gone = matches!(news, UserNews::ClaimGone(_));
            actor.take(news);
            if claim_gone {
                log::info!("claim refused: {why}");
                answer_err(TokenError::InvalidClaimToken)
            } else if attempts <= 1 {
                log::warn!("{why}; given up after {MAX_ATTEMPTS} attempts");
                answer_err(TokenError::Storage(StoreError::Failed(why)))
            } else {
                log::info!("{why}; made again on what is kept now");
                again(actor, attempts - 1)
            }
        }))
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
        attempts: u32,
    ) -> Reply<ClaimToken> {
        let existing = self
            .by_identity
            .get(&identity)
            .and_then(|id| self.users.get(id));
        let user = match existing {
            Some(user) => UserRecord {
                name: name.clone(),
                wca_id: wca_id.clone(),
                ..user.clone()
            },
            None => UserRecord {
                id: UserId::random(),
                identity: identity.clone(),
                wca_id: wca_id.clone(),
                name: name.clone(),
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
        self.commit(changes, claim_token, attempts, move |actor, attempts| {
            actor.sign_in(identity, wca_id, name, attempts)
        })
    }

    /// Redeems the claim token of hash `hash`; one unknown here is looked
    /// up in a shared store first, unless `looked_up` already.
    fn redeem(&mut self, hash: TokenHash, attempts: u32, looked_up: bool) -> Reply<Claimed> {
        if let Some(claim) = self.claims.get(&hash).cloned() {
            return self.redeem_claim(claim, attempts, false);
        }
        if looked_up || !self.shared || self.claim_misses.contains(&hash) {
            return answer_err(TokenError::InvalidClaimToken);
        }
        if !self.claim_lookups.take(Instant::now()) {
            log::debug!("claim lookups over their budget: an unknown claim token refused unread");
            return answer_err(TokenError::InvalidClaimToken);
        }
        let found = self.store.find_claim(&hash);
        Box::pin(
            found
                .into_actor(self)
                .then(move |found, actor, _| match found {
                    Err(e) => answer_err(TokenError::Storage(e)),
                    Ok(Some(claim)) => {
                        actor.take(UserNews::Claim(claim));
                        actor.redeem(hash, attempts, true)
                    }
                    Ok(None) => {
                        actor.claim_misses.insert(hash.clone());
                        actor.redeem(hash, attempts, true)
                    }
                }),
        )
    }

    /// Redeems `claim` for its user's access token; a user unknown here is
    /// looked up in a shared store first, unless `looked_up` already.
    fn redeem_claim(
        &mut self,
        claim: ClaimRecord,
        attempts: u32,
        looked_up: bool,
    ) -> Reply<Claimed> {
        let claim_hash = claim.hash.clone();
        if claim.expires_ms <= epoch_ms(SystemTime::now()) {
            self.claims.remove(&claim_hash);
            return answer_err(TokenError::InvalidClaimToken);
        }
        let Some(user) = self.users.get(&claim.user_id) else {
            if looked_up || !self.shared {
                return answer_err(TokenError::InvalidClaimToken);
            }
            let found = self.store.find_user(&claim.user_id);
            return Box::pin(
                found
                    .into_actor(self)
                    .then(move |found, actor, _| match found {
                        Err(e) => answer_err(TokenError::Storage(e)),
                        Ok(found) => {
                            if let Some(user) = found {
                                actor.put_user(user, true);
                            }
                            actor.redeem_claim(claim, attempts, true)
                        }
                    }),
            );
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
            .chain([UserChange::RemoveClaim(claim_hash.clone())])
            .collect();
        self.commit(changes, claimed, attempts, move |actor, attempts| {
            actor.redeem(claim_hash, attempts, true)
        })
    }

    /// The user whose access token has hash `hash`, as known here.
    fn authenticated(&self, hash: &TokenHash) -> Option<AuthenticatedUser> {
        let user = self.by_token.get(hash).and_then(|id| self.users.get(id))?;
        Some(AuthenticatedUser {
            id: user.id.clone(),
            info: public(user),
        })
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

fn answer_err<T: 'static>(error: TokenError) -> Reply<T> {
    answer(Err(error))
}

impl Actor for TokenActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `wait`: nothing is answered before the users are back. The feed
        // goes on from where the load read up to.
        let loaded = self.store.load();
        ctx.wait(loaded.into_actor(self).map(|loaded, actor, ctx| {
            match loaded {
                Ok(state) => actor.install(state),
                Err(e) => log::error!("cannot read the users back: {e}"),
            }
            if let Some(feed) = actor.store.follow() {
                ctx.add_stream(feed);
            }
        }));
        ctx.run_interval(CLAIM_SWEEP_INTERVAL, |actor, _| actor.sweep_claims());
    }
}

impl StreamHandler<UserNews> for TokenActor {
    fn handle(&mut self, news: UserNews, _: &mut Self::Context) {
        self.take(news);
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The feed makes itself again when it fails; ending is a bug, and
        // the actor goes on answering from memory and the store.
        log::error!(
            "the users' feed ended: changes made on other nodes now show only when asked for"
        );
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
        AtomicResponse::new(self.sign_in(identity, wca_id, name, MAX_ATTEMPTS))
    }
}

impl Handler<DevSignIn> for TokenActor {
    type Result = AtomicResponse<Self, Result<ClaimToken, TokenError>>;

    fn handle(&mut self, msg: DevSignIn, _: &mut Self::Context) -> Self::Result {
        let name = msg.name.as_str().to_owned();
        let identity = Identity::Dev { dev_name: msg.name };
        AtomicResponse::new(self.sign_in(identity, None, name, MAX_ATTEMPTS))
    }
}

impl Handler<RedeemClaim> for TokenActor {
    type Result = AtomicResponse<Self, Result<Claimed, TokenError>>;

    fn handle(&mut self, msg: RedeemClaim, _: &mut Self::Context) -> Self::Result {
        let hash = TokenHash::of(msg.claim_token.expose());
        AtomicResponse::new(self.redeem(hash, MAX_ATTEMPTS, false))
    }
}

impl Handler<Authenticate> for TokenActor {
    type Result = Reply<AuthenticatedUser>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        let hash = TokenHash::of(msg.access_token.expose());
        if let Some(user) = self.authenticated(&hash) {
            return answer(Ok(user));
        }
        if !self.shared || self.token_misses.contains(&hash) {
            return answer_err(TokenError::InvalidAccessToken);
        }
        if self.token_lookups >= MAX_TOKEN_LOOKUPS {
            log::debug!("{MAX_TOKEN_LOOKUPS} access-token lookups under way: an unknown token refused unread");
            return answer_err(TokenError::InvalidAccessToken);
        }
        // Not atomic: the tokens known here go on being answered while the
        // store is asked.
        self.token_lookups += 1;
        let found = self.store.find_token(&hash);
        Box::pin(found.into_actor(self).map(move |found, actor, _| {
            actor.token_lookups -= 1;
            match found {
                Ok(Some(user)) => actor.put_user(user, true),
                Ok(None) => {}
                // Known here meanwhile (the feed caught up), or not at all.
                Err(e) => return actor.authenticated(&hash).ok_or(TokenError::Storage(e)),
            }
            actor.authenticated(&hash).ok_or_else(|| {
                actor.token_misses.insert(hash);
                TokenError::InvalidAccessToken
            })
        }))
    }
}

impl Handler<LookupUsers> for TokenActor {
    type Result = ResponseActFuture<Self, Vec<PublicUserInfo>>;

    fn handle(&mut self, msg: LookupUsers, _: &mut Self::Context) -> Self::Result {
        let known = |actor: &TokenActor, ids: &[UserId]| -> Vec<PublicUserInfo> {
            ids.iter()
                .map(|id| match actor.users.get(id) {
                    Some(user) => public(user),
                    None => PublicUserInfo::unknown(id),
                })
                .collect()
        };
        // On a shared store, a user another node made may not have come
        // on the feed yet: looked up before they are shown as unknown.
        let missing: Vec<UserId> = msg
            .user_ids
            .iter()
            .filter(|id| !self.users.contains_key(id))
            .cloned()
            .collect();
        if !self.shared || missing.is_empty() {
            return Box::pin(fut::ready(known(self, &msg.user_ids)));
        }
        let finds: Vec<_> = missing.iter().map(|id| self.store.find_user(id)).collect();
        let found = futures_util::future::join_all(finds);
        Box::pin(found.into_actor(self).map(move |found, actor, _| {
            for user in found.into_iter().flatten().flatten() {
                actor.put_user(user, true);
            }
            known(actor, &msg.user_ids)
        }))
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
