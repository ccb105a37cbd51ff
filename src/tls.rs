//! TLS with rustls (the ring provider): a listener's certificate chain and key, read from
//! PEM files the config names, and the CA a client of the admin API trusts. Both sides
//! offer HTTP/2 and HTTP/1.1 by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Installs rustls' ring provider for the process (for the upstream client, the
/// listeners and the admin client alike). Safe to call more than once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A listener's certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{setting} = \"{}\": {reason}", path.display())]
pub struct TlsError {
    /// The config key that names the file, e.g. `server.tls_cert`.
    pub setting: String,
    pub path: PathBuf,
    pub reason: String,
}

/// A TLS acceptor for a listener whose config keys start with `prefix` (`server.tls` or
/// `server.admin_tls`): reads and checks the files now, so a bad one stops the start.
pub fn acceptor(files: &TlsFiles, prefix: &str) -> Result<TlsAcceptor, TlsError> {
    install_crypto();
    let cert_error = |reason: String| TlsError {
        setting: format!("{prefix}_cert"),
        path: files.cert.clone(),
        reason,
    };
    let key_error = |reason: String| TlsError {
        setting: format!("{prefix}_key"),
        path: files.key.clone(),
        reason,
    };
    let chain = certificates(&files.cert).map_err(cert_error)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_error(pem_reason(&e)))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| key_error(format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificates a client trusts from a PEM file (the CA that signed the admin API's
/// certificate); an error names the file and what is wrong with it.
pub fn trusted(ca_file: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let found = certificates(ca_file)
        .map_err(|reason| format!("the CA file {}: {reason}", ca_file.display()))?;
    found
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der)
                .map_err(|e| format!("the CA file {}: {e}", ca_file.display()))
        })
        .collect()
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let found = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_reason(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_reason(&e))?;
    if found.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(found)
}

fn pem_reason(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => format!("cannot be read: {e}"),
        Error::NoItemsFound => "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into(),
        other => format!("is not valid PEM: {other}"),
    }
}
