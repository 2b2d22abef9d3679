//! Key-pair authentication: the JWT Snowflake's login request accepts as `TOKEN` with
//! `AUTHENTICATOR=SNOWFLAKE_JWT`
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/authenticating#using-key-pair-authentication>):
//! RS256, `iss = ACCOUNT.USER.SHA256:<fingerprint>`, `sub = ACCOUNT.USER`, `iat`, and
//! `exp` at most one hour later; the fingerprint is the base64 SHA-256 of the public
//! key's DER (SubjectPublicKeyInfo). Account and user are upper-case; an account
//! locator with a region (`xy12345.us-east-1`) contributes only its first part.
//!
//! RSA and PEM handling come from the `rsa` crate, signing from `jsonwebtoken`.

use crate::error::{Error, Result};
use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::RsaPrivateKey;
use sha2::Digest;

/// A loaded private key with its public-key fingerprint.
pub struct KeyPair {
    der_pkcs1: Vec<u8>,
    /// `SHA256:<base64>`.
    pub fingerprint: String,
}

fn key_error(m: impl std::fmt::Display) -> Error {
    // Never echo key material: only what went wrong.
    Error::Config(format!("Snowflake private key: {m}"))
}

impl KeyPair {
    /// Read a PEM private key: PKCS#8 (`PRIVATE KEY`), encrypted PKCS#8
    /// (`ENCRYPTED PRIVATE KEY`, needs `passphrase`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str, passphrase: Option<&str>) -> Result<Self> {
        let key = if pem.contains("ENCRYPTED PRIVATE KEY") {
            let pass = passphrase.ok_or_else(|| {
                key_error("the key is encrypted; set PGP_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE")
            })?;
            RsaPrivateKey::from_pkcs8_encrypted_pem(pem, pass.as_bytes())
                .map_err(|_| key_error("cannot decrypt (wrong passphrase?)"))?
        } else if pem.contains("RSA PRIVATE KEY") {
            RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|_| key_error("not a valid PKCS#1 RSA key"))?
        } else {
            RsaPrivateKey::from_pkcs8_pem(pem)
                .map_err(|_| key_error("not a valid PKCS#8 RSA key"))?
        };
        let public = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| key_error("cannot encode the public key"))?;
        let digest = sha2::Sha256::digest(public.as_bytes());
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        let der_pkcs1 = key
            .to_pkcs1_der()
            .map_err(|_| key_error("cannot encode the private key"))?
            .as_bytes()
            .to_vec();
        Ok(KeyPair {
            der_pkcs1,
            fingerprint,
        })
    }

    /// The JWT for `account`/`user`, issued at `now` (seconds), valid 59 minutes.
    pub fn token(&self, account: &str, user: &str, now: i64) -> Result<String> {
        let (iss, sub) = claims_names(account, user, &self.fingerprint);
        let claims = serde_json::json!({"iss": iss, "sub": sub, "iat": now, "exp": now + 59 * 60});
        let key = jsonwebtoken::EncodingKey::from_rsa_der(&self.der_pkcs1);
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(|e| key_error(format!("cannot sign the JWT: {e}")))
    }
}

/// `(iss, sub)` of the token.
pub fn claims_names(account: &str, user: &str, fingerprint: &str) -> (String, String) {
    let account = account.split('.').next().unwrap_or(account).to_uppercase();
    let user = user.to_uppercase();
    (
        format!("{account}.{user}.{fingerprint}"),
        format!("{account}.{user}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};

    /// Runs openssl (as Snowflake's key-pair guide does) in `dir`; returns the file.
    fn openssl(dir: &std::path::Path, out: &str, args: &[&str]) -> String {
        let path = dir.join(out);
        let o = std::process::Command::new("openssl")
            .args(args)
            .arg("-out")
            .arg(&path)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn signs_a_token_that_verifies_with_the_public_key() {
        // Keys made by openssl: generating RSA keys in a debug build takes a minute.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pem = openssl(
            d,
            "k.p8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        );
        let enc = openssl(
            d,
            "k.enc.p8",
            &[
                "pkcs8",
                "-topk8",
                "-in",
                "k.p8",
                "-v2",
                "aes-256-cbc",
                "-iter",
                "1000",
                "-passout",
                "pass:pass phrase",
            ],
        );
        let pkcs1 = openssl(d, "k.rsa", &["rsa", "-in", "k.p8", "-traditional"]);
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        let kp = KeyPair::from_pem(&pem, None).unwrap();
        assert!(kp.fingerprint.starts_with("SHA256:"));
        let token = kp
            .token("myorg-acct.us-east-1", "pgp_service", 1_700_000_000)
            .unwrap();

        let public_pem = RsaPrivateKey::from_pkcs8_pem(&pem)
            .unwrap()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let dec = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.set_required_spec_claims(&["iss", "sub", "exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &dec, &v).unwrap();
        let c = data.claims;
        assert_eq!(c["sub"], "MYORG-ACCT.PGP_SERVICE");
        assert_eq!(
            c["iss"],
            format!("MYORG-ACCT.PGP_SERVICE.{}", kp.fingerprint)
        );
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            59 * 60
        );

        // the same key encrypted with a passphrase, or as PKCS#1, has the same fingerprint
        assert!(KeyPair::from_pem(&enc, None).is_err());
        let wrong = KeyPair::from_pem(&enc, Some("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(!wrong.contains("PRIVATE KEY"), "{wrong}");
        assert_eq!(
            KeyPair::from_pem(&enc, Some("pass phrase"))
                .unwrap()
                .fingerprint,
            kp.fingerprint
        );
        assert_eq!(
            KeyPair::from_pem(&pkcs1, None).unwrap().fingerprint,
            kp.fingerprint
        );
        assert!(KeyPair::from_pem("garbage", None).is_err());
    }
}
