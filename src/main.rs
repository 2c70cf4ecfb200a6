//! `twizzle-api-server`: parses the settings, builds the application, serves.

use std::process::ExitCode;

use twizzle_api_server::config::{Command, Settings};
use twizzle_api_server::startup::Application;

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::parse(std::env::args().skip(1), |name| std::env::var(name).ok())
    {
        Ok(Command::Run(settings)) => *settings,
        Ok(Command::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("twizzle-api-server: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
