//! Server-side state kept beside the store: principals with their token hashes, and the camera
//! registry. Small JSON documents, each replaced atomically (temporary file, fsync, rename,
//! fsync of the directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Roles a principal may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Technical rights: accounts, settings, holds, retention, decommission. No video rights
    /// outside its unit without a declared justification (TN 6.2).
    Admin,
    /// Reads its unit's cameras.
    Operator,
    /// Reads cameras of its sectors.
    Viewer,
    /// Reads the audit log and nothing else.
    Auditor,
    /// Publishes video to its cameras only.
    Ingest,
}

impl Role {
    /// Parses a role name as the command line and the API spell it.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "auditor" => Ok(Role::Auditor),
            "ingest" => Ok(Role::Ingest),
            other => Err(format!("unknown role {other:?} (admin, operator, viewer, auditor, ingest)")),
        }
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Ingest => "ingest",
        }
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Who the principal is (a person or a service), as the audit log names it.
    pub name: String,
    /// Administrative unit the principal belongs to.
    pub unit: String,
    /// What it may do.
    pub roles: Vec<Role>,
    #[serde(default)]
    /// Sectors (of its unit) whose cameras it may read.
    pub sectors: Vec<String>,
    /// Cameras an ingest credential may publish to.
    #[serde(default)]
    pub cameras: Vec<String>,
}

impl Principal {
    /// Whether it holds role `r`.
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }
}

/// A token as stored: only the SHA-256 of the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public identifier (for revocation and the audit log).
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    /// Who the token speaks for.
    pub principal: Principal,
    /// Creation time, microseconds since the epoch.
    pub created_us: i64,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// A camera in the registry (TN 7.1, 12.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraInfo {
    /// Camera identifier (the stream's key in the store).
    pub id: String,
    /// Unit that owns the camera and its video.
    pub owning_unit: String,
    /// Sectors the camera serves.
    pub sectors: Vec<String>,
    /// Where it is mounted.
    pub location: String,
    /// Make and model.
    pub model: String,
    /// QCVN 135 certification status.
    pub certification: String,
    /// Last change to this record, microseconds since the epoch.
    pub metadata_updated_us: i64,
}

/// The token file (`tokens.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tokens {
    /// Every token ever issued, revoked ones included.
    pub tokens: Vec<TokenRecord>,
}

/// The camera registry file (`cameras.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cameras {
    /// Cameras by identifier.
    pub cameras: BTreeMap<String, CameraInfo>,
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    storage_core::signing::hex(&Sha256::digest(bytes))
}

/// A new random token secret: `cvt_` and 64 hex digits (256 bits).
pub fn new_secret() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| format!("random source failed: {e}"))?;
    Ok(format!("cvt_{}", storage_core::signing::hex(&b)))
}

/// Loads a JSON document, or the default if it does not exist yet. A document other local
/// users can read is refused (token hashes and the camera registry are the owner's alone).
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} has mode {mode:04o}: it must be readable by its owner only; fix it with: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{} is damaged: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces a JSON document atomically and durably, through the engine's own crash-atomic
/// write (temporary file created 0600, fsync, rename, fsync of the directory, created 0700).
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    use storage_core::io::{StdVfs, Vfs};
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    StdVfs.create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    storage_core::io::write_file_atomic(&StdVfs, &dir, path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
