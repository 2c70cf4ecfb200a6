//! The token actor: sign-in, claim tokens, access tokens, the users' public
//! info, and what survives a restart.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use twizzle_actors::ids::{AccessToken, ClaimToken, DevName, PublicUserInfo, UserId};
use twizzle_actors::store::local::USERS_FILE;
use twizzle_actors::store::Stores;
use twizzle_actors::tokens::{
    Authenticate, AuthenticatedUser, Claimed, DevSignIn, LookupUsers, RedeemClaim, SignIn,
    TokenActor, TokenError, UserUpdated, WatchUsers, WcaProfile,
};

use crate::support::*;

/// The claim token lifetime the server uses by default.
const CLAIM_TTL: Duration = Duration::from_secs(600);

/// A token actor on `dir`, loading whatever an earlier one left there.
///
/// The earlier actor of a test is simply no longer used: it cannot be stopped
/// from outside, and a process killed with `kill -9` is no more polite.
/// The server secret the tests seal access tokens with.
const SEALING_SECRET: &[u8] = b"test sealing secret";

fn open(dir: &Path, claim_ttl: Duration) -> Addr<TokenActor> {
    open_sealed(dir, claim_ttl, SEALING_SECRET)
}

fn open_sealed(dir: &Path, claim_ttl: Duration, secret: &[u8]) -> Addr<TokenActor> {
    let stores = Stores::local(dir).expect("open the token actor's data directory");
    TokenActor::new(stores.users, claim_ttl)
        .with_sealing_secret(secret)
        .start()
}

fn profile(account_id: u64, wca_id: Option<&str>, name: &str) -> WcaProfile {
    WcaProfile {
        account_id,
        wca_id: wca_id.map(str::to_owned),
        name: name.to_owned(),
    }
}

async fn sign_in(tokens: &Addr<TokenActor>, profile: WcaProfile) -> String {
    within("SignIn", tokens.send(SignIn { profile }))
        .await
        .expect("the token actor is running")
        .expect("sign-in succeeds")
        .expose()
        .to_owned()
}

/// Signs the development user `name` in; returns the claim token.
async fn dev_sign_in(tokens: &Addr<TokenActor>, name: &str) -> String {
    let name = DevName::parse(name).expect("a valid development name");
    within("DevSignIn", tokens.send(DevSignIn { name }))
        .await
        .expect("the token actor is running")
        .expect("sign-in succeeds")
        .expose()
        .to_owned()
}

/// Redeems `claim_token`; one that is not even shaped like a claim token is
/// refused as the HTTP layer refuses it, without asking.
async fn redeem(tokens: &Addr<TokenActor>, claim_token: &str) -> Result<Claimed, TokenError> {
    let Some(claim_token) = ClaimToken::parse(claim_token) else {
        return Err(TokenError::InvalidClaimToken);
    };
    let redeem = tokens.send(RedeemClaim { claim_token });
    within("RedeemClaim", redeem)
        .await
        .expect("the token actor is running")
}

async fn authenticate(
    tokens: &Addr<TokenActor>,
    access_token: &str,
) -> Result<AuthenticatedUser, TokenError> {
    let Some(access_token) = AccessToken::parse(access_token) else {
        return Err(TokenError::InvalidAccessToken);
    };
    let authenticate = tokens.send(Authenticate { access_token });
    within("Authenticate", authenticate)
        .await
        .expect("the token actor is running")
}

async fn lookup(tokens: &Addr<TokenActor>, user_ids: &[&str]) -> Vec<PublicUserInfo> {
    let lookup = tokens.send(LookupUsers {
        user_ids: user_ids.iter().map(|id| user(id)).collect(),
    });
    within("LookupUsers", lookup)
        .await
        .expect("the token actor is running")
}

