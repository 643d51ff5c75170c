//! The key hierarchy: per-segment data keys, wrapped by a key-encryption key (KEK) held by a
//! [`KekProvider`], stored in the [`KeyStore`] (a directory apart from the segments).
//!
//! See SECURITY.md "Key hierarchy and threat model" for the threat model.

mod data_key;
mod file_kek;
mod key_store;
#[cfg(feature = "pkcs11")]
mod pkcs11;

pub use data_key::DataKey;
pub(crate) use data_key::{random_bytes, SegmentCipher};
pub use file_kek::FileKekProvider;
pub use key_store::{inspect, KeyStore, Rotation};
pub(crate) use key_store::{HEADER_LEN as KEY_STORE_HEADER_LEN, RECORD_LEN as KEY_STORE_RECORD_LEN};
#[cfg(feature = "pkcs11")]
pub use pkcs11::Pkcs11KekProvider;

use crate::{Result, SegmentId, StoreId};

/// Identifies one key-encryption key inside a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KekId(pub u64);

/// Longest wrapped data key a provider may return, in bytes. 80 leaves room for a 12-byte nonce,
/// a 32-byte key and a 16-byte tag (60) plus provider framing; the key store's fixed record
/// size depends on it.
pub const WRAPPED_KEY_BYTES_MAX: usize = 80;

/// Holds key-encryption keys and wraps data keys with them. Implementations must never write an
/// unwrapped data key anywhere.
pub trait KekProvider: Send + Sync + 'static {
    /// Binds the provider to one store before any other call: a provider that belongs to
    /// another store is refused ([`crate::Error::Identity`]), and afterwards the provider
    /// creates, lists and destroys only this store's KEKs. A store calls it at open.
    fn bind_store(&self, store: StoreId) -> Result<()>;
    /// Creates a new KEK and returns its id.
    fn create_kek(&self) -> Result<KekId>;
    /// Wraps `key` under `kek`, binding `aad` (the segment id) into the result.
    fn wrap(&self, kek: KekId, key: &DataKey, aad: &[u8]) -> Result<Vec<u8>>;
    /// Unwraps a key wrapped by [`KekProvider::wrap`] with the same `kek` and `aad`.
    fn unwrap(&self, kek: KekId, wrapped: &[u8], aad: &[u8]) -> Result<DataKey>;
    /// Destroys `kek`; afterwards nothing it wrapped can be unwrapped.
    fn destroy_kek(&self, kek: KekId) -> Result<()>;
    /// The KEKs the provider holds.
    fn list_keks(&self) -> Result<Vec<KekId>>;
}

/// Associated data for wrapping the data key of `segment`: a wrapped key moved to another
/// segment's slot fails to unwrap.
pub(crate) fn wrap_aad(segment: SegmentId) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(b"camvDK01");
    aad[8..].copy_from_slice(&segment.0.to_le_bytes());
    aad
}
