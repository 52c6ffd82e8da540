//! The cluster's secrets on disk: the cluster secret (every credential derives from it),
//! the admin token, the oracle token and the session key (customer session tokens are
//! signed with it; only the shops hold it, so sessions survive a failover between them).
//!
//! There are no built-in secrets: a public default is no secret. The first `concord up`
//! (or any role started without the secret it needs) creates random ones in
//! `<data-dir>/secrets/` — a directory of mode 0700 holding one file per secret, each mode
//! 0600 — and every later start reuses them, so tokens survive restarts. `concord token`
//! prints them for the operator. An environment variable or flag still overrides each one.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::RngCore;

/// File name of the cluster secret inside the secrets directory.
pub const CLUSTER_SECRET_FILE: &str = "cluster-secret";
/// File name of the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// File name of the oracle token.
pub const ORACLE_TOKEN_FILE: &str = "oracle-token";
/// File name of the shops' session-signing key.
pub const SESSION_KEY_FILE: &str = "session-key";

/// The secrets of one cluster.
#[derive(Clone)]
pub struct Secrets {
    /// Key of every credential.
    pub cluster_secret: String,
    /// Shop administration, promotion.
    pub admin_token: String,
    /// `ReportOutcome`.
    pub oracle_token: String,
    /// Signs customer session tokens (the shops only).
    pub session_key: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

/// Where the secrets of a data directory live.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

impl Secrets {
    /// Reads the secrets under `data_dir`, creating any that is missing.
    pub fn load_or_create(data_dir: &Path) -> io::Result<Self> {
        let dir = dir(data_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            cluster_secret: load_or_create_one(&dir.join(CLUSTER_SECRET_FILE))?,
            admin_token: load_or_create_one(&dir.join(ADMIN_TOKEN_FILE))?,
            oracle_token: load_or_create_one(&dir.join(ORACLE_TOKEN_FILE))?,
            session_key: load_or_create_one(&dir.join(SESSION_KEY_FILE))?,
        })
    }

    /// Reads the secrets under `data_dir`; `NotFound` when they were never created.
    pub fn load(data_dir: &Path) -> io::Result<Self> {
        let dir = dir(data_dir);
        Ok(Self {
            cluster_secret: read_one(&dir.join(CLUSTER_SECRET_FILE))?,
            admin_token: read_one(&dir.join(ADMIN_TOKEN_FILE))?,
            oracle_token: read_one(&dir.join(ORACLE_TOKEN_FILE))?,
            session_key: read_one(&dir.join(SESSION_KEY_FILE))?,
        })
    }
}

/// 32 random bytes from the OS, hex-encoded.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn read_one(path: &Path) -> io::Result<String> {
    let text = fs::read_to_string(path)?;
    let value = text.trim();
    if value.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(value.to_owned())
}

fn load_or_create_one(path: &Path) -> io::Result<String> {
    match read_one(path) {
        Ok(value) => return Ok(value),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let value = random_token();
    // create_new: two processes racing to create the same secret cannot both win; the
    // loser reads the winner's.
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(value.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            Ok(value)
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => read_one(path),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Created once with private modes, then reused unchanged.
    #[test]
    fn created_private_then_reused() {
        let data = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            Secrets::load(data.path()).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        let first = Secrets::load_or_create(data.path()).expect("create");
        assert_eq!(first.cluster_secret.len(), 64);
        assert_ne!(first.admin_token, first.oracle_token);
        assert_ne!(first.session_key, first.admin_token);
        let again = Secrets::load_or_create(data.path()).expect("reuse");
        assert_eq!(again.admin_token, first.admin_token);
        assert_eq!(again.cluster_secret, first.cluster_secret);
        let dir_mode = fs::metadata(dir(data.path()))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        for file in [
            CLUSTER_SECRET_FILE,
            ADMIN_TOKEN_FILE,
            ORACLE_TOKEN_FILE,
            SESSION_KEY_FILE,
        ] {
            let mode = fs::metadata(dir(data.path()).join(file))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