/// Sign-in hands out a `claim_token_` + 32 hex; redeeming it gives a
/// `twizzle_access_token_` + 32 hex and the public info, named
/// "Name (WCAID)", or "Name (unverified)" without a WCA ID.
#[actix::test]
async fn sign_in_and_claim_give_an_access_token_and_public_info() {
    let dir = TempDir::new("tokens-sign-in");
    let tokens = open(dir.path(), CLAIM_TTL);

    let claim = sign_in(&tokens, profile(1, Some("2015ABCD01"), "Ana Lima")).await;
    assert!(
        ClaimToken::parse(&claim).is_some(),
        "claim_token_ and 32 hex"
    );
    let claimed = redeem(&tokens, &claim).await.unwrap();
    assert!(
        AccessToken::parse(claimed.access_token.expose()).is_some(),
        "twizzle_access_token_ and 32 hex"
    );
    assert!(
        UserId::parse(claimed.user.twizzle_user_id.as_str()).is_some(),
        "{}",
        claimed.user.twizzle_user_id.as_str()
    );
    assert_eq!(claimed.user.wca_id.as_deref(), Some("2015ABCD01"));
    assert_eq!(claimed.user.name, "Ana Lima (2015ABCD01)");

    let claim = sign_in(&tokens, profile(2, None, "Bo Chen")).await;
    let unverified = redeem(&tokens, &claim).await.unwrap();
    assert_eq!(unverified.user.wca_id, None);
    assert_eq!(unverified.user.name, "Bo Chen (unverified)");
    assert_ne!(
        unverified.access_token.expose(),
        claimed.access_token.expose()
    );
    assert_ne!(
        unverified.user.twizzle_user_id.as_str(),
        claimed.user.twizzle_user_id.as_str()
    );
}

/// A claim token works once; an unknown one, or an access token passed as
/// one, never.
#[actix::test]
async fn claim_token_works_once() {
    let dir = TempDir::new("tokens-once");
    let tokens = open(dir.path(), CLAIM_TTL);
    let claim = sign_in(&tokens, profile(1, None, "Ana")).await;
    let claimed = redeem(&tokens, &claim).await.unwrap();
    assert_eq!(
        redeem(&tokens, &claim).await,
        Err(TokenError::InvalidClaimToken)
    );
    assert_eq!(
        redeem(&tokens, "claim_token_00000000000000000000000000000000").await,
        Err(TokenError::InvalidClaimToken)
    );
    assert_eq!(
        redeem(&tokens, claimed.access_token.expose()).await,
        Err(TokenError::InvalidClaimToken)
    );
    assert_eq!(
        redeem(&tokens, "").await,
        Err(TokenError::InvalidClaimToken)
    );
}

/// An expired claim token is refused (a lifetime of zero expires at once).
#[actix::test]
async fn expired_claim_token_is_refused() {
    let dir = TempDir::new("tokens-expired");
    let tokens = open(dir.path(), Duration::ZERO);
    let claim = sign_in(&tokens, profile(1, Some("2015ABCD01"), "Ana")).await;
    assert_eq!(
        redeem(&tokens, &claim).await,
        Err(TokenError::InvalidClaimToken)
    );
}

/// Signing the same WCA account in again keeps the user and its access
/// token, and refreshes the name and WCA ID everyone sees.
#[actix::test]
async fn second_sign_in_keeps_the_token_and_refreshes_the_profile() {
    let dir = TempDir::new("tokens-again");
    let tokens = open(dir.path(), CLAIM_TTL);
    let first = redeem(&tokens, &sign_in(&tokens, profile(7, None, "Ana")).await)
        .await
        .unwrap();
    assert_eq!(first.user.name, "Ana (unverified)");

    let second = redeem(
        &tokens,
        &sign_in(&tokens, profile(7, Some("2019LIMA01"), "Ana Lima")).await,
    )
    .await
    .unwrap();
    assert_eq!(second.access_token.expose(), first.access_token.expose());
    assert_eq!(
        second.user.twizzle_user_id.as_str(),
        first.user.twizzle_user_id.as_str()
    );
    assert_eq!(second.user.wca_id.as_deref(), Some("2019LIMA01"));
    assert_eq!(second.user.name, "Ana Lima (2019LIMA01)");

    let me = authenticate(&tokens, first.access_token.expose())
        .await
        .unwrap();
    assert_eq!(me.info, second.user);

    // An unchanged profile signs in too, still to the same user.
    let third = redeem(
        &tokens,
        &sign_in(&tokens, profile(7, Some("2019LIMA01"), "Ana Lima")).await,
    )
    .await
    .unwrap();
    assert_eq!(third, second);
}

