//! TLS to PostgreSQL, with libpq's `sslmode` meanings, on rustls (no OpenSSL).
//!
//! The manifest's `connection_info` has no TLS fields (GitLab's format is read
//! unchanged), so TLS is configured by `PGP_PG_SSLMODE` (`disable`, `prefer` — the
//! default, as in libpq —, `require`, `verify-full`) and `PGP_PG_SSLROOTCERT` (a PEM
//! file of trusted roots for `verify-full`; without it the Mozilla roots are trusted).
//! `prefer` and `require` encrypt without authenticating the server, exactly like
//! libpq; only `verify-full` checks the certificate chain and the host name.

use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// libpq's `sslmode`, the subset pgp supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise; the server is not authenticated.
    #[default]
    Prefer,
    /// TLS or fail; the server is not authenticated.
    Require,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl std::str::FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-full" => Ok(SslMode::VerifyFull),
            o => Err(Error::SourceConfig(format!(
                "PGP_PG_SSLMODE={o:?}: use disable, prefer, require or verify-full"
            ))),
        }
    }
}

/// TLS settings of a source connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub mode: SslMode,
    /// Trusted roots for `verify-full` (PEM); Mozilla's roots when absent.
    pub root_cert: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate but still checks the handshake signatures: encryption
/// without authentication, what libpq's `require` gives.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsConfig {
    /// The rustls client configuration for this mode (`None` for `disable`).
    pub fn client_config(&self) -> Result<Option<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::SourceConfig(format!("TLS: {e}")))?;
        Ok(match self.mode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
                    .with_no_client_auth(),
            ),
            SslMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                match &self.root_cert {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                            .map_err(|e| {
                                Error::SourceConfig(format!(
                                    "PGP_PG_SSLROOTCERT {}: {e}",
                                    path.display()
                                ))
                            })?;
                        let (added, _) = roots.add_parsable_certificates(certs);
                        if added == 0 {
                            return Err(Error::SourceConfig(format!(
                                "PGP_PG_SSLROOTCERT {}: no usable certificate",
                                path.display()
                            )));
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                Some(builder.with_root_certificates(roots).with_no_client_auth())
            }
        })
    }
}
