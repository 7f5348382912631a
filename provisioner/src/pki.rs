//! The platform's private CA and its hosts' certificates, kept on the operator's machine in a
//! folder beside the env file (`pki/`: `ca.key`, `ca.crt`, `hosts/<host>.key|crt`; the folder
//! 0700, every key 0600), never pushed but for each host's own key, inside 0600 files.
//!
//! [`Pki::open`] makes the CA the first time, then (re)issues a host's certificate when it is
//! missing, names other names than the host's (its inventory name and address), is signed by
//! another CA, does not go with its key, or expires within [`RENEW_BEFORE_DAYS`]. Rendering then
//! only reads the result: the same certificate renders the same files, so a second plan is
//! empty, and a renewed one is a change of its files that restarts or reloads what uses them.
//!
//! Keys are ECDSA P-256, made by `rcgen` (ring); certificates are read back with `x509-parser`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::desired::Secret;

/// A host certificate is issued for this long.
pub const HOST_VALIDITY_DAYS: i64 = 397;
/// The CA's own certificate is made for this long.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// A host certificate that expires sooner than this is issued again.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// The folder beside the env file that holds the CA and the issued certificates.
pub const DIR_NAME: &str = "pki";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("cannot issue the certificate of {host}: {source}")]
    Issue { host: String, source: rcgen::Error },
    #[error("the platform CA in {dir}: {problem}")]
    Ca { dir: PathBuf, problem: String },
}

/// One host's certificate and key (PEM).
#[derive(Clone)]
pub struct HostCertificate {
    pub cert_pem: String,
    pub key_pem: Secret,
}

impl fmt::Debug for HostCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCertificate").finish_non_exhaustive()
    }
}

/// A certificate issued by [`Pki::open`], and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub host: String,
    pub reason: String,
}

/// The CA's certificate and every host's certificate and key.
#[derive(Debug, Clone)]
pub struct Pki {
    ca_pem: String,
    hosts: BTreeMap<String, HostCertificate>,
}

/// A host whose certificate is to be issued, and every name that certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Its inventory name: the certificate's file name and common name.
    pub host: String,
    /// Sorted, without duplicates.
    pub names: Vec<String>,
}

impl Subject {
    /// A host's certificate names its inventory name (when it is a DNS name) and its address.
    pub fn of(name: &str, address: &str) -> Self {
        let mut names = vec![address.to_owned()];
        if is_dns_name(name) {
            names.push(name.to_owned());
        }
        Self {
            host: name.to_owned(),
            names,
        }
        .sorted()
    }

    /// With one more name (an address the host is also reached at).
    pub fn also(mut self, name: &str) -> Self {
        self.names.push(name.to_owned());
        self.sorted()
    }

    fn sorted(mut self) -> Self {
        self.names.sort();
        self.names.dedup();
        self
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Pki {
    /// The CA and host certificates in `dir`, made or renewed as needed for `hosts`, at time
    /// `now`. Returns what was issued, to be told to the operator.
    pub fn open(
        dir: &Path,
        hosts: &[Subject],
        now: OffsetDateTime,
    ) -> Result<(Self, Vec<Issued>), PkiError> {
        make_private_dir(dir)?;
        make_private_dir(&dir.join("hosts"))?;
        let (ca_key_path, ca_cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        let mut issued = Vec::new();
        let ca = if ca_key_path.exists() || ca_cert_path.exists() {
            Ca::load(dir, &read(&ca_key_path)?, &read(&ca_cert_path)?)?
        } else {
            let ca = Ca::create(now).map_err(|source| PkiError::Issue {
                host: "the platform CA".into(),
                source,
            })?;
            write_private(&ca_key_path, ca.key.serialize_pem().as_bytes())?;
            write_private(&ca_cert_path, ca.pem.as_bytes())?;
            issued.push(Issued {
                host: "platform CA".into(),
                reason: format!("created in {}", dir.display()),
            });
            ca
        };
        let mut certificates = BTreeMap::new();
        for Subject { host: name, names } in hosts {
            let key_path = dir.join("hosts").join(format!("{name}.key"));
            let cert_path = dir.join("hosts").join(format!("{name}.crt"));
            let existing = match (key_path.exists(), cert_path.exists()) {
                (true, true) => Some((read(&key_path)?, read(&cert_path)?)),
                _ => None,
            };
            let reason = match &existing {
                None => Some("missing".to_owned()),
                Some((key, cert)) => ca.reissue_reason(key, cert, names, now),
            };
            let certificate = match (reason, existing) {
                (None, Some((key, cert))) => HostCertificate {
                    cert_pem: cert,
                    key_pem: Secret::new(key),
                },
                (reason, _) => {
                    let certificate =
                        ca.issue(name, names, now)
                            .map_err(|source| PkiError::Issue {
                                host: name.clone(),
                                source,
                            })?;
                    write_private(&key_path, certificate.key_pem.expose().as_bytes())?;
                    write_private(&cert_path, certificate.cert_pem.as_bytes())?;
                    issued.push(Issued {
                        host: name.clone(),
                        reason: reason.unwrap_or_default(),
                    });
                    certificate
                }
            };
            certificates.insert(name.clone(), certificate);
        }
        Ok((
            Self {
                ca_pem: ca.pem,
                hosts: certificates,
            },
            issued,
        ))
    }

    /// A CA and certificates made in memory, written nowhere: for rendering in tests.
    pub fn ephemeral(hosts: &[Subject]) -> Self {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::create(now).expect("rcgen makes a CA");
        let hosts = hosts
            .iter()
            .map(|subject| {
                (
                    subject.host.clone(),
                    ca.issue(&subject.host, &subject.names, now)
                        .expect("rcgen issues"),
                )
            })
            .collect();
        Self {
            ca_pem: ca.pem,
            hosts,
        }
    }

    /// The CA's certificate (PEM), which every host trusts alone.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate and key of the host `name`.
    pub fn host(&self, name: &str) -> Option<&HostCertificate> {
        self.hosts.get(name)
    }
}

/// The CA: its key, its certificate as stored, and an rcgen issuer made from both.
struct Ca {
    key: KeyPair,
    pem: String,
    issuer: Certificate,
}

impl Ca {
    fn create(now: OffsetDateTime) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "movie platform");
        name.push(DnType::CommonName, "movie platform CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            pem: issuer.pem(),
            key,
            issuer,
        })
    }