/// `Authenticate` finds the user of an access token and refuses anything else.
#[actix::test]
async fn authenticate_finds_the_user_of_a_token() {
    let dir = TempDir::new("tokens-auth");
    let tokens = open(dir.path(), CLAIM_TTL);
    let claim = sign_in(&tokens, profile(3, Some("2010ABCD02"), "Cy")).await;
    let claimed = redeem(&tokens, &claim).await.unwrap();
    let me = authenticate(&tokens, claimed.access_token.expose())
        .await
        .unwrap();
    assert_eq!(me.id.as_str(), claimed.user.twizzle_user_id.as_str());
    assert_eq!(me.info, claimed.user);

    for wrong in [
        "twizzle_access_token_00000000000000000000000000000000",
        claim.as_str(),
        claimed.user.twizzle_user_id.as_str(),
        "",
    ] {
        assert_eq!(
            authenticate(&tokens, wrong).await,
            Err(TokenError::InvalidAccessToken),
            "{wrong:?}"
        );
    }
}

/// `LookupUsers` answers the public info of each ID in order, and shows an
/// unknown ID as an unknown user rather than failing.
#[actix::test]
async fn lookup_users_answers_in_order() {
    let dir = TempDir::new("tokens-lookup");
    let tokens = open(dir.path(), CLAIM_TTL);
    let ana = redeem(
        &tokens,
        &sign_in(&tokens, profile(1, Some("2015ABCD01"), "Ana")).await,
    )
    .await
    .unwrap()
    .user;
    let bo = redeem(&tokens, &sign_in(&tokens, profile(2, None, "Bo")).await)
        .await
        .unwrap()
        .user;
    let unknown = "user_ffffffffffffffff";
    let found = lookup(
        &tokens,
        &[
            bo.twizzle_user_id.as_str(),
            unknown,
            ana.twizzle_user_id.as_str(),
        ],
    )
    .await;
    assert_eq!(found.len(), 3);
    assert_eq!(found[0], bo);
    assert_eq!(found[2], ana);
    assert_eq!(found[1].twizzle_user_id.as_str(), unknown);
    assert_eq!(found[1].wca_id, None);
    assert!(found[1].name.contains("unknown"), "{}", found[1].name);
    assert!(lookup(&tokens, &[]).await.is_empty());
}

/// After a restart, access tokens still authenticate (with refreshed
/// profiles), an unredeemed claim token still redeems, a redeemed one stays
/// redeemed, and the WCA-account index still finds the user.
#[actix::test]
async fn users_and_claims_survive_a_restart() {
    let dir = TempDir::new("tokens-restart");
    let before = open(dir.path(), CLAIM_TTL);
    let used = sign_in(&before, profile(1, None, "Ana")).await;
    let first = redeem(&before, &used).await.unwrap();
    let ana = redeem(
        &before,
        &sign_in(&before, profile(1, Some("2015ABCD01"), "Ana Lima")).await,
    )
    .await
    .unwrap();
    assert_eq!(ana.access_token.expose(), first.access_token.expose());
    let pending = sign_in(&before, profile(2, None, "Bo")).await;

    let after = open(dir.path(), CLAIM_TTL);
    let me = authenticate(&after, ana.access_token.expose())
        .await
        .unwrap();
    assert_eq!(me.info, ana.user);
    assert_eq!(me.info.name, "Ana Lima (2015ABCD01)");
    assert_eq!(
        redeem(&after, &used).await,
        Err(TokenError::InvalidClaimToken)
    );
    let bo = redeem(&after, &pending).await.unwrap();
    assert_eq!(bo.user.name, "Bo (unverified)");
    assert_eq!(
        authenticate(&after, bo.access_token.expose())
            .await
            .unwrap()
            .info,
        bo.user
    );
    let again = redeem(
        &after,
        &sign_in(&after, profile(1, Some("2015ABCD01"), "Ana Lima")).await,
    )
    .await
    .unwrap();
    assert_eq!(again, ana);

    // And the claim redeemed after the first restart stays redeemed after a second.
    let third = open(dir.path(), CLAIM_TTL);
    assert_eq!(
        redeem(&third, &pending).await,
        Err(TokenError::InvalidClaimToken)
    );
    assert!(authenticate(&third, bo.access_token.expose()).await.is_ok());
}

