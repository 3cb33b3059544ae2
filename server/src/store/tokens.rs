//! Secrets: the admin token and rater tokens. Only SHA-256 hashes are stored; a presented
//! token is hashed and compared in constant time, so neither a database dump nor response
//! timing gives a token away.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Result, Store};

const ADMIN_KEY: &str = "admin_token_sha256";

/// A fresh token: a kind prefix and 192 random bits in hex.
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality of two hashes.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// How the admin token came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// Created now; this is the only time it is known in clear.
    Created(String),
    /// Set from the operator's value (APL_ADMIN_TOKEN).
    Given,
    /// An earlier start created it.
    Existing,
}

/// Makes sure an admin token exists: `given` replaces the stored one; otherwise the first
/// start creates one (several processes starting at once agree on one of them).
pub async fn ensure_admin(store: &Store, given: Option<&str>, reset: bool) -> Result<AdminToken> {
    if let Some(t) = given {
        if t.len() < 16 {
            return Err(super::StoreError::Invalid("APL_ADMIN_TOKEN must be at least 16 characters".into()));
        }
        store.set_setting(ADMIN_KEY, &hash(t)).await?;
        return Ok(AdminToken::Given);
    }
    if reset {
        let t = generate("apl_admin");
        store.set_setting(ADMIN_KEY, &hash(&t)).await?;
        return Ok(AdminToken::Created(t));
    }
    if store.setting(ADMIN_KEY).await?.is_some() {
        return Ok(AdminToken::Existing);
    }
    let t = generate("apl_admin");
    Ok(if store.set_setting_once(ADMIN_KEY, &hash(&t)).await? { AdminToken::Created(t) } else { AdminToken::Existing })
}

/// Whether `token` is the admin token.
pub async fn is_admin(store: &Store, token: &str) -> Result<bool> {
    let stored = store.setting(ADMIN_KEY).await?.unwrap_or_default();
    Ok(!stored.is_empty() && same_hash(&hash(token), &stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_compare() {
        let (a, b) = (generate("apl_rater"), generate("apl_rater"));
        assert_ne!(a, b);
        assert!(a.starts_with("apl_rater_") && a.len() == "apl_rater_".len() + 48);
        assert!(same_hash(&hash(&a), &hash(&a)));
        assert!(!same_hash(&hash(&a), &hash(&b)));
        assert!(!same_hash("ab", "abc"));
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
