//! Identities and tokens as types: checked once where they enter, and the
//! tokens never shown whole.
//!
//! Every identifier is a fixed prefix and lowercase hex drawn from the thread
//! CSPRNG; the browser client checks the prefixes. [`StreamId`] and
//! [`UserId`] are public and print as they are; [`AccessToken`] and
//! [`ClaimToken`] print (`{}` and `{:?}`) only as their last four
//! characters, so no log line can carry one, and give their text only
//! through [`AccessToken::expose`], for the one answer that hands it out.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of a user's ID; 16 hex digits follow.
pub const USER_ID_PREFIX: &str = "user_";
/// Prefix of a stream's ID; 16 hex digits follow.
pub const STREAM_ID_PREFIX: &str = "twizzle_stream_";
/// Prefix of an access token; 32 hex digits (128 bits) follow.
pub const ACCESS_TOKEN_PREFIX: &str = "twizzle_access_token_";
/// Prefix of a one-time claim token; 32 hex digits follow.
pub const CLAIM_TOKEN_PREFIX: &str = "claim_token_";

/// `prefix` followed by `bytes` random bytes in lowercase hex.
fn random_id(prefix: &str, bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    format!("{prefix}{}", hex(&raw))
}

/// Whether `text` is `prefix` followed by exactly `digits` lowercase hex digits.
fn has_form(text: &str, prefix: &str, digits: usize) -> bool {
    text.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == digits
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `bytes` in lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The end of a secret that may appear in a log line: its last four characters.
pub fn redacted(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// The constructors every identifier and token type shares: a random one,
/// and one checked from text.
macro_rules! checked_constructors {
    ($name:ident, $prefix:expr, $digits:expr) => {
        impl $name {
            /// A new random one.
            pub fn random() -> $name {
                $name(random_id($prefix, $digits / 2))
            }

            /// `text` if it has the form of one; `None` otherwise (which
            /// nothing the server handed out has, so it can be refused unseen).
            pub fn parse(text: &str) -> Option<$name> {
                has_form(text, $prefix, $digits).then(|| $name(text.to_owned()))
            }
        }
    };
}

/// Declares a public identifier: a checked newtype over its text that
/// prints, compares, hashes and (de)serializes as that text.
macro_rules! public_id {
    ($(#[$doc:meta])* $name:ident, $prefix:expr, $digits:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        checked_constructors!($name, $prefix, $digits);

        impl $name {
            /// Its text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(concat!("malformed ", stringify!($name)))
                })
            }
        }
    };
}

/// Declares a secret token: a checked newtype whose text is only exposed
/// on purpose; `Display` and `Debug` show the last four characters.
macro_rules! secret_token {
    ($(#[$doc:meta])* $name:ident, $prefix:expr, $digits:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        checked_constructors!($name, $prefix, $digits);

        impl $name {
            /// The token itself: for the one answer that hands it out, and
            /// for hashing. Never for a log line.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redacted(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), redacted(&self.0))
            }
        }
    };
}

public_id!(
    /// A stream's ID: `twizzle_stream_` + 16 hex; safe as a file name.
    StreamId,
    STREAM_ID_PREFIX,
    16
);
public_id!(
    /// A user's ID: `user_` + 16 hex.
    UserId,
    USER_ID_PREFIX,
    16
);
secret_token!(
    /// An access token: `twizzle_access_token_` + 32 hex (128 bits).
    AccessToken,
    ACCESS_TOKEN_PREFIX,
    32
);
secret_token!(
    /// A one-time claim token: `claim_token_` + 32 hex.
    ClaimToken,
    CLAIM_TOKEN_PREFIX,
    32
);

/// The most characters a [`DevName`] may have.
pub const DEV_NAME_MAX_CHARS: usize = 40;

/// The name a development user signs in with (see the development sign-in,
/// `GET /v0/auth/dev`): 1 to [`DEV_NAME_MAX_CHARS`] printable characters,
/// taken as given (not trimmed: `"Ana"` and `"Ana "` are two users).
///
/// Characters are Unicode scalar values, counted one by one, not bytes:
/// `"Zoë"` is 3. Printable means any of them but a control character
/// (general category Cc: U+0000 to U+001F and U+007F to U+009F) and the line
/// and paragraph separators U+2028 and U+2029, which would break a name
/// across lines wherever it is shown; and a name must show something, so one
/// made only of whitespace is refused. Format characters such as U+200D, the
/// joiner inside many emoji, are allowed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DevName(String);

/// Why a text is not a [`DevName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevNameError {
    /// No name at all, or an empty one.
    Missing,
    /// More than [`DEV_NAME_MAX_CHARS`] characters.
    TooLong,
    /// A control character or a line break.
    NotPrintable,
    /// Only whitespace.
    Blank,
}

impl fmt::Display for DevNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevNameError::Missing => f.write_str("name was not provided"),
            DevNameError::TooLong => {
                write!(f, "name is longer than {DEV_NAME_MAX_CHARS} characters")
            }
            DevNameError::NotPrintable => {
                f.write_str("name must be printable: no control characters or line breaks")
            }
            DevNameError::Blank => f.write_str("name must not be only whitespace"),
        }
    }
}

impl DevName {
    /// `text` if it is a valid name, else why not.
    pub fn parse(text: &str) -> Result<DevName, DevNameError> {
        if text.is_empty() {
            return Err(DevNameError::Missing);
        }
        if text.chars().count() > DEV_NAME_MAX_CHARS {
            return Err(DevNameError::TooLong);
        }
        if text
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
        {
            return Err(DevNameError::NotPrintable);
        }
        if text.chars().all(char::is_whitespace) {
            return Err(DevNameError::Blank);
        }
        Ok(DevName(text.to_owned()))
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevName({:?})", self.0)
    }
}