/// A claim token that expired before a restart is not loaded back: expiry
/// holds across a restart, and the user it was for is kept.
#[actix::test]
async fn expired_claims_are_not_loaded_back() {
    let dir = TempDir::new("tokens-expired-restart");
    let before = open(dir.path(), Duration::ZERO);
    let claim = sign_in(&before, profile(1, None, "Ana")).await;
    let after = open(dir.path(), CLAIM_TTL);
    assert_eq!(
        redeem(&after, &claim).await,
        Err(TokenError::InvalidClaimToken)
    );
    // The user it was for is there all the same.
    let claimed = redeem(&after, &sign_in(&after, profile(1, None, "Ana")).await)
        .await
        .unwrap();
    assert_eq!(claimed.user.name, "Ana (unverified)");
}

/// A torn last line of the journal (a crash mid-append) is skipped and
/// everything before it loads; what is written after the restart does not
/// get glued to the torn bytes.
#[actix::test]
async fn torn_last_journal_line_is_skipped() {
    let dir = TempDir::new("tokens-torn");
    let before = open(dir.path(), CLAIM_TTL);
    let ana = redeem(&before, &sign_in(&before, profile(1, None, "Ana")).await)
        .await
        .unwrap();
    let pending = sign_in(&before, profile(2, None, "Bo")).await;
    {
        let mut journal = OpenOptions::new()
            .append(true)
            .open(dir.path().join(USERS_FILE))
            .expect("the journal exists");
        journal
            .write_all(br#"{"t":"user","id":"user_00"#)
            .expect("tear the journal");
    }

    let after = open(dir.path(), CLAIM_TTL);
    assert_eq!(
        authenticate(&after, ana.access_token.expose())
            .await
            .unwrap()
            .info,
        ana.user
    );
    let cy = redeem(&after, &sign_in(&after, profile(3, None, "Cy")).await)
        .await
        .unwrap();

    let third = open(dir.path(), CLAIM_TTL);
    assert!(authenticate(&third, ana.access_token.expose())
        .await
        .is_ok());
    assert_eq!(
        authenticate(&third, cy.access_token.expose())
            .await
            .unwrap()
            .info,
        cy.user
    );
    let bo = redeem(&third, &pending).await.unwrap();
    assert_eq!(bo.user.name, "Bo (unverified)");
}

// The journal is compacted from the actor's maps inside `TokenActor::write`,
// right after appending a record and before the handler applies that record
// to the maps. When the append that triggers compaction is the one carrying a
// change, the rewrite leaves the change out. Compaction comes on the append
// after `COMPACT_AFTER_APPENDS` (1024, private in tokens.rs) appends since the
// journal was last rewritten, when they outnumber the live records; the tests
// below steer exactly that append onto a chosen record and check the file
// did shrink there, so a changed constant fails them loudly.

/// How many records the journal file in `dir` holds.
fn journal_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(USERS_FILE))
        .expect("read the journal")
        .lines()
        .count()
}