    fn load(dir: &Path, key_pem: &str, cert_pem: &str) -> Result<Self, PkiError> {
        let problem = |problem: String| PkiError::Ca {
            dir: dir.to_owned(),
            problem,
        };
        let key = KeyPair::from_pem(key_pem)
            .map_err(|err| problem(format!("ca.key is not a usable key: {err}")))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|err| problem(format!("ca.crt is not a CA certificate: {err}")))?;
        let parsed = parse(cert_pem).ok_or_else(|| problem("ca.crt is not PEM".into()))?;
        if parsed.public_key != key.public_key_der() {
            return Err(problem("ca.key does not go with ca.crt".into()));
        }
        let issuer = params
            .self_signed(&key)
            .map_err(|err| problem(format!("cannot sign with it: {err}")))?;
        Ok(Self {
            key,
            pem: cert_pem.to_owned(),
            issuer,
        })
    }

    fn issue(
        &self,
        host: &str,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<HostCertificate, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "movie platform");
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(HOST_VALIDITY_DAYS);
        let certificate = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(HostCertificate {
            cert_pem: certificate.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    }

    /// Why a stored certificate must be issued again, if it must.
    fn reissue_reason(
        &self,
        key_pem: &str,
        cert_pem: &str,
        names: &[String],
        now: OffsetDateTime,
    ) -> Option<String> {
        let Some(cert) = parse(cert_pem) else {
            return Some("its stored certificate is not PEM".into());
        };
        let Ok(key) = KeyPair::from_pem(key_pem) else {
            return Some("its stored key is not usable".into());
        };
        if cert.public_key != key.public_key_der() {
            return Some("its stored key does not go with its certificate".into());
        }
        if !cert.signed_by(&self.pem) {
            return Some("signed by another CA".into());
        }
        if cert.names != names {
            return Some(format!(
                "issued for {} instead of {}",
                cert.names.join(", "),
                names.join(", ")
            ));
        }
        let left = cert.not_after - now;
        if left < Duration::days(RENEW_BEFORE_DAYS) {
            return Some(format!(
                "expires {} (renewed {RENEW_BEFORE_DAYS} days ahead)",
                day(cert.not_after)
            ));
        }
        None
    }
}

/// What the platform reads in a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Its subject alternative names (DNS names and IP addresses), sorted.
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
    /// Its subject's common name.
    pub common_name: String,
    /// Its issuer's common name.
    pub issuer: String,
    /// SubjectPublicKeyInfo, DER.
    public_key: Vec<u8>,
    /// The whole certificate, DER.
    der: Vec<u8>,
}

