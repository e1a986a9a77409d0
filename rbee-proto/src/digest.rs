//! [`Sha256`]: a digest that is known to be 64 hex characters.
//!
//! Digests come from outside — SHA256SUMS of an artifact source, install records on a host,
//! a hive's `/health`, a user's `--sha256` — and are used as file names and shown shortened.
//! Checking them where they are parsed means a hostile or corrupt one is an error there, and
//! nothing downstream can slice one in the middle of a character or use it as a path.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A sha256 digest as 64 lowercase hex characters (uppercase input is accepted and lowered).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(String);

/// A string that is not a sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 digest (64 hex characters): {shown}")]
pub struct DigestError {
    /// The rejected text, escaped and cut to 80 characters for display.
    pub shown: String,
}

impl Sha256 {
    /// Checks `text` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let t = text.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(t.to_ascii_lowercase()))
        } else {
            let shown: String = t.escape_debug().take(80).collect();
            Err(DigestError { shown })
        }
    }

    /// The digest of 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({:?})", self.0)
    }
}

impl FromStr for Sha256 {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Sha256 {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> String {
        d.0
    }
}

impl AsRef<str> for Sha256 {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Sha256 {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Sha256 {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Sha256 {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl schemars::JsonSchema for Sha256 {
    fn schema_name() -> Cow<'static, str> {
        "Sha256".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^[0-9a-fA-F]{64}$" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_64_hex_characters_are_a_digest() {
        let d = Sha256::parse(&"AB".repeat(32)).unwrap();
        assert_eq!(d.as_str(), "ab".repeat(32));
        assert_eq!(d.short(), "abababababab");
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65), &format!("{}é", "a".repeat(62)), "../../etc/passwd"] {
            assert!(Sha256::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Sha256>(r#""ééééééééééééé""#).is_err());
    }

    proptest! {
        /// Whatever the text, parsing answers (never panics), and what it accepts shortens
        /// safely.
        #[test]
        fn parsing_never_panics(text in "\\PC{0,80}") {
            if let Ok(d) = Sha256::parse(&text) {
                prop_assert_eq!(d.short().len(), 12);
            }
        }
    }
}