/// Brings a freshly opened token actor's journal to exactly `appends` appends
/// (an even number, at least 2): one sign-in of a filler account (user and
/// claim record), then sign-in and redeem pairs (claim and claimed records).
async fn append_records(tokens: &Addr<TokenActor>, appends: usize) {
    assert!(appends >= 4 && appends.is_multiple_of(2));
    // The first sign-in and claim append four records: the user, the claim,
    // the user again with their first token, the redemption.
    let first = sign_in(tokens, profile(1000, None, "Filler")).await;
    redeem(tokens, &first).await.unwrap();
    // Each later sign-in and claim appends two: the claim and its redemption.
    for _ in 0..(appends - 4) / 2 {
        let claim = sign_in(tokens, profile(1000, None, "Filler")).await;
        redeem(tokens, &claim).await.unwrap();
    }
}

/// The append that triggers compaction must not lose the new user it
/// carries: their access token must work after a restart.
#[actix::test]
async fn compaction_keeps_the_user_whose_record_triggered_it() {
    let dir = TempDir::new("tokens-compact-user");
    let before = open(dir.path(), CLAIM_TTL);
    append_records(&before, 1024).await;
    let lines = journal_lines(dir.path());
    assert_eq!(lines, 1024, "the journal holds every append so far");
    // Append 1025 is the new user's record; compaction runs right after it.
    let claim = sign_in(&before, profile(2000, Some("2020NEWU01"), "New User")).await;
    assert!(
        journal_lines(dir.path()) < lines,
        "the sign-in was meant to trigger compaction"
    );
    let newcomer = redeem(&before, &claim).await.unwrap();
    assert!(authenticate(&before, newcomer.access_token.expose())
        .await
        .is_ok());

    let after = open(dir.path(), CLAIM_TTL);
    assert_eq!(
        authenticate(&after, newcomer.access_token.expose())
            .await
            .map(|user| user.info),
        Ok(newcomer.user),
        "a claimed access token stops working after a restart"
    );
}

/// The append that triggers compaction must not lose the claim token it
/// issues: an unexpired, unredeemed claim token must survive a restart.
#[actix::test]
async fn compaction_keeps_the_claim_whose_record_triggered_it() {
    let dir = TempDir::new("tokens-compact-claim");
    let before = open(dir.path(), CLAIM_TTL);
    append_records(&before, 1024).await;
    let lines = journal_lines(dir.path());
    assert_eq!(lines, 1024, "the journal holds every append so far");
    // Append 1025 is the claim record of this sign-in.
    let claim = sign_in(&before, profile(1000, None, "Filler")).await;
    assert!(
        journal_lines(dir.path()) < lines,
        "the sign-in was meant to trigger compaction"
    );

    let after = open(dir.path(), CLAIM_TTL);
    assert!(
        redeem(&after, &claim).await.is_ok(),
        "an unredeemed claim token is lost across a restart"
    );
}

/// The append that triggers compaction must not undo the redemption it
/// records: a claim token must not work twice, not even across a restart.
#[actix::test]
async fn compaction_keeps_a_redeemed_claim_redeemed() {
    let dir = TempDir::new("tokens-compact-claimed");
    let before = open(dir.path(), CLAIM_TTL);
    append_records(&before, 1022).await;
    let used = sign_in(&before, profile(1000, None, "Filler")).await;
    sign_in(&before, profile(1000, None, "Filler")).await;
    let lines = journal_lines(dir.path());
    assert_eq!(lines, 1024, "the journal holds every append so far");
    // Append 1025 is the claimed record of this redemption.
    redeem(&before, &used).await.unwrap();
    assert!(
        journal_lines(dir.path()) < lines,
        "the redemption was meant to trigger compaction"
    );
    assert_eq!(
        redeem(&before, &used).await,
        Err(TokenError::InvalidClaimToken)
    );

    let after = open(dir.path(), CLAIM_TTL);
    assert_eq!(
        redeem(&after, &used).await.map(|_| ()),
        Err(TokenError::InvalidClaimToken),
        "a redeemed claim token works again after a restart"
    );
}

