//! Identifier and token formats, and the public view of a user.
//!
//! Every identifier is a fixed prefix and lowercase hex drawn from the thread
//! CSPRNG; the browser client checks the prefixes.

use rand::RngCore;
use serde::{Deserialize, Serialize};

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

/// A new `user_` + 16 hex.
pub fn new_user_id() -> String {
    random_id(USER_ID_PREFIX, 8)
}

/// A new `twizzle_stream_` + 16 hex.
pub fn new_stream_id() -> String {
    random_id(STREAM_ID_PREFIX, 8)
}

/// A new `twizzle_access_token_` + 32 hex.
pub fn new_access_token() -> String {
    random_id(ACCESS_TOKEN_PREFIX, 16)
}

/// A new `claim_token_` + 32 hex.
pub fn new_claim_token() -> String {
    random_id(CLAIM_TOKEN_PREFIX, 16)
}

/// Whether `id` has the form of a stream ID (so it is safe as a file name).
pub fn is_stream_id(id: &str) -> bool {
    id.strip_prefix(STREAM_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
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

/// What anyone may know of a user: shown as a stream's senders and on sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicUserInfo {
    /// The user's ID.
    #[serde(rename = "twizzleUserID")]
    pub twizzle_user_id: String,
    /// The user's WCA ID, if the WCA account has one.
    #[serde(rename = "wcaID")]
    pub wca_id: Option<String>,
    /// `"<WCA name> (<WCA ID>)"`, or `"<WCA name> (unverified)"`.
    pub name: String,
}

impl PublicUserInfo {
    /// The public view of a user with this ID, WCA ID and WCA name.
    pub fn new(twizzle_user_id: &str, wca_id: Option<&str>, wca_name: &str) -> Self {
        PublicUserInfo {
            twizzle_user_id: twizzle_user_id.to_owned(),
            wca_id: wca_id.map(str::to_owned),
            name: format!("{wca_name} ({})", wca_id.unwrap_or("unverified")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_length() {
        let stream = new_stream_id();
        assert!(is_stream_id(&stream), "{stream}");
        assert_eq!(new_user_id().len(), USER_ID_PREFIX.len() + 16);
        let token = new_access_token();
        assert!(token.starts_with(ACCESS_TOKEN_PREFIX));
        assert_eq!(token.len(), ACCESS_TOKEN_PREFIX.len() + 32);
        assert!(token[ACCESS_TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(new_access_token(), token);
        assert_eq!(new_claim_token().len(), CLAIM_TOKEN_PREFIX.len() + 32);
    }

    #[test]
    fn stream_ids_are_checked() {
        assert!(!is_stream_id("twizzle_stream_../../etc"));
        assert!(!is_stream_id("twizzle_stream_0123456789ABCDEF"));
        assert!(!is_stream_id("twizzle_stream_0123456789abcde"));
        assert!(is_stream_id("twizzle_stream_0123456789abcdef"));
    }

    #[test]
    fn secrets_are_cut_to_their_tail() {
        assert_eq!(redacted("twizzle_access_token_0123"), "…0123");
        assert_eq!(redacted("ab"), "…ab");
    }

    #[test]
    fn public_names_carry_the_wca_id_or_unverified() {
        assert_eq!(
            PublicUserInfo::new("user_1", Some("2015ABCD01"), "Ana").name,
            "Ana (2015ABCD01)"
        );
        assert_eq!(
            PublicUserInfo::new("user_1", None, "Ana").name,
            "Ana (unverified)"
        );
    }
}