impl CertificateFacts {
    /// Whether the CA certificate `ca_pem` signed it.
    pub fn signed_by(&self, ca_pem: &str) -> bool {
        let Ok((_, ca)) = parse_x509_pem(ca_pem.as_bytes()) else {
            return false;
        };
        let Ok(ca) = ca.parse_x509() else {
            return false;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&self.der) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// The first certificate of a PEM text, read.
pub fn parse(pem: &str) -> Option<CertificateFacts> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    let common_name = |name: &x509_parser::x509::X509Name| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    Some(CertificateFacts {
        names,
        not_after: cert.validity().not_after.to_datetime(),
        common_name: common_name(cert.subject()),
        issuer: common_name(cert.issuer()),
        public_key: cert.public_key().raw.to_vec(),
        der: pem.contents.clone(),
    })
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|octets| std::net::Ipv4Addr::from(octets).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|octets| std::net::Ipv6Addr::from(octets).to_string()),
        _ => None,
    }
}

/// A date as `2027-01-31`.
pub fn day(time: OffsetDateTime) -> String {
    let date = time.date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Whether a file's text is a certificate: plan describes it instead of showing its PEM.
pub fn is_certificate(text: &[u8]) -> bool {
    text.starts_with(b"-----BEGIN CERTIFICATE-----")
}

/// What plan says of a certificate file changing from `old` (absent: `None`) to `new`: for
/// whom and until when, and why it changes, never the PEM text.
pub fn describe_change(old: Option<&str>, new: &str) -> String {
    let Some(new) = parse(new) else {
        return "certificate changes".into();
    };
    let now = OffsetDateTime::now_utc();
    let names = |names: &[String]| {
        if names.is_empty() {
            "no name".to_owned()
        } else {
            names.join(", ")
        }
    };
    let wanted = if new.names.is_empty() {
        format!("{}, valid until {}", new.common_name, day(new.not_after))
    } else {
        format!(
            "{} ({}), valid until {}",
            new.common_name,
            names(&new.names),
            day(new.not_after)
        )
    };
    let Some(old) = old.and_then(parse) else {
        return format!("certificate for {wanted}");
    };
    let why = if old.names != new.names {
        format!("it was issued for {}", names(&old.names))
    } else if old.issuer != new.issuer {
        format!("it was issued by {}", old.issuer)
    } else if new.issuer == new.common_name && old.public_key != new.public_key {
        // The CA's own certificate: another key is another CA, whatever its name.
        "another CA of the same name".to_owned()
    } else if old.not_after - now < Duration::days(RENEW_BEFORE_DAYS) {
        format!("it expires {}", day(old.not_after))
    } else if old.public_key == new.public_key && old.der != new.der {
        "reissued".to_owned()
    } else {
        format!(
            "it is not the one issued (valid until {})",
            day(old.not_after)
        )
    };
    format!("certificate renewed: {why}; now {wanted}")
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|err| PkiError::File {
        path: path.to_owned(),
        problem: err.to_string(),
    })
}

