//! What survives a restart: users, access tokens and unexpired claim tokens.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;

use crate::helpers::*;

/// A token handed out before a clean stop still works after a start on the same data directory.
#[actix_web::test]
async fn tokens_survive_a_restart() {
    let app = spawn_app().await;
    let (token, info) = app.sign_in(11, Some("2011REST01"), "Re Start").await;
    let code = app.code_for(WcaAccount {
        id: 12,
        wca_id: None,
        name: "Pending".to_owned(),
    });
    let pending_claim = app.callback(&code).await;
    app.handle
        .as_ref()
        .expect("an in-process server")
        .stop(true)
        .await;
    let TestApp { dir, wca, .. } = app;

    let app = spawn_app_in(Arc::clone(&dir), wca, |_| {}).await;
    let res = app
        .client
        .post(app.url("/v0/streams"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "the token still works");
    let answer = app
        .post(&format!("/v0/claim?claimToken={pending_claim}"))
        .await;
    assert_eq!(answer.status, 200, "an unredeemed claim token still works");
    assert_eq!(answer.body["userInfo"]["name"], "Pending (unverified)");
    let (again, info_again) = app.sign_in(11, Some("2011REST01"), "Re Start").await;
    assert!(again == token, "the same account keeps its token");
    assert_eq!(info_again, info);
}

/// The real binary, killed with SIGKILL right after handing out a token, keeps it.
#[actix_web::test]
async fn tokens_survive_kill_9() {
    let dir = Arc::new(TestDir::new());
    let wca = FakeWca::start();
    let (mut child, port, logs) = start_binary(&dir, &wca.origin);
    let app = attach(dir.clone(), wca, port);
    let (token, _) = app.sign_in(21, None, "Killed").await;
    let id = app.create_stream(&token).await;
    let mut sender = app.connect(&id, Some(&token)).await;
    let mut viewer = app.connect(&id, None).await;
    sender.send_json(&move_event(1)).await;
    assert_eq!(viewer.next_json().await, move_event(1));
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let first_logs: Vec<String> = logs.try_iter().collect();

    let TestApp { wca, .. } = app;
    let (mut child, port, logs) = start_binary(&dir, &wca.origin);
    let app = attach(dir.clone(), wca, port);
    let res = app
        .client
        .post(app.url("/v0/streams"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "the token still works after kill -9"
    );
    let recording =
        std::fs::read_to_string(dir.path().join("log/streams").join(format!("{id}.log"))).unwrap();
    assert_eq!(
        recording
            .lines()
            .next()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        Some(move_event(1))
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let all_logs: Vec<String> = first_logs.into_iter().chain(logs.try_iter()).collect();
    assert!(!all_logs.is_empty(), "the server logged");
    assert!(
        all_logs.iter().all(|line| !line.contains(&token)),
        "an access token appeared in full in the log"
    );
}

/// Starts the binary on port 0; returns it, its port, and its log lines as they come.
fn start_binary(dir: &TestDir, wca_origin: &str) -> (KillOnDrop, u16, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twizzle-api-server"))
        .args(["--bind", "127.0.0.1:0", "--wca-origin", wca_origin])
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "TWIZZLE_WCA_APPLICATION_CLIENT_SECRET",
            "test-client-secret",
        )
        .env("TWIZZLE_CLIENT_APP_URL", "http://localhost:1234/stream/")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.0.kill();
                panic!("the binary did not say where it listens within {WAIT:?}");
            }
        };
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let port = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (child, port, rx);
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `TestApp` for a server started elsewhere.
fn attach(dir: Arc<TestDir>, wca: FakeWca, port: u16) -> TestApp {
    TestApp::attach(dir, wca, port)
}
