//! Snowflake connection settings: `PGP_WAREHOUSE_URL=snowflake://USER@ACCOUNT/DATABASE
//! ?warehouse=WH&role=ROLE` plus environment variables for the secret and the stage.
//!
//! Optional URL parameters: `host`, `port`, `protocol=http` (to reach an emulator),
//! `swap=rename`, `copy=staged` and `arrays=variant` (the emulator fallbacks described
//! in `mod.rs`), and `publish=job` (the services: an append's publish runs as an
//! asynchronous Snowflake job after the loader answered; see `protocol::publish`).
//! Secrets: `PGP_SNOWFLAKE_PRIVATE_KEY_PATH` (PEM, PKCS#8 or PKCS#1, optionally
//! encrypted with `PGP_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE`) or `PGP_SNOWFLAKE_PASSWORD`.
//! Stage: `PGP_SNOWFLAKE_STAGE` (an existing stage) or one pgp creates from the storage
//! URL (`gs://b` -> `gcs://b/`) and `PGP_SNOWFLAKE_STORAGE_INTEGRATION`;
//! `PGP_SNOWFLAKE_STAGE_URL` overrides the URL (e.g. a `file://` folder for fakesnow).

use crate::error::{Error, Result};
use crate::params::Env;
use secrecy::SecretString;

/// How pgp logs in.
#[derive(Clone)]
pub enum Auth {
    /// Key-pair authentication: a JWT signed with the user's RSA key.
    KeyPair {
        pem: SecretString,
        passphrase: Option<SecretString>,
    },
    Password(SecretString),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::KeyPair { .. } => "KeyPair(<redacted>)",
            Auth::Password(_) => "Password(<redacted>)",
        })
    }
}

/// How a run's new table replaces its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapMode {
    /// `ALTER TABLE <new> SWAP WITH t`: atomic for readers (production).
    Swap,
    /// Rename the target away, rename the new table in: for emulators
    /// without `SWAP WITH`; readers may briefly see no table.
    Rename,
}

/// How a staged object reaches its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// One `COPY INTO t FROM (SELECT $1::type, ..., metadata FROM @stage)` (production).
    Transform,
    /// `COPY INTO` an all-text scratch table, then `INSERT ... SELECT` with the casts and
    /// metadata, in one transaction: for emulators without COPY transformations.
    Staged,
}

/// Where staged objects are, as Snowflake sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// An existing stage, by (qualified) name.
    Named(String),
    /// A stage pgp creates as `<DATABASE>._PGP.PGP_STAGE`.
    Create {
        url: String,
        integration: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct SnowflakeConfig {
    /// Account identifier as in the URL (`ORG-ACCOUNT` or a locator).
    pub account: String,
    pub user: String,
    pub database: String,
    pub warehouse: Option<String>,
    pub role: Option<String>,
    /// `https://ACCOUNT.snowflakecomputing.com` or the emulator's base URL.
    pub base_url: String,
    pub auth: Auth,
    pub stage: Stage,
    pub swap: SwapMode,
    pub copy: CopyMode,
    /// The warehouse reports `ARRAY` columns as `VARIANT` in its information schema
    /// (fakesnow does; Snowflake reports `ARRAY`): the schema check expects `VARIANT`.
    pub arrays_as_variant: bool,
    /// `publish=job`: an append run's publish is submitted as an asynchronous
    /// multi-statement request ([`crate::warehouse::AppendJobs`]) and the loader answers
    /// busy until a redelivery finds it done, so no request waits for an insert that
    /// grows with the run (the services, under Pub/Sub's ack deadline). Default
    /// (`publish=request`): the publish runs inside the request, as `pgp tap` wants it
    /// (and as fakesnow, one statement per request, can run it).
    pub append_jobs: bool,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '$')
}

