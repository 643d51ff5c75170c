//! `camvault.toml`: the server's configuration, the store configuration and KEK provider it
//! names. Every key is optional; an empty file is the built-in defaults (the values in the
//! sample `camvault.toml`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use storage_core::keys::{KekProvider, Pkcs11KekProvider};
use storage_core::{FlushPolicy, StoreConfig};

/// `camvault.toml` (see the sample in the repository root). Every key is optional: an empty
/// file is the built-in defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Data directory: segments, catalog, control and audit logs.
    #[serde(default = "default_data")]
    pub data_dir: PathBuf,
    /// Key directory (key store, signing key, audit anchor) [default: <data_dir>/keys].
    #[serde(default)]
    pub key_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Retention of a camera with no setting of its own, days (30 at least).
    #[serde(default = "default_retention")]
    pub retention_days_default: u32,
    /// How often buffered frames are made durable, milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// How often the retention sweep runs, seconds.
    #[serde(default = "default_sweep_s")]
    pub sweep_interval_s: u64,
    /// Server certificate chain (PEM); with `tls_key`, the server speaks TLS only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// Prometheus metrics address; empty disables.
    #[serde(default = "default_metrics")]
    pub metrics_listen: String,
    /// Where the key-encryption keys live (`[kek]`).
    #[serde(default)]
    pub kek: KekConfig,
}

/// The `[kek]` table: which provider holds the key-encryption keys that wrap every data key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekConfig {
    /// Which provider holds the KEKs.
    #[serde(default)]
    pub provider: KekProviderKind,
    /// File provider: directory of the KEK files [default: <data_dir>/kek].
    pub dir: Option<PathBuf>,
    /// PKCS#11: the module (`.so`) to load.
    pub module: Option<PathBuf>,
    /// PKCS#11: label of the token holding the KEKs.
    pub token_label: Option<String>,
    /// PKCS#11: file holding the user PIN (one line). The PIN itself is never logged nor put
    /// in an error message.
    pub pin_file: Option<PathBuf>,
    /// PKCS#11: name of the environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// PKCS#11: label prefix of this store's KEK objects, so that stores can share a token.
    pub label_prefix: Option<String>,
}

/// Where the KEKs are kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KekProviderKind {
    /// KEK files on a local volume (development; SECURITY.md "Crypto-erase").
    #[default]
    File,
    /// A hardware security module over PKCS#11.
    Pkcs11,
}

/// KEK object labels on a PKCS#11 token when `label_prefix` is not set.
const PKCS11_LABEL_PREFIX_DEFAULT: &str = "camvault-kek-";

/// Largest PIN file read: a PIN is a few dozen characters.
const PIN_FILE_BYTES_MAX: u64 = 1024;

fn default_metrics() -> String {
    "127.0.0.1:9464".into()
}

pub(crate) fn default_data() -> PathBuf {
    PathBuf::from("./camvault-data")
}
pub(crate) fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_retention() -> u32 {
    30
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_sweep_s() -> u64 {
    3600
}

/// The configuration file's values, or the defaults without one.
pub fn load(path: Option<&Path>) -> Result<ServerConfig, String> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        }
        // The same defaults as an empty file: one place states them.
        None => toml::from_str("").map_err(|e| format!("the built-in defaults: {e}")),
    }
}

/// Parses a configuration file's text and checks what can be checked without opening anything
/// (the `[kek]` table's combination of settings).
pub fn parse(text: &str) -> Result<ServerConfig, String> {
    let cfg: ServerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    check_kek(&cfg.kek)?;
    Ok(cfg)
}

/// The store's configuration from the server's: the one place serve and demo get it from.
pub fn store_config(cfg: &ServerConfig) -> StoreConfig {
    let mut sc = StoreConfig::new(&cfg.data_dir);
    if let Some(k) = &cfg.key_dir {
        sc.key_dir = k.clone();
    }
    if let Some(d) = &cfg.kek.dir {
        sc.kek_dir = d.clone();
    }
    sc.retention_days_default = cfg.retention_days_default;
    sc.flush = FlushPolicy::Interval(Duration::from_millis(cfg.flush_interval_ms));
    sc.sweep_interval = Some(Duration::from_secs(cfg.sweep_interval_s));
    sc
}

