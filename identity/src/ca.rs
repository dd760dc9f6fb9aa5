//! The root CA: creation, reloading, and signing node certificates.

use crate::{IdentityError, MANAGER_SERVER_NAME, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// Who a certificate is issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Allowance for clocks that run a little behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How long a root CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600 + 5 * 24 * 3600);

impl Validity {
    /// Valid from a minute ago (clock skew) for `duration`.
    pub fn for_duration(duration: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after: now.checked_add(duration).unwrap_or(now),
        }
    }
}

/// The cluster's root certificate authority (certificate and private key).
pub struct RootCa {
    cert_pem: String,
    key_pem: String,
    digest: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// Creates a new self-signed root CA for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, IdentityError> {
        let key = new_key()?;
        let validity = Validity::for_duration(CA_VALIDITY);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cluster root CA");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_asn1_time(validity.not_before)?;
        params.not_after = to_asn1_time(validity.not_after)?;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Generation(format!("self-signing the root CA: {e}")))?;
        let cert_pem = cert.pem();
        let digest = sha256_hex(cert.der());
        let key_pem = key.serialize_pem();
        Ok(RootCa {
            cert_pem,
            key_pem,
            digest,
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let der = first_cert_der(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| IdentityError::InvalidKey(format!("the root CA key: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            IdentityError::InvalidCertificate(format!("the root CA certificate: {e}"))
        })?;
        if !parsed.is_ca() {
            return Err(IdentityError::InvalidCertificate(
                "the root CA certificate is not a CA certificate".into(),
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IdentityError::InvalidKey(
                "the root CA key does not belong to the root CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| {
            IdentityError::InvalidCertificate(format!("the root CA certificate: {e}"))
        })?;
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            digest: sha256_hex(der.as_ref()),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PEM. Secret: only managers hold it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Hex SHA-256 of the CA certificate's DER: what join tokens pin.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    /// Signs `csr_pem` (only its public key is used) for `subject`. Returns the certificate PEM.
    ///
    /// The subject, alternative names and extensions the CSR asks for are ignored: the
    /// certificate says exactly what `subject` says.
    pub fn issue(
        &self,
        csr_pem: &str,
        subject: &Subject,
        validity: Validity,
    ) -> Result<String, IdentityError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::InvalidCsr(e.to_string()))?;
        let rsa = is_rsa(csr.public_key.algorithm());
        csr.params = leaf_params(subject, validity, rsa)?;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| IdentityError::Generation(format!("signing a certificate: {e}")))?;
        Ok(cert.pem())
    }

    /// Generates a key pair and signs a certificate for it (the first manager's and admin's own).
    pub fn issue_keypair(
        &self,
        subject: &Subject,
        validity: Validity,
    ) -> Result<crate::Credentials, IdentityError> {
        let key = new_key()?;
        let params = leaf_params(subject, validity, false)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| IdentityError::Generation(format!("signing a certificate: {e}")))?;
        Ok(crate::Credentials {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Hex SHA-256 of a PEM certificate's DER.
pub fn ca_digest(cert_pem: &str) -> Result<String, IdentityError> {
    Ok(sha256_hex(first_cert_der(cert_pem)?.as_ref()))
}

/// A fresh key pair and a CSR for it: `(csr_pem, key_pem)`.
pub fn generate_csr() -> Result<(String, String), IdentityError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cluster node");
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IdentityError::Generation(format!("creating a CSR: {e}")))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| IdentityError::Generation(format!("encoding a CSR: {e}")))?;
    Ok((csr_pem, key.serialize_pem()))
}

/// Lowercase hex SHA-256 of some bytes.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first certificate in a PEM text.
pub(crate) fn first_cert_der(cert_pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| {
            IdentityError::InvalidCertificate("no CERTIFICATE block in the PEM text".into())
        })?
        .map_err(|e| IdentityError::InvalidCertificate(format!("unreadable PEM: {e}")))
}

fn new_key() -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Generation(format!("generating a P-256 key: {e}")))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte, so the length is stable
    SerialNumber::from_slice(&bytes)
}