/// Nothing in the journal can be presented as a token: access and claim
/// tokens appear in it only hashed (and the access token sealed).
#[actix::test]
async fn no_token_is_kept_in_the_clear() {
    let dir = TempDir::new("tokens-at-rest");
    let tokens = open(dir.path(), CLAIM_TTL);
    let claimed = redeem(&tokens, &sign_in(&tokens, profile(5, None, "Cleo")).await)
        .await
        .unwrap();
    let pending = sign_in(&tokens, profile(5, None, "Cleo")).await;
    let journal = std::fs::read_to_string(dir.path().join("users.jsonl")).unwrap();
    for secret in [claimed.access_token.expose(), pending.as_str()] {
        let random_part = secret.rsplit('_').next().unwrap();
        assert!(
            !journal.contains(random_part),
            "a token is in the journal in the clear"
        );
    }
    assert!(authenticate(&tokens, claimed.access_token.expose())
        .await
        .is_ok());
}

/// With another sealing secret (the WCA secret was rotated), a returning
/// user's sealed token cannot be opened: they get a new token, and the old
/// one keeps working.
#[actix::test]
async fn a_rotated_secret_gives_a_new_token_and_keeps_the_old() {
    let dir = TempDir::new("tokens-rotated");
    let before = open(dir.path(), CLAIM_TTL);
    let first = redeem(&before, &sign_in(&before, profile(6, None, "Rota")).await)
        .await
        .unwrap();

    let after = open_sealed(dir.path(), CLAIM_TTL, b"a rotated secret");
    let second = redeem(&after, &sign_in(&after, profile(6, None, "Rota")).await)
        .await
        .unwrap();
    assert!(
        second.access_token.expose() != first.access_token.expose(),
        "the old sealed token cannot be opened with the new secret"
    );
    assert_eq!(second.user, first.user);
    for token in [first.access_token.expose(), second.access_token.expose()] {
        assert!(authenticate(&after, token).await.is_ok());
    }
    // From now on the new token is the one returned.
    let third = redeem(&after, &sign_in(&after, profile(6, None, "Rota")).await)
        .await
        .unwrap();
    assert!(third.access_token.expose() == second.access_token.expose());
}

/// A watcher hears of each kept change to a user's public info (a name or
/// WCA ID refreshed at sign-in), and of nothing else: not a new user, not a
/// sign-in that changes neither, not a claim.
#[actix::test]
async fn watchers_hear_of_changes_to_public_info_only() {
    let dir = TempDir::new("tokens-watch");
    let tokens = open(dir.path(), CLAIM_TTL);
    let (watcher, mut heard) = probe::<UserUpdated>();
    let watch = tokens.send(WatchUsers {
        watcher: watcher.recipient(),
    });
    within("WatchUsers", watch).await.unwrap();

    let claim = sign_in(&tokens, profile(1, None, "Ana")).await;
    let ana = redeem(&tokens, &claim).await.unwrap().user;
    sign_in(&tokens, profile(1, None, "Ana")).await;
    sign_in(&tokens, profile(2, None, "Bo")).await;
    sign_in(&tokens, profile(1, Some("2015ANAA01"), "Ana Lima")).await;
    let renamed = PublicUserInfo::new(&ana.twizzle_user_id, Some("2015ANAA01"), "Ana Lima");
    assert_eq!(
        heard.next("the change").await,
        UserUpdated {
            info: renamed.clone()
        },
        "the first thing heard"
    );
    assert_eq!(
        lookup(&tokens, &[ana.twizzle_user_id.as_str()]).await,
        [renamed]
    );
    assert!(heard.try_next().is_none(), "heard once");
}

/// A development user signs in by name alone: unverified, no WCA ID, and
/// their claim gives an access token like anyone's.
#[actix::test]
async fn a_development_user_signs_in_by_name() {
    let dir = TempDir::new("tokens-dev");
    let tokens = open(dir.path(), CLAIM_TTL);
    let claim = dev_sign_in(&tokens, "Demo Cuber").await;
    assert!(ClaimToken::parse(&claim).is_some());
    let claimed = redeem(&tokens, &claim).await.unwrap();
    assert_eq!(claimed.user.wca_id, None);
    assert_eq!(claimed.user.name, "Demo Cuber (unverified)");
    let me = authenticate(&tokens, claimed.access_token.expose())
        .await
        .unwrap();
    assert_eq!(me.info, claimed.user);
    assert_eq!(
        redeem(&tokens, &claim).await,
        Err(TokenError::InvalidClaimToken),
        "the claim works once"
    );
}

