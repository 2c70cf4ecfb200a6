//! `twizzle-demo`: streams recorded-looking 3x3x3 solves to a twizzle
//! stream server, so that a watch page has something to show without a
//! smart cube or a WCA application.
//!
//! ```text
//! cargo run --release                              # the server, in one terminal
//! cargo run --release --bin twizzle-demo           # the demo, in another
//! ```
//!
//! It signs in with the server's development sign-in, creates a stream,
//! prints its watch page (`{server}/watch/{streamID}`), connects as the
//! stream's sender (its token offered as the `twizzle.v0` subprotocol) and
//! sends what the browser client sends for a smart cube: a reset, the
//! scramble's turns, inspection, and the solve, each turn a move event with
//! the cube's state after it, and the cube's orientation about 25 times a
//! second while it is held.
//!
//! # Layout
//!
//! - `cli`: the command line.
//! - `api`: the sign-in, the claim, the new stream and the sender's socket.
//! - `script`: one solve as a timeline: scramble, inspection, solve.
//! - `hands`: the orientation of a cube held in the hands.
//! - `stream`: plays the solves onto the socket in real time.
//!
//! The cube itself, and the `binaryState` of it, are in the library's
//! `testkit::cube`, which the tests use to check what the demo sends.

mod api;
mod cli;
mod hands;
mod script;
mod stream;

use std::future::Future;
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::future::{select, Either};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::api::{Api, DemoError, Socket};
use crate::cli::Options;
use crate::stream::Outcome;

/// Waits for SIGINT or SIGTERM; returns its name. Never returns if signals
/// cannot be listened to.
async fn stop_signal() -> &'static str {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            let int = pin!(int.recv());
            let term = pin!(term.recv());
            match select(int, term).await {
                Either::Left(_) => "SIGINT",
                Either::Right(_) => "SIGTERM",
            }
        }
        _ => std::future::pending().await,
    }
}

/// Signs in, creates the stream, and streams solves until done or stopped.
async fn run<S: Future<Output = &'static str>>(
    options: &Options,
    mut stop: Pin<&mut S>,
) -> Result<Outcome, DemoError> {
    let api = Api::new(&options.server);
    let setup = pin!(async {
        let me = api.sign_in(&options.name).await?;
        let stream_id = api.create_stream(&me.token).await?;
        let socket = api.connect(&stream_id, &me.token).await?;
        Ok::<_, DemoError>((me, stream_id, socket))
    });
    let (me, stream_id, mut socket) = match select(setup, stop.as_mut()).await {
        Either::Left((ready, _)) => ready?,
        Either::Right((name, _)) => return Ok(Outcome::Stopped(name, 0)),
    };
    let shown = me.user["name"].as_str().unwrap_or(&options.name);
    let user_id = me.user["twizzleUserID"].as_str().unwrap_or("?");
    println!(
        "twizzle-demo: signed in to {} as {shown} ({user_id})",
        options.server
    );
    println!("twizzle-demo: sending to stream {stream_id}");
    println!();
    println!("    Watch it live: {}/watch/{stream_id}", options.server);
    println!();
    let mut rng = match options.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    let mut done = 0;
    loop {
        let outcome =
            stream::solves(&mut socket, options, &mut rng, &mut done, stop.as_mut()).await;
        match outcome {
            Ok(outcome) => {
                stream::close(&mut socket).await;
                return Ok(outcome);
            }
            // A restart or a lost connection: connect again, as the
            // browser client does, and start the next solve afresh.
            Err(DemoError::Dropped(why)) => {
                println!("twizzle-demo: {why}; connecting again");
                let again = pin!(reconnect(&api, &stream_id, &me.token));
                socket = match select(again, stop.as_mut()).await {
                    Either::Left((socket, _)) => socket?,
                    Either::Right((name, _)) => return Ok(Outcome::Stopped(name, done)),
                };
                println!("twizzle-demo: connected again to stream {stream_id}");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the stream again, backing off from 250 ms to 5 s between
/// tries, for up to a minute.
async fn reconnect(api: &Api, stream_id: &str, token: &str) -> Result<Socket, DemoError> {
    let give_up = std::time::Instant::now() + RECONNECT_FOR;
    let mut wait = Duration::from_millis(250);
    loop {
        actix_web::rt::time::sleep(wait).await;
        match api.connect(stream_id, token).await {
            Ok(socket) => return Ok(socket),
            Err(e) if std::time::Instant::now() >= give_up => return Err(e),
            Err(_) => wait = (wait * 2).min(Duration::from_secs(5)),
        }
    }
}

/// How long the demo tries to connect again after its connection dropped.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

#[actix_web::main]
async fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Parsed::Run(options)) => options,
        Ok(cli::Parsed::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("twizzle-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = pin!(stop_signal());
    match run(&options, stop).await {
        Ok(Outcome::Finished(solves)) => {
            println!("twizzle-demo: done: {solves} solves streamed");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Stopped(name, solves)) => {
            println!("twizzle-demo: {name} received: stopped after {solves} whole solves");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("twizzle-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
