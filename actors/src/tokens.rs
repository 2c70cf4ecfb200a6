//! The token actor: users, their access tokens, and one-time claim tokens.
//!
//! HTTP handlers ask it to sign a WCA account in, to redeem a claim token and
//! to authenticate an access token. Everything it hands out is in its journal
//! (`users.jsonl` in the data directory) before the answer leaves; tokens are
//! kept there only as hashes, and access tokens also sealed (see [`secrets`]).
//!
//! [`secrets`]: crate::secrets

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ids::{self, PublicUserInfo};
use crate::journal::{epoch_ms, Journal};
use crate::secrets::{token_hash, SealingKey};

/// The journal's file name inside the data directory.
pub const USERS_FILE: &str = "users.jsonl";
/// How often expired claim tokens are forgotten.
const CLAIM_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The journal is compacted once this many records were appended and they
/// outnumber the live ones.
const COMPACT_AFTER_APPENDS: usize = 1024;
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

/// A user as the token actor keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    id: String,
    wca_account: u64,
    wca_id: Option<String>,
    name: String,
    /// SHA-256 hashes of the user's valid access tokens, oldest first.
    token_hashes: Vec<String>,
    /// The newest access token, sealed; returned again on the next sign-in.
    sealed_token: Option<String>,
}

impl User {
    fn public(&self) -> PublicUserInfo {
        PublicUserInfo::new(&self.id, self.wca_id.as_deref(), &self.name)
    }
}

/// An unredeemed claim token.
#[derive(Debug, Clone)]
struct Claim {
    user_id: String,
    /// Milliseconds since the Unix epoch; wall-clock time, so it holds across restarts.
    expires_ms: u64,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Record {
    /// A user was created or its WCA name or ID changed: the whole user.
    User(User),
    /// A claim token was issued (kept as its hash).
    Claim {
        claim_hash: String,
        user_id: String,
        expires_ms: u64,
    },
    /// A claim token was redeemed.
    Claimed { claim_hash: String },
}

/// Why the token actor refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The access token belongs to nobody.
    InvalidAccessToken,
    /// The claim token is unknown, already redeemed, or expired.
    InvalidClaimToken,
    /// The journal could not be written; nothing was handed out.
    Storage(String),
}

/// A signed-in user, as an access token identifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    /// The user's ID.
    pub id: String,
    /// What anyone may see of them.
    pub info: PublicUserInfo,
}

/// Finds or creates the user of a WCA account, refreshes their name and WCA
/// ID, and issues a claim token for them.
#[derive(Message, Debug)]
#[rtype(result = "Result<String, TokenError>")]
pub struct SignIn {
    /// The account the WCA vouched for.
    pub profile: WcaProfile,
}

/// Redeems a claim token for the user's access token.
#[derive(Message, Debug)]
#[rtype(result = "Result<Claimed, TokenError>")]
pub struct RedeemClaim {
    /// The token from the sign-in redirect.
    pub claim_token: String,
}

/// What redeeming a claim token gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The user's access token (the same on every sign-in).
    pub access_token: String,
    /// The user's public info.
    pub user: PublicUserInfo,
}

/// Finds the user an access token belongs to.
#[derive(Message, Debug)]
#[rtype(result = "Result<AuthenticatedUser, TokenError>")]
pub struct Authenticate {
    /// The token, as the client sent it.
    pub access_token: String,
}

/// The public info of each of these users, in order.
#[derive(Message, Debug)]
#[rtype(result = "Vec<PublicUserInfo>")]
pub struct LookupUsers {
    /// User IDs; an unknown one is shown as an unknown user.
    pub user_ids: Vec<String>,
}

/// Owns users, access tokens and claim tokens, and their journal.
pub struct TokenActor {
    /// Users by ID.
    users: HashMap<String, User>,
    /// User IDs by access token hash. Looking a token up by its hash leaks
    /// nothing through timing about the tokens that exist.
    by_token: HashMap<String, String>,
    /// User IDs by WCA account number.
    by_wca_account: HashMap<u64, String>,
    /// Unredeemed claim tokens by hash.
    claims: HashMap<String, Claim>,
    /// How long a claim token may wait to be redeemed.
    claim_ttl: Duration,
    /// Where every change is written before it is answered.
    journal: Journal,
    /// Seals access tokens at rest.
    key: SealingKey,
}