/// The same name finds the same user with the same access token; another
/// name, or a WCA account whose number reads like the name, is someone else.
#[actix::test]
async fn the_same_development_name_is_the_same_user() {
    let dir = TempDir::new("tokens-dev-same");
    let tokens = open(dir.path(), CLAIM_TTL);
    let (watcher, mut heard) = probe::<UserUpdated>();
    within(
        "WatchUsers",
        tokens.send(WatchUsers {
            watcher: watcher.recipient(),
        }),
    )
    .await
    .unwrap();

    let first = redeem(&tokens, &dev_sign_in(&tokens, "42").await)
        .await
        .unwrap();
    let again = redeem(&tokens, &dev_sign_in(&tokens, "42").await)
        .await
        .unwrap();
    assert_eq!(again, first, "same user, same token, same info");

    let wca = redeem(&tokens, &sign_in(&tokens, profile(42, None, "42")).await)
        .await
        .unwrap();
    assert_ne!(wca.user.twizzle_user_id, first.user.twizzle_user_id);
    assert!(wca.access_token != first.access_token);
    assert_eq!(
        wca.user.name, first.user.name,
        "they look alike, and are two"
    );

    let spaced = redeem(&tokens, &dev_sign_in(&tokens, "42 ").await)
        .await
        .unwrap();
    assert_ne!(spaced.user.twizzle_user_id, first.user.twizzle_user_id);
    assert_eq!(spaced.user.name, "42  (unverified)");

    // No sign-in so far changed what is shown of anyone: the first change
    // heard is the WCA user's rename.
    sign_in(&tokens, profile(42, Some("2020FORT01"), "Forty Two")).await;
    assert_eq!(
        heard.next("the rename").await,
        UserUpdated {
            info: PublicUserInfo::new(&wca.user.twizzle_user_id, Some("2020FORT01"), "Forty Two")
        },
        "the first thing heard"
    );
    let wca = redeem(
        &tokens,
        &sign_in(&tokens, profile(42, Some("2020FORT01"), "Forty Two")).await,
    )
    .await
    .unwrap();
    assert_eq!(
        redeem(&tokens, &dev_sign_in(&tokens, "42").await)
            .await
            .unwrap(),
        first,
        "the WCA user's rename left the development user as it was"
    );
    for (user, token) in [(&first, &first.access_token), (&wca, &wca.access_token)] {
        assert_eq!(
            authenticate(&tokens, token.expose()).await.unwrap().info,
            user.user
        );
    }
}

/// A development user survives a restart: the same name finds the same
/// user and the same access token, and their token still authenticates.
#[actix::test]
async fn development_users_survive_a_restart() {
    let dir = TempDir::new("tokens-dev-restart");
    let before = open(dir.path(), CLAIM_TTL);
    let zoe = redeem(&before, &dev_sign_in(&before, "Zoë 🧊").await)
        .await
        .unwrap();
    let ana = redeem(&before, &sign_in(&before, profile(1, None, "Zoë 🧊")).await)
        .await
        .unwrap();
    let pending = dev_sign_in(&before, "Zoë 🧊").await;

    let after = open(dir.path(), CLAIM_TTL);
    assert_eq!(
        authenticate(&after, zoe.access_token.expose())
            .await
            .unwrap()
            .info,
        zoe.user
    );
    assert_eq!(redeem(&after, &pending).await.unwrap(), zoe);
    let again = redeem(&after, &dev_sign_in(&after, "Zoë 🧊").await)
        .await
        .unwrap();
    assert_eq!(again, zoe);
    let wca_again = redeem(&after, &sign_in(&after, profile(1, None, "Zoë 🧊")).await)
        .await
        .unwrap();
    assert_eq!(wca_again, ana, "the WCA user is still apart");
}
