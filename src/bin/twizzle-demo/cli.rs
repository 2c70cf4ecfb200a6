//! The command line: where to send, as whom, how many solves, how fast.

/// The server a fresh `cargo run --release` listens on.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:3337";
/// The name the demo signs in with unless told otherwise.
pub const DEFAULT_NAME: &str = "Demo Cuber";
/// The fastest pace accepted: a solve of some 25 s at speed 1 then takes
/// about half a second, and the events still fit the server's default rate
/// limit in bursts.
const MAX_SPEED: f64 = 50.0;
/// The most solves one run may be asked for; `--loop` has no end.
const MAX_SOLVES: u64 = 1_000_000;

/// Everything the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The server's origin, e.g. `http://127.0.0.1:3337`, without a trailing slash.
    pub server: String,
    /// The development user to sign in as.
    pub name: String,
    /// How many solves to stream; `None` streams until stopped.
    pub solves: Option<u64>,
    /// How many times faster than a human everything goes (1 is real time).
    pub speed: f64,
    /// Seeds the scrambles, solves and hand motion, for a run that can be
    /// repeated; without it every run differs.
    pub seed: Option<u64>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// Stream with these options.
    Run(Options),
    /// Print this help and exit.
    Help(String),
}

/// The `--help` text.
pub fn usage() -> String {
    format!(
        "twizzle-demo: streams recorded-looking 3x3x3 solves to a twizzle stream server\n\
         \n\
         Signs in with the server's development sign-in (GET /v0/auth/dev, on only\n\
         without a WCA client secret, without --prod and on loopback), creates a\n\
         stream, prints its watch page, and sends each solve as a smart cube would:\n\
         a reset, a scramble, inspection, then the solve at a human pace, with the\n\
         cube's orientation about 25 times a second while it is held.\n\
         \n\
         Usage: twizzle-demo [OPTIONS]\n\
         \n\
         \x20 --server URL   the server (default {DEFAULT_SERVER})\n\
         \x20 --name NAME    the development user to sign in as (default \"{DEFAULT_NAME}\")\n\
         \x20 --solves N     stream N solves, then stop\n\
         \x20 --loop         stream solves until stopped (the default)\n\
         \x20 --speed X      X times faster than a human, up to {MAX_SPEED} (default 1)\n\
         \x20 --seed N       the same scrambles and solves on every run with the same N\n\
         \x20 --help         print this and exit\n\
         \n\
         Ctrl-C stops it cleanly. Exits 1 if the server cannot be reached, has no\n\
         development sign-in, or closes the stream; 2 on a bad command line.\n"
    )
}

/// Reads the command line (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut options = Options {
        server: DEFAULT_SERVER.to_owned(),
        name: DEFAULT_NAME.to_owned(),
        solves: None,
        speed: 1.0,
        seed: None,
    };
    let mut looping = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(Parsed::Help(usage())),
            "--loop" => looping = true,
            "--server" => options.server = server(&value()?)?,
            "--name" => options.name = value()?,
            "--solves" => {
                let text = value()?;
                options.solves = Some(
                    text.parse()
                        .ok()
                        .filter(|n| (1..=MAX_SOLVES).contains(n))
                        .ok_or_else(|| {
                            format!("--solves: expected a whole number from 1 to {MAX_SOLVES}, got {text:?}")
                        })?,
                );
            }
            "--speed" => {
                let text = value()?;
                options.speed = text
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x <= MAX_SPEED)
                    .ok_or_else(|| {
                        format!("--speed: expected a number above 0 and at most {MAX_SPEED}, got {text:?}")
                    })?;
            }
            "--seed" => {
                let text = value()?;
                options.seed = Some(
                    text.parse()
                        .map_err(|_| format!("--seed: expected a whole number, got {text:?}"))?,
                );
            }
            _ => return Err(format!("unexpected argument {arg:?}; see --help")),
        }
    }
    if looping && options.solves.is_some() {
        return Err("--loop and --solves exclude each other; see --help".to_owned());
    }
    Ok(Parsed::Run(options))
}

/// The server's origin from `--server`: `http://` or `https://`, a host,
/// maybe a port; a trailing slash is dropped.
fn server(text: &str) -> Result<String, String> {
    let origin = text.trim_end_matches('/');
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#']) => Ok(origin.to_owned()),
        _ => Err(format!(
            "--server: expected an origin such as {DEFAULT_SERVER}, got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(options) => Ok(options),
            Parsed::Help(_) => Err("help".to_owned()),
        }
    }

    #[test]
    fn defaults_loop_against_the_local_server() {
        let options = run(&[]).unwrap();
        assert_eq!(options.server, DEFAULT_SERVER);
        assert_eq!(options.name, DEFAULT_NAME);
        assert_eq!(options.solves, None);
        assert_eq!(options.speed, 1.0);
        assert_eq!(run(&["--loop"]).unwrap(), options);
    }

    #[test]
    fn flags_take_values_both_ways() {
        let options = run(&[
            "--server=http://localhost:4000/",
            "--name",
            "Zoë Ünal",
            "--solves",
            "2",
            "--speed=20",
            "--seed",
            "7",
        ])
        .unwrap();
        assert_eq!(options.server, "http://localhost:4000");
        assert_eq!(options.name, "Zoë Ünal");
        assert_eq!(options.solves, Some(2));
        assert_eq!(options.speed, 20.0);
        assert_eq!(options.seed, Some(7));
    }

    #[test]
    fn bad_command_lines_say_why() {
        for (args, why) in [
            (&["--solves", "0"][..], "--solves"),
            (&["--solves", "two"], "--solves"),
            (&["--speed", "0"], "--speed"),
            (&["--speed", "51"], "--speed"),
            (&["--speed", "NaN"], "--speed"),
            (&["--server", "127.0.0.1:3337"], "--server"),
            (&["--server", "http://x/path"], "--server"),
            (&["--name"], "needs a value"),
            (&["--loop", "--solves", "1"], "exclude"),
            (&["--nope"], "unexpected"),
        ] {
            let e = run(args).unwrap_err();
            assert!(e.contains(why), "{args:?}: {e}");
        }
        assert!(matches!(
            parse(["--help".to_owned()]),
            Ok(Parsed::Help(text)) if text.contains("--solves")
        ));
    }
}
