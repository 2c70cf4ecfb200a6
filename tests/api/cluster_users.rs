//! Users cluster-wide: two or three real binaries on one `nats-server`
//! behave as one server for sign-in. A sign-in on one node, the claim on
//! another and the access token on a third work at once; one account
//! signing in on two nodes at once is one user, whose tokens all work
//! everywhere; and a claim token redeemed on two nodes at once works once.
//!
//! These need `nats-server`; where it is missing they say so and skip.

use std::sync::Arc;

use futures_util::future::join;
use serde_json::Value;
use twizzle_actors::testkit::NatsServer;

use crate::helpers::*;

/// One node: the binary on `nats`, with a data directory it must not use
/// and a fake WCA of its own; with the development sign-in if `dev` (no
/// WCA secret), else the WCA one (every node with the same secret).
struct Node {
    app: TestApp,
    _child: KillOnDrop,
}

fn start_node(nats: &NatsServer, dev: bool) -> Node {
    let dir = Arc::new(TempDir::new("api-cluster-users"));
    let wca = FakeWca::start();
    let (child, port, _logs) = start_binary_with(dir.path(), wca.origin(), |command| {
        command.env("TWIZZLE_NATS_URL", nats.url());
        if dev {
            command.env_remove("TWIZZLE_WCA_APPLICATION_CLIENT_SECRET");
        }
    });
    Node {
        app: TestApp::attach(dir, wca, port),
        _child: child,
    }
}

/// The claim token of a WCA sign-in of `account` on `node`, which must work.
async fn wca_claim(node: &TestApp, account: u64, name: &str) -> String {
    let code = node.code_for(WcaAccount {
        id: account,
        wca_id: Some("2021CLUS01".to_owned()),
        name: name.to_owned(),
    });
    match node.try_callback(&code).await {
        Ok(claim) => claim,
        Err(answer) => panic!("sign-in answered {} {}", answer.status, answer.body),
    }
}

/// The claim token of a development sign-in of `name` on `node`.
async fn dev_claim(node: &TestApp, name: &str) -> String {
    let answer = node.get(&format!("/v0/auth/dev?name={name}")).await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    let location = answer.headers.get("location").unwrap().to_str().unwrap();
    let claim = location.split("claimToken=").nth(1).expect("a claim token");
    claim.split(['&', '#']).next().unwrap().to_owned()
}

/// Redeems `claim` on `node`, which must work.
async fn claim_on(node: &TestApp, claim: &str) -> (String, Value) {
    match node.try_claim(claim).await {
        Ok(claimed) => claimed,
        Err(answer) => panic!("claim answered {} {}", answer.status, answer.body),
    }
}

/// Whether `token` is taken on `node` (a stream created with it).
async fn token_works(node: &TestApp, token: &str) -> bool {
    let answer = node.post_as("/v0/streams", token).await;
    match answer.status {
        200 => true,
        401 => false,
        other => panic!("creating a stream answered {other} {}", answer.body),
    }
}

#[actix_web::test]
async fn signed_in_on_one_node_claimed_on_another_and_sending_on_a_third() {
    let Some(nats) = NatsServer::start("api-cluster-users") else {
        return;
    };
    let (a, b, c) = (
        start_node(&nats, false),
        start_node(&nats, false),
        start_node(&nats, false),
    );
    let claim = wca_claim(&a.app, 51, "Hal").await;
    let (token, info) = claim_on(&b.app, &claim).await;
    assert_eq!(info["name"], "Hal (2021CLUS01)");
    // The token, on a third node: it creates a stream there and sends on it.
    let id = c.app.create_stream(&token).await;
    let mut sender = c.app.connect(&id, Some(&token)).await;
    let mut viewer = c.app.connect(&id, None).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));
    // A claim token works once, wherever it is tried again.
    for node in [&a, &b, &c] {
        let again = node.app.try_claim(&claim).await.expect_err("used up");
        assert_eq!(again.status, 401, "{}", again.body);
    }
    // Signing in again on another node finds the same user and token.
    let claim = wca_claim(&c.app, 51, "Hal").await;
    let (again, again_info) = claim_on(&a.app, &claim).await;
    assert_eq!(again_info, info);
    assert_eq!(
        again, token,
        "one token per user, with one secret everywhere"
    );
    assert!(
        !token_works(
            &a.app,
            "twizzle_access_token_00000000000000000000000000000000"
        )
        .await
    );
}

#[actix_web::test]
async fn one_account_signing_in_on_two_nodes_at_once_is_one_user() {
    let Some(nats) = NatsServer::start("api-cluster-race") else {
        return;
    };
    let (a, b) = (start_node(&nats, false), start_node(&nats, false));
    for account in 60..64 {
        let (on_a, on_b) = join(
            wca_claim(&a.app, account, "Ida"),
            wca_claim(&b.app, account, "Ida"),
        )
        .await;
        let ((token_a, info_a), (token_b, info_b)) =
            join(claim_on(&b.app, &on_a), claim_on(&a.app, &on_b)).await;
        assert_eq!(info_a, info_b, "one user for account {account}");
        for node in [&a, &b] {
            for token in [&token_a, &token_b] {
                assert!(token_works(&node.app, token).await, "account {account}");
            }
        }
    }
    // Development users, on nodes without a shared secret: each node may
    // hand out a token of its own, and every one works everywhere.
    let (c, d) = (start_node(&nats, true), start_node(&nats, true));
    for n in 0..4 {
        let name = format!("Jo{n}");
        let (on_c, on_d) = join(dev_claim(&c.app, &name), dev_claim(&d.app, &name)).await;
        let ((token_c, info_c), (token_d, info_d)) =
            join(claim_on(&d.app, &on_c), claim_on(&c.app, &on_d)).await;
        assert_eq!(info_c, info_d, "one user for {name}");
        for node in [&c, &d, &a] {
            for token in [&token_c, &token_d] {
                assert!(token_works(&node.app, token).await, "{name}");
            }
        }
    }
}

#[actix_web::test]
async fn a_claim_redeemed_on_two_nodes_at_once_works_once() {
    let Some(nats) = NatsServer::start("api-cluster-claim") else {
        return;
    };
    let (a, b, c) = (
        start_node(&nats, true),
        start_node(&nats, true),
        start_node(&nats, true),
    );
    for n in 0..4 {
        let claim = dev_claim(&a.app, &format!("Kit{n}")).await;
        let (on_b, on_c) = join(b.app.try_claim(&claim), c.app.try_claim(&claim)).await;
        match (on_b, on_c) {
            (Ok((token, _)), Err(lost)) | (Err(lost), Ok((token, _))) => {
                assert_eq!(lost.status, 401, "{}", lost.body);
                assert!(token_works(&a.app, &token).await);
            }
            (Ok(_), Ok(_)) => panic!("the claim token worked twice"),
            (Err(one), Err(other)) => panic!(
                "the claim token worked nowhere: {} {}, {} {}",
                one.status, one.body, other.status, other.body
            ),
        }
    }
}
