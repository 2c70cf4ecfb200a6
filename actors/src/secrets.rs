//! Keeping tokens so that a copy of the data directory gives nobody a sign-in.
//!
//! Access and claim tokens are kept only as SHA-256 hashes: enough to check
//! a token a client presents, useless to present. So that a user who signs
//! in again gets the same access token (the client expects one per user),
//! the token is also kept sealed: XORed with a pad derived by HMAC-SHA-256
//! from a key that is not in the data directory (it comes from the WCA
//! client secret, without which nobody can sign in anyway).

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

use serde::{Deserialize, Serialize};

use crate::ids::{hex, AccessToken, UserId, ACCESS_TOKEN_PREFIX};

/// Bytes of randomness in an access token (32 hex digits).
const TOKEN_BYTES: usize = 16;

/// The hex SHA-256 of a token: what is kept and looked up instead of the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    /// The hash of `token` (an access or claim token's text).
    pub fn of(token: &str) -> TokenHash {
        TokenHash(hex(&Sha256::digest(token.as_bytes())))
    }

    /// The hash in hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key access tokens are sealed with.
#[derive(Clone)]
pub struct SealingKey([u8; 32]);

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(…)")
    }
}

impl SealingKey {
    /// The key derived from a server secret; the same secret gives the same key.
    pub fn from_secret(secret: &[u8]) -> SealingKey {
        SealingKey(hmac_sha256(secret, b"twizzle access token seal v1"))
    }

    /// A key of this process only: tokens sealed with it cannot be unsealed
    /// after a restart, so returning users get a new token then.
    pub fn random() -> SealingKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SealingKey(key)
    }

    fn pad(&self, user_id: &UserId) -> [u8; 32] {
        hmac_sha256(&self.0, user_id.as_str().as_bytes())
    }

    /// Seals `token` for `user_id`.
    pub fn seal(&self, user_id: &UserId, token: &AccessToken) -> Option<String> {
        let raw = unhex(token.expose().strip_prefix(ACCESS_TOKEN_PREFIX)?)?;
        if raw.len() != TOKEN_BYTES {
            return None;
        }
        let pad = self.pad(user_id);
        let sealed: Vec<u8> = raw.iter().zip(pad).map(|(b, p)| b ^ p).collect();
        Some(hex(&sealed))
    }

    /// The token sealed for `user_id`; a wrong key gives a wrong token, which
    /// the caller tells apart by its hash.
    pub fn unseal(&self, user_id: &UserId, sealed: &str) -> Option<AccessToken> {
        let raw = unhex(sealed)?;
        if raw.len() != TOKEN_BYTES {
            return None;
        }
        let pad = self.pad(user_id);
        let token: Vec<u8> = raw.iter().zip(pad).map(|(b, p)| b ^ p).collect();
        AccessToken::parse(&format!("{ACCESS_TOKEN_PREFIX}{}", hex(&token)))
    }
}

/// HMAC-SHA-256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block_key.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block_key.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            TokenHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sealing_round_trips_only_with_the_same_key() {
        let token = AccessToken::random();
        let (user_1, user_2) = (UserId::random(), UserId::random());
        let key = SealingKey::from_secret(b"secret");
        let sealed = key.seal(&user_1, &token).unwrap();
        assert!(!sealed.contains(&token.expose()[ACCESS_TOKEN_PREFIX.len()..]));
        assert_eq!(
            SealingKey::from_secret(b"secret").unseal(&user_1, &sealed),
            Some(token.clone())
        );
        assert_ne!(
            SealingKey::from_secret(b"other").unseal(&user_1, &sealed),
            Some(token.clone())
        );
        assert_ne!(key.unseal(&user_2, &sealed), Some(token));
        assert!(key.unseal(&user_1, "zz").is_none());
    }
}
