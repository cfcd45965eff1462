//! TLS on the public listener: one certificate per tracking host chosen by
//! SNI, HTTP/2 or HTTP/1.1 by ALPN, and certificates reloaded from disk when
//! their files change, so a renewed certificate is served without a restart.
//!
//! A certificate that fails to load at start-up stops the service; one that
//! fails on reload is logged and the previous one stays in service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("cannot read private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {message}")]
    Pair { cert: PathBuf, key: PathBuf, message: String },
    #[error("tls is configured without any certificate")]
    NoCertificate,
}

/// One certificate and the host names it serves.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loads a PEM certificate chain and its private key.
pub fn load(spec: &CertSpec) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&spec.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certificate { path: spec.cert.clone(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: spec.cert.clone(),
            message: "no PEM certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&spec.key)
        .map_err(|e| TlsError::Key { path: spec.key.clone(), message: e.to_string() })?;
    let signer = any_supported_type(&key)
        .map_err(|e| TlsError::Key { path: spec.key.clone(), message: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| TlsError::Pair {
        cert: spec.cert.clone(),
        key: spec.key.clone(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[derive(Debug)]
struct Entry {
    spec: CertSpec,
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

/// Picks the certificate for the SNI host name; the first configured
/// certificate answers clients that send no name or an unknown one.
#[derive(Debug)]
pub struct Certificates {
    entries: RwLock<Vec<Entry>>,
    by_host: HashMap<String, usize>,
}

impl Certificates {
    pub fn load(specs: Vec<CertSpec>) -> Result<Arc<Certificates>, TlsError> {
        if specs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let mut by_host = HashMap::new();
        let mut entries = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            for host in &spec.hosts {
                by_host.insert(host.to_ascii_lowercase(), i);
            }
            let key = load(&spec)?;
            entries.push(Entry { stamps: (stamp(&spec.cert), stamp(&spec.key)), key, spec });
        }
        Ok(Arc::new(Certificates { entries: RwLock::new(entries), by_host }))
    }

    /// Reloads every certificate whose files changed; returns how many did.
    pub fn reload(&self) -> usize {
        let mut reloaded = 0;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries.iter_mut() {
            let stamps = (stamp(&entry.spec.cert), stamp(&entry.spec.key));
            if stamps == entry.stamps {
                continue;
            }
            entry.stamps = stamps;
            match load(&entry.spec) {
                Ok(key) => {
                    entry.key = key;
                    reloaded += 1;
                    tracing::info!(cert = %entry.spec.cert.display(), "certificate reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate not reloaded; the previous one stays in service")
                }
            }
        }
        reloaded
    }

    /// A TLS acceptor configuration offering HTTP/2 and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Checks the files every `every` until the process ends.
    pub fn watch(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let this = self.clone();
                // Reading files is blocking I/O: keep it off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || this.reload()).await;
            }
        });
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index =
            hello.server_name().and_then(|name| self.by_host.get(&name.to_ascii_lowercase())).copied();
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        Some(entries[index.unwrap_or(0)].key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::RootCertStore;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "waymark test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    /// Writes a certificate for `host` signed by the CA, named `cn`.
    fn write_leaf(ca: &Ca, host: &str, cn: &str, dir: &Path) -> CertSpec {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let spec = CertSpec {
            hosts: vec![host.to_owned()],
            cert: dir.join(format!("{host}.pem")),
            key: dir.join(format!("{host}.key")),
        };
        std::fs::write(&spec.cert, cert.pem()).unwrap();
        std::fs::write(&spec.key, key.serialize_pem()).unwrap();
        spec
    }

    /// Handshakes with SNI `host` over an in-memory pipe; returns the
    /// common name of the certificate served and the ALPN chosen.
    async fn handshake(certs: &Arc<Certificates>, ca: &Ca, host: &str) -> (String, Option<Vec<u8>>) {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let mut client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
        let server = tokio::spawn(async move {
            let mut s = acceptor.accept(b).await.unwrap();
            s.write_all(b"ok").await.unwrap();
            s.flush().await.unwrap();
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let mut c = connector.connect(ServerName::try_from(host.to_owned()).unwrap(), a).await.unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.unwrap();
        server.await.unwrap();
        let (_, conn) = c.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].clone();
        let text = String::from_utf8_lossy(leaf.as_ref()).into_owned();
        let cn = ["first-a", "second-a", "only-b"].into_iter().find(|cn| text.contains(cn)).unwrap_or("?");
        (cn.to_owned(), conn.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn sni_picks_the_host_certificate_and_reload_serves_the_renewed_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let a = write_leaf(&ca, "t.sender-a.example", "first-a", dir.path());
        let b = write_leaf(&ca, "t.sender-b.example", "only-b", dir.path());
        let certs = Certificates::load(vec![a.clone(), b]).unwrap();

        assert_eq!(
            handshake(&certs, &ca, "t.sender-a.example").await,
            ("first-a".into(), Some(b"h2".to_vec()))
        );
        assert_eq!(handshake(&certs, &ca, "t.sender-b.example").await.0, "only-b");
        assert_eq!(certs.reload(), 0, "nothing changed");

        // Renew A's certificate on disk; the next handshake gets it.
        write_leaf(&ca, "t.sender-a.example", "second-a", dir.path());
        assert_eq!(certs.reload(), 1);
        assert_eq!(handshake(&certs, &ca, "t.sender-a.example").await.0, "second-a");

        // A broken renewal keeps the certificate in service.
        std::fs::write(&a.cert, "not a certificate").unwrap();
        assert_eq!(certs.reload(), 0);
        assert_eq!(handshake(&certs, &ca, "t.sender-a.example").await.0, "second-a");
    }

    #[test]
    fn bad_files_are_named_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let a = write_leaf(&ca, "a.example", "first-a", dir.path());
        let b = write_leaf(&ca, "b.example", "only-b", dir.path());
        let missing = CertSpec { cert: dir.path().join("nope.pem"), ..a.clone() };
        assert!(Certificates::load(vec![missing]).unwrap_err().to_string().contains("nope.pem"));
        let mismatched = CertSpec { key: b.key.clone(), ..a.clone() };
        assert!(
            Certificates::load(vec![mismatched])
                .unwrap_err()
                .to_string()
                .contains("do not form a usable pair")
        );
        assert!(matches!(Certificates::load(vec![]), Err(TlsError::NoCertificate)));
    }
}
