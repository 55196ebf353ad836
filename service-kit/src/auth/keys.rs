//! Key files: the public keys a service trusts, and an issuer's signing key.
//!
//! A keys file (`--jwt-keys-file`, TOML) lists the issuers' public keys by `kid`:
//!
//! ```toml
//! [[key]]
//! kid = "billpay-dev-3f9a1c2b"
//! issuer = "billpay-dev"
//! public_key = "<Ed25519 public key, 32 bytes, base64url>"
//!
//! [[key]]
//! kid = "payment-svc-8d02e4aa"
//! issuer = "payment-svc"
//! public_key = "…"
//! subjects = ["payment-svc"]   # optional: the only subjects it may speak for
//! roles = ["service"]          # optional: the only roles it may issue
//! ```
//!
//! Rotation: add the new key's entry, restart, move the issuer to the new key, then
//! remove the old entry and restart again; both keys are trusted in between, so no
//! call is lost. A signing key file holds one issuer's private key:
//!
//! ```toml
//! issuer = "payment-svc"
//! kid = "payment-svc-8d02e4aa"
//! private_key = "<Ed25519 PKCS#8 v2, base64url>"
//! ```

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::{
    PAYMENT_SVC_SUBJECT, Role,
    jwt::{BadKey, TokenSigner, TrustedKey},
};

/// The issuer of the dev tokens `billpay up` and `billpay token` mint.
pub const DEV_ISSUER: &str = "billpay-dev";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid key file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot generate a key")]
    Generate,
}

#[derive(Debug, Clone, Deserialize)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct KeyEntry {
    kid: String,
    issuer: String,
    public_key: String,
    #[serde(default)]
    subjects: Option<Vec<String>>,
    #[serde(default)]
    roles: Option<Vec<Role>>,
}

#[derive(Deserialize)]
struct SigningKeyFile {
    issuer: String,
    kid: String,
    private_key: String,
}

