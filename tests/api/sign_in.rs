//! Sign-in through the WCA: the callback, the claim, and their failures.

use crate::helpers::*;

/// The callback exchanges the code with the WCA (form body with every field) and
/// redirects to the client app with a one-time claim token for the access token.
async fn sign_in_end_to_end(nodes: Nodes) {
    let app = nodes.app().await;
    let code = app.code_for(WcaAccount {
        id: 42,
        wca_id: Some("2015FAKE01".to_owned()),
        name: "Fay Ker".to_owned(),
    });
    let answer = app
        .get(&format!("/v0/auth/wca/oauth_callback?code={code}"))
        .await;
    assert_eq!(answer.status, 302);
    let location = answer.headers.get("location").unwrap().to_str().unwrap();
    assert!(
        location.starts_with("http://localhost:1234/stream/?claimToken=claim_token_"),
        "{location}"
    );
    let claim = &location["http://localhost:1234/stream/?claimToken=".len()..];
    assert_eq!(claim.len(), "claim_token_".len() + 32);

    {
        let forms = app.wca.token_forms();
        let form = forms.last().expect("the WCA was asked");
        assert_eq!(form["grant_type"], "authorization_code");
        assert_eq!(form["code"], code);
        assert_eq!(form["client_secret"], "test-client-secret");
        assert_eq!(
            form["client_id"],
            twizzle_api_server::config::DEV_WCA_CLIENT_ID
        );
        assert_eq!(
            form["redirect_uri"],
            "http://localhost:3337/v0/auth/wca/oauth_callback"
        );
    }

    let answer = app.post(&format!("/v0/claim?claimToken={claim}")).await;
    assert_eq!(answer.status, 200);
    let token = answer.body["twizzleAccessToken"].as_str().unwrap();
    assert!(
        token.starts_with("twizzle_access_token_")
            && token.len() == "twizzle_access_token_".len() + 32
    );
    let user = &answer.body["userInfo"];
    assert!(user["twizzleUserID"].as_str().unwrap().starts_with("user_"));
    assert_eq!(user["wcaID"], "2015FAKE01");
    assert_eq!(user["name"], "Fay Ker (2015FAKE01)");

    let again = app.post(&format!("/v0/claim?claimToken={claim}")).await;
    assert_eq!(again.status, 401, "a claim token works once");
    assert!(again.body["error"].is_string());
}

/// Signing in again keeps the access token and refreshes the name and WCA ID.
async fn second_sign_in_keeps_the_token_and_refreshes_the_name(nodes: Nodes) {
    let app = nodes.app().await;
    let (first, info) = app.sign_in(9, None, "New Cuber").await;
    assert_eq!(info["name"], "New Cuber (unverified)");
    assert!(info["wcaID"].is_null());
    let (second, info2) = app.sign_in(9, Some("2026NEWC01"), "New Cuber").await;
    assert!(first == second, "the access token changed across sign-ins");
    assert_eq!(info2["name"], "New Cuber (2026NEWC01)");
    assert_eq!(info2["twizzleUserID"], info["twizzleUserID"]);
    let id = app.create_stream(&first).await;
    let listed = app.list_with(&id).await;
    assert_eq!(listed["streams"][0]["streamID"], id);
    assert_eq!(
        listed["streams"][0]["senders"][0]["name"],
        "New Cuber (2026NEWC01)"
    );
}

/// The callback's failures: no code 400, WCA refusal or absence 403, no secret 503.
async fn callback_failures(nodes: Nodes) {
    let app = nodes.app().await;
    let answer = app.get("/v0/auth/wca/oauth_callback").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["error"], "code was not provided");
    let answer = app.get("/v0/auth/wca/oauth_callback?code=unknown").await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.body["error"],
        "Could not get WCA info. Please start over."
    );

    // A WCA that cannot be reached: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = nodes.spawn(|s| s.wca.origin = origin).await;
    let answer = unreachable
        .get("/v0/auth/wca/oauth_callback?code=anything")
        .await;
    assert_eq!(answer.status, 403);

    let unconfigured = nodes.spawn(|s| s.wca.client_secret = None).await;
    let answer = unconfigured
        .get("/v0/auth/wca/oauth_callback?code=anything")
        .await;
    assert_eq!(answer.status, 503);
    assert!(answer.body["error"].is_string());
}

/// Claim failures: no claim token 400, unknown or expired 401.
async fn claim_failures(nodes: Nodes) {
    let app = nodes.app().await;
    assert_eq!(app.post("/v0/claim").await.status, 400);
    let answer = app
        .post("/v0/claim?claimToken=claim_token_00000000000000000000000000000000")
        .await;
    assert_eq!(answer.status, 401);
    assert!(answer.body["error"].is_string());

    let expiring = nodes
        .spawn(|s| s.claim_token_ttl = std::time::Duration::ZERO)
        .await;
    let code = expiring.code_for(WcaAccount {
        id: 1,
        wca_id: None,
        name: "Late".to_owned(),
    });
    let claim = expiring.callback(&code).await;
    assert_eq!(
        expiring
            .post(&format!("/v0/claim?claimToken={claim}"))
            .await
            .status,
        401,
        "an expired claim token"
    );
}

on_one_and_two_nodes! {
    sign_in_end_to_end,
    second_sign_in_keeps_the_token_and_refreshes_the_name,
    callback_failures,
    claim_failures,
}
