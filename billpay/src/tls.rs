//! `billpay up --tls`: a dev CA and the certificates it signs, made on the first
//! `up --tls` in `<data-dir>/tls/` (keys 0600) and kept after.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// The dev PKI's files.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate clients trust (`grpcurl -cacert`).
    pub ca: PathBuf,
    /// Both services' server certificate (localhost, 127.0.0.1) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate for mutual TLS to billing (payment-svc, `up`, grpcurl).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl DevPki {
    pub fn ensure(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("tls");
        let pki = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        if [
            &pki.ca,
            &pki.server_cert,
            &pki.server_key,
            &pki.client_cert,
            &pki.client_key,
        ]
        .iter()
        .all(|path| path.exists())
        {
            return Ok(pki);
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "billpay dev CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let issue =
            |name: &str, purpose: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
                let mut params = CertificateParams::new(vec![name.to_owned()])?;
                params
                    .subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
                params.distinguished_name.push(DnType::CommonName, name);
                params.extended_key_usages = vec![purpose];
                let key = KeyPair::generate()?;
                let cert = params.signed_by(&key, &ca, &ca_key)?;
                Ok((cert.pem(), key.serialize_pem()))
            };
        let (server_cert, server_key) = issue("localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) = issue("payment-svc", ExtendedKeyUsagePurpose::ClientAuth)?;
        write(&pki.ca, &ca.pem(), false)?;
        write(&pki.server_cert, &server_cert, false)?;
        write(&pki.server_key, &server_key, true)?;
        write(&pki.client_cert, &client_cert, false)?;
        write(&pki.client_key, &client_key, true)?;
        Ok(pki)
    }

    /// The client TLS settings for billing: the CA, and the client certificate.
    pub fn billing_client(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca)?))
            .identity(Identity::from_pem(
                std::fs::read(&self.client_cert)?,
                std::fs::read(&self.client_key)?,
            )))
    }
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// How `up`'s own clients (the demo account, the notifier) reach billing.
#[derive(Debug, Clone)]
pub struct BillingEndpoint {
    pub addr: std::net::SocketAddr,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl BillingEndpoint {
    pub async fn connect(&self) -> anyhow::Result<tonic::transport::Channel> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", self.addr))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect().await?)
    }
}