impl SnowflakeConfig {
    /// Parse `url` with secrets and stage settings from `env`; `storage_url` is the
    /// store the extractors write (`gs://bucket`), the default stage location.
    pub fn from_url(url: &str, env: &dyn Env, storage_url: &str) -> Result<Self> {
        let bad = |m: &str| Error::Config(format!("PGP_WAREHOUSE_URL (snowflake): {m}"));
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if u.scheme() != "snowflake" {
            return Err(bad("expected snowflake://USER@ACCOUNT/DATABASE"));
        }
        if u.password().is_some() {
            return Err(bad(
                "put no password in the URL; use PGP_SNOWFLAKE_PASSWORD or a key pair",
            ));
        }
        let user = url::form_urlencoded::parse(u.username().as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        let account = u.host_str().unwrap_or_default().to_string();
        let database = u.path().trim_start_matches('/').to_string();
        for (what, v) in [
            ("user", &user),
            ("account", &account),
            ("database", &database),
        ] {
            if !name_ok(v) {
                return Err(bad(&format!("missing or invalid {what} {v:?}")));
            }
        }
        let mut warehouse = None;
        let mut role = None;
        let mut host = None;
        let mut port = None;
        let mut protocol = "https".to_string();
        let mut swap = SwapMode::Swap;
        let mut copy = CopyMode::Transform;
        let mut arrays_as_variant = false;
        let mut append_jobs = false;
        for (k, v) in u.query_pairs() {
            let v = v.into_owned();
            match k.as_ref() {
                "warehouse" if name_ok(&v) => warehouse = Some(v),
                "role" if name_ok(&v) => role = Some(v),
                "host" => host = Some(v),
                "port" => port = Some(v.parse::<u16>().map_err(|_| bad("port is not a number"))?),
                "protocol" if v == "http" || v == "https" => protocol = v,
                "swap" if v == "rename" => swap = SwapMode::Rename,
                "swap" if v == "swap" => swap = SwapMode::Swap,
                "copy" if v == "staged" => copy = CopyMode::Staged,
                "copy" if v == "transform" => copy = CopyMode::Transform,
                "arrays" if v == "variant" => arrays_as_variant = true,
                "arrays" if v == "array" => arrays_as_variant = false,
                "publish" if v == "job" => append_jobs = true,
                "publish" if v == "request" => append_jobs = false,
                other => return Err(bad(&format!("unknown or invalid parameter {other}={v:?}"))),
            }
        }
        let host = host.unwrap_or_else(|| format!("{account}.snowflakecomputing.com"));
        let base_url = match port {
            Some(p) => format!("{protocol}://{host}:{p}"),
            None => format!("{protocol}://{host}"),
        };
        let var = |n: &str| env.var(n).filter(|v| !v.is_empty());
        let auth = match (
            var("PGP_SNOWFLAKE_PRIVATE_KEY_PATH"),
            var("PGP_SNOWFLAKE_PASSWORD"),
        ) {
            (Some(path), _) => {
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    Error::Config(format!("PGP_SNOWFLAKE_PRIVATE_KEY_PATH {path}: {e}"))
                })?;
                Auth::KeyPair {
                    pem: SecretString::from(pem),
                    passphrase: var("PGP_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE").map(SecretString::from),
                }
            }
            (None, Some(p)) => Auth::Password(SecretString::from(p)),
            (None, None) => {
                return Err(Error::Config(
                    "Snowflake needs PGP_SNOWFLAKE_PRIVATE_KEY_PATH (key pair) or PGP_SNOWFLAKE_PASSWORD"
                        .into(),
                ))
            }
        };
        let stage = match var("PGP_SNOWFLAKE_STAGE") {
            Some(name) if name_ok(&name) => Stage::Named(name),
            Some(name) => {
                return Err(Error::Config(format!(
                    "PGP_SNOWFLAKE_STAGE {name:?} is not a stage name"
                )))
            }
            None => {
                let url = match var("PGP_SNOWFLAKE_STAGE_URL") {
                    Some(u) => u,
                    None => match storage_url.strip_prefix("gs://") {
                        Some(b) => format!("gcs://{}/", b.trim_end_matches('/')),
                        None => {
                            return Err(Error::Config(format!(
                                "Snowflake loads from GCS: PGP_STORAGE_URL {storage_url:?} is not gs://; \
                                 set PGP_SNOWFLAKE_STAGE or PGP_SNOWFLAKE_STAGE_URL"
                            )))
                        }
                    },
                };
                if url.contains('\'') || url.contains('\\') {
                    return Err(Error::Config(format!(
                        "stage URL {url:?} has a quote or backslash"
                    )));
                }
                let integration = var("PGP_SNOWFLAKE_STORAGE_INTEGRATION");
                if let Some(i) = &integration {
                    if !name_ok(i) {
                        return Err(Error::Config(format!(
                            "PGP_SNOWFLAKE_STORAGE_INTEGRATION {i:?} is not a name"
                        )));
                    }
                }
                if url.starts_with("gcs://") && integration.is_none() {
                    return Err(Error::Config(
                        "a gcs:// stage needs PGP_SNOWFLAKE_STORAGE_INTEGRATION (or name an existing PGP_SNOWFLAKE_STAGE)".into(),
                    ));
                }
                Stage::Create { url, integration }
            }
        };
        Ok(SnowflakeConfig {
            account,
            user,
            database,
            warehouse,
            role,
            base_url,
            auth,
            stage,
            swap,
            copy,
            arrays_as_variant,
            append_jobs,
        })
    }

    /// The URL without secrets, for messages.
    pub fn display(&self) -> String {
        format!(
            "snowflake://{}@{}/{} ({})",
            self.user, self.account, self.database, self.base_url
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_documented_url() {
        let e = env(&[
            ("PGP_SNOWFLAKE_PASSWORD", "pw"),
            ("PGP_SNOWFLAKE_STORAGE_INTEGRATION", "PGP_GCS"),
        ]);
        let c = SnowflakeConfig::from_url(
            "snowflake://PGP_SERVICE@MYORG-ACCT/RAW?warehouse=LOADING&role=PGP_LOADER",
            &e,
            "gs://my-bucket",
        )
        .unwrap();
        assert_eq!(
            (c.user.as_str(), c.account.as_str(), c.database.as_str()),
            ("PGP_SERVICE", "MYORG-ACCT", "RAW")
        );
        assert_eq!(c.warehouse.as_deref(), Some("LOADING"));
        assert_eq!(c.role.as_deref(), Some("PGP_LOADER"));
        assert_eq!(c.base_url, "https://MYORG-ACCT.snowflakecomputing.com");
        assert_eq!(
            c.stage,
            Stage::Create {
                url: "gcs://my-bucket/".into(),
                integration: Some("PGP_GCS".into())
            }
        );
        assert_eq!((c.swap, c.copy), (SwapMode::Swap, CopyMode::Transform));
        assert!(!format!("{:?}", c.auth).contains("pw"));
    }

    #[test]
    fn emulator_settings_and_errors() {
        let e = env(&[
            ("PGP_SNOWFLAKE_PASSWORD", "pw"),
            ("PGP_SNOWFLAKE_STAGE_URL", "file:///tmp/x/"),
        ]);
        let c = SnowflakeConfig::from_url(
            "snowflake://u@acct/DB?host=127.0.0.1&port=8765&protocol=http&swap=rename&copy=staged",
            &e,
            "file:///tmp/x",
        )
        .unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:8765");
        assert_eq!((c.swap, c.copy), (SwapMode::Rename, CopyMode::Staged));
        assert!(!c.append_jobs, "the publish runs in the request by default");
        let job = |q: &str| {
            SnowflakeConfig::from_url(&format!("snowflake://u@acct/DB?{q}"), &e, "gs://b")
                .map(|c| c.append_jobs)
        };
        assert!(job("publish=job").unwrap());
        assert!(!job("publish=request").unwrap());
        assert!(job("publish=later").is_err());
        for bad in [
            "snowflake://u:secret@acct/DB",
            "snowflake://u@acct/",
            "snowflake://u@acct/DB?colour=red",
            "snowflake://u@acct/DB;drop",
        ] {
            let err = SnowflakeConfig::from_url(bad, &e, "gs://b")
                .unwrap_err()
                .to_string();
            assert!(!err.contains("secret"), "{err}");
        }
        let none = env(&[]);
        assert!(SnowflakeConfig::from_url("snowflake://u@a/DB", &none, "gs://b").is_err());
        let no_integration = env(&[("PGP_SNOWFLAKE_PASSWORD", "pw")]);
        assert!(
            SnowflakeConfig::from_url("snowflake://u@a/DB", &no_integration, "gs://b").is_err()
        );
    }
}
