//! mTLS for tonic: server configuration and client channels (mutual, or CA-pinned for joining).
//!
//! Clients use our own connector (TCP, then tokio-rustls with a config we build) so that the
//! whole rustls set-up is ours. The endpoint URI therefore has the `http://` scheme: with
//! `https://` tonic would insist on doing TLS itself. The stream it gets is TLS all the same.

use crate::ca::{first_cert_der, sha256_hex};
use crate::{Credentials, IdentityError, MANAGER_SERVER_NAME};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Installs rustls' ring provider as the process default. Call at the top of every `main`;
/// calling it twice is harmless.
///
/// The server side ([`server_tls`]) is built by tonic from the process default, so servers
/// need this; the client side never depends on it.
pub fn install_crypto_provider() {
    let _ = ring::default_provider().install_default();
}

/// Server TLS: presents our certificate (with the CA in the chain, so joining nodes can pin it)
/// and verifies client certificates against the root CA when presented (optional, so that
/// joining nodes without a certificate can reach the Ca service; handlers check roles).
pub fn server_tls(creds: &Credentials) -> Result<tonic::transport::ServerTlsConfig, IdentityError> {
    // Check the PEM now, so mistakes show here and not at the first handshake.
    first_cert_der(&creds.cert_pem)?;
    first_cert_der(&creds.ca_cert_pem)?;
    parse_key(&creds.key_pem)?;
    let chain = format!("{}\n{}", creds.cert_pem.trim_end(), creds.ca_cert_pem);
    let identity = tonic::transport::Identity::from_pem(chain, &creds.key_pem);
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(tonic::transport::Certificate::from_pem(&creds.ca_cert_pem))
        .client_auth_optional(true))
}

/// Connects with mutual TLS to a manager at `addr` (host:port), verifying its certificate
/// against our root CA and the name [`crate::MANAGER_SERVER_NAME`].
pub async fn connect(addr: &str, creds: &Credentials) -> Result<Channel, IdentityError> {
    let config = mtls_client_config(creds)?;
    connect_with(addr, config).await
}

/// Like [`connect`] but connects on first use and reconnects after failures.
pub fn channel_lazy(addr: &str, creds: &Credentials) -> Result<Channel, IdentityError> {
    let config = mtls_client_config(creds)?;
    let endpoint = endpoint(addr)?;
    Ok(endpoint.connect_with_connector_lazy(connector(addr, config)))
}

/// Connects without a client certificate, trusting the server only if its chain contains a CA
/// certificate whose SHA-256 is `ca_digest` and the leaf verifies against that CA.
pub async fn connect_pinned(addr: &str, ca_digest: &str) -> Result<Channel, IdentityError> {
    let digest = ca_digest.trim().to_ascii_lowercase();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdentityError::InvalidDigest(ca_digest.to_string()));
    }
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        digest,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    connect_with(addr, config).await
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn parse_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| IdentityError::InvalidKey(format!("cannot read the PEM private key: {e}")))
}

/// Roots = our CA; client certificate = ours; ALPN h2.
fn mtls_client_config(creds: &Credentials) -> Result<ClientConfig, IdentityError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(first_cert_der(&creds.ca_cert_pem)?)
        .map_err(|e| IdentityError::InvalidCertificate(format!("the root CA certificate: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::InvalidCertificate(format!("our certificate: {e}")))?;
    if chain.is_empty() {
        return Err(IdentityError::InvalidCertificate(
            "our certificate: no CERTIFICATE block".into(),
        ));
    }
    let key = parse_key(&creds.key_pem)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| IdentityError::Tls(format!("our certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The endpoint every client channel uses (scheme `http`: TLS is done by our connector).
fn endpoint(addr: &str) -> Result<Endpoint, IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    };
    if addr.contains('/') || addr.contains('@') {
        return Err(invalid("expected host:port".into()));
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| invalid(format!("expected host:port ({e})")))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(invalid("the port is missing: expected host:port".into()));
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Dials `addr` over TCP (no Nagle) and runs the TLS handshake with `config`, verifying the
/// server as [`MANAGER_SERVER_NAME`]. The URI tonic passes in is ignored: it is `addr`.
fn connector(
    addr: &str,
    config: ClientConfig,
) -> impl tower::Service<
    http::Uri,
    Response = TlsIo,
    Error = std::io::Error,
    Future = impl Future<Output = Result<TlsIo, std::io::Error>> + Send,
> + Send
+ 'static {
    let addr = addr.to_string();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    tower::service_fn(move |_uri: http::Uri| {
        let addr = addr.clone();
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(MANAGER_SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

async fn connect_with(addr: &str, config: ClientConfig) -> Result<Channel, IdentityError> {
    let endpoint = endpoint(addr)?;
    endpoint
        .connect_with_connector(connector(addr, config))
        .await
        .map_err(|e| IdentityError::Connect {
            addr: addr.to_string(),
            message: error_chain(&e),
        })
}

/// An error and its sources, joined with ": " (tonic's own message is only "transport error").
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = vec![err];
    while let Some(e) = chain.last().and_then(|e| e.source()) {
        chain.push(e);
    }
    // rustls shows our own certificate errors in debug form; find one and show its message.
    let nicer = chain.iter().find_map(|e| readable_rustls(*e));
    let mut parts: Vec<String> = Vec::new();
    for e in chain {
        let mut text = e.to_string();
        if let Some((raw, nice)) = &nicer {
            text = text.replace(raw.as_str(), nice);
        }
        // Some layers repeat their source's text in their own: keep each message once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// For a rustls certificate error of ours (wrapped in an `io::Error` by tokio-rustls): its text
/// as rustls shows it and as we want it shown.
fn readable_rustls(e: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    match inner.downcast_ref::<rustls::Error>()? {
        error @ rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            Some((
                error.to_string(),
                format!("invalid peer certificate: {other}"),
            ))
        }
        _ => None,
    }
}

/// Trusts a server whose presented chain contains the CA pinned by a join token (by SHA-256 of
/// its DER), and whose leaf verifies against that CA alone (name, validity, signatures).
#[derive(Debug)]
struct PinnedCaVerifier {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| sha256_hex(c.as_ref()) == self.digest);
        let Some(ca) = pinned else {
            return Err(cert_error(format!(
                "the server's CA does not match the join token (expected CA digest {})",
                self.digest
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| cert_error(format!("the pinned CA certificate is unusable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| cert_error(format!("the pinned CA certificate is unusable: {e}")))?;
        // The pinned CA is now a trust anchor: do not offer it as an intermediate too.
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate error with our own message (sent to the server as a bad-certificate alert).
fn cert_error(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(std::io::Error::other(message)),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_are_errors() {
        assert!(matches!(
            endpoint("no-port"),
            Err(IdentityError::InvalidAddress { .. })
        ));
        assert!(matches!(
            endpoint("a b:1"),
            Err(IdentityError::InvalidAddress { .. })
        ));
        assert!(matches!(
            endpoint("http://x:1"),
            Err(IdentityError::InvalidAddress { .. })
        ));
        assert!(endpoint("127.0.0.1:4242").is_ok());
        assert!(endpoint("[::1]:4242").is_ok());
        assert!(endpoint("manager-1.example:4242").is_ok());
    }
}
