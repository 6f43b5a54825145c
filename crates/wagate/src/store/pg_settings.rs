//! How every part of wagate reaches PostgreSQL (the store, the engine's pool, the leases,
//! `doctor`, `migrate`): the URL's settings with wagate's timeouts, and TLS as libpq does it.
//!
//! TLS: with `sslmode=prefer` (the default) the connection is encrypted when the server
//! offers it; `sslmode=require` refuses a server that does not. Without `sslrootcert` the
//! server's certificate is not checked (libpq's behaviour for these modes): the traffic is
//! encrypted, but a machine in the middle could pose as the server. `sslrootcert=FILE` (PEM,
//! the CA the server's certificate must chain to) checks the certificate and the server's
//! name, and implies `sslmode=require`, so a CA is never given in vain.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// How long a connection attempt or an unanswered request may take before the connection
/// is given up (a node cut off from the database must notice, not hang).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on every connection wagate opens: a transaction left open by a node that was cut
/// off is ended by the server, so the row locks it held (a session's lease, share-locked by
/// a fenced write) never keep another node from taking the session over.
pub const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=5000";

/// A database URL as wagate uses it.
#[derive(Clone)]
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("ssl_mode", &self.config.get_ssl_mode()).finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads `url` (`postgres://user:password@host:port/db?sslmode=...&sslrootcert=...`).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |e: String| StoreError::Database(format!("the database URL is not valid: {e}"));
        let (url, root_cert) = take_root_cert(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(NETWORK_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("wagate");
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(5));
        config.tcp_user_timeout(NETWORK_TIMEOUT);
        config.options(SESSION_OPTIONS);
        let tls = match root_cert {
            Some(path) => {
                config.ssl_mode(SslMode::Require);
                checked_tls(&path).map_err(bad)?
            }
            None => unchecked_tls(),
        };
        Ok(Self { config, tls: MakeRustlsConnect::new(tls) })
    }

    /// The same settings for the blocking client (the store's threads).
    pub fn blocking(&self) -> ::postgres::Config {
        ::postgres::Config::from(self.config.clone())
    }
}

/// Takes libpq's `sslrootcert` out of the URL (tokio-postgres does not know it).
fn take_root_cert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), None) };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                root_cert = Some(crate::percent::decode(path));
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (url, root_cert)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the server's certificate against the CA in `path` (PEM), and its name.
fn checked_tls(path: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        roots.add(certificate).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path} holds no certificate"));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Encrypts without checking who the server is (no `sslrootcert`, as libpq).
fn unchecked_tls() -> rustls::ClientConfig {
    let provider = provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth()
}

/// Takes any certificate, yet still checks that the server holds its key (the handshake's
/// signatures), so the session keys are agreed with whoever presented it.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_testing::TestDatabase;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(take_root_cert("postgres://h/db"), ("postgres://h/db".into(), None));
        assert_eq!(
            take_root_cert("postgres://h/db?sslmode=require&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3"),
            ("postgres://h/db?sslmode=require&connect_timeout=3".into(), Some("/etc/ca.pem".into()))
        );
        assert_eq!(
            take_root_cert("postgres://h/db?sslrootcert=ca.pem"),
            ("postgres://h/db".into(), Some("ca.pem".into()))
        );
    }

    /// Whether the connection of `client` is encrypted, as the server sees it.
    async fn encrypted(settings: &Settings) -> Result<bool, tokio_postgres::Error> {
        let (client, connection) = settings.config.connect(settings.tls.clone()).await?;
        tokio::spawn(connection);
        let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?;
        Ok(row.get(0))
    }

    #[tokio::test]
    async fn connections_are_encrypted_and_a_wrong_ca_is_refused() {
        let database = TestDatabase::create().await;
        let server_ssl = {
            let settings = Settings::parse(&format!("{}?sslmode=disable", database.url())).unwrap();
            assert!(!encrypted(&settings).await.unwrap(), "sslmode=disable is plain");
            let (client, connection) = settings.config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client.query_one("SHOW ssl", &[]).await.unwrap().get::<_, String>(0) == "on"
        };
        if !server_ssl {
            // A server without TLS: `require` must refuse it rather than go plain.
            let settings = Settings::parse(&format!("{}?sslmode=require", database.url())).unwrap();
            assert!(encrypted(&settings).await.is_err(), "require refuses a server without TLS");
            return;
        }
        for mode in ["prefer", "require"] {
            let settings = Settings::parse(&format!("{}?sslmode={mode}", database.url())).unwrap();
            assert!(encrypted(&settings).await.unwrap(), "sslmode={mode} encrypts");
        }
        // A CA that did not sign the server's certificate: refused, not silently plain.
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["elsewhere.test".to_string()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        let url = format!("{}?sslrootcert={}", database.url(), path.display());
        let settings = Settings::parse(&url).unwrap();
        assert_eq!(settings.config.get_ssl_mode(), SslMode::Require, "a CA implies require");
        let refused = encrypted(&settings).await.expect_err("the server's certificate is not the CA's");
        assert!(format!("{refused:?}").to_lowercase().contains("certificate"), "{refused:?}");
        let missing = Settings::parse(&format!("{}?sslrootcert=/nonexistent/ca.pem", database.url()));
        assert!(matches!(missing, Err(StoreError::Database(e)) if e.contains("/nonexistent/ca.pem")));
    }
}