fn make_private_dir(dir: &Path) -> Result<(), PkiError> {
    let error = |err: std::io::Error| PkiError::File {
        path: dir.to_owned(),
        problem: err.to_string(),
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(error)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(error)
}

/// Written whole under a temporary name, then renamed, created 0600: a key is never readable
/// by others, nor half-written.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let error = |err: std::io::Error| PkiError::File {
        path: path.to_owned(),
        problem: err.to_string(),
    };
    let temporary = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<Subject> {
        vec![
            Subject::of("gateway-vm", "192.168.56.10"),
            Subject::of("inventory-vm", "192.168.56.11"),
        ]
    }

    #[test]
    fn a_second_open_issues_nothing_and_keeps_every_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join(DIR_NAME);
        let now = OffsetDateTime::now_utc();
        let (first, issued) = Pki::open(&pki, &hosts(), now).expect("opens");
        let issued: Vec<&str> = issued.iter().map(|i| i.host.as_str()).collect();
        assert_eq!(issued, ["platform CA", "gateway-vm", "inventory-vm"]);
        let (second, issued) = Pki::open(&pki, &hosts(), now).expect("opens again");
        assert!(issued.is_empty(), "{issued:?}");
        assert_eq!(first.ca_pem(), second.ca_pem());
        let cert = |pki: &Pki| pki.host("inventory-vm").expect("issued").cert_pem.clone();
        assert_eq!(cert(&first), cert(&second));
        for key in ["ca.key", "hosts/gateway-vm.key", "hosts/inventory-vm.key"] {
            let mode = std::fs::metadata(pki.join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let mode = std::fs::metadata(&pki).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let facts = parse(&cert(&first)).expect("parses");
        assert_eq!(facts.names, ["192.168.56.11", "inventory-vm"]);
        assert_eq!(facts.common_name, "inventory-vm");
        assert!(facts.signed_by(first.ca_pem()));
    }

    #[test]
    fn a_certificate_is_reissued_when_expiring_renamed_or_from_another_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join(DIR_NAME);
        let now = OffsetDateTime::now_utc();
        Pki::open(&pki, &hosts(), now).expect("opens");

        // A year later, less than 30 days are left.
        let later = now + Duration::days(HOST_VALIDITY_DAYS - 10);
        let (_, issued) = Pki::open(&pki, &hosts(), later).expect("opens");
        assert_eq!(issued.len(), 2, "{issued:?}");
        assert!(issued[0].reason.starts_with("expires "), "{issued:?}");

        // A new address.
        let moved = vec![Subject::of("gateway-vm", "10.0.0.10")];
        let (_, issued) = Pki::open(&pki, &moved, later).expect("opens");
        assert_eq!(
            issued,
            [Issued {
                host: "gateway-vm".into(),
                reason: "issued for 192.168.56.10, gateway-vm instead of 10.0.0.10, gateway-vm"
                    .into()
            }]
        );

        // Another CA's certificate put in its place.
        let other = Pki::ephemeral(&moved);
        let stolen = other.host("gateway-vm").expect("issued");
        std::fs::write(pki.join("hosts/gateway-vm.crt"), &stolen.cert_pem).expect("write");
        std::fs::write(pki.join("hosts/gateway-vm.key"), stolen.key_pem.expose()).expect("write");
        let (reopened, issued) = Pki::open(&pki, &moved, later).expect("opens");
        assert_eq!(issued[0].reason, "signed by another CA");
        let cert = &reopened.host("gateway-vm").expect("issued").cert_pem;
        assert!(parse(cert).expect("parses").signed_by(reopened.ca_pem()));
        assert!(!parse(cert).expect("parses").signed_by(other.ca_pem()));
    }

    /// A host that becomes a Patroni member: its certificate must also name 127.0.0.1, so it is
    /// issued again, with the three names, and kept from then on.
    #[test]
    fn a_certificate_is_reissued_when_it_must_carry_one_more_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join(DIR_NAME);
        let now = OffsetDateTime::now_utc();
        Pki::open(&pki, &hosts(), now).expect("opens");
        let member = vec![Subject::of("inventory-vm", "192.168.56.11").also("127.0.0.1")];
        let (reopened, issued) = Pki::open(&pki, &member, now).expect("opens");
        assert_eq!(
            issued,
            [Issued {
                host: "inventory-vm".into(),
                reason: "issued for 192.168.56.11, inventory-vm instead of 127.0.0.1, 192.168.56.11, inventory-vm".into()
            }]
        );
        let cert = &reopened.host("inventory-vm").expect("issued").cert_pem;
        let names = parse(cert).expect("parses").names;
        assert_eq!(names, ["127.0.0.1", "192.168.56.11", "inventory-vm"]);
        let (_, issued) = Pki::open(&pki, &member, now).expect("opens again");
        assert!(issued.is_empty(), "{issued:?}");
    }

    #[test]
    fn a_ca_key_that_does_not_go_with_its_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join(DIR_NAME);
        Pki::open(&pki, &hosts(), OffsetDateTime::now_utc()).expect("opens");
        let other = KeyPair::generate().expect("key");
        std::fs::write(pki.join("ca.key"), other.serialize_pem()).expect("write");
        let error = Pki::open(&pki, &hosts(), OffsetDateTime::now_utc())
            .expect_err("refused")
            .to_string();
        assert!(error.contains("ca.key does not go with ca.crt"), "{error}");
    }

    #[test]
    fn plan_describes_a_certificate_without_its_pem() {
        let pki = Pki::ephemeral(&hosts());
        let cert = &pki.host("gateway-vm").expect("issued").cert_pem;
        let created = describe_change(None, cert);
        assert!(
            created.starts_with(
                "certificate for gateway-vm (192.168.56.10, gateway-vm), valid until "
            ),
            "{created}"
        );
        let other = Pki::ephemeral(&[Subject::of("gateway-vm", "10.1.1.1")]);
        let old = &other.host("gateway-vm").expect("issued").cert_pem;
        let renewed = describe_change(Some(old), cert);
        assert!(
            renewed.contains("it was issued for 10.1.1.1, gateway-vm"),
            "{renewed}"
        );
        assert!(!renewed.contains("BEGIN"), "{renewed}");
        // Another CA in place of the platform's.
        let ca = describe_change(Some(other.ca_pem()), pki.ca_pem());
        assert!(
            ca.starts_with(
                "certificate renewed: another CA of the same name; now movie platform CA, valid until "
            ),
            "{ca}"
        );
    }
}
