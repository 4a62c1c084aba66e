//! Certificates for the mutual-TLS tests, made fresh with `rcgen`: a CA, a
//! node's server certificate (for 127.0.0.1 and [`NODE_DNS`]) and a
//! controller's client certificate (for [`CONTROLLER_DNS`]) signed by it,
//! the same two signed by an unrelated CA, and two of the CA for other
//! names. Written as PEM files, as `--tls-*` take them.

use std::path::Path;

use floe_driver::csi::remote::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// The DNS name in the node certificates besides 127.0.0.1.
pub const NODE_DNS: &str = "node.floe.test";
/// The DNS name of the controller's client certificate (`--peer-name`'s
/// default).
pub const CONTROLLER_DNS: &str = "controller";

/// The TLS files of each side.
pub struct Pki {
    /// A node: server certificate of the CA, trusts the CA.
    pub node: TlsFiles,
    /// The controller: client certificate of the CA, trusts the CA.
    pub controller: TlsFiles,
    /// A node whose certificate the other CA signed (it trusts the CA).
    pub rogue_node: TlsFiles,
    /// A controller whose certificate the other CA signed (it trusts the CA).
    pub rogue_controller: TlsFiles,
    /// A client certificate of the CA, for another name than the
    /// controller's.
    pub intruder: TlsFiles,
    /// A server certificate of the CA for another name only (not
    /// 127.0.0.1, not [`NODE_DNS`]).
    pub other_node: TlsFiles,
    /// The replication identities of two sites ([`SITE_DNS`]): each
    /// streams as a client and listens as a server.
    pub sites: [TlsFiles; 2],
}

/// The DNS names of the two sites' replication identities.
pub const SITE_DNS: [&str; 2] = ["site-a.floe.test", "site-b.floe.test"];

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate and key for `sans` (IP addresses or DNS names).
    fn leaf(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<(String, String)> {
        self.leaf_for(name, sans, vec![usage])
    }

    /// [`Ca::leaf`] for several usages.
    fn leaf_for(
        &self,
        name: &str,
        sans: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, (cert, key): (String, String), ca: &Ca) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join(format!("{name}-ca.crt")),
    };
    std::fs::write(&files.cert, cert)?;
    std::fs::write(&files.key, key)?;
    std::fs::write(&files.ca, &ca.pem)?;
    Ok(files)
}

/// Makes both CAs and the four sides' files in `dir`.
pub fn pki(dir: &Path) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca = Ca::new("floe test CA")?;
    let other = Ca::new("unrelated CA")?;
    let server = ExtendedKeyUsagePurpose::ServerAuth;
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    let node_sans = ["127.0.0.1", NODE_DNS];
    Ok(Pki {
        node: write(dir, "node", ca.leaf("node", &node_sans, server.clone())?, &ca)?,
        controller: write(
            dir,
            "controller",
            ca.leaf("controller", &[CONTROLLER_DNS], client.clone())?,
            &ca,
        )?,
        rogue_node: write(dir, "rogue-node", other.leaf("node", &node_sans, server.clone())?, &ca)?,
        rogue_controller: write(
            dir,
            "rogue-controller",
            other.leaf("controller", &[CONTROLLER_DNS], client.clone())?,
            &ca,
        )?,
        intruder: write(
            dir,
            "intruder",
            ca.leaf("intruder", &["intruder.floe.test"], client.clone())?,
            &ca,
        )?,
        other_node: write(
            dir,
            "other-node",
            ca.leaf("other", &["other.floe.test"], server.clone())?,
            &ca,
        )?,
        sites: [
            write(
                dir,
                "site-a",
                ca.leaf_for("site-a", &[SITE_DNS[0]], vec![server.clone(), client.clone()])?,
                &ca,
            )?,
            write(
                dir,
                "site-b",
                ca.leaf_for("site-b", &[SITE_DNS[1]], vec![server, client])?,
                &ca,
            )?,
        ],
    })
}
