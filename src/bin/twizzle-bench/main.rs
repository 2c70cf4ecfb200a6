//! `twizzle-bench`: a load generator for the twizzle stream broker.
//!
//! It starts the server under test as a child process on a free loopback
//! port (our `twizzle-api-server`, or any command, e.g. the Node peer), signs
//! users in through a fake WCA it serves itself, creates streams, opens the
//! sender and viewer WebSockets, and reports deliveries, latency, loss, and
//! what the server and the generator spent in memory and CPU.
//!
//! ```text
//! cargo run --release --bin twizzle-bench -- fanout --viewers 5000 --rate 30 --secs 20
//! cargo run --release --bin twizzle-bench -- compare --peer /tmp/peer
//! ```
//!
//! # Layout
//!
//! - `cli`: the command line and its defaults.
//! - `scenario`: one file per scenario (`fanout`, `saturate`, `idle`, `attack`,
//!   `cluster`, and `compare` for ours beside others), the load fanout and saturate
//!   share, and what all share.
//! - `nats`: the `nats-server` the cluster scenario starts.
//! - `target`: the server under test as a child process, signed into through the
//!   testkit's fake WCA; the HTTP calls.
//! - `load`: sender and viewer sockets on a few client threads, and their counters.
//! - `ws`: a minimal WebSocket client: source-address binding, handshake, frames in place.
//! - `measure`: the shared clock, a latency histogram, `/proc` memory and CPU readings.
//! - `report`: the table and the JSON.

mod cli;
mod load;
mod measure;
mod nats;
mod report;
mod scenario;
mod target;
mod ws;

use std::process::ExitCode;

/// Waits for SIGINT or SIGTERM; returns its name. Never returns if signals
/// cannot be listened to.
async fn stop_signal() -> &'static str {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            let int = std::pin::pin!(int.recv());
            let term = std::pin::pin!(term.recv());
            match futures_util::future::select(int, term).await {
                futures_util::future::Either::Left(_) => "SIGINT",
                futures_util::future::Either::Right(_) => "SIGTERM",
            }
        }
        _ => std::future::pending().await,
    }
}

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Parsed::Run(options)) => *options,
        Ok(cli::Parsed::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("twizzle-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("twizzle-bench: built without --release: the generator is slow and its figures are not meaningful");
    }
    // Start the shared clock before any socket exists.
    let _ = measure::epoch();
    let fd_limit = match measure::raise_open_files_limit() {
        Some(limit) => limit,
        None => {
            eprintln!("twizzle-bench: cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    // On SIGINT or SIGTERM the run is dropped, and with it the server under
    // test (killed) and its temp dir (removed), and the client threads.
    let run = std::pin::pin!(scenario::run_all(&options, fd_limit));
    let outcome = match futures_util::future::select(run, std::pin::pin!(stop_signal())).await {
        futures_util::future::Either::Left((outcome, _)) => outcome,
        futures_util::future::Either::Right((name, _)) => Err(format!("{name} received: stopped")),
    };
    match outcome {
        Ok(verdict) => {
            if let Some(path) = &options.json {
                if let Err(e) = report::write_json(path, &verdict.json) {
                    eprintln!("twizzle-bench: {e}");
                    return ExitCode::FAILURE;
                }
            }
            match verdict.failure {
                None => ExitCode::SUCCESS,
                Some(failure) => {
                    eprintln!("twizzle-bench: {failure}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("twizzle-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
