//! Join tokens: `CLSTR-1-<hex sha256 of the root CA>-<secret>`.

use crate::IdentityError;
use rand::Rng;

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

const PREFIX: &str = "CLSTR";
const VERSION: &str = "1";
const SECRET_LEN: usize = 25;
const SECRET_CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const EXPECTED: &str = "expected CLSTR-1-<ca digest>-<secret>";

impl JoinToken {
    /// A fresh random secret: 25 characters of `[a-z0-9]` from the thread's CSPRNG.
    pub fn generate_secret() -> String {
        let mut rng = rand::rng();
        (0..SECRET_LEN)
            .map(|_| char::from(SECRET_CHARSET[rng.random_range(0..SECRET_CHARSET.len())]))
            .collect()
    }

    /// The token text for a CA digest and secret.
    pub fn format(ca_digest: &str, secret: &str) -> String {
        format!("{PREFIX}-{VERSION}-{ca_digest}-{secret}")
    }

    /// Parses token text, with an error that says what is wrong.
    ///
    /// Surrounding whitespace is ignored; the digest is returned in lowercase.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let bad = |what: String| IdentityError::MalformedToken(what);
        let text = text.trim();
        if text.is_empty() {
            return Err(bad(format!("the token is empty; {EXPECTED}")));
        }
        let mut parts = text.splitn(4, '-');
        let (prefix, version, digest, secret) =
            (parts.next(), parts.next(), parts.next(), parts.next());
        if prefix != Some(PREFIX) {
            return Err(bad(format!("it does not start with {PREFIX}-; {EXPECTED}")));
        }
        let (Some(version), Some(digest)) = (version, digest) else {
            return Err(bad(EXPECTED.to_string()));
        };
        if version != VERSION {
            return Err(bad(format!(
                "unsupported token version {version:?} (this build knows version {VERSION}); {EXPECTED}"
            )));
        }
        if digest.len() != 64 {
            return Err(bad(format!(
                "the CA digest has {} characters, expected 64 hex digits; {EXPECTED}",
                digest.len()
            )));
        }
        if !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("the CA digest is not hexadecimal; {EXPECTED}")));
        }
        let secret = secret.unwrap_or("");
        if secret.is_empty() {
            return Err(bad(format!("the secret is missing; {EXPECTED}")));
        }
        if !secret
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad(format!(
                "the secret may only contain lowercase letters and digits; {EXPECTED}"
            )));
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&JoinToken::format(&self.ca_digest, &self.secret))
    }
}

/// Constant-time comparison of two secrets (the time depends only on the lengths).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn secret_shape() {
        let a = JoinToken::generate_secret();
        let b = JoinToken::generate_secret();
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn format_parse_round_trip() {
        let secret = JoinToken::generate_secret();
        let text = JoinToken::format(DIGEST, &secret);
        assert_eq!(text, format!("CLSTR-1-{DIGEST}-{secret}"));
        let token = JoinToken::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(
            token,
            JoinToken {
                ca_digest: DIGEST.into(),
                secret: secret.clone()
            }
        );
        assert_eq!(token.to_string(), text);
        // Upper-case digests are accepted and normalised.
        let upper = JoinToken::parse(&JoinToken::format(&DIGEST.to_uppercase(), &secret)).unwrap();
        assert_eq!(upper.ca_digest, DIGEST);
    }

    fn err(text: &str) -> String {
        match JoinToken::parse(text) {
            Ok(t) => panic!("{text:?} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_tokens() {
        let e = err(&format!("SWMTKN-1-{DIGEST}-abc"));
        assert!(
            e.contains("join token is malformed") && e.contains("CLSTR-1-<ca digest>-<secret>"),
            "{e}"
        );
        assert!(err(&format!("CLSTR-2-{DIGEST}-abc")).contains("version"));
        assert!(err(&format!("CLSTR-1-{}-abc", &DIGEST[..63])).contains("63 characters"));
        assert!(err(&format!("CLSTR-1-{}g-abc", &DIGEST[..63])).contains("not hexadecimal"));
        assert!(err(&format!("CLSTR-1-{DIGEST}-")).contains("secret is missing"));
        assert!(err(&format!("CLSTR-1-{DIGEST}")).contains("secret is missing"));
        assert!(err(&format!("CLSTR-1-{DIGEST}-ABC")).contains("lowercase"));
        assert!(err(&format!("CLSTR-1-{DIGEST}-ab-c")).contains("lowercase"));
        assert!(err("").contains("empty"));
        assert!(err("CLSTR").contains("expected"));
        assert!(err("CLSTR-1").contains("expected"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(secrets_equal("abc123", "abc123"));
        assert!(!secrets_equal("abc123", "abc124"));
        assert!(!secrets_equal("abc123", "abc12"));
        assert!(!secrets_equal("", "a"));
        assert!(secrets_equal("", ""));
    }
}
