//! A fake WCA on loopback: the two endpoints the sign-in uses,
//! `POST /oauth/token` and `GET /api/v0/me`.
//!
//! A code signs in as the account registered for it with
//! [`FakeWca::add_code`], or, with [`FakeWcaBuilder::numbered_codes`], as the
//! account a numbered code (`prefix` then a number) stands for: the tests
//! sign in chosen accounts, the benchmark as many as it likes.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

/// The access tokens the fake hands out: this prefix and the code.
const ACCESS_PREFIX: &str = "wca-access-";

/// A WCA account the fake WCA signs in as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WcaAccount {
    /// The WCA's account number.
    pub id: u64,
    /// The competitor ID, if the account has one.
    pub wca_id: Option<String>,
    /// The name on the account.
    pub name: String,
}

/// Numbered codes: the prefix, and the account a number stands for.
type Numbered = (String, fn(u64) -> WcaAccount);

/// How the fake decides, fixed at start.
struct Rules {
    /// The client secret a token request must carry; `None`: any or none.
    client_secret: Option<String>,
    numbered: Option<Numbered>,
}

/// What the fake has been told and asked.
#[derive(Default)]
struct Record {
    /// Accounts by code, from [`FakeWca::add_code`].
    codes: HashMap<String, WcaAccount>,
    /// Every token request's form, oldest first.
    token_forms: Vec<HashMap<String, String>>,
}

/// What the handlers and the [`FakeWca`] share.
struct Shared {
    rules: Rules,
    record: Mutex<Record>,
}

impl Shared {
    /// The record; a test that panicked holding it has not broken it.
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The account `code` signs in as, if any.
    fn account(&self, code: &str) -> Option<WcaAccount> {
        if let Some(account) = self.record().codes.get(code) {
            return Some(account.clone());
        }
        let (prefix, account) = self.rules.numbered.as_ref()?;
        let n = code.strip_prefix(prefix.as_str())?.parse().ok()?;
        Some(account(n))
    }

    /// Whether a token request may have a token.
    fn grants(&self, form: &HashMap<String, String>) -> bool {
        let field = |name: &str| form.get(name).map(String::as_str);
        let secret_ok = match &self.rules.client_secret {
            Some(secret) => field("client_secret") == Some(secret.as_str()),
            None => true,
        };
        field("grant_type") == Some("authorization_code")
            && secret_ok
            && self.account(field("code").unwrap_or("")).is_some()
    }
}

/// A fake WCA serving on loopback, inside the actix system that started it.
///
/// It runs until [`FakeWca::stop`] or until that system ends.
pub struct FakeWca {
    origin: String,
    shared: Arc<Shared>,
    server: ServerHandle,
}

/// How to start a [`FakeWca`]: which client secret it wants and whether it
/// takes numbered codes.
#[derive(Default)]
pub struct FakeWcaBuilder {
    client_secret: Option<String>,
    numbered: Option<Numbered>,
}

impl FakeWcaBuilder {
    /// Refuses token requests that do not carry `secret` as their client secret.
    pub fn client_secret(mut self, secret: &str) -> FakeWcaBuilder {
        self.client_secret = Some(secret.to_owned());
        self
    }

    /// Also signs in any code `prefix<n>`, as `account(n)`.
    pub fn numbered_codes(
        mut self,
        prefix: &str,
        account: fn(u64) -> WcaAccount,
    ) -> FakeWcaBuilder {
        self.numbered = Some((prefix.to_owned(), account));
        self
    }

    /// Starts the fake on a free loopback port.
    ///
    /// Call it from inside an actix system (`#[actix_web::test]`,
    /// `#[actix_web::main]`): the server is spawned on it.
    pub fn try_start(self) -> io::Result<FakeWca> {
        let shared = Arc::new(Shared {
            rules: Rules {
                client_secret: self.client_secret,
                numbered: self.numbered,
            },
            record: Mutex::new(Record::default()),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let origin = format!("http://{}", listener.local_addr()?);
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/oauth/token", web::post().to(token))
                .route("/api/v0/me", web::get().to(me))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(FakeWca {
            origin,
            shared,
            server: handle,
        })
    }
}

impl FakeWca {
    /// A fake that signs in only the codes given to [`FakeWca::add_code`],
    /// whatever the client secret; see [`FakeWcaBuilder::try_start`].
    ///
    /// # Panics
    ///
    /// If it cannot listen: a test cannot go on without it.
    pub fn start() -> FakeWca {
        FakeWca::builder().try_start().expect("start the fake WCA")
    }

    /// A builder for a fake with more rules than [`FakeWca::start`]'s.
    pub fn builder() -> FakeWcaBuilder {
        FakeWcaBuilder::default()
    }

    /// Where it listens, `http://127.0.0.1:<port>`: the server's WCA origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Makes `code` sign in as `account`.
    pub fn add_code(&self, code: &str, account: WcaAccount) {
        self.shared.record().codes.insert(code.to_owned(), account);
    }

    /// The form of every token request so far, granted or not, oldest first.
    pub fn token_forms(&self) -> Vec<HashMap<String, String>> {
        self.shared.record().token_forms.clone()
    }

    /// Stops serving; returns once the server has stopped.
    pub async fn stop(self) {
        self.server.stop(false).await;
    }
}

async fn token(form: web::Form<HashMap<String, String>>, wca: web::Data<Shared>) -> HttpResponse {
    let form = form.into_inner();
    let granted = wca.grants(&form);
    let code = form.get("code").cloned().unwrap_or_default();
    wca.record().token_forms.push(form);
    if !granted {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid_grant"}));
    }
    HttpResponse::Ok()
        .json(json!({"access_token": format!("{ACCESS_PREFIX}{code}"), "token_type": "Bearer"}))
}

async fn me(req: HttpRequest, wca: web::Data<Shared>) -> HttpResponse {
    let account = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|v| v.strip_prefix(ACCESS_PREFIX))
        .and_then(|code| wca.account(code));
    match account {
        Some(account) => HttpResponse::Ok().json(json!({
            "me": {"id": account.id, "wca_id": account.wca_id, "name": account.name, "avatar": {"url": "x"}}
        })),
        None => HttpResponse::Unauthorized().finish(),
    }
}
