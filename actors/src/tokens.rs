//! The token actor: users, their access tokens, and one-time claim tokens.
//!
//! HTTP handlers ask it to sign a WCA account in, to redeem a claim token and
//! to authenticate an access token. Everything it hands out is in its journal
//! (`users.jsonl` in the data directory) before the answer leaves.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ids::{self, PublicUserInfo};
use crate::journal::Journal;

/// The journal's file name inside the data directory.
pub const USERS_FILE: &str = "users.jsonl";
/// How often expired claim tokens are forgotten.
const CLAIM_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The journal is compacted once this many records were appended and they
/// outnumber the live ones.
const COMPACT_AFTER_APPENDS: usize = 1024;

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
    access_token: String,
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
    /// A claim token was issued.
    Claim {
        claim_token: String,
        user_id: String,
        expires_ms: u64,
    },
    /// A claim token was redeemed.
    Claimed { claim_token: String },
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
    /// User IDs by access token.
    by_token: HashMap<String, String>,
    /// User IDs by WCA account number.
    by_wca_account: HashMap<u64, String>,
    /// Unredeemed claim tokens.
    claims: HashMap<String, Claim>,
    /// How long a claim token may wait to be redeemed.
    claim_ttl: Duration,
    /// Where every change is written before it is answered.
    journal: Journal,
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
                    claim_token,
                    user_id,
                    expires_ms,
                } => {
                    claims.insert(
                        claim_token,
                        Claim {
                            user_id,
                            expires_ms,
                        },
                    );
                }
                Record::Claimed { claim_token } => {
                    claims.remove(&claim_token);
                }
            }
        }
        let now = now_ms();
        claims.retain(|_, claim| claim.expires_ms > now && users.contains_key(&claim.user_id));
        let journal = Journal::rewrite(&path, &live_records(&users, &claims))?;
        let mut actor = TokenActor {
            users: HashMap::new(),
            by_token: HashMap::new(),
            by_wca_account: HashMap::new(),
            claims,
            claim_ttl,
            journal,
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

    fn index(&mut self, user: User) {
        self.by_token
            .insert(user.access_token.clone(), user.id.clone());
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
        let now = now_ms();
        self.claims.retain(|_, claim| claim.expires_ms > now);
    }
}

fn storage_error(journal: &Journal, e: io::Error) -> TokenError {
    log::error!("{}: write failed: {e}", journal.path().display());
    TokenError::Storage(e.to_string())
}

fn live_records(users: &HashMap<String, User>, claims: &HashMap<String, Claim>) -> Vec<Record> {
    let users = users.values().cloned().map(Record::User);
    let claims = claims.iter().map(|(token, claim)| Record::Claim {
        claim_token: token.clone(),
        user_id: claim.user_id.clone(),
        expires_ms: claim.expires_ms,
    });
    users.chain(claims).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
                access_token: ids::new_access_token(),
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
            expires_ms: now_ms().saturating_add(ttl_ms),
        };
        self.write(&Record::Claim {
            claim_token: claim_token.clone(),
            user_id: claim.user_id.clone(),
            expires_ms: claim.expires_ms,
        })?;
        self.claims.insert(claim_token.clone(), claim);
        self.maybe_compact();
        Ok(claim_token)
    }
}

impl Handler<RedeemClaim> for TokenActor {
    type Result = Result<Claimed, TokenError>;

    fn handle(&mut self, msg: RedeemClaim, _: &mut Self::Context) -> Self::Result {
        let claim = self
            .claims
            .get(&msg.claim_token)
            .ok_or(TokenError::InvalidClaimToken)?;
        if claim.expires_ms <= now_ms() {
            self.claims.remove(&msg.claim_token);
            return Err(TokenError::InvalidClaimToken);
        }
        let user = self
            .users
            .get(&claim.user_id)
            .ok_or(TokenError::InvalidClaimToken)?
            .clone();
        // Redeemed for good only once that is on disk: a claim token must not
        // work twice, not even across a crash.
        self.write(&Record::Claimed {
            claim_token: msg.claim_token.clone(),
        })?;
        self.claims.remove(&msg.claim_token);
        self.maybe_compact();
        log::info!(
            "user {} claimed access token {}",
            user.id,
            ids::redacted(&user.access_token)
        );
        Ok(Claimed {
            user: user.public(),
            access_token: user.access_token,
        })
    }
}

impl Handler<Authenticate> for TokenActor {
    type Result = Result<AuthenticatedUser, TokenError>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        let user = self
            .by_token
            .get(&msg.access_token)
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
