//! The WCA OAuth client: exchanges a sign-in code for the account's profile.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use twizzle_actors::tokens::WcaProfile;

use crate::config::WcaSettings;

/// The longest the whole exchange with the WCA may take.
pub const WCA_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from the WCA.
const MAX_WCA_BODY_BYTES: usize = 256 * 1024;

/// Why the WCA gave no profile; for the log, never shown to the client.
#[derive(Debug)]
pub struct WcaError(String);

impl fmt::Display for WcaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct MeAnswer {
    me: Me,
}

#[derive(Deserialize)]
struct Me {
    id: u64,
    wca_id: Option<String>,
    name: String,
}

/// Talks to the WCA; one per worker thread (the HTTP client is not `Send`).
pub struct WcaClient {
    client: awc::Client,
    settings: WcaSettings,
}

impl WcaClient {
    /// A client for the WCA at `settings.origin`.
    pub fn new(settings: WcaSettings) -> WcaClient {
        let client = awc::Client::builder()
            .timeout(WCA_TIMEOUT)
            .disable_redirects()
            .finish();
        WcaClient { client, settings }
    }

    /// Whether a client secret is configured, so sign-in can work at all.
    pub fn configured(&self) -> bool {
        self.settings.client_secret.is_some()
    }

    /// Exchanges `code` for an access token, then asks who it belongs to.
    ///
    /// The WCA's access token is used for this one request and then dropped.
    pub async fn profile(&self, code: &str) -> Result<WcaProfile, WcaError> {
        let secret = self
            .settings
            .client_secret
            .as_ref()
            .ok_or_else(|| WcaError("no client secret".to_owned()))?;
        let origin = &self.settings.origin;
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", secret.expose()),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
        ];
        let mut answer = self
            .client
            .post(format!("{origin}/oauth/token"))
            .send_form(&form)
            .await
            .map_err(|e| WcaError(format!("token request failed: {e}")))?;
        if !answer.status().is_success() {
            return Err(WcaError(format!(
                "token endpoint answered {}",
                answer.status()
            )));
        }
        let token: TokenAnswer = answer
            .json()
            .limit(MAX_WCA_BODY_BYTES)
            .await
            .map_err(|e| WcaError(format!("token answer unreadable: {e}")))?;

        let mut answer = self
            .client
            .get(format!("{origin}/api/v0/me"))
            .bearer_auth(&token.access_token)
            .send()
            .await
            .map_err(|e| WcaError(format!("profile request failed: {e}")))?;
        if !answer.status().is_success() {
            return Err(WcaError(format!(
                "profile endpoint answered {}",
                answer.status()
            )));
        }
        let me: MeAnswer = answer
            .json()
            .limit(MAX_WCA_BODY_BYTES)
            .await
            .map_err(|e| WcaError(format!("profile answer unreadable: {e}")))?;
        Ok(WcaProfile {
            account_id: me.me.id,
            wca_id: me.me.wca_id.filter(|id| !id.is_empty()),
            name: me.me.name,
        })
    }
}