/// Refuses a `[kek]` table whose settings cannot work together, naming the setting.
pub fn check_kek(k: &KekConfig) -> Result<(), String> {
    match k.provider {
        KekProviderKind::File => {
            let pkcs11_only = [
                ("module", k.module.is_some()),
                ("token_label", k.token_label.is_some()),
                ("pin_file", k.pin_file.is_some()),
                ("pin_env", k.pin_env.is_some()),
                ("label_prefix", k.label_prefix.is_some()),
            ];
            if let Some((key, _)) = pkcs11_only.iter().find(|(_, set)| *set) {
                return Err(format!("kek.{key} is a PKCS#11 setting: set kek.provider = \"pkcs11\" or remove it"));
            }
        }
        KekProviderKind::Pkcs11 => {
            if k.dir.is_some() {
                return Err("kek.dir is for the file provider: a PKCS#11 token keeps its KEKs itself".into());
            }
            k.module.as_ref().ok_or("kek.provider = \"pkcs11\" needs kek.module (the PKCS#11 .so)")?;
            k.token_label.as_deref().ok_or("kek.provider = \"pkcs11\" needs kek.token_label")?;
            match (&k.pin_file, &k.pin_env) {
                (None, None) => return Err("kek.provider = \"pkcs11\" needs kek.pin_file or kek.pin_env".into()),
                (Some(_), Some(_)) => return Err("kek.pin_file and kek.pin_env are alternatives: set one".into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The KEK provider `[kek]` names; `None` is the file provider in `StoreConfig::kek_dir`.
pub fn kek_provider(k: &KekConfig) -> Result<Option<Arc<dyn KekProvider>>, String> {
    check_kek(k)?;
    match k.provider {
        KekProviderKind::File => Ok(None),
        KekProviderKind::Pkcs11 => {
            let (Some(module), Some(label)) = (k.module.as_ref(), k.token_label.as_deref()) else {
                return Err("kek.provider = \"pkcs11\" needs kek.module and kek.token_label".into());
            };
            let pin = pkcs11_pin(k)?;
            let prefix = k.label_prefix.as_deref().unwrap_or(PKCS11_LABEL_PREFIX_DEFAULT);
            let hsm = Pkcs11KekProvider::open(module, label, &pin, prefix)
                .map_err(|e| format!("cannot open PKCS#11 token {label:?} through {}: {e}", module.display()))?;
            tracing::info!(module = %module.display(), token = label, prefix, "KEKs on a PKCS#11 token");
            Ok(Some(Arc::new(hsm)))
        }
    }
}

/// The token's user PIN from `pin_file` or `pin_env`. Messages name where the PIN was looked
/// for, never the PIN.
pub fn pkcs11_pin(k: &KekConfig) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::Read as _;
    let mut pin = zeroize::Zeroizing::new(String::new());
    match (&k.pin_file, &k.pin_env) {
        (Some(path), None) => {
            let f = std::fs::File::open(path).map_err(|e| format!("cannot read kek.pin_file {}: {e}", path.display()))?;
            {
                use std::os::unix::fs::PermissionsExt;
                if f.metadata().is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                    tracing::warn!(pin_file = %path.display(), "the PIN file is readable by other users: chmod 600 it");
                }
            }
            f.take(PIN_FILE_BYTES_MAX).read_to_string(&mut pin).map_err(|e| format!("cannot read kek.pin_file {}: {e}", path.display()))?;
            let len = pin.trim_end_matches(['\n', '\r']).len();
            pin.truncate(len);
        }
        (None, Some(var)) => {
            *pin = std::env::var(var).map_err(|_| format!("kek.pin_env names {var}, which is not set (or not UTF-8)"))?;
        }
        (None, None) => return Err("kek.provider = \"pkcs11\" needs kek.pin_file or kek.pin_env".into()),
        (Some(_), Some(_)) => return Err("kek.pin_file and kek.pin_env are alternatives: set one".into()),
    }
    if pin.is_empty() {
        return Err("the PKCS#11 PIN is empty".into());
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_parses_with_the_defaults() {
        let c: ServerConfig = toml::from_str(include_str!("../../camvault.toml")).expect("sample config");
        assert_eq!(c.listen, "127.0.0.1:50051");
        assert_eq!(c.retention_days_default, 30);
        assert_eq!(c.data_dir, PathBuf::from("./camvault-data"));
        assert!(toml::from_str::<ServerConfig>("unknown_key = 1").is_err(), "typos are refused");
    }

    #[test]
    fn the_sample_config_keeps_keks_in_files_by_default() {
        let c: ServerConfig = toml::from_str(include_str!("../../camvault.toml")).expect("sample config");
        assert_eq!(c.kek.provider, KekProviderKind::File);
        assert!(matches!(kek_provider(&c.kek), Ok(None)));
        let sc = store_config(&c);
        assert_eq!(sc.kek_dir, StoreConfig::new("./camvault-data").kek_dir, "the store's own default");
    }
    #[test]
    fn store_config_honours_key_dir_and_kek_dir() {
        let c: ServerConfig =
            toml::from_str("data_dir = \"/d\"\nkey_dir = \"/k\"\n[kek]\nprovider = \"file\"\ndir = \"/kek\"\n").expect("config");
        let sc = store_config(&c);
        assert_eq!((sc.root, sc.key_dir, sc.kek_dir), (PathBuf::from("/d"), PathBuf::from("/k"), PathBuf::from("/kek")));
    }
    #[test]
    fn kek_tables_that_cannot_work_are_refused() {
        let kek = |t: &str| parse(&format!("[kek]\n{t}")).and_then(|c| kek_provider(&c.kek).map(|_| ()));
        assert!(kek("provider = \"file\"").is_ok());
        assert!(kek("provider = \"tpm\"").is_err(), "unknown provider");
        assert!(kek("pin = \"1234\"").is_err(), "unknown key: a PIN is never written in the configuration");
        assert!(kek("module = \"/x.so\"").expect_err("module without pkcs11").contains("pkcs11"));
        assert!(kek("provider = \"pkcs11\"\ntoken_label = \"t\"\npin_env = \"P\"").expect_err("no module").contains("kek.module"));
        assert!(kek("provider = \"pkcs11\"\nmodule = \"/x.so\"\npin_env = \"P\"").expect_err("no label").contains("token_label"));
        assert!(kek("provider = \"pkcs11\"\nmodule = \"/x.so\"\ntoken_label = \"t\"").expect_err("no PIN").contains("pin"));
        assert!(kek("provider = \"pkcs11\"\nmodule = \"/x.so\"\ntoken_label = \"t\"\npin_env = \"P\"\npin_file = \"/p\"")
            .expect_err("two PINs")
            .contains("alternatives"));
        assert!(kek("provider = \"pkcs11\"\ndir = \"/kek\"").expect_err("dir with pkcs11").contains("kek.dir"));
    }

    #[test]
    fn a_pin_never_appears_in_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, "s3cret-pin-4711\n").expect("write");
        let k = KekConfig {
            provider: KekProviderKind::Pkcs11,
            module: Some(dir.path().join("no-such-module.so")),
            token_label: Some("t".into()),
            pin_file: Some(pin_file),
            ..KekConfig::default()
        };
        assert_eq!(pkcs11_pin(&k).map(|p| p.to_string()), Ok("s3cret-pin-4711".to_string()), "the newline is not part of the PIN");
        let e = kek_provider(&k).err().expect("no such module");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("no-such-module.so"), "{e}");
    }
}
