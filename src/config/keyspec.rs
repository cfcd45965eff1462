//! Where the global key ring comes from, and loading it: a step of
//! start-up, because it reads a file or creates the development ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConfigError;
use crate::keys::{Key, KeyId, KeyRing};

/// The key ring as configured, before start-up loads it.
#[derive(Debug)]
pub enum KeySpec {
    /// `keys`: already parsed, since it is inline; shared, never copied.
    Inline { setting: String, ring: Arc<KeyRing> },
    /// `keys_file`.
    File { setting: String, path: PathBuf },
    /// Neither: the development ring in the data directory.
    Development(PathBuf),
}

/// Where the loaded ring came from; a development ring is never for production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    Development(PathBuf),
}

impl KeySpec {
    /// Loads the ring: reads the key file (refusing one others can read), or
    /// reads the development ring, creating it (mode 600) on first use.
    pub fn load(&self) -> Result<(Arc<KeyRing>, KeySource), ConfigError> {
        match self {
            KeySpec::Inline { ring, .. } => Ok((ring.clone(), KeySource::Configured)),
            KeySpec::File { setting, path } => {
                check_private(setting, path)?;
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::KeyFile {
                    setting: setting.clone(),
                    path: path.clone(),
                    error,
                })?;
                let ring = KeyRing::parse(&text)
                    .map_err(|error| ConfigError::Keys { setting: setting.clone(), error })?;
                Ok((Arc::new(ring), KeySource::Configured))
            }
            KeySpec::Development(path) => {
                let text =
                    dev_keys(path).map_err(|error| ConfigError::DevKeys { path: path.clone(), error })?;
                let ring = KeyRing::parse(&text)
                    .map_err(|error| ConfigError::Keys { setting: path.display().to_string(), error })?;
                Ok((Arc::new(ring), KeySource::Development(path.clone())))
            }
        }
    }
}

/// A key file anyone on the host can read is a leaked key.
fn check_private(setting: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|error| ConfigError::KeyFile {
        setting: setting.into(),
        path: path.into(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && !meta.is_symlink() && !is_kubernetes_secret(path) {
        return Err(ConfigError::KeyFileMode { path: path.into(), mode });
    }
    Ok(())
}

/// Kubernetes mounts secrets through symlinks into a `..data` directory,
/// with a mode the pod cannot choose; the mount itself is private.
fn is_kubernetes_secret(path: &Path) -> bool {
    path.parent().is_some_and(|dir| dir.join("..data").exists())
}

/// Reads the development ring, creating it (mode 600) on first use.
fn dev_keys(path: &Path) -> std::io::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let entry = Key::generate_entry(&KeyId::new("dev").expect("valid id"));
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            writeln!(f, "# Development key ring made by waymark: never use it in production.\n{entry}")?;
            Ok(entry)
        }
        Err(e) => Err(e),
    }
}