impl TryFrom<String> for DevName {
    type Error = String;

    fn try_from(text: String) -> Result<DevName, String> {
        DevName::parse(&text).map_err(|e| e.to_string())
    }
}

impl From<DevName> for String {
    fn from(name: DevName) -> String {
        name.0
    }
}

/// What anyone may know of a user: shown as a stream's senders and on sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicUserInfo {
    /// The user's ID.
    #[serde(rename = "twizzleUserID")]
    pub twizzle_user_id: UserId,
    /// The user's WCA ID, if the WCA account has one.
    #[serde(rename = "wcaID")]
    pub wca_id: Option<String>,
    /// `"<WCA name> (<WCA ID>)"`, or `"<WCA name> (unverified)"`.
    pub name: String,
}

impl PublicUserInfo {
    /// The public view of a user with this ID, WCA ID and WCA name.
    pub fn new(twizzle_user_id: &UserId, wca_id: Option<&str>, wca_name: &str) -> Self {
        PublicUserInfo {
            twizzle_user_id: twizzle_user_id.clone(),
            wca_id: wca_id.map(str::to_owned),
            name: format!("{wca_name} ({})", wca_id.unwrap_or("unverified")),
        }
    }

    /// What is shown of a user ID nobody has: an `unknown user`.
    pub fn unknown(twizzle_user_id: &UserId) -> Self {
        PublicUserInfo::new(twizzle_user_id, None, "unknown user")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_length() {
        let stream = StreamId::random();
        assert_eq!(StreamId::parse(stream.as_str()), Some(stream.clone()));
        assert_eq!(UserId::random().as_str().len(), USER_ID_PREFIX.len() + 16);
        let token = AccessToken::random();
        let text = token.expose();
        assert!(text.starts_with(ACCESS_TOKEN_PREFIX));
        assert_eq!(text.len(), ACCESS_TOKEN_PREFIX.len() + 32);
        assert!(text[ACCESS_TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(AccessToken::random(), token);
        assert_eq!(
            ClaimToken::random().expose().len(),
            CLAIM_TOKEN_PREFIX.len() + 32
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(StreamId::parse("twizzle_stream_../../etc").is_none());
        assert!(StreamId::parse("twizzle_stream_0123456789ABCDEF").is_none());
        assert!(StreamId::parse("twizzle_stream_0123456789abcde").is_none());
        assert!(StreamId::parse("twizzle_stream_0123456789abcdef").is_some());
        assert!(UserId::parse("user_0123456789abcdef").is_some());
        assert!(UserId::parse("user_1").is_none());
        assert!(AccessToken::parse("bogus").is_none());
        assert!(ClaimToken::parse(AccessToken::random().expose()).is_none());
        let back: Result<UserId, _> = serde_json::from_str(r#""user_x""#);
        assert!(back.is_err());
        let back: UserId = serde_json::from_str(r#""user_00000000000000aa""#).unwrap();
        assert_eq!(back.as_str(), "user_00000000000000aa");
    }

    #[test]
    fn tokens_show_only_their_tail() {
        let token = AccessToken::random();
        let tail = &token.expose()[token.expose().len() - 4..];
        for shown in [format!("{token}"), format!("{token:?}")] {
            assert!(!shown.contains(&token.expose()[..token.expose().len() - 4]));
            assert!(shown.ends_with(tail) || shown.ends_with(&format!("{tail})")));
        }
        let claim = ClaimToken::random();
        assert!(!format!("{:?}", Some(&claim)).contains(claim.expose()));
        assert_eq!(redacted("twizzle_access_token_0123"), "…0123");
        assert_eq!(redacted("ab"), "…ab");
    }

    #[test]
    fn dev_names_are_1_to_40_printable_characters() {
        for good in [
            "A",
            "Demo Cuber",
            " Ana ",
            "Zoë Ünal",
            "陳小明",
            "👩‍👩‍👧",
            "a\u{00a0}b",
            &"é".repeat(DEV_NAME_MAX_CHARS),
        ] {
            let name = DevName::parse(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            assert_eq!(name.as_str(), good, "kept as given, not trimmed");
        }
        for (bad, why) in [
            ("", DevNameError::Missing),
            (&"a".repeat(DEV_NAME_MAX_CHARS + 1), DevNameError::TooLong),
            (&"é".repeat(DEV_NAME_MAX_CHARS + 1), DevNameError::TooLong),
            ("tab\there", DevNameError::NotPrintable),
            ("line\nbreak", DevNameError::NotPrintable),
            ("nul\0", DevNameError::NotPrintable),
            ("del\u{7f}", DevNameError::NotPrintable),
            ("c1\u{85}", DevNameError::NotPrintable),
            ("sep\u{2028}", DevNameError::NotPrintable),
            ("   ", DevNameError::Blank),
            ("\u{3000}", DevNameError::Blank),
        ] {
            assert_eq!(DevName::parse(bad), Err(why), "{bad:?}");
        }
        let back: DevName = serde_json::from_str(r#""Zoë""#).unwrap();
        assert_eq!(back.as_str(), "Zoë");
        assert!(serde_json::from_str::<DevName>(r#""a\u0007""#).is_err());
        assert_eq!(serde_json::to_string(&back).unwrap(), r#""Zoë""#);
    }

    #[test]
    fn public_names_carry_the_wca_id_or_unverified() {
        let id = UserId::random();
        assert_eq!(
            PublicUserInfo::new(&id, Some("2015ABCD01"), "Ana").name,
            "Ana (2015ABCD01)"
        );
        assert_eq!(
            PublicUserInfo::new(&id, None, "Ana").name,
            "Ana (unverified)"
        );
    }
}