/// A fresh Ed25519 key: (PKCS#8 v2 DER, 32-byte public key).
pub fn generate_ed25519() -> Result<(Vec<u8>, Vec<u8>), KeyFileError> {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| KeyFileError::Generate)?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| KeyFileError::Generate)?;
    Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> KeyFileError {
    KeyFileError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The trusted keys of a keys file, by `kid`.
pub fn load_trusted(path: &Path) -> Result<HashMap<String, TrustedKey>, KeyFileError> {
    let file: KeysFile = toml::from_str(&read(path)?).map_err(|error| invalid(path, error))?;
    if file.key.is_empty() {
        return Err(invalid(path, "it lists no [[key]]"));
    }
    let mut keys = HashMap::new();
    for entry in file.key {
        let public = URL_SAFE_NO_PAD
            .decode(entry.public_key.trim())
            .map_err(|_| {
                invalid(
                    path,
                    format!("key {}: public_key is not base64url", entry.kid),
                )
            })?;
        let mut trusted = TrustedKey::ed25519(&entry.issuer, &public)
            .map_err(|BadKey| invalid(path, format!("key {}: {BadKey}", entry.kid)))?;
        if entry.issuer.trim().is_empty() || entry.kid.trim().is_empty() {
            return Err(invalid(path, "every key needs a kid and an issuer"));
        }
        trusted.subjects = entry.subjects;
        trusted.roles = entry.roles;
        if keys.insert(entry.kid.clone(), trusted).is_some() {
            return Err(invalid(path, format!("kid {} appears twice", entry.kid)));
        }
    }
    Ok(keys)
}

/// The signer of a signing key file.
pub fn load_signer(path: &Path) -> Result<TokenSigner, KeyFileError> {
    let file: SigningKeyFile =
        toml::from_str(&read(path)?).map_err(|error| invalid(path, error))?;
    let pkcs8 = URL_SAFE_NO_PAD
        .decode(file.private_key.trim())
        .map_err(|_| invalid(path, "private_key is not base64url"))?;
    TokenSigner::ed25519(&file.issuer, &file.kid, &pkcs8).map_err(|error| invalid(path, error))
}

/// The dev key files `billpay up` makes in its data dir (and the tests in theirs).
#[derive(Debug, Clone)]
pub struct DevKeys {
    /// The public keys both services trust.
    pub keys_file: PathBuf,
    /// The dev issuer's signing key: `billpay up`, `billpay token`, `billpay demo`.
    pub dev_signing_key: PathBuf,
    /// payment-svc's own signing key, for its tokens to billing.
    pub payment_signing_key: PathBuf,
}

impl DevKeys {
    /// The file paths under `dir/keys`.
    pub fn in_dir(dir: &Path) -> Self {
        let keys = dir.join("keys");
        Self {
            keys_file: keys.join("trusted-keys.toml"),
            dev_signing_key: keys.join("billpay-dev.signing-key.toml"),
            payment_signing_key: keys.join("payment-svc.signing-key.toml"),
        }
    }

    /// The dev keys under `dir/keys`, generated on first use (private keys 0600).
    pub fn ensure(dir: &Path) -> Result<Self, KeyFileError> {
        let paths = Self::in_dir(dir);
        if paths.keys_file.exists()
            && paths.dev_signing_key.exists()
            && paths.payment_signing_key.exists()
        {
            return Ok(paths);
        }
        if let Some(parent) = paths.keys_file.parent() {
            std::fs::create_dir_all(parent).map_err(|source| KeyFileError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        let mut entries = Vec::new();
        for (issuer, path, bound) in [
            (DEV_ISSUER, &paths.dev_signing_key, false),
            (PAYMENT_SVC_SUBJECT, &paths.payment_signing_key, true),
        ] {
            let (pkcs8, public) = generate_ed25519()?;
            let kid = format!(
                "{issuer}-{}",
                public[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let signing = SigningKeyFile {
                issuer: issuer.to_owned(),
                kid: kid.clone(),
                private_key: URL_SAFE_NO_PAD.encode(&pkcs8),
            };
            write_private(path, &signing.to_toml())?;
            entries.push(KeyEntry {
                kid,
                issuer: issuer.to_owned(),
                public_key: URL_SAFE_NO_PAD.encode(&public),
                subjects: bound.then(|| vec![PAYMENT_SVC_SUBJECT.to_owned()]),
                roles: bound.then(|| vec![Role::Service]),
            });
        }
        let text = format!(
            "# Public keys of the token issuers this stack trusts (dev keys made by `billpay up`).\n{}",
            entries.iter().map(KeyEntry::to_toml).collect::<String>()
        );
        std::fs::write(&paths.keys_file, text).map_err(|source| KeyFileError::Write {
            path: paths.keys_file.clone(),
            source,
        })?;
        Ok(paths)
    }
}

/// `text` as a TOML basic string (JSON's escapes are TOML's).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn quoted_list<T: AsRef<str>>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|item| quoted(item.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

impl KeyEntry {
    fn to_toml(&self) -> String {
        let mut text = format!(
            "\n[[key]]\nkid = {}\nissuer = {}\npublic_key = {}\n",
            quoted(&self.kid),
            quoted(&self.issuer),
            quoted(&self.public_key)
        );
        if let Some(subjects) = &self.subjects {
            text.push_str(&format!("subjects = {}\n", quoted_list(subjects)));
        }
        if let Some(roles) = &self.roles {
            let roles: Vec<&str> = roles
                .iter()
                .map(|role| match role {
                    Role::Service => "service",
                    Role::Operator => "operator",
                    Role::Customer => "customer",
                })
                .collect();
            text.push_str(&format!("roles = {}\n", quoted_list(&roles)));
        }
        text
    }
}

impl SigningKeyFile {
    fn to_toml(&self) -> String {
        format!(
            "# A token issuer's private signing key: keep it owner-only.\nissuer = {}\nkid = {}\nprivate_key = {}\n",
            quoted(&self.issuer),
            quoted(&self.kid),
            quoted(&self.private_key)
        )
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), KeyFileError> {
    use std::io::Write as _;
    let failed = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_keys_are_made_once_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DevKeys::ensure(dir.path()).unwrap();
        let first = std::fs::read_to_string(&keys.keys_file).unwrap();
        assert_eq!(
            std::fs::read_to_string(&DevKeys::ensure(dir.path()).unwrap().keys_file).unwrap(),
            first,
            "a second up keeps the keys"
        );
        let trusted = load_trusted(&keys.keys_file).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.values().any(|key| key.subjects.is_some()));
        assert_eq!(
            load_signer(&keys.dev_signing_key).unwrap().issuer(),
            DEV_ISSUER
        );
        assert_eq!(
            load_signer(&keys.payment_signing_key).unwrap().issuer(),
            PAYMENT_SVC_SUBJECT
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&keys.dev_signing_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