impl TokenActor {
    /// Loads the users and unexpired claim tokens kept in `data_dir`.
    ///
    /// The journal is compacted on the way: expired and redeemed claims and
    /// superseded user records are dropped.
    pub fn open(data_dir: &Path, claim_ttl: Duration) -> io::Result<TokenActor> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(USERS_FILE);
        let mut users: HashMap<String, User> = HashMap::new();
        let mut claims = HashMap::new();
        for record in Journal::read::<Record>(&path)? {
            match record {
                Record::User(user) => {
                    users.insert(user.id.clone(), user);
                }
                Record::Claim {
                    claim_hash,
                    user_id,
                    expires_ms,
                } => {
                    claims.insert(
                        claim_hash,
                        Claim {
                            user_id,
                            expires_ms,
                        },
                    );
                }
                Record::Claimed { claim_hash } => {
                    claims.remove(&claim_hash);
                }
            }
        }
        let now = epoch_ms(SystemTime::now());
        claims.retain(|_, claim| claim.expires_ms > now && users.contains_key(&claim.user_id));
        let journal = Journal::rewrite(&path, &live_records(&users, &claims))?;
        let mut actor = TokenActor {
            users: HashMap::new(),
            by_token: HashMap::new(),
            by_wca_account: HashMap::new(),
            claims,
            claim_ttl,
            journal,
            key: SealingKey::random(),
        };
        for user in users.into_values() {
            actor.index(user);
        }
        log::info!(
            "{}: {} users, {} unexpired claim tokens",
            actor.journal.path().display(),
            actor.users.len(),
            actor.claims.len()
        );
        Ok(actor)
    }

    /// Seals access tokens with a key derived from `secret` (the WCA client
    /// secret), so a returning user gets the same token across restarts.
    /// Without it, a process-local key is used.
    pub fn with_sealing_secret(mut self, secret: &[u8]) -> TokenActor {
        self.key = SealingKey::from_secret(secret);
        self
    }

    /// Makes `user` the current version of that user, token hashes included.
    fn index(&mut self, user: User) {
        if let Some(old) = self.users.get(&user.id) {
            for hash in &old.token_hashes {
                self.by_token.remove(hash);
            }
        }
        for hash in &user.token_hashes {
            self.by_token.insert(hash.clone(), user.id.clone());
        }
        self.by_wca_account
            .insert(user.wca_account, user.id.clone());
        self.users.insert(user.id.clone(), user);
    }

    /// Writes `record` and waits until it is on disk.
    fn write(&mut self, record: &Record) -> Result<(), TokenError> {
        // A synchronous write and fsync on purpose: nothing may be handed out
        // before it is on disk. The token actor runs on its own arbiter, so
        // this stalls sign-ins only, never a stream.
        self.journal
            .append(record)
            .map_err(|e| storage_error(&self.journal, e))
    }

    /// Rewrites the journal from memory once it is mostly stale records.
    ///
    /// Called only after a handler has applied its change to memory, so the
    /// rewrite contains it.
    fn maybe_compact(&mut self) {
        if self.journal.appended() <= COMPACT_AFTER_APPENDS
            || self.journal.appended() <= self.users.len() + self.claims.len()
        {
            return;
        }
        self.sweep_claims();
        match Journal::rewrite(
            self.journal.path(),
            &live_records(&self.users, &self.claims),
        ) {
            Ok(journal) => self.journal = journal,
            Err(e) => log::warn!("{}: compaction failed: {e}", self.journal.path().display()),
        }
    }

    fn sweep_claims(&mut self) {
        let now = epoch_ms(SystemTime::now());
        self.claims.retain(|_, claim| claim.expires_ms > now);
    }
}

fn storage_error(journal: &Journal, e: io::Error) -> TokenError {
    log::error!("{}: write failed: {e}", journal.path().display());
    TokenError::Storage(e.to_string())
}

fn live_records(users: &HashMap<String, User>, claims: &HashMap<String, Claim>) -> Vec<Record> {
    let users = users.values().cloned().map(Record::User);
    let claims = claims.iter().map(|(hash, claim)| Record::Claim {
        claim_hash: hash.clone(),
        user_id: claim.user_id.clone(),
        expires_ms: claim.expires_ms,
    });
    users.chain(claims).collect()
}

impl Actor for TokenActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(CLAIM_SWEEP_INTERVAL, |actor, _| actor.sweep_claims());
    }
}

impl Handler<SignIn> for TokenActor {
    type Result = Result<String, TokenError>;

