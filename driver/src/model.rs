//! Validated values from outside: ids and host paths are parsed into these
//! once, at the edge that receives them, and what holds one cannot hold a
//! path traversal.
//!
//! - [`ObjectId`]: the id of a volume, snapshot or group snapshot. The ids
//!   floe hands out are made by `csi::params::id_for_name` (the name itself
//!   when it is a safe file name, else `~` and a hash), so every id it ever
//!   made parses, and nothing that parses can name another directory.
//! - [`BlockSize`]: a tracking block size, the one definition of its range
//!   (the StorageClass parameter, `node.proto` and the daemon's API all
//!   check through it).
//! - [`PeerName`]: the DNS name a mutual-TLS peer's certificate must carry
//!   for the other side to serve it or trust it.
//! - [`error_chain`]: an error and its causes on one line, for logs and
//!   messages (here because every module may import this one).
//! - [`HostPath`]: a path kubelet gives (staging and target paths): absolute
//!   and already in canonical form (no `.`, `..` or empty component); the
//!   node service also refuses one that passes through a symlink
//!   ([`HostPath::check_no_symlink`]), so a mount never lands elsewhere.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest id (the CSI spec's limit on names).
pub const MAX_ID: usize = 128;
/// Longest host path.
pub const MAX_PATH: usize = 4096;

/// A value from outside that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: expected {expected}")]
pub struct Invalid {
    /// The field it came in.
    pub field: &'static str,
    /// What it held (at most 64 characters of it).
    pub value: String,
    /// What would be accepted.
    pub expected: String,
}

fn invalid(field: &'static str, value: &str, expected: impl Into<String>) -> Invalid {
    Invalid {
        field,
        value: value.chars().take(64).collect(),
        expected: expected.into(),
    }
}

/// The id of a volume, a snapshot or a group snapshot: 1 to 128 of
/// `A-Z a-z 0-9 . _ - ~`, not starting with `.` or `-`. It is a single
/// file-name component that is neither `.` nor `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(String);

impl ObjectId {
    /// Parses the id held by `field`.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Invalid> {
        let ok = !value.is_empty()
            && value.len() <= MAX_ID
            && !value.starts_with(['.', '-'])
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b));
        if !ok {
            return Err(invalid(
                field,
                value,
                format!("an id this driver made: 1 to {MAX_ID} of A-Z a-z 0-9 . _ - ~, not starting with . or -"),
            ));
        }
        Ok(ObjectId(value.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An absolute path in canonical form, as kubelet's staging and target
/// paths are: starts with `/`, no `.`, `..` or empty component, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath(PathBuf);

impl HostPath {
    /// Parses the path held by `field`.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Invalid> {
        let expected = "an absolute path without . or .. components, repeated or trailing slashes";
        if value.len() > MAX_PATH || value.contains('\0') {
            return Err(invalid(field, value, format!("at most {MAX_PATH} bytes without NUL")));
        }
        let Some(rest) = value.strip_prefix('/') else {
            return Err(invalid(field, value, expected));
        };
        if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(invalid(field, value, expected));
        }
        Ok(HostPath(PathBuf::from(value)))
    }

    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// Refuses the path when it or one of its existing ancestors is a
    /// symlink (the part that does not exist yet is created by the caller,
    /// as plain directories). `field` names it in the error.
    pub fn check_no_symlink(&self, field: &'static str) -> Result<(), Invalid> {
        for prefix in self.0.ancestors().collect::<Vec<_>>().into_iter().rev() {
            match std::fs::symlink_metadata(prefix) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(invalid(
                        field,
                        &self.0.display().to_string(),
                        format!("a path without symlinks ({} is one)", prefix.display()),
                    ))
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for HostPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A tracking block size: a power of two from [`BlockSize::MIN`] (4 KiB)
/// to [`BlockSize::MAX`] (the engine's limit, 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSize(u64);

impl BlockSize {
    /// Smallest tracking block.
    pub const MIN: u64 = 4096;
    /// Largest tracking block.
    pub const MAX: u64 = floe_engine::types::MAX_BLOCK_SIZE as u64;

    /// `bytes` when it is a block size, else `None`.
    pub fn new(bytes: u64) -> Option<Self> {
        (bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes)).then_some(BlockSize(bytes))
    }

    /// The size in bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The name a mutual-TLS peer must show: a DNS name (one or more labels of
/// `a-z 0-9 -`), matched against the DNS subject alternative names of the
/// peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerName(rustls_pki_types::DnsName<'static>);

impl PeerName {
    /// Parses `value`, given in `field`.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Invalid> {
        rustls_pki_types::DnsName::try_from(value)
            .map(|n| PeerName(n.to_owned()))
            .map_err(|_| invalid(field, value, "a DNS name, e.g. controller or floe-controller.example"))
    }

    /// The name as a subject name to verify a certificate against.
    pub fn subject(&self) -> rustls_pki_types::ServerName<'static> {
        rustls_pki_types::ServerName::DnsName(self.0.clone())
    }

    /// Whether `cert` (DER) carries this name among its DNS subject
    /// alternative names. Its signature is not checked here: the TLS
    /// handshake did that.
    pub fn is_in(&self, cert: &rustls_pki_types::CertificateDer<'_>) -> bool {
        webpki::EndEntityCert::try_from(cert)
            .and_then(|c| c.verify_is_valid_for_subject_name(&self.subject()))
            .is_ok()
    }
}

impl std::str::FromStr for PeerName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        PeerName::parse("--peer-name", s)
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

/// An error and its causes on one line, outermost first (`a: b: c`); a cause
/// whose text its parent already ends with is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_components() {
        for good in ["pvc-1", "snap.2", "~0123abcdef", "A_b-c.d", &"x".repeat(MAX_ID)] {
            assert!(ObjectId::parse("id", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            ".hidden",
            "-flag",
            "a\0b",
            "sp ace",
            "../../../../tmp/x",
            &"x".repeat(MAX_ID + 1),
        ] {
            assert!(ObjectId::parse("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_paths_are_absolute_and_canonical() {
        for good in ["/var/lib/kubelet/pods/x/volumes/y", "/a"] {
            assert!(HostPath::parse("p", good).is_ok(), "{good}");
        }
        for bad in ["", "/", "rel/x", "./x", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b"] {
            assert!(HostPath::parse("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinked_paths_are_refused() {
        let dir = tempfile::Builder::new()
            .prefix("floe-model")
            .tempdir()
            .expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let parse = |p: &Path| HostPath::parse("p", &p.display().to_string()).expect("parses");
        assert!(parse(&real.join("not-yet")).check_no_symlink("p").is_ok());
        assert!(parse(&link).check_no_symlink("p").is_err());
        assert!(parse(&link.join("below")).check_no_symlink("p").is_err());
    }
}