/// A point in time as a certificate can carry it (whole seconds, years 1950 to 9999).
fn to_asn1_time(t: SystemTime) -> Result<time::OffsetDateTime, IdentityError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    // 1950-01-01 and 9999-12-31T23:59:59 UTC: the range of X.509 UTCTime/GeneralizedTime.
    const MIN: i64 = -631_152_000;
    const MAX: i64 = 253_402_300_799;
    if !(MIN..=MAX).contains(&secs) {
        return Err(IdentityError::Generation(format!(
            "validity time {secs} (Unix seconds) is outside what a certificate can carry"
        )));
    }
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| IdentityError::Generation(format!("validity time: {e}")))
}

fn is_rsa(alg: &rcgen::SignatureAlgorithm) -> bool {
    [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ]
    .iter()
    .any(|rsa| **rsa == *alg)
}

/// Parameters of a node or admin certificate: the identity lives in the subject.
fn leaf_params(
    subject: &Subject,
    validity: Validity,
    rsa: bool,
) -> Result<CertificateParams, IdentityError> {
    if subject.node_id.is_empty() || subject.cluster_id.is_empty() {
        return Err(IdentityError::Generation(
            "a certificate needs a non-empty node id and cluster id".into(),
        ));
    }
    if validity.not_after <= validity.not_before {
        return Err(IdentityError::Generation(
            "the validity period ends before it starts".into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, subject.node_id.as_str());
    dn.push(DnType::OrganizationalUnitName, subject.role.as_str());
    dn.push(DnType::OrganizationName, subject.cluster_id.as_str());
    params.distinguished_name = dn;
    if subject.role == Role::Manager {
        let name = MANAGER_SERVER_NAME
            .try_into()
            .map_err(|e| IdentityError::Generation(format!("the manager server name: {e}")))?;
        params.subject_alt_names = vec![SanType::DnsName(name)];
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    // Workers and admins may serve too one day (agents exposing an API): serverAuth is harmless.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = to_asn1_time(validity.not_before)?;
    params.not_after = to_asn1_time(validity.not_after)?;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_identity;
    use x509_parser::extensions::GeneralName;

    fn der(pem: &str) -> Vec<u8> {
        first_cert_der(pem).unwrap().as_ref().to_vec()
    }

    fn dns_sans(cert_der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
        match cert.subject_alternative_name().unwrap() {
            None => vec![],
            Some(san) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
        }
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RootCa>();
        send_sync::<crate::Credentials>();
    }

    #[test]
    fn root_ca_shape_and_reload() {
        let ca = RootCa::generate("cluster-7").unwrap();
        let cert_der = der(ca.cert_pem());
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert!(cert.is_ca());
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "cluster root CA"
        );
        assert_eq!(
            cert.subject()
                .iter_organization()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "cluster-7"
        );
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 86400);
        assert_eq!(years, 20);

        assert_eq!(ca.digest().len(), 64);
        assert_eq!(ca.digest(), sha256_hex(&cert_der));
        assert_eq!(ca_digest(ca.cert_pem()).unwrap(), ca.digest());

        let again = RootCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        // A certificate from the reloaded CA names the same issuer.
        let subject = Subject {
            node_id: "n1".into(),
            role: Role::Worker,
            cluster_id: "cluster-7".into(),
        };
        let creds = again
            .issue_keypair(&subject, Validity::for_duration(Duration::from_secs(60)))
            .unwrap();
        let leaf = der(&creds.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(leaf.issuer(), cert.subject());
        assert_eq!(creds.ca_cert_pem, ca.cert_pem());

        // A key that is not the CA's is refused, and so is garbage.
        let other = RootCa::generate("cluster-7").unwrap();
        assert!(matches!(
            RootCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(IdentityError::InvalidKey(_))
        ));
        assert!(RootCa::from_pem("nope", ca.key_pem()).is_err());
        assert!(RootCa::from_pem(ca.cert_pem(), "nope").is_err());
        // A leaf certificate is not a CA.
        assert!(RootCa::from_pem(&creds.cert_pem, &creds.key_pem).is_err());
        assert!(ca_digest("").is_err());
    }

    #[test]
    fn issue_from_csr_ignores_the_requested_subject() {
        let ca = RootCa::generate("cluster-a").unwrap();
        // A CSR that asks for a lot: another name, the manager role, another cluster, a SAN.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "evil");
        dn.push(DnType::OrganizationalUnitName, "manager");
        dn.push(DnType::OrganizationName, "cluster-b");
        params.distinguished_name = dn;
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

        let subject = Subject {
            node_id: "node-42".into(),
            role: Role::Worker,
            cluster_id: "cluster-a".into(),
        };
        let validity = Validity::for_duration(Duration::from_secs(7200));
        let cert_pem = ca.issue(&csr_pem, &subject, validity).unwrap();
        let cert_der = der(&cert_pem);

        let id = peer_identity(&cert_der).unwrap();
        assert_eq!(id.node_id, "node-42");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "cluster-a");
        assert_eq!(secs(id.not_after), secs(validity.not_after));
        assert!(
            dns_sans(&cert_der).is_empty(),
            "the CSR's SAN must not be copied"
        );

        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert_eq!(
            cert.validity().not_before.timestamp() as u64,
            secs(validity.not_before)
        );
        assert!(!cert.is_ca());
        // The certificate carries the CSR's public key.
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
    }

    #[test]
    fn manager_certificates_carry_the_server_name() {
        let ca = RootCa::generate("c").unwrap();
        let (csr, _key) = generate_csr().unwrap();
        let subject = Subject {
            node_id: "m1".into(),
            role: Role::Manager,
            cluster_id: "c".into(),
        };
        let cert = ca
            .issue(
                &csr,
                &subject,
                Validity::for_duration(Duration::from_secs(60)),
            )
            .unwrap();
        assert_eq!(dns_sans(&der(&cert)), vec![MANAGER_SERVER_NAME.to_string()]);
        let id = peer_identity(&der(&cert)).unwrap();
        assert_eq!(id.role, Role::Manager);

        let admin = Subject {
            node_id: "admin".into(),
            role: Role::Admin,
            cluster_id: "c".into(),
        };
        let creds = ca
            .issue_keypair(&admin, Validity::for_duration(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(creds.identity().unwrap().role, Role::Admin);
        assert!(dns_sans(&der(&creds.cert_pem)).is_empty());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let ca = RootCa::generate("c").unwrap();
        let subject = Subject {
            node_id: "n".into(),
            role: Role::Worker,
            cluster_id: "c".into(),
        };
        let v = Validity::for_duration(Duration::from_secs(60));
        let e = ca.issue("not a csr", &subject, v).unwrap_err();
        assert!(matches!(e, IdentityError::InvalidCsr(_)), "{e}");
        assert!(e.to_string().contains("certificate signing request"));
        // A certificate is not a CSR.
        assert!(matches!(
            ca.issue(ca.cert_pem(), &subject, v),
            Err(IdentityError::InvalidCsr(_))
        ));
        // A CSR whose signature does not verify.
        let (csr, _) = generate_csr().unwrap();
        let mut bytes =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        let n = bytes.len();
        bytes[n - 3] ^= 0x55;
        let tampered = pem_encode("CERTIFICATE REQUEST", &bytes);
        assert!(ca.issue(&tampered, &subject, v).is_err());

        let (csr, _) = generate_csr().unwrap();
        let empty = Subject {
            node_id: String::new(),
            ..subject.clone()
        };
        assert!(ca.issue(&csr, &empty, v).is_err());
        let backwards = Validity {
            not_before: v.not_after,
            not_after: v.not_before,
        };
        assert!(ca.issue(&csr, &subject, backwards).is_err());
        let far = Validity::for_duration(Duration::from_secs(u64::MAX / 4));
        assert!(ca.issue(&csr, &subject, far).is_err());
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use std::fmt::Write;
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let v = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(B64[((v >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
        }
        let _ = writeln!(out, "-----END {label}-----");
        out
    }
}