    fn handle(&mut self, msg: SignIn, _: &mut Self::Context) -> Self::Result {
        let profile = msg.profile;
        let existing = self
            .by_wca_account
            .get(&profile.account_id)
            .and_then(|id| self.users.get(id))
            .cloned();
        let user = match &existing {
            Some(user) if user.name == profile.name && user.wca_id == profile.wca_id => {
                user.clone()
            }
            Some(user) => User {
                name: profile.name,
                wca_id: profile.wca_id,
                ..user.clone()
            },
            None => User {
                id: ids::new_user_id(),
                wca_account: profile.account_id,
                wca_id: profile.wca_id,
                name: profile.name,
                token_hashes: Vec::new(),
                sealed_token: None,
            },
        };
        if existing.as_ref() != Some(&user) {
            self.write(&Record::User(user.clone()))?;
            if existing.is_none() {
                log::info!("new user {} for WCA account {}", user.id, user.wca_account);
            }
            self.index(user.clone());
        }
        let claim_token = ids::new_claim_token();
        let ttl_ms = u64::try_from(self.claim_ttl.as_millis()).unwrap_or(u64::MAX);
        let claim = Claim {
            user_id: user.id,
            expires_ms: epoch_ms(SystemTime::now()).saturating_add(ttl_ms),
        };
        let claim_hash = token_hash(&claim_token);
        self.write(&Record::Claim {
            claim_hash: claim_hash.clone(),
            user_id: claim.user_id.clone(),
            expires_ms: claim.expires_ms,
        })?;
        self.claims.insert(claim_hash, claim);
        self.maybe_compact();
        Ok(claim_token)
    }
}

impl TokenActor {
    /// The user's access token: the sealed one if it opens and is still
    /// valid, else a new one, kept (hashed and sealed) before it is returned.
    fn access_token_for(&mut self, user: &User) -> Result<String, TokenError> {
        let opened = user
            .sealed_token
            .as_ref()
            .and_then(|sealed| self.key.unseal(&user.id, sealed))
            .filter(|token| user.token_hashes.contains(&token_hash(token)));
        if let Some(token) = opened {
            return Ok(token);
        }
        let token = ids::new_access_token();
        let mut updated = user.clone();
        updated.token_hashes.push(token_hash(&token));
        let excess = updated
            .token_hashes
            .len()
            .saturating_sub(MAX_TOKENS_PER_USER);
        updated.token_hashes.drain(..excess);
        updated.sealed_token = self.key.seal(&user.id, &token);
        self.write(&Record::User(updated.clone()))?;
        self.index(updated);
        Ok(token)
    }
}

impl Handler<RedeemClaim> for TokenActor {
    type Result = Result<Claimed, TokenError>;

    fn handle(&mut self, msg: RedeemClaim, _: &mut Self::Context) -> Self::Result {
        let claim_hash = token_hash(&msg.claim_token);
        let claim = self
            .claims
            .get(&claim_hash)
            .ok_or(TokenError::InvalidClaimToken)?;
        if claim.expires_ms <= epoch_ms(SystemTime::now()) {
            self.claims.remove(&claim_hash);
            return Err(TokenError::InvalidClaimToken);
        }
        let user = self
            .users
            .get(&claim.user_id)
            .ok_or(TokenError::InvalidClaimToken)?
            .clone();
        let access_token = self.access_token_for(&user)?;
        // Redeemed for good only once that is on disk: a claim token must not
        // work twice, not even across a crash.
        self.write(&Record::Claimed {
            claim_hash: claim_hash.clone(),
        })?;
        self.claims.remove(&claim_hash);
        self.maybe_compact();
        log::info!(
            "user {} claimed access token {}",
            user.id,
            ids::redacted(&access_token)
        );
        Ok(Claimed {
            user: user.public(),
            access_token,
        })
    }
}

impl Handler<Authenticate> for TokenActor {
    type Result = Result<AuthenticatedUser, TokenError>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        let user = self
            .by_token
            .get(&token_hash(&msg.access_token))
            .and_then(|id| self.users.get(id))
            .ok_or(TokenError::InvalidAccessToken)?;
        Ok(AuthenticatedUser {
            id: user.id.clone(),
            info: user.public(),
        })
    }
}

impl Handler<LookupUsers> for TokenActor {
    type Result = Vec<PublicUserInfo>;

    fn handle(&mut self, msg: LookupUsers, _: &mut Self::Context) -> Self::Result {
        msg.user_ids
            .iter()
            .map(|id| match self.users.get(id) {
                Some(user) => user.public(),
                None => PublicUserInfo::new(id, None, "unknown user"),
            })
            .collect()
    }
}
